//! One filter, four languages: `json-mask` written in Rust, JavaScript
//! (componentize-js), Python (componentize-py) and C (wit-bindgen c), each
//! built from source and run through the real gateway with the same
//! expectations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsgate_proxy::Gateway;
use wsgate_tests::*;

/// The four builds of json-mask: (name, component).
fn editions() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("json-mask", plugin_path("json-mask")),
        ("json-mask-js", language_plugin_path("json-mask-js")),
        ("json-mask-py", language_plugin_path("json-mask-py")),
        ("json-mask-c", language_plugin_path("json-mask-c")),
    ]
}

/// A configuration with `name` masking `config` (TOML inline table) in
/// both directions of an endpoint routed to `upstream`.
fn config_for(
    name: &str,
    path: &std::path::Path,
    upstream: std::net::SocketAddr,
    config: &str,
) -> String {
    let router = plugin_path("static-router");
    let chains = format!(
        "client-messages = [{{ plugin = \"{name}@1.0.0\", config = {config} }}]\n\
         upstream-messages = [{{ plugin = \"{name}@1.0.0\", config = {config} }}]"
    );
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n\
         [[plugin]]\nname = \"{name}\"\nversion = \"1.0.0\"\npath = \"{}\"\ngrants = [\"log\", \"state\", \"clocks\", \"context\", \"random\"]\n\
         \n\
         [[plugin]]\nname = \"static-router\"\nversion = \"1.0.0\"\npath = \"{}\"\n\n{}",
        path.display(),
        router.display(),
        endpoint("/mask", upstream, &chains),
    )
}

async fn start(text: &str) -> Result<Gateway, String> {
    init_logging();
    let config = wsgate_config::parse(text, std::path::Path::new("languages.toml"))
        .map_err(|e| e.to_string())?;
    Gateway::start(config, cached_runtime())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_filter_behaves_the_same_in_rust_javascript_python_and_c() {
    let echo = start_echo().await;
    for (name, path) in editions() {
        let text = config_for(
            name,
            &path,
            echo,
            "{ fields = [\"password\", \"ssn\"], mask = \"<hidden>\" }",
        );
        let gateway = start(&text)
            .await
            .unwrap_or_else(|e| panic!("{name}: gateway failed to start: {e}\n{text}"));
        let mut client = connect(&gateway, "/mask").await;

        // Matching keys are masked at any depth, escaped keys included.
        send_text(
            &mut client,
            r#"{"user": "ann", "password": "hunter2", "profile": {"ssn": [1, 2], "age": 41},
                "sessions": [{"pass\u0077ord": "x", "id": 7}, true, null]}"#,
        )
        .await;
        let masked: Value = serde_json::from_str(&next_text(&mut client).await)
            .unwrap_or_else(|e| panic!("{name}: masked output is not JSON: {e}"));
        assert_eq!(
            masked,
            json!({"user": "ann", "password": "<hidden>", "profile": {"ssn": "<hidden>", "age": 41},
                   "sessions": [{"password": "<hidden>", "id": 7}, true, null]}),
            "{name}"
        );

        // JSON without a matching key passes byte for byte.
        let untouched = "{ \"user\" : \"ann\",\n \"n\": [1.5e3, -0] }";
        send_text(&mut client, untouched).await;
        assert_eq!(next_text(&mut client).await, untouched, "{name}");

        // Text that is not JSON (or is broken JSON) and binary pass unchanged.
        for text in ["password: hunter2", "{\"password\": \"x\"", "[1, 2,]"] {
            send_text(&mut client, text).await;
            assert_eq!(next_text(&mut client).await, text, "{name}");
        }
        let bytes = br#"{"password":"binary is not inspected"}"#.to_vec();
        client.send(Message::binary(bytes.clone())).await.unwrap();
        assert_eq!(
            next_data(&mut client).await,
            Message::binary(bytes),
            "{name}"
        );

        client
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            }))
            .await
            .unwrap();
        assert_eq!(expect_close(&mut client).await.0, 1000, "{name}");
        gateway.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edition_refuses_a_bad_configuration_naming_the_field() {
    let echo = start_echo().await;
    for (name, path) in editions() {
        for (config, field) in [
            ("{ fields = [] }", "config.fields"),
            ("{ fields = [\"a\"], mask = 5 }", "config.mask"),
        ] {
            let text = config_for(name, &path, echo, config);
            let error = start(&text)
                .await
                .err()
                .unwrap_or_else(|| panic!("{name}: configuration {config} was accepted"));
            assert!(
                error.contains(&format!("{name}@1.0.0")) && error.contains(field),
                "{name}: {config}: the error names neither the plugin nor {field}: {error}"
            );
        }
    }
}
