use std::path::Path;

use super::*;

const GOOD: &str = r#"
[gateway]
listen = "127.0.0.1:8080"

[[plugin]]
name = "static-router"
version = "1.0.0"
path = "plugins/static_router.wasm"

[[endpoint]]
path = "/echo"
expire = "1h"
allowed-upstreams = ["ws://127.0.0.1:9001"]
upgrade = [{ plugin = "static-router@1.0.0", config = { url = "ws://127.0.0.1:9001/" } }]

[[endpoint]]
path = "/chat"
match = "prefix"
allowed-upstreams = ["wss://"]
upgrade = [{ plugin = "static-router@1.0.0", fail = "open" }]
"#;

fn parse_at(text: &str) -> Result<Config, ConfigErrors> {
    parse(text, Path::new("conf/host-config.toml"))
}

fn single_error(text: &str) -> ConfigError {
    let errors = parse_at(text).err().unwrap().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

#[test]
fn a_good_config_parses_with_defaults() {
    let config = parse_at(GOOD).unwrap();
    assert_eq!(config.endpoints.len(), 2);
    let echo = &config.endpoints[0];
    assert_eq!(echo.lifetime(), Some(std::time::Duration::from_secs(3600)));
    assert_eq!(echo.content_type, "application/json");
    assert_eq!(echo.max_message_size.0, 1 << 20);
    assert_eq!(
        echo.upgrade[0].config_json(),
        r#"{"url":"ws://127.0.0.1:9001/"}"#
    );
    assert_eq!(config.endpoints[1].upgrade[0].fail, FailPolicy::Open);
    assert_eq!(
        config.plugins[0].path,
        Path::new("conf/plugins/static_router.wasm")
    );
    assert_eq!(config.gateway.read_buffer_size.0, 1024);
}

#[test]
fn endpoints_match_exact_then_longest_prefix() {
    let config = parse_at(GOOD).unwrap();
    assert_eq!(config.endpoint_for("/echo").map(|(i, _)| i), Some(0));
    assert_eq!(config.endpoint_for("/echo/x").map(|(i, _)| i), None);
    assert_eq!(config.endpoint_for("/chat").map(|(i, _)| i), Some(1));
    assert_eq!(config.endpoint_for("/chat/room").map(|(i, _)| i), Some(1));
    assert_eq!(config.endpoint_for("/chatter").map(|(i, _)| i), None);
}

#[test]
fn a_misspelt_key_names_file_line_and_field() {
    let text = GOOD.replace("expire = \"1h\"", "expires = \"1h\"");
    let error = single_error(&text);
    assert_eq!(error.file, "conf/host-config.toml");
    assert_eq!(error.line, 12);
    assert_eq!(error.field, "endpoint[0].expires");
    assert!(error.message.contains("unknown field `expires`"), "{error}");
    assert!(
        error.to_string().starts_with("conf/host-config.toml:12:"),
        "{error}"
    );
}

#[test]
fn a_bad_value_names_its_field() {
    let text = GOOD.replace("expire = \"1h\"", "expire = \"1 fortnight\"");
    let error = single_error(&text);
    assert_eq!(error.line, 12);
    assert_eq!(error.field, "endpoint[0].expire");
    assert!(error.message.contains("fortnight"), "{error}");
}

#[test]
fn an_unknown_plugin_reference_is_reported_at_its_line() {
    let text = GOOD.replace(
        "{ plugin = \"static-router@1.0.0\", fail",
        "{ plugin = \"static-router@2.0.0\", fail",
    );
    let error = single_error(&text);
    assert_eq!(error.line, 20);
    assert_eq!(error.field, "endpoint[1].upgrade[0].plugin");
    assert!(error.message.contains("static-router@1.0.0"), "{error}");
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let text = GOOD
        .replace("path = \"/chat\"", "path = \"chat\"")
        .replace("[\"ws://127.0.0.1:9001\"]", "[\"http://x\"]");
    let errors = parse_at(&text).err().unwrap().0;
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["endpoint[0].allowed-upstreams[0]", "endpoint[1].path"]
    );
}

