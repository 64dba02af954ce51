//! Quotas shared by gateway processes through a real Redis (Debian's
//! `redis-server`, started by the test on a Unix socket): a key-scoped
//! `rate-limit` and `key-limit`'s open connections per user across three
//! replicas, Redis stopped and started mid-run, a paused Redis (`CLIENT
//! PAUSE`) that must stall no message, and a password (AUTH) in the URL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use wsgate_tests::{Client, admin_http, config_text, next_data, send_text, upgrade_as};

mod common;
use common::{GatewayProcess, TempDir};

/// The quota: messages per window, shared by every connection of user `ann`.
const LIMIT: u64 = 100;
/// The quota's window.
const WINDOW: Duration = Duration::from_secs(1);
/// Clients per gateway, all `ann`.
const CLIENTS: usize = 3;
/// How long the clients offer load (a load duration, not a synchronisation).
const LOAD: Duration = Duration::from_secs(3);
/// Between two looks at a metric the test waits for, so that looking does
/// not take the CPU from the gateways.
const POLL: Duration = Duration::from_millis(10);
/// A safety net against a stalled message, not a synchronisation.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One cluster test at a time: they measure what a quota admitted.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `redis-server` on a Unix socket in `dir`, ready when started.
struct Redis {
    child: Child,
    socket: PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// Started with extra `redis-server` arguments.
    fn start_with(dir: &Path, args: &[&str]) -> Self {
        let socket = dir.join("redis.sock");
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server (scripts/setup-test-peers installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            if line.unwrap().contains("ready to accept connections") {
                break;
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, socket }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// `redis-cli` against it.
    fn cli(&self, args: &[&str]) {
        let status = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "redis-cli {args:?}");
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connections one user may hold open across the cluster on `/c`.
const PLACES: usize = 4;

/// A gateway whose `/q` limits every `x-user` to `LIMIT` messages per
/// `WINDOW` across the cluster (over it: a reply), and `/c` to `PLACES`
/// open connections, to `echo`.
fn config(echo: SocketAddr, redis: &str) -> String {
    config_text(&format!(
        "[cluster]\nredis = \"{redis}\"\nsync-interval = \"10ms\"\n\n\
         [[endpoint]]\npath = \"/q\"\nallowed-upstreams = [\"ws://{echo}\"]\n\
         upgrade = [{{ plugin = \"static-router@1.0.0\", config = {{ url = \"ws://{echo}/\" }} }}]\n\
         client-messages = [{{ plugin = \"rate-limit@1.1.0\", config = {{ scope = \"key\", key = \"${{header.x-user}}\", messages-per-second = {LIMIT}, action = \"reply\" }} }}]\n\n\
         [[endpoint]]\npath = \"/c\"\nallowed-upstreams = [\"ws://{echo}\"]\n\
         upgrade = [{{ plugin = \"key-limit@1.0.0\", config = {{ key = \"${{header.x-user}}\", max-connections = {PLACES} }} }}, \
         {{ plugin = \"static-router@1.0.0\", config = {{ url = \"ws://{echo}/\" }} }}]\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
    ))
}

/// A started gateway process and its addresses.
struct Replica {
    process: GatewayProcess,
    listen: String,
    admin: SocketAddr,
}

fn start_replicas(dir: &Path, count: usize, echo: SocketAddr, redis: &str) -> Vec<Replica> {
    (0..count)
        .map(|i| {
            let config_path = dir.join(format!("gateway-{i}.toml"));
            std::fs::write(&config_path, config(echo, redis)).unwrap();
            let process =
                GatewayProcess::start(&config_path, &dir.join(format!("gateway-{i}.log")));
            let listen = process.listen_address();
            let admin = process.admin_address();
            Replica {
                process,
                listen,
                admin,
            }
        })
        .collect()
}

async fn connect_as(listen: &str, user: &str) -> Client {
    upgrade_as(listen, "/q", user).await.unwrap()
}

/// Upgrades to `/c` as `user` on `replica` until one is refused with 429
/// because the key is full (no `Retry-After`: a refusal with one only says
/// the replica has not heard from the others yet, so it is tried again);
/// the ones admitted on the way (over-admission while views converge).
async fn admitted_until_refused(replica: &Replica, user: &str) -> Vec<Client> {
    let mut admitted = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match upgrade_as(&replica.listen, "/c", user).await {
                Ok(client) => admitted.push(client),
                Err(refused) if refused.status == 429 && refused.retry_after.is_some() => {
                    tokio::time::sleep(POLL).await;
                }
                Err(refused) => {
                    assert_eq!(refused.status, 429);
                    return;
                }
            }
        }
    })
    .await
    .expect("a full key is refused");
    admitted
}

