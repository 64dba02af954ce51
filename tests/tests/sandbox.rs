//! The sandbox: capability grants, no ambient access, output and log
//! budgets, and hostile plugins under concurrent load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::atomic::Ordering::Relaxed;

use wsgate_tests::*;

/// test-faults declared with its own budget and grants.
fn faults_block(extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"faults\"\nversion = \"1.0.0\"\npath = \"{}\"\n{extra}\n\n",
        plugin_path("test-faults").display()
    )
}

#[tokio::test]
async fn a_plugin_importing_an_ungranted_capability_is_refused_naming_it() {
    let text = config_text(&format!(
        "[[plugin]]\nname = \"transform\"\nversion = \"1.0.0\"\npath = \"{}\"\ngrants = [\"state\", \"clocks\"]\n\n",
        plugin_path("json-transform").display()
    ));
    let errors = wsgate_proxy::Generation::build(0, parse_config(&text), runtime())
        .err()
        .unwrap()
        .0;
    assert_eq!(errors[0].field, "plugin[0].path");
    let message = &errors[0].message;
    assert!(
        message.contains("transform@1.0.0")
            && message.contains("wsgate:plugin/context@0.2.0")
            && message.contains("`context` capability"),
        "{message}"
    );
}

#[tokio::test]
async fn a_plugin_cannot_reach_files_environment_network_or_other_connections() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(faults_block("grants = [\"state\", \"log\", \"clocks\"]")
            + &endpoint(
                "/p",
                echo,
                "client-messages = [{ plugin = \"faults@1.0.0\" }]",
            )),
    )
    .await;
    // Files and sockets are not linked: the attempt traps, the call fails
    // closed (1011), and the fault is counted.
    for probe in ["probe-file", "probe-network"] {
        let mut client = connect(&gateway, "/p").await;
        send_text(&mut client, probe).await;
        assert_eq!(expect_close(&mut client).await.0, 1011, "{probe}");
    }
    let generation = gateway.generation();
    assert_eq!(generation.pools[0].stats().trap_faults.load(Relaxed), 2);
    // The environment is empty.
    let mut first = connect(&gateway, "/p").await;
    send_text(&mut first, "probe-env").await;
    assert_eq!(next_text(&mut first).await, r#"{"env":false}"#);
    // State stored on one connection is invisible on another, though the
    // same pooled instance serves both.
    send_text(&mut first, "probe-state").await;
    assert_eq!(next_text(&mut first).await, r#"{"state":false}"#);
    let mut second = connect(&gateway, "/p").await;
    send_text(&mut second, "probe-state").await;
    assert_eq!(next_text(&mut second).await, r#"{"state":false}"#);
    send_text(&mut first, "probe-state").await;
    assert_eq!(next_text(&mut first).await, r#"{"state":true}"#);
    assert_eq!(
        generation.pools[0].stats().instances_created.load(Relaxed),
        3
    );
}

#[tokio::test]
async fn output_and_log_budgets_hold() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(faults_block(
            // A deadline no busy machine reaches: a 4 MiB verdict or 10,000
            // log lines must be told by their budget, never by the clock
            // (the plugin is slow, so its calls run offloaded, at a lower
            // priority, where a busy machine can delay them).
            "grants = [\"log\", \"clocks\", \"state\"]\nmemory-limit = \"256MiB\"\nmax-output = \"1MiB\"\nlog-rate = 10\ndeadline = \"5s\"",
        ) + &endpoint("/b", echo, "client-messages = [{ plugin = \"faults@1.0.0\" }]")),
    )
    .await;
    let mut flooder = connect(&gateway, "/b").await;
    send_text(&mut flooder, "log-flood").await;
    assert_eq!(next_text(&mut flooder).await, "log-flood");
    let mut giant = connect(&gateway, "/b").await;
    send_text(&mut giant, "giant").await;
    assert_eq!(expect_close(&mut giant).await.0, 1011);
    let generation = gateway.generation();
    let stats = generation.pools[0].stats();
    assert_eq!(stats.output_faults.load(Relaxed), 1);
    let dropped = stats.log_lines_dropped.load(Relaxed);
    assert!(
        dropped > 9_900,
        "only {dropped} of 10000 lines dropped at 10 lines/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_hurt_only_their_own_connections_under_load() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(faults_block(
            // `loop` must meet the deadline; `slow` and `giant` must not, even
            // offloaded at a lower priority on a machine busy with other tests.
            "grants = [\"log\", \"clocks\", \"state\"]\nmemory-limit = \"128MiB\"\nmax-output = \"1MiB\"\nlog-rate = 50\ndeadline = \"2s\"",
        ) + &endpoint("/h", echo, "client-messages = [{ plugin = \"faults@1.0.0\" }]")),
    )
    .await;
    // Healthy connections keep sending through the same plugin (same pool).
    let healthy: Vec<_> = (0..6)
        .map(|i| {
            let url = format!("ws://{}/h", gateway.local_addr());
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                for n in 0..40 {
                    let text = format!("healthy-{i}-{n}");
                    send_text(&mut ws, &text).await;
                    assert_eq!(next_text(&mut ws).await, text);
                }
                ws
            })
        })
        .collect();
    // Meanwhile, every kind of hostile message, twice, each on its own connection.
    let hostile = ["trap", "loop", "alloc", "giant", "log-flood", "slow"];
    let attacks: Vec<_> = hostile
        .iter()
        .chain(hostile.iter())
        .map(|attack| {
            let url = format!("ws://{}/h", gateway.local_addr());
            let attack = attack.to_string();
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                send_text(&mut ws, &attack).await;
                match attack.as_str() {
                    // Legal, if antisocial: served normally.
                    "log-flood" | "slow" => {
                        assert_eq!(next_text(&mut ws).await, attack);
                    }
                    _ => assert_eq!(expect_close(&mut ws).await.0, 1011, "{attack}"),
                }
            })
        })
        .collect();
    for attack in attacks {
        attack.await.unwrap();
    }
    let mut survivors = Vec::new();
    for connection in healthy {
        survivors.push(connection.await.unwrap());
    }
    // Every healthy connection is still open and served.
    for ws in &mut survivors {
        send_text(ws, "still here").await;
        assert_eq!(next_text(ws).await, "still here");
    }
    gateway.wait_for_connections(6).await;
    assert_eq!(gateway.active_connections(), 6);
    let generation = gateway.generation();
    let stats = generation.pools[0].stats();
    assert_eq!(stats.trap_faults.load(Relaxed), 2);
    assert_eq!(stats.deadline_faults.load(Relaxed), 2);
    assert_eq!(stats.memory_faults.load(Relaxed), 2);
    assert_eq!(stats.output_faults.load(Relaxed), 2);
    assert!(stats.log_lines_dropped.load(Relaxed) > 0);
}

