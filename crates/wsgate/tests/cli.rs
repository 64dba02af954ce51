//! The `wsgate` binary: `check` and `echo`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

mod common;
use common::{check, keygen_and_sign, stderr, wsgate};

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsgate-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("host-config.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

#[test]
fn check_names_file_line_and_misspelt_key_and_exits_non_zero() {
    let path = write_config(
        "misspelt",
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[[endpoint]]\npath = \"/x\"\nexpires = \"1h\"\n",
    );
    let output = check(&path);
    assert!(!output.status.success());
    let errors = stderr(&output);
    let expected = format!(
        "{}:6:1: field `endpoint[0].expires`: unknown field `expires`",
        path.display()
    );
    assert!(errors.contains(&expected), "{errors}");
}

#[test]
fn a_listen_address_in_use_is_one_clear_line_and_a_failed_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let path = write_config("in-use", &format!("[gateway]\nlisten = \"{address}\"\n"));
    let output = wsgate()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let errors = stderr(&output);
    let expected = format!("gateway.listen: cannot listen on {address}: ");
    assert_eq!(errors.matches(&expected).count(), 1, "{errors}");
    assert!(errors.contains("in use"), "{errors}");
}

#[test]
fn check_reports_every_problem_and_accepts_a_good_config() {
    let path = write_config(
        "several",
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[[endpoint]]\npath = \"x\"\nupgrade = [{ plugin = \"nope@1\" }]\n",
    );
    let output = check(&path);
    assert!(!output.status.success());
    let errors = stderr(&output);
    assert!(
        errors.contains(":5:8: field `endpoint[0].path`"),
        "{errors}"
    );
    assert!(
        errors
            .contains("field `endpoint[0].upgrade[0].plugin`: no [[plugin]] is declared as nope@1"),
        "{errors}"
    );

    let path = write_config("good", "[gateway]\nlisten = \"127.0.0.1:0\"\n");
    let output = check(&path);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains(": ok"));
}

#[test]
fn check_warns_about_a_deprecated_key_and_still_succeeds() {
    let endpoint =
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[[endpoint]]\npath = \"/x\"\nenabled = false\n";
    let path = write_config("deprecated", &format!("{endpoint}server-messages = []\n"));
    let output = check(&path);
    let errors = stderr(&output);
    assert!(output.status.success(), "{errors}");
    let expected = format!(
        "warning: {}:7:1: field `endpoint[0].server-messages`: deprecated, use `upstream-messages`",
        path.display()
    );
    assert!(errors.contains(&expected), "{errors}");

    let path = write_config("renamed", &format!("{endpoint}upstream-messages = []\n"));
    let output = check(&path);
    let errors = stderr(&output);
    assert!(output.status.success(), "{errors}");
    assert!(!errors.contains("warning:"), "{errors}");

    let path = write_config(
        "both",
        &format!("{endpoint}upstream-messages = []\nserver-messages = []\n"),
    );
    let output = check(&path);
    assert!(!output.status.success());
    let errors = stderr(&output);
    assert!(
        errors.contains(":8:1: field `endpoint[0].server-messages`"),
        "{errors}"
    );
}

