//! `/metrics` checked by Prometheus's own tools (Debian's `prometheus`):
//! `promtool check metrics` on a real scrape taken under traffic, every
//! family documented in docs/metrics.md and none undocumented, every metric
//! the Grafana dashboard and the alerting rules query present; and a real
//! Prometheus scraping the gateway answers a PromQL query of the message
//! rate per endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wsgate_tests::*;

mod common;
use common::{TIMEOUT, TempDir};

const TOKEN: &str = "metrics-test-token";
/// Between two questions to Prometheus while waiting for its answer.
const POLL: Duration = Duration::from_millis(200);

/// Every `wsgate_…` family a scrape declares (`# TYPE` lines).
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| rest.split(' ').next().unwrap().to_string())
        .collect()
}

/// Every `wsgate_…` name `text` mentions, a histogram's series suffixes
/// taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("wsgate_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        rest = &rest[start + name.len()..];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name)
            .to_string();
        names.insert(name);
    }
    names
}

/// The TCP port process `pid` listens on (it was told port 0).
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local_address, state (0A: LISTEN), inode.
        let listening = fields.get(3) == Some(&"0A");
        let inode = fields.get(9)?;
        if !listening || !inodes.contains(*inode) {
            return None;
        }
        let port = fields.get(1)?.rsplit(':').next()?;
        u16::from_str_radix(port, 16).ok()
    })
}

/// Debian's Prometheus scraping `admin` every second; stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    address: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, admin: SocketAddr) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: wsgate\n    authorization:\n      credentials: {TOKEN}\n\
                 \x20   static_configs:\n      - targets: ['{admin}']\n",
                wsgate_tests::repo_root()
                    .join("deploy/prometheus/wsgate-rules.yml")
                    .display()
            ),
        )
        .unwrap();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prometheus (scripts/setup-test-peers installs it)");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        loop {
            let line = lines
                .recv_timeout(TIMEOUT)
                .expect("prometheus logs that it is ready");
            if line.contains("Server is ready to receive web requests") {
                break;
            }
        }
        let port = listening_port(child.id()).expect("prometheus listens");
        Self {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The result vector of an instant `query`.
    async fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = admin_http(
            self.address,
            "GET",
            &format!("/api/v1/query?query={encoded}"),
            None,
            "",
        )
        .await;
        assert_eq!(status, 200, "{query}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        answer["data"]["result"].as_array().unwrap().clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_real_scrape_and_prometheus_reads_the_message_rate_per_endpoint() {
    let echo = start_echo().await;
    let gateway = start_gateway(&format!(
        "{}{}",
        endpoint(
            "/echo",
            echo,
            "client-messages = [{ plugin = \"passthrough@1.0.0\" }]"
        ),
        endpoint("/quiet", echo, "")
    ))
    .await;
    let (admin, _stop) = start_admin(&gateway, Some(TOKEN)).await;
    let mut client = connect(&gateway, "/echo").await;
    for i in 0..5 {
        send_text(&mut client, &format!("message {i}")).await;
        next_text(&mut client).await;
    }
    let _quiet = connect(&gateway, "/quiet").await;

    let (status, scrape) = admin_http(admin, "GET", "/metrics", Some(TOKEN), "").await;
    assert_eq!(status, 200);
    assert!(
        scrape
            .contains("wsgate_messages_total{endpoint=\"/echo\",direction=\"client_to_server\"} 5"),
        "{scrape}"
    );

    // promtool: naming, units, types; it prints nothing when all is well.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup-test-peers installs prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success() && said.trim().is_empty(), "{said}");

    // Documented, all of them and only them; queried, only what exists.
    let scraped = families(&scrape);
    let root = wsgate_tests::repo_root();
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    let documented = metric_names(&read("docs/metrics.md"));
    assert_eq!(scraped, documented, "docs/metrics.md and a scrape differ");
    for file in [
        "deploy/grafana/wsgate.json",
        "deploy/prometheus/wsgate-rules.yml",
    ] {
        let queried = metric_names(&read(file));
        let missing: Vec<_> = queried.difference(&scraped).collect();
        assert!(
            missing.is_empty(),
            "{file} queries {missing:?}, not in a scrape"
        );
    }

    // A real Prometheus, its rules loaded, while messages keep flowing.
    let dir = TempDir::new("prometheus");
    let prometheus = Prometheus::start(&dir.0, admin);
    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let sending = sending.clone();
        tokio::spawn(async move {
            while sending.load(Ordering::Relaxed) {
                send_text(&mut client, "tick").await;
                next_text(&mut client).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let query =
        "sum by (endpoint) (rate(wsgate_messages_total{direction=\"client_to_server\"}[5s]))";
    let started = Instant::now();
    let rates = loop {
        let result = prometheus.query(query).await;
        let rate_of = |endpoint: &str| {
            result
                .iter()
                .find(|r| r["metric"]["endpoint"] == endpoint)
                .map(|r| r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        };
        if let (Some(echo), Some(quiet)) = (rate_of("/echo"), rate_of("/quiet"))
            && echo > 0.0
        {
            break (echo, quiet);
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "no rate from Prometheus: {result:?}"
        );
        tokio::time::sleep(POLL).await;
    };
    sending.store(false, Ordering::Relaxed);
    sender.await.unwrap();
    eprintln!(
        "prometheus: client_to_server messages/s /echo {:.1}, /quiet {:.1}",
        rates.0, rates.1
    );
    assert_eq!(rates.1, 0.0);
    // The rules load and evaluate against the gateway's series without error.
    let (status, body) = admin_http(prometheus.address, "GET", "/api/v1/rules", None, "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("WsgatePluginFaults") && !body.contains("\"health\":\"err\""),
        "{body}"
    );
}
