//! Test guest: misbehaves on command, to prove faults stay contained.
//!
//! Text messages: `trap` panics, `loop` never returns, `alloc` grows memory
//! without bound, `giant` returns a 4 MiB message, `log-flood` logs 10,000
//! lines, `slow` busy-waits 20 ms (legal under its deadline),
//! `probe-file` / `probe-network` / `probe-env` / `probe-state` try to reach
//! files, sockets, the environment and another connection's state and reply
//! with what they reached. Attacks on the host, each inside every guest
//! budget: `state-flood` stores 1 MiB values until refused, `state-keys`
//! stores 100,000 empty keys, `attribute-flood` publishes 1 MiB attributes,
//! `log-giant` logs 100 lines of 4 MiB, `fan-out` replies with 100,000
//! messages. Anything else is forwarded. With `reject-config` set,
//! it refuses to configure; upgrades misbehave on the header
//! `x-test-fault: trap|loop|alloc`.

use wsgate_plugin_sdk::prelude::*;

/// Configuration of `test-faults`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Refuse the configuration, to test config error reporting.
    #[serde(default)]
    reject_config: bool,
}

struct TestFaults;

impl Plugin for TestFaults {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        if config.reject_config {
            return Err(ConfigError {
                field: "/reject-config".into(),
                message: "asked to reject its config".into(),
            });
        }
        Ok(())
    }
}

fn misbehave(command: &str) {
    match command {
        "trap" => std::process::abort(),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        _ => {}
    }
}

impl UpgradeFilter for TestFaults {
    fn on_upgrade(_config: &Config, request: UpgradeRequest) -> UpgradeVerdict {
        if let Some(command) = request.header("x-test-fault") {
            misbehave(command);
        }
        UpgradeVerdict::Continue
    }
}

/// Try to reach what a sandbox must refuse. Files and sockets are not
/// linked at all (the call traps); the environment is empty; state is per
/// connection. Returns what was reached.
fn probe(what: &str) -> String {
    let reached = match what {
        "file" => std::fs::read("/etc/passwd").is_ok() || std::fs::read_dir("/").is_ok(),
        "network" => std::net::TcpStream::connect("127.0.0.1:80").is_ok(),
        "env" => std::env::vars().next().is_some() || std::env::var("HOME").is_ok(),
        "state" => {
            let seen = state::get("secret").is_some();
            state::set("secret", b"mine");
            seen
        }
        _ => false,
    };
    format!(r#"{{"{what}":{reached}}}"#)
}

impl MessageFilter for TestFaults {
    fn on_message(_config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        let Message::Text(text) = &message else {
            return MessageVerdict::Forward;
        };
        match text.as_str() {
            "giant" => MessageVerdict::modify(Message::Binary(vec![7; 4 << 20])),
            "log-flood" => {
                for i in 0..10_000 {
                    log::info(&format!("flood {i}"));
                }
                MessageVerdict::Forward
            }
            "state-flood" => {
                let value = vec![7u8; 1 << 20];
                for i in 0..4096 {
                    state::set(&format!("flood-{i}"), &value);
                }
                MessageVerdict::Forward
            }
            "state-keys" => {
                for i in 0..100_000 {
                    state::set(&format!("k{i}"), b"");
                }
                MessageVerdict::Forward
            }
            "attribute-flood" => {
                let value = "x".repeat(1 << 20);
                for i in 0..4096 {
                    state::set_attribute(&format!("flood-{i}"), &value);
                }
                MessageVerdict::Forward
            }
            "log-giant" => {
                let line = "x".repeat(4 << 20);
                for _ in 0..100 {
                    log::info(&line);
                }
                MessageVerdict::Forward
            }
            "fan-out" => MessageVerdict::Reply(vec![Message::Text("x".into()); 100_000]),
            "slow" => {
                let start = context::monotonic_ns();
                while context::monotonic_ns() - start < 20_000_000 {
                    std::hint::spin_loop();
                }
                MessageVerdict::Forward
            }
            probe_command if probe_command.starts_with("probe-") => {
                MessageVerdict::Reply(vec![Message::Text(probe(&probe_command[6..]))])
            }
            command => {
                misbehave(command);
                MessageVerdict::Forward
            }
        }
    }
}

wsgate_plugin_sdk::export_filter!(TestFaults);
