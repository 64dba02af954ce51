//! `key-limit`: per-key limits at the upgrade, shared by every connection
//! of the gateway and (with `[cluster] redis`) its replicas: open
//! connections per key (`quota.hold`: a user's tabs) and upgrades per key
//! per window (`quota.take`). Over either, the upgrade is refused with 429;
//! over the upgrade rate with `Retry-After`.

use wsgate_plugin_sdk::prelude::*;
use wsgate_plugin_sdk::{
    connection_value, is_connection_placeholder, render_template, template_names,
};

/// Configuration of `key-limit`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Whose upgrades count together: a template over the request and what
    /// earlier plugins published (`${claim.sub}`, `${attribute.api-key.name}`,
    /// `${header.x-tenant}`, `${endpoint}`). An upgrade without a value for
    /// it is refused with 401 (an earlier plugin should have authenticated it).
    key: String,
    /// Connections one key may hold open at once (none: unlimited).
    #[serde(default)]
    max_connections: Option<u32>,
    /// Upgrades one key may make per `upgrade-window-seconds` (none: unlimited).
    #[serde(default)]
    max_upgrades: Option<u32>,
    /// The window of `max-upgrades`, in seconds (default 60).
    #[serde(default = "sixty")]
    upgrade_window_seconds: u32,
    /// The limits' name; endpoints naming the same bucket share them
    /// (default: the endpoint's path).
    #[serde(default)]
    bucket: Option<String>,
}

fn sixty() -> u32 {
    60
}

struct KeyLimit;

impl Plugin for KeyLimit {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        let error = |field: &str, message: String| ConfigError {
            field: field.into(),
            message,
        };
        if config.max_connections.is_none() && config.max_upgrades.is_none() {
            return Err(error(
                "",
                "set max-connections, max-upgrades or both".to_string(),
            ));
        }
        if config.max_connections == Some(0) {
            return Err(error("/max-connections", "must be at least 1".to_string()));
        }
        if config.max_upgrades == Some(0) {
            return Err(error("/max-upgrades", "must be at least 1".to_string()));
        }
        if config.upgrade_window_seconds == 0 || config.upgrade_window_seconds > 86_400 {
            return Err(error(
                "/upgrade-window-seconds",
                "must be between 1 and 86400".to_string(),
            ));
        }
        if let Some(name) = template_names(&config.key)
            .into_iter()
            .find(|name| !is_key_placeholder(name))
        {
            return Err(error(
                "/key",
                format!(
                    "unknown placeholder ${{{name}}} (use claim.*, attribute.*, header.*, endpoint)"
                ),
            ));
        }
        Ok(())
    }
}

impl UpgradeFilter for KeyLimit {
    fn on_upgrade(config: &Config, _request: UpgradeRequest) -> UpgradeVerdict {
        let Some(key) = key_of(config) else {
            return UpgradeVerdict::reject(401, "this endpoint needs credentials\n");
        };
        let bucket = config.bucket.clone().unwrap_or_else(context::endpoint_path);
        if let Some(limit) = config.max_upgrades {
            let window_ms = config.upgrade_window_seconds.saturating_mul(1000);
            let grant = quota::take(&format!("{bucket}|upgrades|{key}"), 1, limit, window_ms);
            if !grant.allowed {
                return too_many(
                    "too many connection attempts; retry later\n",
                    Some(grant.retry_after_ms),
                );
            }
        }
        if let Some(limit) = config.max_connections {
            let grant = quota::hold(&format!("{bucket}|connections|{key}"), limit);
            if !grant.allowed {
                // A wait is known only while this replica hears from the others.
                let retry_after = Some(grant.retry_after_ms).filter(|ms| *ms > 0);
                return too_many("too many open connections for this user\n", retry_after);
            }
        }
        UpgradeVerdict::Continue
    }
}

/// A placeholder a key may use.
fn is_key_placeholder(name: &str) -> bool {
    name.strip_prefix("claim.").is_some_and(|n| !n.is_empty()) || is_connection_placeholder(name)
}

/// Longest key used as it is; longer ones (a client's header can be long)
/// are replaced by a hash, so a key never exceeds the host's key budget.
const MAX_PLAIN_KEY: usize = 64;

/// The upgrade's key: the template rendered; `None` without a value for it.
fn key_of(config: &Config) -> Option<String> {
    let key = render_template(&config.key, |name| match name.strip_prefix("claim.") {
        Some(_) => state::attribute(name),
        None => connection_value(name, Direction::ClientToServer),
    })
    .ok()?;
    Some(bounded(key))
}

/// `key`, or for a long one `h:` and its 64-bit FNV-1a hash in hex.
fn bounded(key: String) -> String {
    if key.len() <= MAX_PLAIN_KEY {
        return key;
    }
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("h:{hash:016x}")
}

/// 429 with `body`, and `Retry-After` (whole seconds, rounded up) when the
/// wait is known.
fn too_many(body: &str, retry_after_ms: Option<u64>) -> UpgradeVerdict {
    let headers = retry_after_ms
        .map(|ms| Header::new("retry-after", ms.div_ceil(1000).max(1).to_string()))
        .into_iter()
        .collect();
    UpgradeVerdict::Reject(Rejection {
        status: 429,
        headers,
        body: body.to_string(),
    })
}

wsgate_plugin_sdk::export_upgrade_filter!(KeyLimit);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Config {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn long_keys_are_hashed_to_a_bounded_length() {
        assert_eq!(bounded("ann".to_string()), "ann");
        let long = bounded("x".repeat(10_000));
        assert_eq!(long.len(), 18);
        assert_ne!(long, bounded("y".repeat(10_000)));
    }

    #[test]
    fn a_limit_and_known_placeholders_are_required() {
        let none = parse(r#"{"key": "${claim.sub}"}"#);
        assert_eq!(
            KeyLimit::validate(&none).map_err(|e| e.field),
            Err(String::new())
        );
        let unknown = parse(r#"{"key": "${nope}", "max-connections": 2}"#);
        assert_eq!(
            KeyLimit::validate(&unknown).map_err(|e| e.field),
            Err("/key".to_string())
        );
        let zero = parse(r#"{"key": "${claim.sub}", "max-upgrades": 0}"#);
        assert_eq!(
            KeyLimit::validate(&zero).map_err(|e| e.field),
            Err("/max-upgrades".to_string())
        );
        let good = parse(
            r#"{"key": "${claim.sub}/${header.x-tenant}", "max-connections": 5, "max-upgrades": 30}"#,
        );
        assert!(KeyLimit::validate(&good).is_ok());
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
