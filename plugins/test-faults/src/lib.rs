//! Test guest: misbehaves on command, to prove faults stay contained.
//!
//! Text messages: `trap` panics, `loop` never returns, `alloc` grows memory
//! without bound; anything else is forwarded. With `reject-config` set,
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

impl MessageFilter for TestFaults {
    fn on_message(_config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        if let Message::Text(text) = &message {
            misbehave(text);
        }
        MessageVerdict::Forward
    }
}

wsgate_plugin_sdk::export_filter!(TestFaults);
