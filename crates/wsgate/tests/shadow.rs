//! Shadow generations over real sockets: a candidate (`wsgate deploy
//! --shadow`) sees every sampled connection's upgrade and messages, its
//! verdicts are compared and never applied: the clients receive exactly
//! what the serving generation sends, while `GET /api/shadow` and
//! `/metrics` count what the candidate would have changed; a faulting
//! candidate harms nothing; `wsgate deploy --promote` makes it serve.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use wsgate_tests::*;

mod common;
use common::{TIMEOUT, TempDir, stderr, wsgate};

/// Messages each client sends.
const MESSAGES: usize = 10;
/// Between two looks at the shadow's counts (it works off the serving path).
const POLL: Duration = Duration::from_millis(20);

fn config(echo: SocketAddr, chain: &str) -> String {
    config_text(&endpoint(
        "/chat",
        echo,
        &format!("client-messages = [{chain}]"),
    ))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `wsgate deploy --admin <admin> --config <config> <extra>`, which must succeed.
fn deploy(admin: SocketAddr, config: &Path, extra: &[&str]) -> String {
    let output = wsgate()
        .args(["deploy", "--admin", &admin.to_string(), "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    stderr(&output)
}

/// One client: `texts` sent, each echo checked to carry `stamp`; a clean close.
async fn converse(gateway: &wsgate_proxy::Gateway, texts: &[String], stamp: &str) {
    let mut client = connect(gateway, "/chat").await;
    for text in texts {
        send_text(&mut client, text).await;
        let echoed = next_text(&mut client).await;
        assert_eq!(
            echoed,
            format!("{text}{stamp}"),
            "the client got what the serving generation sends"
        );
    }
    client.close(None).await.unwrap();
    while let Some(Ok(_)) = client.next().await {}
}

/// `GET /api/shadow` until `done` says its answer is complete.
async fn shadow_until(
    admin: SocketAddr,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let status = admin_json(admin, "/api/shadow").await;
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the shadow never got there: {status}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_compares_without_touching_what_clients_get_and_is_promoted() {
    let dir = TempDir::new("shadow");
    let echo = start_echo().await;
    let gateway = start_gateway(&tagged_endpoint("/chat", echo, "1.0.0")).await;
    let (admin, _stop) = start_admin(&gateway, None).await;
    let texts: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();

    // tagger 2.0.0 in the shadow of 1.0.0, on every connection.
    let next = write(
        &dir.0,
        "next.toml",
        &config(echo, "{ plugin = \"tagger@2.0.0\" }"),
    );
    let said = deploy(admin, &next, &["--shadow"]);
    assert!(said.contains("runs in the shadow"), "{said}");
    assert_eq!(
        gateway.generation().id,
        1,
        "the serving generation is untouched"
    );
    for _ in 0..3 {
        converse(&gateway, &texts, "+v1.0.0").await;
    }
    // Per connection: its messages changed; their echoes (no upstream
    // chain) and both closes the same.
    let status = shadow_until(admin, |s| {
        s["endpoints"]["/chat"]["same"].as_u64().unwrap_or(0) == 3 * (MESSAGES as u64 + 2)
    })
    .await;
    let chat = &status["endpoints"]["/chat"];
    assert_eq!(chat["changed"], 3 * MESSAGES, "{status}");
    assert_eq!(chat["dropped"], 0);
    assert_eq!(status["connections"], 3);
    assert_eq!(status["dropped"], 0);
    let example = &status["examples"][0]["message"];
    assert_eq!(
        example["recorded"]["forward"][0]["data"], "m0+v1.0.0",
        "{example}"
    );
    assert_eq!(
        example["candidate"]["forward"][0]["data"], "m0+v2.0.0",
        "{example}"
    );
    // Both chains are timed for the same sample of messages: an example
    // has both times or neither.
    for example in status["examples"].as_array().unwrap() {
        let message = &example["message"];
        assert_eq!(
            message["recorded_us"].is_u64(),
            message["candidate_us"].is_u64(),
            "{example}"
        );
    }
    let (_, metrics) = admin_http(admin, "GET", "/metrics", None, "").await;
    assert!(
        metrics.contains(&format!(
            "wsgate_shadow_messages_total{{endpoint=\"/chat\",result=\"changed\"}} {}",
            3 * MESSAGES
        )),
        "{metrics}"
    );

    // A candidate that traps (and, fail = "closed", would close) and runs
    // into its deadline: the clients see nothing of it.
    let faulty = write(
        &dir.0,
        "faulty.toml",
        &config(
            echo,
            "{ plugin = \"test-faults@0.1.0\", fail = \"closed\" }, { plugin = \"tagger@1.0.0\" }",
        ),
    );
    deploy(admin, &faulty, &["--shadow", "--sample", "0.5"]);
    let hostile: Vec<String> = ["hello", "trap", "after"].map(String::from).to_vec();
    let looping: Vec<String> = ["loop", "still here"].map(String::from).to_vec();
    converse(&gateway, &hostile, "+v1.0.0").await;
    converse(&gateway, &texts, "+v1.0.0").await;
    converse(&gateway, &looping, "+v1.0.0").await;
    // The deadline fault is counted inside the call, the close it makes
    // when the candidate's chain returns: wait for both.
    let status = shadow_until(admin, |s| {
        s["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["faults"]["deadline"] == 1)
            && s["endpoints"]["/chat"]["closed"].as_u64() >= Some(2)
    })
    .await;
    // Every second connection sampled: the first and the third.
    assert_eq!(status["connections"], 2, "{status}");
    let chat = &status["endpoints"]["/chat"];
    assert_eq!(
        chat["closed"], 2,
        "the trap and the loop would have closed: {status}"
    );
    let faults = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"] == "test-faults@0.1.0")
        .unwrap();
    assert_eq!(faults["faults"]["trap"], 1, "{faults}");

    // Promote tagger 2.0.0 through the shadow: new connections get it.
    deploy(admin, &next, &["--shadow"]);
    let said = deploy(admin, &next, &["--promote"]);
    assert!(said.contains("promoted the shadow"), "{said}");
    assert!(gateway.generation().id > 1);
    converse(&gateway, &texts, "+v2.0.0").await;
    let (status, _) = admin_http(admin, "GET", "/api/shadow", None, "").await;
    assert_eq!(status, 404, "the promoted shadow is gone");
}
