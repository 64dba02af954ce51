//! `basic-auth`: HTTP Basic authentication of the upgrade. Credentials are
//! configured as salted SHA-256 hashes: `sha256 = hex(SHA-256(salt ||
//! password))`. Missing or wrong credentials get 401 with
//! `WWW-Authenticate: Basic realm="…"`. The user is published as the
//! connection attribute `user`.

use base64::Engine;
use sha2::{Digest, Sha256};
use wsgate_plugin_sdk::prelude::*;

/// One user.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct User {
    /// User name.
    user: String,
    /// Salt prepended to the password before hashing (may be empty).
    #[serde(default)]
    salt: String,
    /// Lower-case hex SHA-256 of salt followed by password.
    sha256: String,
}

/// Configuration of `basic-auth`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Realm shown to clients (default `wsgate`).
    #[serde(default = "default_realm")]
    realm: String,
    /// Accepted users.
    users: Vec<User>,
    /// Close connections this many seconds after their upgrade, with 1008
    /// "credentials expired" (none when absent).
    #[serde(default, rename = "max-session-seconds")]
    max_session_seconds: Option<u64>,
}

fn default_realm() -> String {
    "wsgate".into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn credentials(request: &UpgradeRequest) -> Option<(String, String)> {
    let value = request.header("authorization")?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

struct BasicAuth;

impl Plugin for BasicAuth {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        for (i, user) in config.users.iter().enumerate() {
            if user.sha256.len() != 64 || !user.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError {
                    field: format!("/users/{i}/sha256"),
                    message: "expected 64 hex digits: SHA-256 of salt followed by password".into(),
                });
            }
        }
        Ok(())
    }
}

impl UpgradeFilter for BasicAuth {
    fn on_upgrade(config: &Config, request: UpgradeRequest) -> UpgradeVerdict {
        let challenge = || {
            UpgradeVerdict::Reject(Rejection {
                status: 401,
                headers: vec![Header::new(
                    "www-authenticate",
                    format!("Basic realm=\"{}\"", config.realm),
                )],
                body: "authentication required\n".into(),
            })
        };
        let Some((user, password)) = credentials(&request) else {
            return challenge();
        };
        let Some(entry) = config.users.iter().find(|u| u.user == user) else {
            return challenge();
        };
        let digest = hex(&Sha256::digest(
            format!("{}{password}", entry.salt).as_bytes(),
        ));
        let same = digest
            .bytes()
            .zip(entry.sha256.to_ascii_lowercase().bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same {
            state::set_attribute("user", &user);
            if let Some(seconds) = config.max_session_seconds {
                session::expire_in_seconds(seconds);
            }
            UpgradeVerdict::Continue
        } else {
            log::info(&format!("wrong password for user {user}"));
            challenge()
        }
    }
}

wsgate_plugin_sdk::export_upgrade_filter!(BasicAuth);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        let request = |value: &str| UpgradeRequest {
            connection_id: 1,
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![Header::new("authorization", value)],
            client_addr: "127.0.0.1:1".into(),
            tls: false,
        };
        assert_eq!(
            credentials(&request("Basic YW5uOnA6dw==")),
            Some(("ann".into(), "p:w".into()))
        );
        assert_eq!(credentials(&request("Bearer abc")), None);
        assert_eq!(credentials(&request("Basic !!!")), None);
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