#[test]
fn an_enabled_endpoint_without_upgrade_chain_is_refused() {
    let text = GOOD.replace(
        "upgrade = [{ plugin = \"static-router@1.0.0\", fail = \"open\" }]",
        "",
    );
    let error = single_error(&text);
    assert_eq!(error.field, "endpoint[1].upgrade");
}

#[test]
fn an_enabled_endpoint_must_list_its_allowed_upstreams() {
    let text = GOOD.replace("allowed-upstreams = [\"wss://\"]\n", "");
    let error = single_error(&text);
    assert_eq!(error.field, "endpoint[1].allowed-upstreams");
}

#[test]
fn a_toml_syntax_error_has_a_position() {
    let error = single_error("[gateway\nlisten = 1");
    assert_eq!(error.line, 1);
    assert!(error.column > 0);
}

#[test]
fn an_unreadable_file_is_a_whole_file_error() {
    let errors = load(Path::new("/nonexistent/wsgate.toml")).err().unwrap();
    assert!(errors.to_string().contains("cannot read configuration"));
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let text = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9900\"\n");
    let error = single_error(&text);
    assert_eq!(error.field, "admin.token");
    let text = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9900\"\ntoken = \"t\"\n");
    assert!(parse_at(&text).is_ok());
    let text = format!("{GOOD}\n[admin]\nlisten = \"127.0.0.1:9900\"\n");
    assert!(parse_at(&text).is_ok());
}

#[test]
fn denial_of_service_limits_have_defaults_and_must_be_at_least_one() {
    let config = parse_at(GOOD).unwrap();
    assert_eq!(*config.gateway.max_headers.get_ref(), 100);
    assert_eq!(*config.gateway.max_pending_upgrades.get_ref(), 4096);
    assert_eq!(*config.gateway.max_pending_upgrades_per_ip.get_ref(), 256);
    let text = format!("{GOOD}\n[admin]\nlisten = \"127.0.0.1:9900\"\n");
    let admin = parse_at(&text).unwrap().admin.unwrap();
    assert_eq!(*admin.max_connections.get_ref(), 32);
    assert_eq!(*admin.max_tails.get_ref(), 8);

    let text = GOOD.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nmax-pending-upgrades-per-ip = 0",
    );
    let error = single_error(&text);
    assert_eq!(
        (error.field.as_str(), error.line),
        ("gateway.max-pending-upgrades-per-ip", 4)
    );
    let text = format!("{GOOD}\n[admin]\nlisten = \"127.0.0.1:9900\"\nmax-tails = 0\n");
    let error = single_error(&text);
    assert_eq!(error.field, "admin.max-tails");
    assert!(error.message.contains("at least 1"), "{}", error.message);
}

#[test]
fn workers_default_to_one_per_core_and_are_bounded() {
    assert_eq!(*parse_at(GOOD).unwrap().gateway.workers.get_ref(), 0);
    let with = |workers: &str| {
        GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\nworkers = {workers}"),
        )
    };
    assert_eq!(*parse_at(&with("4")).unwrap().gateway.workers.get_ref(), 4);
    let error = single_error(&with("5000"));
    assert_eq!((error.field.as_str(), error.line), ("gateway.workers", 4));
    assert!(error.message.contains("at most 1024"), "{}", error.message);
}

/// `GOOD` with a chain for upstream messages on the first endpoint, under `key`.
fn with_upstream_chain(key: &str) -> String {
    GOOD.replace(
        "\n[[endpoint]]\npath = \"/chat\"",
        &format!(
            "\n[[endpoint.{key}]]\nplugin = \"static-router@1.0.0\"\n\n[[endpoint]]\npath = \"/chat\""
        ),
    )
}