/// An endpoint whose message chain is `faults@1.0.0` with fail policy `fail`.
fn faults_endpoint(path: &str, upstream: std::net::SocketAddr, fail: &str) -> String {
    endpoint(
        path,
        upstream,
        &format!("client-messages = [{{ plugin = \"faults@1.0.0\", fail = \"{fail}\" }}]"),
    )
}

#[tokio::test]
async fn state_budgets_fault_the_call_and_what_was_stored_stays_within_them() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(faults_block(
            "grants = [\"log\", \"clocks\", \"state\"]\nmax-state = \"5MiB\"\nmax-state-total = \"6MiB\"\nmax-state-keys = 100\ndeadline = \"5s\"",
        ) + &faults_endpoint("/s", echo, "open")),
    )
    .await;
    let generation = gateway.generation();
    let plugin = generation
        .plugins
        .iter()
        .find(|p| p.id() == "faults@1.0.0")
        .unwrap();
    let stats = generation.pools[0].stats();
    // 1 MiB values until refused: four fit in 5 MiB per connection; the
    // fifth faults the call (fail open: the message goes on), and the four
    // stay stored.
    let mut first = connect(&gateway, "/s").await;
    send_text(&mut first, "state-flood").await;
    assert_eq!(next_text(&mut first).await, "state-flood");
    assert_eq!(stats.budget_faults.load(Relaxed), 1);
    let four = 4 * ((1 << 20) + "flood-0".len());
    assert_eq!(plugin.state_held(), four);
    // A second connection meets the plugin's total across connections.
    let mut second = connect(&gateway, "/s").await;
    send_text(&mut second, "state-flood").await;
    assert_eq!(next_text(&mut second).await, "state-flood");
    assert_eq!(stats.budget_faults.load(Relaxed), 2);
    let held = plugin.state_held();
    assert!(held > four && held <= 6 << 20, "{held}");
    // Many small keys: the key budget.
    let mut third = connect(&gateway, "/s").await;
    send_text(&mut third, "state-keys").await;
    assert_eq!(next_text(&mut third).await, "state-keys");
    assert_eq!(stats.budget_faults.load(Relaxed), 3);
    // Connections that end give their state back.
    drop((first, second, third));
    gateway.wait_for_connections(0).await;
    assert_eq!(plugin.state_held(), 0);
}

#[tokio::test]
async fn attribute_log_and_fan_out_budgets_hold() {
    let echo = start_echo().await;
    let gateway = start_gateway(
        &(faults_block(
            "grants = [\"log\", \"clocks\", \"state\"]\nmax-log-line = \"1KiB\"\nlog-bytes-rate = \"1MiB\"\ndeadline = \"5s\"",
        ) + &faults_endpoint("/a", echo, "closed")),
    )
    .await;
    let generation = gateway.generation();
    let stats = generation.pools[0].stats();
    // A 1 MiB attribute value is over max-attribute-value (4 KiB): the call
    // faults, fail closed.
    let mut client = connect(&gateway, "/a").await;
    send_text(&mut client, "attribute-flood").await;
    assert_eq!(expect_close(&mut client).await.0, 1011);
    assert_eq!(stats.budget_faults.load(Relaxed), 1);
    // 100,000 messages in one reply are over max-messages (64).
    let mut client = connect(&gateway, "/a").await;
    send_text(&mut client, "fan-out").await;
    assert_eq!(expect_close(&mut client).await.0, 1011);
    assert_eq!(stats.output_faults.load(Relaxed), 1);
    // 100 lines of 4 MiB are cut to 1 KiB each, which fits the byte rate:
    // none is dropped, and the call is no fault.
    let mut client = connect(&gateway, "/a").await;
    send_text(&mut client, "log-giant").await;
    assert_eq!(next_text(&mut client).await, "log-giant");
    assert_eq!(stats.log_lines_dropped.load(Relaxed), 0);
    assert_eq!(stats.faults(), 2);
}
