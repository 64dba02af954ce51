//! Hostile plugins against the host's budgets, on the real binary: each case
//! runs a gateway process of its own (its peak RSS only rises), attacks it
//! from 8 connections through `test-faults` while a healthy client echoes
//! on another endpoint, and measures the process's peak RSS (VmHWM), its log
//! and its fault counters. A plugin that legally spends 20 ms of CPU on every
//! call (`slow`) is offloaded, and shed once its offload queue is full,
//! while the healthy client's traffic flows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wsgate_tests::{Client, admin_http, config_text, endpoint, next_data, plugin_path, send_text};

mod common;
use common::{GatewayProcess as Gateway, TempDir};

/// Attacking connections per case.
const ATTACKERS: usize = 8;
/// Times each attacking connection sends the command.
const ROUNDS: usize = 4;
/// Echo round trips of the healthy client during the attack.
const HEALTHY_ROUND_TRIPS: usize = 200;
/// Most the gateway's peak RSS may grow under an attack.
const MAX_GROWTH_KIB: u64 = 100 << 10;
/// Most log an attack may produce.
const MAX_LOG_BYTES: u64 = 16 << 20;
/// A safety net against a hung gateway, not a synchronisation.
const TIMEOUT: Duration = Duration::from_secs(120);

/// One case at a time: each measures a process of its own, and a 4 MiB
/// `log-giant` copy under a 2 s deadline should not compete for the CPU
/// with another case's gateway.
static SERIAL: Mutex<()> = Mutex::new(());

