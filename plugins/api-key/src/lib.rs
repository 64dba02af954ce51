//! `api-key`: the upgrade needs a valid API key, from a header (default
//! `x-api-key`) or a query parameter. Keys are configured as SHA-256 hashes
//! (hex), never in clear. The key's name is published as the connection
//! attribute `api-key.name`.

use sha2::{Digest, Sha256};
use wsgate_plugin_sdk::prelude::*;

/// One accepted key.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Key {
    /// Who the key belongs to (published as `api-key.name`).
    name: String,
    /// Lower-case hex SHA-256 of the key.
    sha256: String,
}

/// Configuration of `api-key`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Header carrying the key (default `x-api-key`).
    #[serde(default = "default_header")]
    header: String,
    /// Query parameter carrying the key, if keys may come that way.
    #[serde(default)]
    query: Option<String>,
    /// The accepted keys.
    keys: Vec<Key>,
    /// Close connections this many seconds after their upgrade, with 1008
    /// "credentials expired" (none when absent).
    #[serde(default)]
    max_session_seconds: Option<u64>,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct ApiKey;

impl Plugin for ApiKey {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        for (i, key) in config.keys.iter().enumerate() {
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError {
                    field: format!("/keys/{i}/sha256"),
                    message: "expected 64 hex digits (the SHA-256 of the key)".into(),
                });
            }
        }
        Ok(())
    }
}

fn unauthorized(body: &str) -> UpgradeVerdict {
    UpgradeVerdict::reject(401, body)
}

impl UpgradeFilter for ApiKey {
    fn on_upgrade(config: &Config, request: UpgradeRequest) -> UpgradeVerdict {
        let presented = request
            .header(&config.header)
            .map(str::to_string)
            .or_else(|| config.query.as_ref().and_then(|q| request.query_param(q)));
        let Some(presented) = presented else {
            return unauthorized("missing API key\n");
        };
        let digest = hex(&Sha256::digest(presented.as_bytes()));
        // Compare every key fully, so timing does not tell which prefix matched.
        let mut found = None;
        for key in &config.keys {
            let same = key.sha256.len() == digest.len()
                && key
                    .sha256
                    .bytes()
                    .zip(digest.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a.to_ascii_lowercase() ^ b))
                    == 0;
            if same {
                found = Some(key);
            }
        }
        match found {
            Some(key) => {
                state::set_attribute("api-key.name", &key.name);
                if let Some(seconds) = config.max_session_seconds {
                    session::expire_in_seconds(seconds);
                }
                UpgradeVerdict::Continue
            }
            None => {
                log::info("invalid API key presented");
                unauthorized("invalid API key\n")
            }
        }
    }
}

wsgate_plugin_sdk::export_upgrade_filter!(ApiKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_sha256_hex() {
        let good: Config = serde_json::from_str(&format!(
            r#"{{"keys": [{{"name": "a", "sha256": "{}"}}]}}"#,
            hex(&Sha256::digest(b"k"))
        ))
        .unwrap();
        assert!(ApiKey::validate(&good).is_ok());
        let bad: Config =
            serde_json::from_str(r#"{"keys": [{"name": "a", "sha256": "k"}]}"#).unwrap();
        assert_eq!(
            ApiKey::validate(&bad).err().unwrap().field,
            "/keys/0/sha256"
        );
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