#[test]
fn upstream_messages_is_the_chain_for_upstream_messages() {
    let config = parse_at(&with_upstream_chain("upstream-messages")).unwrap();
    let chain = &config.endpoints[0].upstream_messages;
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].plugin.get_ref(), "static-router@1.0.0");
    assert!(config.endpoints[1].upstream_messages.is_empty());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn server_messages_still_works_and_warns_at_its_line() {
    let text = with_upstream_chain("server-messages");
    let config = parse_at(&text).unwrap();
    let chain = &config.endpoints[0].upstream_messages;
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].plugin.get_ref(), "static-router@1.0.0");
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    let warning = &config.warnings[0];
    let line = 1 + text
        .lines()
        .position(|l| l == "[[endpoint.server-messages]]")
        .unwrap();
    assert_eq!(line, 16);
    assert_eq!((warning.line, warning.column), (line, 1));
    assert_eq!(warning.field, "endpoint[0].server-messages");
    assert_eq!(
        warning.to_string(),
        "conf/host-config.toml:16:1: field `endpoint[0].server-messages`: \
         deprecated, use `upstream-messages`"
    );

    // Inline, as a key of the endpoint table: the key's own position.
    let text = GOOD.replace(
        "expire = \"1h\"",
        "expire = \"1h\"\n  server-messages = [{ plugin = \"static-router@1.0.0\" }]",
    );
    let config = parse_at(&text).unwrap();
    assert_eq!(config.endpoints[0].upstream_messages.len(), 1);
    let warning = &config.warnings[0];
    assert_eq!((warning.line, warning.column), (13, 3));
}

#[test]
fn errors_in_a_server_messages_chain_name_the_key_as_written() {
    let text = with_upstream_chain("server-messages").replace(
        "plugin = \"static-router@1.0.0\"\n\n",
        "plugin = \"static-router@9\"\n\n",
    );
    let error = single_error(&text);
    assert_eq!(error.field, "endpoint[0].server-messages[0].plugin");
    assert_eq!(error.line, 17);
    let text = with_upstream_chain("server-messages").replace(
        "plugin = \"static-router@1.0.0\"\n\n",
        "plugin = \"static-router@1.0.0\"\nfial = \"open\"\n\n",
    );
    let error = single_error(&text);
    assert_eq!(error.field, "endpoint[0].server-messages[0].fial");
}

#[test]
fn server_messages_and_upstream_messages_together_are_an_error() {
    let text = with_upstream_chain("server-messages")
        .replace("expire = \"1h\"", "expire = \"1h\"\nupstream-messages = []");
    let error = single_error(&text);
    assert_eq!(error.field, "endpoint[0].server-messages");
    assert_eq!(error.line, 17);
    assert!(error.message.contains("not both"), "{error}");
    assert!(error.message.contains("upstream-messages"), "{error}");
}

/// Property tests ("fuzzing" in CI's budget; `scripts/fuzz` runs many more
/// cases): no input makes the parser panic, and every error points inside
/// the file.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn check(text: &str) {
        let lines = text.lines().count().max(1);
        match parse_at(text) {
            Ok(config) => {
                for warning in &config.warnings {
                    assert!(warning.line >= 1 && warning.line <= lines + 1, "{warning}");
                }
            }
            Err(errors) => {
                for error in &errors.0 {
                    assert!(!error.message.is_empty());
                    assert!(
                        error.line <= lines + 1,
                        "line {} of {lines}: {error}",
                        error.line
                    );
                }
            }
        }
    }

    /// Pieces that make a TOML file look like a configuration.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("[gateway]\n".to_string()),
            Just("[[endpoint]]\n".to_string()),
            Just("[[plugin]]\n".to_string()),
            Just("[[endpoint.server-messages]]\n".to_string()),
            Just("[[endpoint.upstream-messages]]\n".to_string()),
            Just("server-messages = []\n".to_string()),
            Just("[[remote-host]]\n".to_string()),
            Just("[monitor]\n".to_string()),
            Just("[signing]\n".to_string()),
            "[a-z-]{1,16} = \"[ -~]{0,24}\"\n",
            "[a-z-]{1,16} = -?[0-9]{1,12}\n",
            "[a-z-]{1,16} = \\[\"[ -~]{0,12}\"\\]\n",
            "[a-z-]{1,16} = \\{ [a-z-]{1,8} = \"[ -~]{0,12}\" \\}\n",
            Just("listen = \"127.0.0.1:0\"\n".to_string()),
            Just("path = \"/x\"\n".to_string()),
            Just("expire = \"1h\"\n".to_string()),
            Just("max-message-size = \"1MiB\"\n".to_string()),
            "[ -~\n]{0,40}",
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "[ -~\n\t]{0,400}") {
            check(&text);
        }

        #[test]
        fn configuration_like_files_never_panic(parts in prop::collection::vec(fragment(), 0..24)) {
            check(&parts.concat());
        }

        #[test]
        fn a_good_file_cut_or_edited_anywhere_never_panics(at in 0usize..GOOD.len(), insert in "[ -~\n]{0,8}", cut in 0usize..16) {
            let mut text = GOOD.to_string();
            let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (at + cut).min(text.len());
            let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text.replace_range(at..end, &insert);
            check(&text);
        }
    }
}