/// The gateway's configuration: `faults` with default host budgets on
/// `/hostile` (fail open: the attacking connection stays open), nothing on
/// `/healthy`, both to `echo`; the admin listener on port 0.
fn config(echo: SocketAddr) -> String {
    let faults = format!(
        "[[plugin]]\nname = \"faults\"\nversion = \"1.0.0\"\npath = \"{}\"\n\
         grants = [\"log\", \"clocks\", \"state\"]\ndeadline = \"2s\"\n\n",
        plugin_path("test-faults").display()
    );
    config_text(
        &(faults
            + &endpoint(
                "/hostile",
                echo,
                "client-messages = [{ plugin = \"faults@1.0.0\", fail = \"open\" }]",
            )
            + &endpoint("/healthy", echo, "")
            + "[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
}

async fn connect(url: &str) -> Client {
    tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
        .0
}

/// The next text message.
async fn next(ws: &mut Client) -> String {
    match next_data(ws).await {
        tokio_tungstenite::tungstenite::Message::Text(text) => text.as_str().to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Send `command` `ROUNDS` times, each time until it comes back (fail
/// open: the faulting plugin is skipped and the echo answers); the
/// connection, still open, and how many other messages came.
async fn attack(mut ws: Client, command: String) -> (Client, usize) {
    let mut others = 0;
    for _ in 0..ROUNDS {
        send_text(&mut ws, &command).await;
        while next(&mut ws).await != command {
            others += 1;
        }
    }
    (ws, others)
}

/// Start [`attack`] with `command` from every connection in `attackers`.
fn spawn_attacks(
    attackers: Vec<Client>,
    command: &str,
) -> Vec<tokio::task::JoinHandle<(Client, usize)>> {
    attackers
        .into_iter()
        .map(|ws| tokio::spawn(attack(ws, command.to_string())))
        .collect()
}

/// Wait for every attack: the connections, still open, and how many other
/// messages came to them.
async fn join_attacks(
    attacks: Vec<tokio::task::JoinHandle<(Client, usize)>>,
) -> (Vec<Client>, usize) {
    let mut open = Vec::new();
    let mut others = 0;
    for task in attacks {
        let (ws, other) = task.await.unwrap();
        open.push(ws);
        others += other;
    }
    (open, others)
}

/// `HEALTHY_ROUND_TRIPS` echo round trips, each answered unchanged; the
/// connection and the slowest round trip.
async fn healthy_traffic(mut ws: Client) -> (Client, Duration) {
    let mut slowest = Duration::ZERO;
    for i in 0..HEALTHY_ROUND_TRIPS {
        let text = format!("healthy {i} {}", "h".repeat(i));
        let sent = Instant::now();
        send_text(&mut ws, &text).await;
        assert_eq!(next(&mut ws).await, text, "healthy round trip {i}");
        slowest = slowest.max(sent.elapsed());
    }
    (ws, slowest)
}

/// The samples of metric `name` for `faults@1.0.0`, summed over its pools
/// and grouped by the value of `label` (`""`: all together).
fn samples(metrics: &str, name: &str, label: &str) -> Vec<(String, u64)> {
    samples_of(metrics, "faults@1.0.0", name, label)
}

/// [`samples`] of `plugin`.
fn samples_of(metrics: &str, plugin: &str, name: &str, label: &str) -> Vec<(String, u64)> {
    let plugin_label = format!("plugin=\"{plugin}\"");
    let mut groups: Vec<(String, u64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        if !rest.contains(&plugin_label) {
            continue;
        }
        let group = rest
            .split(&format!("{label}=\""))
            .nth(1)
            .filter(|_| !label.is_empty())
            .map_or("", |v| v.split('"').next().unwrap());
        let value: u64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        match groups.iter_mut().find(|(g, _)| g == group) {
            Some((_, total)) => *total += value,
            None => groups.push((group.to_string(), value)),
        }
    }
    assert!(!groups.is_empty(), "no {name} for {plugin}:\n{metrics}");
    groups
}

/// What an attack left: the connections, still open, and its figures.
struct Outcome {
    open: Vec<Client>,
    others: usize,
    attack_time: Duration,
    healthy_time: Duration,
    slowest: Duration,
    metrics: String,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Run `command` from `ATTACKERS` connections against a fresh gateway while
/// a healthy client echoes; `fault` is the kind the attack must be counted
/// as (`None`: no fault at all).
fn hostile(command: &str, fault: Option<&str>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(wsgate_tests::start_echo());
    let dir = TempDir::new(command);
    let dir = &dir.0;
    let config_path = dir.join("host-config.toml");
    std::fs::write(&config_path, config(echo)).unwrap();
    let log: PathBuf = dir.join("gateway.log");

    let gateway = Gateway::start(&config_path, &log);
    let listen = gateway.wait_for("wsgate listening on");
    let listen = listen.rsplit(' ').next().unwrap().to_string();
    let admin = gateway.wait_for("admin listening on http://");
    let admin: SocketAddr = admin.rsplit("http://").next().unwrap().parse().unwrap();

    // Connect everyone, one warm-up round trip per endpoint, then the baseline.
    let (healthy, attackers) = runtime.block_on(async {
        let mut healthy = connect(&format!("ws://{listen}/healthy")).await;
        let mut attackers = Vec::new();
        for _ in 0..ATTACKERS {
            attackers.push(connect(&format!("ws://{listen}/hostile")).await);
        }
        send_text(&mut healthy, "warm-up").await;
        assert_eq!(next(&mut healthy).await, "warm-up");
        send_text(&mut attackers[0], "warm-up").await;
        assert_eq!(next(&mut attackers[0]).await, "warm-up");
        (healthy, attackers)
    });
    let before = gateway.vm_hwm_kib();

    // The attack, and the healthy traffic at the same time.
    let attack_started = Instant::now();
    let outcome = runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, async {
            let attacks = spawn_attacks(attackers, command);
            let healthy = tokio::spawn(async move {
                let result = healthy_traffic(healthy).await;
                (result, attack_started.elapsed())
            });
            let (mut open, others) = join_attacks(attacks).await;
            let attack_time = attack_started.elapsed();
            let ((ws, slowest), healthy_time) = healthy.await.unwrap();
            open.push(ws);
            let (status, metrics) = admin_http(admin, "GET", "/metrics", None, "").await;
            assert_eq!(status, 200, "{metrics}");
            Outcome {
                open,
                others,
                attack_time,
                healthy_time,
                slowest,
                metrics,
            }
        })
        .await
        .expect("the attack and the healthy traffic finish")
    });
    // Measured while the attacking connections still hold what they stored.
    let after = gateway.vm_hwm_kib();
    let Outcome {
        open,
        others,
        attack_time,
        healthy_time,
        slowest,
        metrics,
    } = outcome;

    runtime.block_on(async {
        for mut ws in open {
            let _ = ws.close(None).await;
        }
    });
    gateway.stop();
    let log_bytes = std::fs::metadata(&log).unwrap().len();
    let faults = samples(&metrics, "wsgate_plugin_faults_total", "kind");
    let dropped = samples(&metrics, "wsgate_plugin_log_lines_dropped_total", "")[0].1;
    let state_held = samples(&metrics, "wsgate_plugin_host_state_bytes", "")[0].1;
    let log_text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    let cut_lines = log_text.matches(" bytes cut]").count();
    let growth = after.saturating_sub(before);
    eprintln!(
        "hostile-host {command}: VmHWM {:.0} -> {:.0} MiB (+{:.1}), log {:.2} MiB ({cut_lines} lines cut, \
         {dropped} dropped), state held {state_held} B, faults {faults:?}; attack {attack_time:.2?}, healthy {HEALTHY_ROUND_TRIPS} \
         round trips in {healthy_time:.2?} (slowest {slowest:.2?}); case {:.2?}",
        mib(before),
        mib(after),
        mib(growth),
        log_bytes as f64 / f64::from(1 << 20),
        started.elapsed(),
    );

    assert_eq!(
        others, 0,
        "{command}: the attackers got {others} messages besides their echoes"
    );
    match fault {
        Some(kind) => {
            let count = faults
                .iter()
                .find(|(k, _)| k == kind)
                .map_or(0, |(_, n)| *n);
            assert!(count > 0, "{command}: no {kind} fault counted: {faults:?}");
        }
        None => assert!(
            faults.iter().all(|(_, n)| *n == 0),
            "{command}: faults counted: {faults:?}"
        ),
    }
    if command == "log-giant" {
        assert!(cut_lines > 0, "{command}: no line cut and marked");
    }
    assert!(
        growth < MAX_GROWTH_KIB,
        "{command}: VmHWM grew by {:.1} MiB ({before} -> {after} KiB)",
        mib(growth)
    );
    assert!(
        log_bytes < MAX_LOG_BYTES,
        "{command}: {log_bytes} bytes of log"
    );
}

#[test]
fn state_flood_is_a_budget_fault_and_the_gateway_stays_small() {
    hostile("state-flood", Some("budget"));
}

#[test]
fn state_keys_is_a_budget_fault_and_the_gateway_stays_small() {
    hostile("state-keys", Some("budget"));
}

#[test]
fn attribute_flood_is_a_budget_fault_and_the_gateway_stays_small() {
    hostile("attribute-flood", Some("budget"));
}

#[test]
fn log_giant_is_cut_and_rate_limited_without_a_fault() {
    hostile("log-giant", None);
}

#[test]
fn fan_out_is_an_output_fault_and_the_gateway_stays_small() {
    hostile("fan-out", Some("output"));
}

/// `test-faults` twice, as `faults` with the default offload settings on
/// `/slow` and as `tight` with one offload thread and no queue on
/// `/tight`, both fail open; nothing on `/healthy`; all to `echo`. Their
/// deadline is far from `slow`'s 20 ms, so a busy machine delaying the
/// lower-priority offload threads cannot turn a call into a deadline fault.
fn slow_config(echo: SocketAddr) -> String {
    let path = plugin_path("test-faults");
    let declare = |name: &str, extra: &str| {
        format!(
            "[[plugin]]\nname = \"{name}\"\nversion = \"1.0.0\"\npath = \"{}\"\n\
             grants = [\"log\", \"clocks\", \"state\"]\ndeadline = \"2s\"\n{extra}\n",
            path.display()
        )
    };
    let chain = |name: &str| {
        format!("client-messages = [{{ plugin = \"{name}@1.0.0\", fail = \"open\" }}]")
    };
    config_text(
        &(declare("faults", "")
            + &declare("tight", "offload-threads = 1\noffload-queue = 0\n")
            + &endpoint("/slow", echo, &chain("faults"))
            + &endpoint("/tight", echo, &chain("tight"))
            + &endpoint("/healthy", echo, "")
            + "[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
}

/// `ATTACKERS` connections to `url`.
async fn connect_all(url: &str) -> Vec<Client> {
    let mut all = Vec::new();
    for _ in 0..ATTACKERS {
        all.push(connect(url).await);
    }
    all
}

/// `attack` from every connection in `attackers` at once, beside
/// `healthy_traffic` on `healthy`; the connections, the messages that came
/// besides the echoes, and the metrics after.
async fn slow_round(
    attackers: Vec<Client>,
    healthy: Client,
    admin: SocketAddr,
) -> (Vec<Client>, Client, usize, String) {
    let attacks = spawn_attacks(attackers, "slow");
    let healthy = tokio::spawn(healthy_traffic(healthy));
    let (open, others) = join_attacks(attacks).await;
    let (healthy, _) = healthy.await.unwrap();
    let (status, metrics) = admin_http(admin, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200, "{metrics}");
    (open, healthy, others, metrics)
}

/// The one sample of `name` for `plugin` (summed over its pools).
fn total(metrics: &str, plugin: &str, name: &str) -> u64 {
    samples_of(metrics, plugin, name, "")[0].1
}

/// A plugin that spends 20 ms of CPU on every call, well inside its
/// deadline, from 8 connections: its calls leave the I/O workers for its
/// offload threads and all complete; with no queue (`tight`), calls that
/// find its one thread busy are shed (fault kind `shed`, fail open: the
/// message goes on unfiltered). The healthy endpoint's echoes flow
/// throughout. Latency is measured by `crates/bench/slow_plugin.py`, not
/// asserted here.
#[test]
fn a_slow_plugin_is_offloaded_then_shed_and_healthy_traffic_flows() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(wsgate_tests::start_echo());
    let dir = TempDir::new("slow");
    let dir = &dir.0;
    let config_path = dir.join("host-config.toml");
    std::fs::write(&config_path, slow_config(echo)).unwrap();
    let gateway = Gateway::start(&config_path, &dir.join("gateway.log"));
    let listen = gateway.wait_for("wsgate listening on");
    let listen = listen.rsplit(' ').next().unwrap().to_string();
    let admin = gateway.wait_for("admin listening on http://");
    let admin: SocketAddr = admin.rsplit("http://").next().unwrap().parse().unwrap();

    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, async {
            let mut healthy = connect(&format!("ws://{listen}/healthy")).await;
            send_text(&mut healthy, "warm-up").await;
            assert_eq!(next(&mut healthy).await, "warm-up");

            // Default settings: 2 threads and a queue of 64 hold all 8
            // connections' calls; every one completes, none is shed.
            let slow = connect_all(&format!("ws://{listen}/slow")).await;
            let (slow, healthy, others, metrics) = slow_round(slow, healthy, admin).await;
            assert_eq!(others, 0, "the slow connections got other messages");
            let sent = (ATTACKERS * ROUNDS) as u64;
            assert_eq!(total(&metrics, "faults@1.0.0", "wsgate_plugin_calls_total"), sent);
            let offloaded = total(&metrics, "faults@1.0.0", "wsgate_plugin_offloaded_calls_total");
            assert!(offloaded > 0, "no call offloaded:\n{metrics}");
            let faults = samples_of(&metrics, "faults@1.0.0", "wsgate_plugin_faults_total", "kind");
            assert!(faults.iter().all(|(_, n)| *n == 0), "faults: {faults:?}");
            assert_eq!(total(&metrics, "faults@1.0.0", "wsgate_plugin_offloading"), 1);
            gateway.wait_for("offload threads started");

            // One thread, no queue: rounds until a call is shed (8 calls
            // racing for one thread; the timeout is the safety net).
            let mut tight = connect_all(&format!("ws://{listen}/tight")).await;
            let mut healthy = healthy;
            let mut rounds = 0u64;
            let metrics = loop {
                let (open, back, others, metrics) = slow_round(tight, healthy, admin).await;
                assert_eq!(others, 0, "the tight connections got other messages");
                (tight, healthy, rounds) = (open, back, rounds + 1);
                let shed = samples_of(&metrics, "tight@1.0.0", "wsgate_plugin_faults_total", "kind");
                if shed.iter().any(|(kind, n)| kind == "shed" && *n > 0) {
                    break metrics;
                }
            };
            let faults = samples_of(&metrics, "tight@1.0.0", "wsgate_plugin_faults_total", "kind");
            let shed = faults.iter().find(|(k, _)| k == "shed").map_or(0, |(_, n)| *n);
            assert!(
                faults.iter().all(|(k, n)| k == "shed" || *n == 0),
                "faults besides shed: {faults:?}"
            );
            // Every message either ran (a call) or was shed (not a call).
            let calls = total(&metrics, "tight@1.0.0", "wsgate_plugin_calls_total");
            assert_eq!(calls + shed, rounds * sent, "calls {calls}, shed {shed}");
            assert!(total(&metrics, "tight@1.0.0", "wsgate_plugin_offloaded_calls_total") > 0);
            eprintln!("slow plugin: faults@1.0.0 {offloaded} of {sent} calls offloaded; tight@1.0.0 {calls} calls, {shed} shed in {rounds} rounds");

            for mut ws in slow.into_iter().chain(tight).chain([healthy]) {
                let _ = ws.close(None).await;
            }
        })
        .await
        .expect("the slow traffic and the healthy traffic finish");
    });
    gateway.stop();
}
