//! `rate-limit`: messages and bytes per second per connection, as token
//! buckets kept in the host's per-connection state. Over the limit a message
//! is dropped, or the connection closes with 1008 (policy violation).

use wsgate_plugin_sdk::policy::{Action, data_len, is_data};
use wsgate_plugin_sdk::prelude::*;

/// Configuration of `rate-limit`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Sustained messages per second (none: unlimited).
    #[serde(default)]
    messages_per_second: Option<f64>,
    /// Sustained payload bytes per second (none: unlimited).
    #[serde(default)]
    bytes_per_second: Option<f64>,
    /// Bucket size as seconds of the rate (default 1: a one-second burst).
    #[serde(default = "one")]
    burst_seconds: f64,
    /// `drop` (default), `close` (1008) or `reply`.
    #[serde(default = "drop_action")]
    action: Action,
}

fn one() -> f64 {
    1.0
}

fn drop_action() -> Action {
    Action::Drop
}

/// Both buckets and when they were last filled.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Buckets {
    messages: f64,
    bytes: f64,
    at_ns: u64,
}

impl Buckets {
    fn full(config: &Config, now: u64) -> Self {
        Self {
            messages: config.messages_per_second.unwrap_or(0.0) * config.burst_seconds,
            bytes: config.bytes_per_second.unwrap_or(0.0) * config.burst_seconds,
            at_ns: now,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.messages.to_le_bytes());
        out.extend_from_slice(&self.bytes.to_le_bytes());
        out.extend_from_slice(&self.at_ns.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let field = |i: usize| -> Option<[u8; 8]> { bytes.get(i * 8..i * 8 + 8)?.try_into().ok() };
        Some(Self {
            messages: f64::from_le_bytes(field(0)?),
            bytes: f64::from_le_bytes(field(1)?),
            at_ns: u64::from_le_bytes(field(2)?),
        })
    }

    /// Refill for the time since the last message, then take one message of
    /// `len` bytes if both buckets allow it.
    fn take(&mut self, config: &Config, now: u64, len: usize) -> bool {
        let elapsed = now.saturating_sub(self.at_ns) as f64 / 1e9;
        self.at_ns = now;
        if let Some(rate) = config.messages_per_second {
            self.messages = (self.messages + elapsed * rate).min(rate * config.burst_seconds);
        }
        if let Some(rate) = config.bytes_per_second {
            self.bytes = (self.bytes + elapsed * rate).min(rate * config.burst_seconds);
        }
        let messages_ok = config.messages_per_second.is_none() || self.messages >= 1.0;
        let bytes_ok = config.bytes_per_second.is_none() || self.bytes >= len as f64;
        if messages_ok && bytes_ok {
            self.messages -= 1.0;
            self.bytes -= len as f64;
            true
        } else {
            false
        }
    }
}

struct RateLimit;

impl Plugin for RateLimit {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        let positive = |value: Option<f64>| value.is_none_or(|v| v > 0.0 && v.is_finite());
        let error = |field: &str, message: &str| ConfigError {
            field: field.into(),
            message: message.into(),
        };
        if config.messages_per_second.is_none() && config.bytes_per_second.is_none() {
            return Err(error(
                "",
                "set messages-per-second, bytes-per-second or both",
            ));
        }
        if !positive(config.messages_per_second) {
            return Err(error("/messages-per-second", "must be a positive number"));
        }
        if !positive(config.bytes_per_second) {
            return Err(error("/bytes-per-second", "must be a positive number"));
        }
        if !(config.burst_seconds > 0.0 && config.burst_seconds.is_finite()) {
            return Err(error("/burst-seconds", "must be a positive number"));
        }
        Ok(())
    }
}

impl MessageFilter for RateLimit {
    fn on_message(config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        if !is_data(&message) {
            return MessageVerdict::Forward;
        }
        let now = context::monotonic_ns();
        let mut buckets = state::get("buckets")
            .and_then(|b| Buckets::decode(&b))
            .unwrap_or_else(|| Buckets::full(config, now));
        let allowed = buckets.take(config, now, data_len(&message));
        state::set("buckets", &buckets.encode());
        if allowed {
            MessageVerdict::Forward
        } else {
            config.action.verdict(1008, "rate limit exceeded")
        }
    }
}

wsgate_plugin_sdk::export_message_filter!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(messages: Option<f64>, bytes: Option<f64>) -> Config {
        Config {
            messages_per_second: messages,
            bytes_per_second: bytes,
            burst_seconds: 1.0,
            action: Action::Drop,
        }
    }

    #[test]
    fn a_full_bucket_allows_a_burst_then_refills_with_time() {
        let config = config(Some(2.0), None);
        let mut buckets = Buckets::full(&config, 0);
        assert!(buckets.take(&config, 0, 10));
        assert!(buckets.take(&config, 0, 10));
        assert!(!buckets.take(&config, 0, 10));
        assert!(buckets.take(&config, 500_000_000, 10));
        assert!(!buckets.take(&config, 500_000_000, 10));
    }

    #[test]
    fn bytes_are_limited_independently() {
        let config = config(None, Some(100.0));
        let mut buckets = Buckets::full(&config, 0);
        assert!(buckets.take(&config, 0, 60));
        assert!(!buckets.take(&config, 0, 60));
        assert!(buckets.take(&config, 0, 40));
    }

    #[test]
    fn buckets_round_trip_through_state_bytes() {
        let buckets = Buckets {
            messages: 1.5,
            bytes: 7.0,
            at_ns: 42,
        };
        assert_eq!(Buckets::decode(&buckets.encode()), Some(buckets));
        assert_eq!(Buckets::decode(&[1, 2]), None);
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
