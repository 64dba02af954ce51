//! Running the `wsgate` binary from tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

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
