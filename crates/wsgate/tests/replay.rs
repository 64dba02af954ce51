//! `wsgate replay`: traffic recorded through a real gateway at monitor
//! level `replay` (real sockets: a client and an echo upstream), then run
//! by the binary against (a) the same configuration: no difference, byte
//! for byte; (b) the plugin at its next version: exactly the client's
//! messages change, with a JSON-aware diff; (c) a plugin that traps on
//! some messages: the faults counted. Masked fields never reach the
//! database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Output;

use wsgate_tests::*;

mod common;
use common::{TempDir, stderr, wsgate};

/// The client's messages: text, JSON with a secret, and one `test-faults`
/// traps on.
const SENT: [&str; 4] = [
    "hello",
    r#"{"user":"ann","password":"hunter2"}"#,
    "trap",
    r#"{"n":1}"#,
];

/// A configuration recording `/chat` at level `replay` into `database`,
/// its client messages through `chain`.
fn config(database: &Path, echo: std::net::SocketAddr, chain: &str) -> String {
    config_text(&endpoint(
        "/chat",
        echo,
        &format!("monitor = \"replay\"\nclient-messages = [{chain}]"),
    )) + &format!(
        "\n[monitor]\ndatabase = \"{}\"\nmask = [\"/password\"]\n",
        database.display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn replay(config: &Path, database: &Path, fail_on: &str) -> (Output, serde_json::Value) {
    let output = wsgate()
        .args([
            "replay",
            "--format",
            "json",
            "--fail-on",
            fail_on,
            "--config",
        ])
        .arg(config)
        .arg("--from")
        .arg(database)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(&output)
        )
    });
    (output, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_no_difference_then_a_version_change_then_faults() {
    let dir = TempDir::new("replay");
    let database = dir.0.join("monitor.db");
    let echo = start_echo().await;
    let recorded = config(&database, echo, "{ plugin = \"tagger@1.0.0\" }");

    // Record: two connections through the gateway, every message echoed.
    let gateway = start_gateway_from(&recorded).await;
    for _ in 0..2 {
        let mut client = connect(&gateway, "/chat").await;
        for text in SENT {
            send_text(&mut client, text).await;
            next_text(&mut client).await;
        }
        // A clean close: the client's close and the upstream's answer go
        // through the chains too, and are recorded before the client sees
        // the answer.
        client.close(None).await.unwrap();
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut client).await {}
    }
    gateway.monitor().flush().await;
    let stored = wsgate_monitor::read_recorded(
        &database,
        &wsgate_monitor::ConnectionFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(stored.len(), 2);
    // Each client message and its echo, in the order they were read, then
    // both closes.
    let per_connection = 2 * SENT.len() + 2;
    assert_eq!(stored[0].messages.len(), per_connection);
    let text = serde_json::to_string(&stored).unwrap();
    assert!(!text.contains("hunter2") && text.contains("***"), "{text}");
    // The frames keep their metadata only: the (masked) messages carry
    // the payloads.
    let frames = gateway
        .monitor()
        .frames(&wsgate_monitor::FrameFilter {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert!(!frames.is_empty());
    assert!(frames.iter().all(|f| f.payload.is_none()), "{frames:?}");

    // (a) The same configuration: every message the same.
    let same = write(&dir.0, "same.toml", &recorded);
    let (output, report) = replay(&same, &database, "changed");
    assert!(output.status.success(), "{}", stderr(&output));
    let chat = &report["endpoints"][0];
    assert_eq!(chat["endpoint"], "/chat");
    assert_eq!(chat["messages"]["same"], 2 * per_connection);
    assert_eq!(chat["messages"]["changed"], 0);
    assert_eq!(chat["upgrades_changed"], 0);

    // (b) tagger 2.0.0: exactly the client's messages change.
    let next = write(
        &dir.0,
        "next.toml",
        &config(&database, echo, "{ plugin = \"tagger@2.0.0\" }"),
    );
    let (output, report) = replay(&next, &database, "changed");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--fail-on changed"),
        "{}",
        stderr(&output)
    );
    let chat = &report["endpoints"][0];
    assert_eq!(chat["messages"]["changed"], 2 * SENT.len());
    assert_eq!(
        chat["messages"]["same"],
        2 * (per_connection - SENT.len()),
        "the echoes pass no chain; closes are not stamped"
    );
    let diffs: Vec<String> = chat["examples"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["diff"].as_array().unwrap().iter())
        .map(|line| line.as_str().unwrap().to_string())
        .collect();
    assert!(
        diffs.contains(&"/tagged-by: \"tagger@1.0.0\" -> \"tagger@2.0.0\"".to_string()),
        "{diffs:?}"
    );
    assert!(
        diffs
            .iter()
            .any(|d| d.contains("hello+v1.0.0") && d.starts_with('-')),
        "{diffs:?}"
    );
    let (output, _) = replay(&next, &database, "faults");
    assert!(output.status.success(), "{}", stderr(&output));

    // (c) A plugin that traps on `trap`: the faults counted, the messages
    // forwarded (fail = "open") and so unchanged but for the tagger's stamp.
    let faulty = write(
        &dir.0,
        "faulty.toml",
        &config(
            &database,
            echo,
            "{ plugin = \"test-faults@0.1.0\", fail = \"open\" }, { plugin = \"tagger@1.0.0\" }",
        ),
    );
    let (output, report) = replay(&faulty, &database, "faults");
    assert!(!output.status.success());
    let faults = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"] == "test-faults@0.1.0")
        .unwrap();
    assert_eq!(faults["faults"]["trap"], 2, "{faults}");
    assert_eq!(report["endpoints"][0]["messages"]["changed"], 0);

    // Gated deploys: refused before anything is sent when the replay
    // faults, or changes an endpoint marked must-not-change; sent when not.
    let (admin, _stop) = start_admin(&gateway, None).await;
    let admin = admin.to_string();
    let deploy = |config: &Path, extra: &[&str]| {
        wsgate()
            .args([
                "deploy",
                "--admin",
                &admin,
                "--require-replay",
                "5",
                "--config",
            ])
            .arg(config)
            .args(extra)
            .output()
            .unwrap()
    };
    let output = deploy(&next, &["--must-not-change", "/chat"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("changes what /chat got, marked must-not-change"),
        "{}",
        stderr(&output)
    );
    let output = deploy(&faulty, &[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("fault 2 times"),
        "{}",
        stderr(&output)
    );
    assert_eq!(gateway.generation().id, 1, "nothing was deployed");
    let output = deploy(&next, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(gateway.generation().id, 2);
}

/// A gateway started from a whole configuration text.
async fn start_gateway_from(text: &str) -> wsgate_proxy::Gateway {
    wsgate_proxy::Gateway::start(parse_config(text), runtime())
        .await
        .unwrap_or_else(|e| panic!("gateway failed to start: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traffic_file_replays_like_the_database_and_plugins_read_the_recorded_clock() {
    let dir = TempDir::new("replay-export");
    let database = dir.0.join("monitor.db");
    let echo = start_echo().await;
    // json-transform stamps each message with the time plugins read.
    let recorded = config(
        &database,
        echo,
        "{ plugin = \"json-transform@1.0.0\", config = { set = { \"/at\" = \"${now-ms}\" } } }",
    );
    let gateway = start_gateway_from(&recorded).await;
    let address = gateway.local_addr().to_string();
    let mut client = upgrade_as(&address, "/chat", "zed-the-user").await.unwrap();
    for i in 0..20 {
        send_text(&mut client, &format!("{{\"i\":{i}}}")).await;
        next_text(&mut client).await;
    }
    client.close(None).await.unwrap();
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut client).await {}
    gateway.monitor().flush().await;

    // Exported with the user header masked (and the default secrets).
    let traffic = dir.0.join("traffic.jsonl");
    let output = wsgate()
        .args(["traffic", "export", "--mask-header", "x-user", "--from"])
        .arg(&database)
        .arg("--out")
        .arg(&traffic)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&traffic).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(
        !text.contains("zed-the-user") && text.contains("\"x-user\",\"***\""),
        "{text}"
    );

    // Replayed from the file, after the recording (and the export between
    // them): the stamps are the recorded times, not the replay's. The
    // replay's clock is the message's recorded read time; the recorded
    // plugin read the live clock a little after it (more than a
    // millisecond on a loaded machine), never more than the millisecond
    // either clock's rounding can cross before it. A replay on its own
    // clock would stamp later than the recording.
    let config_path = write(&dir.0, "same.toml", &recorded);
    let (output, report) = replay(&config_path, &traffic, "none");
    assert!(output.status.success(), "{}", stderr(&output));
    let chat = &report["endpoints"][0];
    let messages = &chat["messages"];
    assert_eq!(
        messages["same"].as_u64().unwrap() + messages["changed"].as_u64().unwrap(),
        2 * 20 + 2
    );
    for example in chat["examples"].as_array().unwrap() {
        for line in example["diff"].as_array().unwrap() {
            let line = line.as_str().unwrap();
            let (before, after) = line
                .strip_prefix("/at: ")
                .and_then(|rest| rest.split_once(" -> "))
                .unwrap_or_else(|| panic!("only /at may differ: {line}"));
            let before: i64 = before.trim_matches('"').parse().unwrap();
            let after: i64 = after.trim_matches('"').parse().unwrap();
            assert!((-1..60_000).contains(&(before - after)), "{line}");
        }
    }
}