/// Upgrades to `/c` as `user` on `replica` until one is admitted (the
/// replica has heard a place was freed).
async fn refused_until_admitted(replica: &Replica, user: &str) -> Client {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match upgrade_as(&replica.listen, "/c", user).await {
                Ok(client) => return client,
                Err(refused) => {
                    assert_eq!(refused.status, 429);
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    })
    .await
    .expect("a freed place is admitted")
}

/// One message and its answer: whether the quota admitted it (echoed) or
/// refused it (the rate-limit reply), and the round trip.
async fn round_trip(ws: &mut Client, text: &str) -> (bool, Duration) {
    let sent = Instant::now();
    send_text(ws, text).await;
    let answer = tokio::time::timeout(TIMEOUT, next_data(ws))
        .await
        .expect("a message stalled");
    let answer = answer.into_text().unwrap();
    let admitted = answer.as_str() == text;
    assert!(
        admitted || answer.contains("rate limit exceeded"),
        "unexpected answer {answer}"
    );
    (admitted, sent.elapsed())
}

/// Every client sends, for `LOAD`, as fast as its answers come or (with
/// `pace`) one message per `pace`; how many messages each admitted, and
/// every round trip.
async fn offer_load(clients: Vec<Client>, pace: Option<Duration>) -> (Vec<u64>, Vec<Duration>) {
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut ws)| {
            tokio::spawn(async move {
                let started = Instant::now();
                let (mut admitted, mut times) = (0, Vec::new());
                let mut i = 0;
                let mut ticks = pace.map(tokio::time::interval);
                while started.elapsed() < LOAD {
                    if let Some(ticks) = &mut ticks {
                        ticks.tick().await;
                    }
                    let (ok, time) = round_trip(&mut ws, &format!("c{c} m{i}")).await;
                    admitted += u64::from(ok);
                    times.push(time);
                    i += 1;
                }
                (admitted, times)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut times = Vec::new();
    for task in tasks {
        let (a, t) = task.await.unwrap();
        admitted.push(a);
        times.extend(t);
    }
    (admitted, times)
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

async fn metrics(admin: SocketAddr) -> String {
    admin_http(admin, "GET", "/metrics", None, "").await.1
}

/// Wait (on the metric, polled) until `admin`'s replica reports `value`
/// for the metric `name`.
async fn metric_becomes(admin: SocketAddr, name: &str, value: u64) {
    tokio::time::timeout(TIMEOUT, async {
        while metric(&metrics(admin).await, name) != value {
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} never became {value}"));
}

/// Wait until `admin`'s replica reports Redis `up` (1) or not (0).
async fn redis_up_becomes(admin: SocketAddr, up: u64) {
    metric_becomes(admin, "wsgate_quota_redis_up", up).await;
}

/// `n` round trips labelled `label`; prints their p50 and p99 (a figure
/// for the notes, not an assertion).
async fn timed(label: &str, ws: &mut Client, n: usize) {
    let mut times = Vec::new();
    for i in 0..n {
        times.push(round_trip(ws, &format!("{label} {i}")).await.1);
    }
    let (p50, p99) = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
    eprintln!("{label}: {n} round trips, p50 {p50:?}, p99 {p99:?}");
}

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort();
    times[((times.len() as f64 - 1.0) * p).round() as usize]
}

/// Offer `ann`'s load from `CLIENTS` clients on each replica (and check
/// `user`'s own quota is untouched); the messages each client had
/// admitted, and how many were offered.
fn run_load(
    runtime: &tokio::runtime::Runtime,
    replicas: &[Replica],
    user: &str,
    pace: Option<Duration>,
) -> (Vec<u64>, usize) {
    runtime.block_on(async {
        let mut clients = Vec::new();
        for replica in replicas {
            for _ in 0..CLIENTS {
                clients.push(connect_as(&replica.listen, user).await);
            }
        }
        // Another user's quota is their own.
        let mut bob = connect_as(&replicas[0].listen, &format!("{user}-other")).await;
        let (admitted, times) = offer_load(clients, pace).await;
        assert!(round_trip(&mut bob, "other").await.0);
        (admitted, times.len())
    })
}

/// Check what a run admitted against the bound, and print the figures.
fn check_admitted(label: &str, admitted: &[u64], offered: usize) {
    let total: u64 = admitted.iter().sum();
    // A sliding window admits at most LIMIT per fixed window: over LOAD
    // that is LIMIT × (LOAD / WINDOW + 1). Replicas racing for the last
    // units add a little (each takes only its share of what the fleet left
    // at its last reconciliation): docs/cluster.md.
    let windows = LOAD.as_secs_f64() / WINDOW.as_secs_f64();
    let ideal = LIMIT as f64 * (windows + 1.0);
    eprintln!(
        "{label}: 3 replicas × {CLIENTS} clients, quota {LIMIT}/{WINDOW:?}: {offered} messages \
         offered ({:.0}x the quota's rate), admitted {total} in {LOAD:?} (ideal at most {ideal}; \
         {:.2}x), per client {admitted:?}",
        offered as f64 / (LIMIT as f64 * windows),
        total as f64 / ideal
    );
    assert!(
        (total as f64) <= ideal * 1.25,
        "{label}: admitted {total}, over the documented bound (ideal {ideal} + 25%)"
    );
    // Not refusing everything: at least the windows that began in the run.
    assert!(
        total as f64 >= LIMIT as f64 * (windows - 1.0),
        "{label}: admitted only {total}"
    );
}

#[test]
fn three_gateways_share_a_key_scoped_quota_within_the_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new("cluster-quota");
    let redis = Redis::start(&dir.0);
    let echo = runtime.block_on(wsgate_tests::start_echo());
    let replicas = start_replicas(&dir.0, 3, echo, &redis.url());
    // 10x the quota's rate: each of the 9 clients at 10 × LIMIT / 9 per second.
    let pace = WINDOW.mul_f64(CLIENTS as f64 * 3.0 / (10.0 * LIMIT as f64));
    let (admitted, offered) = run_load(&runtime, &replicas, "ann", Some(pace));
    check_admitted("10x", &admitted, offered);
    // As fast as the clients go.
    let (admitted, offered) = run_load(&runtime, &replicas, "amy", None);
    check_admitted("saturated", &admitted, offered);
    let metrics = runtime.block_on(metrics(replicas[0].admin));
    assert_eq!(metric(&metrics, "wsgate_quota_redis_up"), 1);
    let commands = metric(&metrics, "wsgate_quota_redis_commands_total");
    eprintln!("one replica sent {commands} Redis commands in the two runs");
    assert!(commands > 0);
    for replica in replicas {
        replica.process.stop();
    }
    redis.stop();
}

#[test]
fn three_gateways_share_a_users_open_connections_within_the_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new("cluster-places");
    let redis = Redis::start(&dir.0);
    let echo = runtime.block_on(wsgate_tests::start_echo());
    let replicas = start_replicas(&dir.0, 3, echo, &redis.url());
    runtime.block_on(async {
        for replica in &replicas {
            metric_becomes(replica.admin, "wsgate_quota_replicas", 3).await;
        }
        // Ann opens her places one replica after another. A replica past
        // its share of her places refuses (429) until its next round
        // with Redis: she retries, as a client told `Retry-After` does.
        let mut open: Vec<(usize, Client)> = Vec::new();
        for i in 0..PLACES {
            let at = i % replicas.len();
            open.push((at, refused_until_admitted(&replicas[at], "ann").await));
        }
        // Full: every replica refuses her next one, once it has heard
        // from the others; the ones admitted before stay within the bound.
        let mut extra = 0;
        for (at, replica) in replicas.iter().enumerate() {
            let admitted = admitted_until_refused(replica, "ann").await;
            extra += admitted.len();
            open.extend(admitted.into_iter().map(|client| (at, client)));
        }
        eprintln!(
            "open connections per user: limit {PLACES}, admitted {} across 3 replicas",
            open.len()
        );
        assert!(
            extra < replicas.len(),
            "admitted {extra} over the limit; the bound is replicas - 1"
        );
        // Another user's places are their own.
        let _bob = upgrade_as(&replicas[2].listen, "/c", "bob").await.unwrap();
        // Ann closes connections on replica 0 until one place is free:
        // replica 1 admits her again once it hears of it.
        while open.len() >= PLACES {
            let index = open.iter().position(|(at, _)| *at == 0).unwrap_or(0);
            let (_, mut client) = open.remove(index);
            client.close(None).await.unwrap();
            while client.next().await.is_some() {}
        }
        let _again = refused_until_admitted(&replicas[1], "ann").await;
        let late = admitted_until_refused(&replicas[2], "ann").await;
        assert!(late.len() < replicas.len(), "{} over the limit", late.len());
    });
    // Every place is given back with its connection.
    runtime.block_on(async {
        for replica in &replicas {
            metric_becomes(replica.admin, "wsgate_quota_places", 0).await;
        }
    });
    for replica in replicas {
        replica.process.stop();
    }
    redis.stop();
}

#[test]
fn a_redis_outage_or_pause_stalls_no_message_and_is_reconciled() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new("cluster-outage");
    let redis = Redis::start(&dir.0);
    let url = redis.url();
    let echo = runtime.block_on(wsgate_tests::start_echo());
    let replicas = start_replicas(&dir.0, 2, echo, &url);
    let admin = replicas[0].admin;
    runtime.block_on(async {
        let mut ws = connect_as(&replicas[0].listen, "carol").await;
        redis_up_becomes(admin, 1).await;
        timed("redis running", &mut ws, 500).await;
        // A paused Redis: reconciliation waits, messages do not.
        redis.cli(&["CLIENT", "PAUSE", "3000", "ALL"]);
        timed("redis paused (CLIENT PAUSE)", &mut ws, 500).await;
        // The reconciliation waited past its timeout meanwhile.
        redis_up_becomes(admin, 0).await;
        timed("redis paused, reconciliation timed out", &mut ws, 500).await;
        redis.cli(&["CLIENT", "UNPAUSE"]);
        redis_up_becomes(admin, 1).await;
    });
    // Redis gone: quotas count locally, a gauge says so, nothing stalls.
    redis.stop();
    runtime.block_on(async {
        let mut ws = connect_as(&replicas[0].listen, "dave").await;
        for i in 0..50 {
            round_trip(&mut ws, &format!("outage {i}")).await;
        }
        redis_up_becomes(admin, 0).await;
        for i in 0..50 {
            round_trip(&mut ws, &format!("still {i}")).await;
        }
    });
    // Redis back on the same socket: reconciled.
    let redis = Redis::start(&dir.0);
    runtime.block_on(async {
        let mut ws = connect_as(&replicas[0].listen, "erin").await;
        round_trip(&mut ws, "back").await;
        redis_up_becomes(admin, 1).await;
        let metrics = metrics(admin).await;
        assert!(metric(&metrics, "wsgate_quota_sync_errors_total") > 0);
    });
    for replica in replicas {
        replica.process.stop();
    }
    redis.stop();
}

#[test]
fn a_redis_with_a_password_is_reached_with_it_in_the_url_and_refused_with_a_wrong_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new("cluster-auth");
    let redis = Redis::start_with(&dir.0, &["--requirepass", "s3cret"]);
    let echo = runtime.block_on(wsgate_tests::start_echo());
    let good_dir = dir.0.join("good");
    let bad_dir = dir.0.join("bad");
    std::fs::create_dir_all(&good_dir).unwrap();
    std::fs::create_dir_all(&bad_dir).unwrap();
    let good = start_replicas(&good_dir, 1, echo, &format!("{}?pass=s3cret", redis.url()));
    let bad = start_replicas(&bad_dir, 1, echo, &format!("{}?pass=wrong", redis.url()));
    runtime.block_on(async {
        let mut ws = connect_as(&good[0].listen, "fay").await;
        assert!(round_trip(&mut ws, "with the password").await.0);
        // Reached: commands sent, none failed.
        tokio::time::timeout(TIMEOUT, async {
            while metric(
                &metrics(good[0].admin).await,
                "wsgate_quota_redis_commands_total",
            ) == 0
            {
                tokio::time::sleep(POLL).await;
            }
        })
        .await
        .expect("the replica with the password reconciles");
        // The wrong password: Redis refuses it, quotas count locally, the
        // gauge and the error counter say so, messages flow.
        let mut ws = connect_as(&bad[0].listen, "fay").await;
        assert!(round_trip(&mut ws, "without it").await.0);
        redis_up_becomes(bad[0].admin, 0).await;
        let refused = metrics(bad[0].admin).await;
        assert!(metric(&refused, "wsgate_quota_sync_errors_total") > 0);
        let reached = metrics(good[0].admin).await;
        assert_eq!(metric(&reached, "wsgate_quota_redis_up"), 1);
        assert_eq!(metric(&reached, "wsgate_quota_sync_errors_total"), 0);
        assert!(metric(&reached, "wsgate_quota_redis_commands_total") > 0);
    });
    for replica in good.into_iter().chain(bad) {
        replica.process.stop();
    }
    redis.stop();
}