#[test]
fn echo_serves_and_stops_on_sigterm() {
    let mut child = wsgate()
        .args(["echo", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "echo exited early"
        );
        if line.contains("echo server listening on") {
            break;
        }
    }
    let address = line.trim().rsplit(' ').next().unwrap().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        let (mut ws, _) = tokio_tungstenite::connect_async(address).await.unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::text("ping?"))
            .await
            .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "ping?");
    });
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_demo_configurations_check_clean() {
    wsgate_tests::plugin_dir();
    for file in ["host-config.toml", "host-config.v2.toml"] {
        let output = check(&wsgate_tests::repo_root().join(file));
        assert!(output.status.success(), "{file}: {}", stderr(&output));
        assert!(
            !stderr(&output).contains("warning:"),
            "{file}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn keygen_and_sign_produce_what_check_accepts() {
    let dir = std::env::temp_dir().join(format!("wsgate-cli-sign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let component = dir.join("static_router.wasm");
    std::fs::copy(wsgate_tests::plugin_path("static-router"), &component).unwrap();
    let trusted = keygen_and_sign(&dir, &component);
    let config = write_config(
        "signed",
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[signing]\nrequire-signed = true\n{trusted}\n\n\
             [[plugin]]\nname = \"static-router\"\nversion = \"1.0.0\"\npath = \"{}\"\n",
            component.display()
        ),
    );
    let output = check(&config);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains(": ok"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plugin_store_workflow_add_list_inspect_verify_then_check_pins_from_it() {
    let dir = std::env::temp_dir().join(format!("wsgate-cli-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("store");
    let store_arg = store.to_str().unwrap();
    let manifest = wsgate_tests::repo_root().join("plugins/static-router/wsgate-plugin.toml");
    let component = dir.join("static_router.wasm");
    std::fs::copy(wsgate_tests::plugin_path("static-router"), &component).unwrap();
    let stdout =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stdout).to_string();

    // Sign, then add: the signature travels into the store with the component.
    let trusted = keygen_and_sign(&dir, &component);
    let output = wsgate()
        .args(["plugin", "add", "--store", store_arg, "--manifest"])
        .arg(&manifest)
        .arg(&component)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let added = stdout(&output);
    assert!(
        added.contains("added static-router@1.0.0 sha256:") && added.contains("signed"),
        "{added}"
    );
    let digest_line = added
        .lines()
        .find(|l| l.starts_with("digest = "))
        .unwrap()
        .to_string();

    let output = wsgate()
        .args(["plugin", "list", "--store", store_arg])
        .output()
        .unwrap();
    let listed = stdout(&output);
    let row = listed
        .lines()
        .find(|l| l.starts_with("static-router"))
        .unwrap();
    for expected in [
        "1.0.0",
        "upgrade",
        "acme",
        digest_line.split('"').nth(1).unwrap(),
    ] {
        assert!(row.contains(expected), "{expected} missing from: {row}");
    }

    let output = wsgate()
        .args([
            "plugin",
            "inspect",
            "static-router@1.0.0",
            "--store",
            store_arg,
        ])
        .output()
        .unwrap();
    let inspected = stdout(&output);
    assert!(
        inspected.contains("role         upgrade")
            && inspected.contains("contract     wsgate:plugin@0.2.0")
            && inspected.contains("wsgate:plugin/upgrade@0.2.0"),
        "{inspected}"
    );

    // A configuration pinning it from the store, signatures required.
    let config = write_config(
        "store",
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nplugin-store = \"{store_arg}\"\n\n\
             [signing]\nrequire-signed = true\n{trusted}\n\n\
             [[plugin]]\nname = \"static-router\"\nversion = \"1.0.0\"\n{digest_line}\n"
        ),
    );
    let output = check(&config);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("signed by acme"),
        "{}",
        stdout(&output)
    );
    let verify = || {
        wsgate()
            .args(["plugin", "verify", "--store", store_arg, "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let output = verify();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("signed by acme (trusted)"),
        "{}",
        stdout(&output)
    );

    // A manifest that lies about the role is refused.
    let output = wsgate()
        .args(["plugin", "add", "--store", store_arg, "--manifest"])
        .arg(&manifest)
        .arg(wsgate_tests::plugin_path("tagger-v1"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("the manifest says role `upgrade`, but the component is message"),
        "{}",
        stderr(&output)
    );

    // A stored component changed on disk: verify and check both refuse it.
    let hex = digest_line
        .split("sha256:")
        .nth(1)
        .unwrap()
        .trim_end_matches('"');
    std::fs::write(store.join("blobs/sha256").join(hex), b"tampered").unwrap();
    let output = verify();
    assert!(!output.status.success());
    assert!(
        stdout(&output).contains("FAILED  static-router@1.0.0"),
        "{}",
        stdout(&output)
    );
    let output = check(&config);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("digest mismatch"),
        "{}",
        stderr(&output)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_json_log_is_one_object_per_line_and_a_plugin_fault_carries_its_connection() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(wsgate_tests::start_echo());
    // Traced (to a collector that is not there): each line of a connection
    // names its trace.
    let collector = runtime.block_on(wsgate_tests::closed_port());
    let config = write_config(
        "json-log",
        &wsgate_tests::config_text(&format!(
            "[tracing]\notlp-endpoint = \"http://{collector}/v1/traces\"\n\n{}",
            wsgate_tests::endpoint(
                "/echo",
                echo,
                "client-messages = [{ plugin = \"test-faults@0.1.0\", fail = \"open\" }]",
            )
        )),
    );
    let mut child = wsgate()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Every line is a JSON object; the first that satisfies `wanted`.
    let mut next_event = |wanted: &dyn Fn(&serde_json::Value) -> bool| loop {
        let line = lines.next().expect("the gateway logs").unwrap();
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "{line}"
        );
        if wanted(&event) {
            return event;
        }
    };
    let listening = next_event(&|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("wsgate listening on "))
    });
    let address = listening["message"]
        .as_str()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    runtime.block_on(async {
        let mut client = wsgate_tests::upgrade_as(&address, "/echo", "")
            .await
            .unwrap();
        // The plugin traps; fail = "open" forwards the message anyway.
        wsgate_tests::send_text(&mut client, "trap").await;
        assert_eq!(wsgate_tests::next_text(&mut client).await, "trap");
    });
    let fault = next_event(&|e| e["level"] == "ERROR");
    assert_eq!(fault["plugin"], "test-faults@0.1.0", "{fault}");
    assert_eq!(fault["kind"], "trap", "{fault}");
    assert_eq!(fault["span"]["name"], "connection", "{fault}");
    assert_eq!(fault["span"]["endpoint"], "/echo", "{fault}");
    assert!(fault["span"]["id"].is_number(), "{fault}");
    let trace_id = fault["span"]["trace_id"].as_str().unwrap_or_default();
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fault}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
