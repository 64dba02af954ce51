//! Running the `wsgate` binary from tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub mod registry;

/// A safety net against a hung gateway, not a synchronisation.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The `wsgate` binary built for these tests.
pub fn wsgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsgate"))
}

/// `wsgate <args…> <path>`, run to completion.
pub fn run_with_path(args: &[&str], path: &Path) -> Output {
    wsgate().args(args).arg(path).output().unwrap()
}

/// `wsgate check --config <path>`.
pub fn check(path: &Path) -> Output {
    run_with_path(&["check", "--config"], path)
}

/// The process's stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Create key `acme` in `dir` and sign `component` with it; the
/// `trusted-keys = [...]` line for a configuration.
pub fn keygen_and_sign(dir: &Path, component: &Path) -> String {
    let key = dir.join("acme.key");
    let output = run_with_path(&["plugin", "keygen", "--name", "acme", "--out"], &key);
    assert!(output.status.success(), "{}", stderr(&output));
    let trusted = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.starts_with("trusted-keys"))
        .unwrap()
        .to_string();
    let output = wsgate()
        .args(["plugin", "sign", "--name", "acme", "--key"])
        .arg(&key)
        .arg(component)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    trusted
}

/// A `wsgate run` whose stderr is copied, as is, to a log file; its short
/// lines are also handed to the test to synchronise on.
pub struct GatewayProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    tee: Option<JoinHandle<()>>,
}

impl GatewayProcess {
    /// Start `wsgate run --config <config>`, its log in `log`.
    pub fn start(config: &Path, log: &Path) -> Self {
        let mut child = wsgate()
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut file = BufWriter::new(std::fs::File::create(log).unwrap());
        let (sender, lines) = mpsc::channel();
        // Keep draining stderr so the gateway never blocks on a full pipe.
        let tee = std::thread::spawn(move || {
            let mut line = Vec::new();
            loop {
                line.clear();
                match stderr.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                file.write_all(&line).unwrap();
                if line.len() <= 4096 {
                    // The receiver may be gone: keep copying anyway.
                    let _ = sender.send(String::from_utf8_lossy(&line).trim_end().to_string());
                }
            }
            file.flush().unwrap();
        });
        Self {
            child,
            lines,
            tee: Some(tee),
        }
    }

    /// The address of the listener it logged (`wsgate listening on …`).
    pub fn listen_address(&self) -> String {
        let line = self.wait_for("wsgate listening on");
        line.rsplit(' ').next().unwrap().to_string()
    }

    /// The admin listener's address it logged.
    pub fn admin_address(&self) -> std::net::SocketAddr {
        let line = self.wait_for("admin listening on http://");
        line.rsplit("http://").next().unwrap().parse().unwrap()
    }

    /// The first log line containing `needle`.
    pub fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The process's peak resident set, in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .map(|v| v.trim().parse().unwrap())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// Send it signal `name` (`TERM`, `INT`, `HUP`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the exit (it must succeed) and for the log to be written out.
    pub fn wait(mut self) {
        assert!(self.child.wait().unwrap().success());
        self.tee.take().unwrap().join().unwrap();
    }

    /// SIGINT (stop at once, no drain), wait for the exit and for the log
    /// to be written out.
    pub fn stop(self) {
        self.signal("INT");
        self.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // A failed test must not leave its gateway running.
        if self.tee.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A directory for one case, removed however the case ends (an
/// unbudgeted log would fill the disk).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory for `case`.
    pub fn new(case: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wsgate-test-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