#[test]
fn plugins_share_the_host_memory_ceiling_and_may_not_exceed_it() {
    let two = GOOD.replace(
        "[[endpoint]]\npath = \"/echo\"",
        "[[plugin]]\nname = \"other\"\nversion = \"1.0.0\"\npath = \"o.wasm\"\nmax-state-total = \"56MiB\"\n\n[[endpoint]]\npath = \"/echo\"",
    );
    let config = parse_at(&two).unwrap();
    let totals: Vec<_> = config.plugins.iter().map(|p| p.max_state_total).collect();
    // The unset one gets what the set one leaves of the 256 MiB default.
    assert_eq!(
        totals,
        [Some(ByteSize(200 << 20)), Some(ByteSize(56 << 20))]
    );
    let over = two.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nplugin-host-memory = \"32MiB\"",
    );
    let error = single_error(&over);
    assert_eq!(error.field, "plugin[1].max-state-total");
    assert!(error.message.contains("plugin-host-memory"), "{error}");
}

#[test]
fn offload_settings_default_and_zero_threads_is_an_error() {
    let plugin = &parse_at(GOOD).unwrap().plugins[0];
    assert_eq!(plugin.offload_above.0, std::time::Duration::from_millis(1));
    assert_eq!((plugin.offload_threads, plugin.offload_queue), (2, 64));
    let text = GOOD.replace(
        "path = \"plugins/static_router.wasm\"",
        "path = \"plugins/static_router.wasm\"\noffload-threads = 0",
    );
    let error = single_error(&text);
    assert_eq!(error.field, "plugin[0].offload-threads");
    assert_eq!(error.line, 6);
}

#[test]
fn a_plugin_from_a_registry_needs_a_digest_a_store_and_an_oci_reference() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let with = |gateway: &str, plugin: &str| {
        format!(
            "[gateway]\nlisten = \"127.0.0.1:8080\"\n{gateway}\n\n\
             [[registry]]\nhost = \"registry.example.com\"\nusername = \"ci\"\npassword-file = \"secrets/registry\"\n\n\
             [[plugin]]\nname = \"static-router\"\nversion = \"1.0.0\"\n{plugin}\n"
        )
    };
    let store = "plugin-store = \"store\"";
    let source = "source = \"oci://registry.example.com/wsgate/static-router:1.0.0\"";

    let config = parse_at(&with(store, &format!("{source}\ndigest = \"{digest}\""))).unwrap();
    let plugin = &config.plugins[0];
    assert_eq!(
        plugin.path,
        Path::new("conf/store/blobs/sha256").join("a".repeat(64))
    );
    assert_eq!(
        config.registries[0].password_file.as_deref(),
        Some(Path::new("conf/secrets/registry"))
    );

    for (gateway, plugin, expected) in [
        (store, source.to_string(), "`digest`"),
        (
            "",
            format!("{source}\ndigest = \"{digest}\""),
            "plugin-store",
        ),
        (
            store,
            format!("{source}\ndigest = \"{digest}\"\npath = \"p.wasm\""),
            "not both",
        ),
        (
            store,
            format!("source = \"registry.example.com/x:1\"\ndigest = \"{digest}\""),
            "oci://HOST",
        ),
    ] {
        let error = single_error(&with(gateway, &plugin));
        assert_eq!(error.field, "plugin[0].source", "{error}");
        assert!(error.message.contains(expected), "{error}");
        assert_eq!(error.line, 13, "{error}");
    }
}

