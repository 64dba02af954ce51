//! The real binary: `wsgate deploy`, SIGHUP, SIGINT and SIGTERM (a drain)
//! against `wsgate run`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use wsgate_tests::*;

mod common;
use common::{run_with_path, stderr, wsgate};

/// A running `wsgate run` and its log lines.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(config: &Path) -> Self {
        let mut child = wsgate()
            .args(["run", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (sender, lines) = mpsc::channel();
        // Keep draining stderr so the gateway never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The first log line containing `needle` (a minute at most: a
    /// safety net, not a synchronisation).
    fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Wait for the process to exit.
    fn exit(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave its gateway running (after a clean
        // exit this finds nothing to kill).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tagged(echo: std::net::SocketAddr, version: &str) -> String {
    config_text(&tagged_endpoint("/load", echo, version)) + "[admin]\nlisten = \"127.0.0.1:0\"\n"
}

#[test]
fn deploy_and_sighup_switch_versions_side_by_side_and_sigint_stops() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(start_echo());
    let dir = std::env::temp_dir().join(format!("wsgate-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = write(&dir, "v1.toml", &tagged(echo, "1.0.0"));
    let v2 = write(&dir, "v2.toml", &tagged(echo, "2.0.0"));
    let broken = write(
        &dir,
        "broken.toml",
        &tagged(echo, "2.0.0").replace("path = \"/load\"", "path = \"/load\"\nexpires = \"1h\""),
    );

    let gateway = Running::start(&v1);
    let listen = gateway.wait_for("wsgate listening on");
    let listen = listen.rsplit(' ').next().unwrap().to_string();
    let admin = gateway.wait_for("admin listening on http://");
    let admin = admin.rsplit("http://").next().unwrap().to_string();
    let url = format!("ws://{listen}/load");

    let exchange = |client: &mut Client, text: &str| -> String {
        runtime.block_on(async {
            send_text(client, text).await;
            next_text(client).await
        })
    };
    let connect = |url: &str| {
        runtime
            .block_on(tokio_tungstenite::connect_async(url))
            .unwrap()
            .0
    };

    let mut old = connect(&url);
    assert_eq!(exchange(&mut old, "a"), "a+v1.0.0");

    // `wsgate deploy`: the new version for new connections, the old one kept.
    let output = run_with_path(&["deploy", "--admin", &admin, "--config"], &v2);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("as generation 2"));
    let mut new = connect(&url);
    assert_eq!(exchange(&mut new, "b"), "b+v2.0.0");
    assert_eq!(exchange(&mut old, "a"), "a+v1.0.0");

    // A broken file is refused locally, naming file, line and field.
    let output = run_with_path(&["deploy", "--admin", &admin, "--config"], &broken);
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(
        stderr.contains(&format!("{}:", broken.display()))
            && stderr.contains("endpoint[0].expires"),
        "{stderr}"
    );
    assert_eq!(exchange(&mut new, "b"), "b+v2.0.0");

    // SIGHUP deploys the file the gateway was started with again.
    gateway.signal("HUP");
    gateway.wait_for("as generation 3");
    let mut third = connect(&url);
    assert_eq!(exchange(&mut third, "c"), "c+v1.0.0");
    assert_eq!(exchange(&mut new, "b"), "b+v2.0.0");

    // SIGINT: every client gets 1001 at once, the process exits cleanly.
    gateway.signal("INT");
    for client in [&mut old, &mut new, &mut third] {
        assert_eq!(runtime.block_on(expect_close(client)).0, 1001);
    }
    assert!(gateway.exit().success());
}

#[test]
fn sigterm_drains_hands_every_client_over_with_1012_and_exits() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(start_echo());
    let dir = std::env::temp_dir().join(format!("wsgate-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write(
        &dir,
        "drain.toml",
        &tagged(echo, "1.0.0").replacen(
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"127.0.0.1:0\"\ndrain-grace = \"4s\"\ndrain-window = \"500ms\"\n",
            1,
        ),
    );
    let gateway = Running::start(&config);
    let listen = gateway.wait_for("wsgate listening on");
    let url = format!("ws://{}/load", listen.rsplit(' ').next().unwrap());
    let admin = gateway.wait_for("admin listening on http://");
    let admin: std::net::SocketAddr = admin.rsplit("http://").next().unwrap().parse().unwrap();
    let connect = || {
        runtime
            .block_on(tokio_tungstenite::connect_async(url.as_str()))
            .unwrap()
            .0
    };
    let mut clients: Vec<Client> = (0..3).map(|_| connect()).collect();

    gateway.signal("TERM");
    gateway.wait_for("draining: /readyz is 503");
    let ready = runtime.block_on(admin_http(admin, "GET", "/readyz", None, ""));
    assert_eq!(ready.0, 503);
    // Accepted in the grace, handed over like the others.
    clients.push(connect());
    for client in &mut clients {
        assert_eq!(
            runtime.block_on(expect_close(client)),
            (1012, "service restart".to_string())
        );
    }
    assert!(gateway.exit().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_watched_configuration_file_deploys_each_valid_change_once_and_refuses_a_broken_one() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(start_echo());
    let dir = std::env::temp_dir().join(format!("wsgate-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let watched = |version: &str| {
        tagged(echo, version).replacen(
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"127.0.0.1:0\"\nwatch-config = \"100ms\"\n",
            1,
        )
    };
    // As a ConfigMap is updated: the new file written beside, then renamed
    // over the watched one in one step.
    let swap = |text: &str| {
        let staged = write(&dir, "staged.toml", text);
        std::fs::rename(staged, dir.join("gateway.toml")).unwrap();
    };
    let config = write(&dir, "gateway.toml", &watched("1.0.0"));
    let gateway = Running::start(&config);
    let listen = gateway.wait_for("wsgate listening on");
    let url = format!("ws://{}/load", listen.rsplit(' ').next().unwrap());
    gateway.wait_for("following");
    let exchange = |text: &str| -> String {
        runtime.block_on(async {
            let mut client = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap()
                .0;
            send_text(&mut client, text).await;
            next_text(&mut client).await
        })
    };
    assert_eq!(exchange("a"), "a+v1.0.0");

    swap(&watched("2.0.0"));
    gateway.wait_for("changed: deployed as generation 2");
    assert_eq!(exchange("b"), "b+v2.0.0");

    // A broken change is refused, naming file, line and field; v2 serves on.
    swap(&watched("2.0.0").replace("path = \"/load\"", "path = \"/load\"\nexpires = \"1h\""));
    gateway.wait_for("gateway.toml changed: deploy refused");
    let problem = gateway.wait_for("endpoint[0].expires");
    assert!(problem.contains("gateway.toml:"), "{problem}");
    assert_eq!(exchange("c"), "c+v2.0.0");

    // Fixed again: the next deploy is generation 3 (the broken one and the
    // swaps before deployed nothing twice).
    swap(&watched("1.0.0"));
    gateway.wait_for("changed: deployed as generation 3");
    assert_eq!(exchange("d"), "d+v1.0.0");
    gateway.signal("INT");
    assert!(gateway.exit().success());
    let _ = std::fs::remove_dir_all(&dir);
}
