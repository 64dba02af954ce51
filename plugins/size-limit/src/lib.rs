//! `size-limit`: messages larger than `max-bytes` close the connection with
//! 1009 (message too big), or are dropped. Put it on the client-messages
//! and/or upstream-messages chain for a per-direction limit.

use wsgate_plugin_sdk::policy::{Action, data_len};
use wsgate_plugin_sdk::prelude::*;

/// Configuration of `size-limit`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Largest text or binary payload allowed, in bytes.
    max_bytes: usize,
    /// `close` (1009), `drop`, or `reply` with an error to the sender.
    #[serde(default)]
    action: Action,
}

struct SizeLimit;

impl Plugin for SizeLimit {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        if config.max_bytes == 0 {
            return Err(ConfigError {
                field: "/max-bytes".into(),
                message: "must be greater than zero".into(),
            });
        }
        Ok(())
    }
}

impl MessageFilter for SizeLimit {
    fn on_message(config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        let len = data_len(&message);
        if len > config.max_bytes {
            log::debug(&format!(
                "message of {len} bytes over the {} byte limit",
                config.max_bytes
            ));
            return config.action.verdict(1009, "message too big");
        }
        MessageVerdict::Forward
    }
}

wsgate_plugin_sdk::export_message_filter!(SizeLimit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_within_the_limit_pass_and_zero_is_refused() {
        let config: Config = serde_json::from_str(r#"{"max-bytes": 4}"#).unwrap();
        let verdict = SizeLimit::on_message(
            &config,
            Direction::ClientToServer,
            Message::Text("1234".into()),
        );
        assert_eq!(verdict, MessageVerdict::Forward);
        let zero: Config = serde_json::from_str(r#"{"max-bytes": 0}"#).unwrap();
        assert!(SizeLimit::validate(&zero).is_err());
    }
}

#[cfg(test)]
mod config_schema {
    /// `config.schema.json` is generated from `Config`; this keeps it current.
    #[test]
    fn the_config_schema_is_current() {
        wsgate_plugin_sdk::schema::check::<super::Config>(env!("CARGO_MANIFEST_DIR")).unwrap();
    }
}
