//! `rate-limit`: messages and bytes per second per connection, as token
//! buckets kept in the host's per-connection state, or (`scope = "key"`)
//! per key across connections and replicas, as quotas the host shares
//! (`quota.take`, contract 0.2.0). Over the limit a message is dropped,
//! answered, or the connection closes with 1008 (policy violation).

use wsgate_plugin_sdk::policy::{Action, data_len, is_data};
use wsgate_plugin_sdk::prelude::*;
use wsgate_plugin_sdk::{
    connection_value, is_connection_placeholder, render_template, template_names,
};

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
    /// Whose messages the limits count: each connection's own (default), or
    /// every connection's with the same `key`, across this gateway and,
    /// with `[cluster] redis`, its replicas.
    #[serde(default)]
    scope: Scope,
    /// With `scope = "key"`: the quota's key, a template over the
    /// connection (`${claim.sub}`, `${attribute.api-key.name}`,
    /// `${header.x-tenant}`, `${endpoint}`).
    #[serde(default)]
    key: Option<String>,
    /// With `scope = "key"`: the quota's name; endpoints naming the same
    /// bucket share it (default: the endpoint's path).
    #[serde(default)]
    bucket: Option<String>,
}

/// Whose messages a limit counts.
#[derive(serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
enum Scope {
    /// Each connection has its own buckets (token buckets in its state).
    #[default]
    Connection,
    /// Connections with the same key share a quota (the host's `quota`
    /// interface: sliding windows of `burst-seconds`).
    Key,
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
        match (config.scope, &config.key) {
            (Scope::Key, None) => {
                return Err(error("/key", "scope = \"key\" needs a key template"));
            }
            (Scope::Key, Some(key)) => {
                if let Some(name) = template_names(key)
                    .into_iter()
                    .find(|name| !is_key_placeholder(name))
                {
                    return Err(error(
                        "/key",
                        &format!(
                            "unknown placeholder ${{{name}}} (use claim.*, attribute.*, header.*, endpoint, connection-id)"
                        ),
                    ));
                }
            }
            (Scope::Connection, _) => {}
        }
        Ok(())
    }
}

impl MessageFilter for RateLimit {
    fn on_message(config: &Config, direction: Direction, message: Message) -> MessageVerdict {
        if !is_data(&message) {
            return MessageVerdict::Forward;
        }
        let allowed = match config.scope {
            Scope::Connection => take_from_connection(config, data_len(&message)),
            Scope::Key => take_from_key(config, direction, data_len(&message)),
        };
        if allowed {
            MessageVerdict::Forward
        } else {
            config.action.verdict(1008, "rate limit exceeded")
        }
    }
}

/// Take one message of `len` bytes from the connection's own token buckets.
fn take_from_connection(config: &Config, len: usize) -> bool {
    let now = context::monotonic_ns();
    let mut buckets = state::get("buckets")
        .and_then(|b| Buckets::decode(&b))
        .unwrap_or_else(|| Buckets::full(config, now));
    let allowed = buckets.take(config, now, len);
    state::set("buckets", &buckets.encode());
    allowed
}

/// A placeholder a quota key may use.
fn is_key_placeholder(name: &str) -> bool {
    name.strip_prefix("claim.").is_some_and(|n| !n.is_empty()) || is_connection_placeholder(name)
}

/// The quota key of this connection: the template rendered; a connection
/// without a value for it (no such claim) gets a key of its own.
fn quota_key(config: &Config, direction: Direction) -> String {
    let template = config.key.as_deref().unwrap_or("${connection-id}");
    let rendered = render_template(template, |name| match name.strip_prefix("claim.") {
        Some(_) => state::attribute(name),
        None => connection_value(name, direction),
    });
    rendered.unwrap_or_else(|_| format!("connection-{}", context::connection_id()))
}

/// Take one message of `len` bytes from the quotas shared by the key.
fn take_from_key(config: &Config, direction: Direction, len: usize) -> bool {
    let key = quota_key(config, direction);
    let bucket = config.bucket.clone().unwrap_or_else(context::endpoint_path);
    let window_ms = (config.burst_seconds * 1000.0).clamp(1.0, f64::from(u32::MAX)) as u32;
    let limit_of = |rate: f64| (rate * config.burst_seconds).clamp(1.0, f64::from(u32::MAX)) as u32;
    if let Some(rate) = config.messages_per_second {
        let grant = quota::take(
            &format!("{bucket}|messages|{key}"),
            1,
            limit_of(rate),
            window_ms,
        );
        if !grant.allowed {
            return false;
        }
    }
    if let Some(rate) = config.bytes_per_second {
        let units = u32::try_from(len).unwrap_or(u32::MAX);
        let grant = quota::take(
            &format!("{bucket}|bytes|{key}"),
            units,
            limit_of(rate),
            window_ms,
        );
        if !grant.allowed {
            return false;
        }
    }
    true
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
            scope: Scope::Connection,
            key: None,
            bucket: None,
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
    fn a_key_scope_needs_a_key_of_known_placeholders() {
        let parse = |json: &str| serde_json::from_str::<Config>(json).unwrap();
        let missing = parse(r#"{"messages-per-second": 1, "scope": "key"}"#);
        assert_eq!(RateLimit::validate(&missing).unwrap_err().field, "/key");
        let unknown = parse(r#"{"messages-per-second": 1, "scope": "key", "key": "${nope}"}"#);
        assert!(
            RateLimit::validate(&unknown)
                .unwrap_err()
                .message
                .contains("${nope}")
        );
        let good = parse(
            r#"{"messages-per-second": 1, "scope": "key", "key": "${claim.sub}/${header.x-tenant}"}"#,
        );
        assert!(RateLimit::validate(&good).is_ok());
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