#[test]
fn a_registry_is_listed_once_with_one_password_source() {
    let text = "[gateway]\nlisten = \"127.0.0.1:8080\"\n\n\
                [[registry]]\nhost = \"r.example.com\"\npassword-file = \"p\"\npassword-env = \"P\"\n\n\
                [[registry]]\nhost = \"R.example.com\"\n";
    let errors = parse_at(text).err().unwrap().0;
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["registry[0].password-file", "registry[1].host"]);
}

#[test]
fn the_kubernetes_configurations_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
    for file in ["base/host-config.toml", "overlays/example/host-config.toml"] {
        let config = load(&root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            config.plugins.iter().all(|p| p.source.is_some()),
            "{file}: every plugin comes from the registry"
        );
    }
}

#[test]
fn monitor_level_replay_needs_the_database() {
    let text = "[gateway]\nlisten = \"127.0.0.1:8080\"\n\n\
                [[endpoint]]\npath = \"/chat\"\nmonitor = \"replay\"\nenabled = false\n";
    let error = single_error(text);
    assert_eq!(error.field, "endpoint[0].monitor", "{error}");
    assert!(error.message.contains("[monitor] database"), "{error}");
    let with_database = format!("{text}\n[monitor]\ndatabase = \"monitor.db\"\n");
    assert!(parse_at(&with_database).is_ok());
}

#[test]
fn tracing_rates_and_endpoint_are_checked_where_they_are_written() {
    let text = "[gateway]\nlisten = \"127.0.0.1:8080\"\n\n\
                [tracing]\notlp-endpoint = \"http://collector:4318/v1/traces\"\nsample = 1.5\n";
    let error = single_error(text);
    assert_eq!(
        (error.field.as_str(), error.line),
        ("tracing.sample", 6),
        "{error}"
    );
    let text = "[gateway]\nlisten = \"127.0.0.1:8080\"\n\n\
                [tracing]\notlp-endpoint = \"collector:4318\"\n";
    let error = single_error(text);
    assert_eq!(
        (error.field.as_str(), error.line),
        ("tracing.otlp-endpoint", 5),
        "{error}"
    );
    let text = "[gateway]\nlisten = \"127.0.0.1:8080\"\n\n\
                [[endpoint]]\npath = \"/chat\"\nenabled = false\ntrace-sample = -0.5\n";
    let error = single_error(text);
    assert_eq!(
        (error.field.as_str(), error.line),
        ("endpoint[0].trace-sample", 7),
        "{error}"
    );
    // Off by default: no endpoint, nothing exported.
    let config = parse_at("[gateway]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
    assert!(config.tracing.otlp_endpoint.is_none());
}

#[test]
fn tracing_export_settings_are_bounded() {
    let text = "[gateway]\nlisten = \"127.0.0.1:8080\"\n\n\
                [tracing]\notlp-endpoint = \"http://collector:4318/v1/traces\"\nexport-interval = \"0s\"\n";
    let error = single_error(text);
    assert_eq!(
        (error.field.as_str(), error.line),
        ("tracing.export-interval", 6),
        "{error}"
    );
    let text = "[gateway]\nlisten = \"127.0.0.1:8080\"\n\n\
                [tracing]\nqueue = 0\n";
    let error = single_error(text);
    assert_eq!(
        (error.field.as_str(), error.line),
        ("tracing.queue", 5),
        "{error}"
    );
}
