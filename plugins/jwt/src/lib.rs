//! `jwt`: the upgrade needs a valid JSON Web Token (RFC 7519), as
//! `Authorization: Bearer <token>` or a query parameter.
//!
//! * Algorithms: HS256 (shared secret), RS256 (RSA public key), ES256 (P-256
//!   public key). Keys are inline, or a JWKS document (RFC 7517) in the
//!   config. The token's `alg` must equal its key's algorithm (no algorithm
//!   confusion), and `kid` selects the key when present.
//! * Claims: `exp` (required unless `require-exp = false`), `nbf`, `iss`,
//!   `aud` (string or list), each with `leeway-seconds`.
//! * The claims listed in `publish-claims` become connection attributes
//!   `claim.<name>` for later plugins: `header-rewrite` (`${claim.sub}`),
//!   `dynamic-router` (`claim = "tenant"`), `json-transform`
//!   (`${attribute.claim.sub}`).
//!
//! Missing token: 401; invalid or expired: 401 with a short reason; valid
//! but for another issuer or audience: 403.
//!
//! No connection outlives its token: the connection's expiry is set to
//! `exp` plus the leeway (contract 0.2.0 `session.expire-at`), when the
//! gateway closes the client with 1008 "credentials expired". With `renew`
//! set, the client may send a fresh token in a message on the same
//! connection (`{"type": "<renew.type>", "token": "…"}`, for the same
//! `sub`): the expiry moves to the new token's and the client is answered
//! `{"type": …, "ok": true, "exp": …}`, or `"ok": false` with an `error`
//! (the old expiry stays). Renewal messages never reach the upstream.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use wsgate_plugin_sdk::prelude::*;

/// A key, in JWK form (RFC 7517) with the fields each algorithm needs.
#[derive(serde::Deserialize, Clone)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
struct Jwk {
    /// Key id, matched against the token header's `kid`.
    #[serde(default)]
    kid: Option<String>,
    /// `HS256`, `RS256` or `ES256`; derived from `kty` when absent.
    #[serde(default)]
    alg: Option<String>,
    /// `oct`, `RSA` or `EC`.
    #[serde(default)]
    kty: Option<String>,
    /// HS256: the secret as text (inline keys only).
    #[serde(default)]
    secret: Option<String>,
    /// HS256: the secret, base64url (JWK `k`).
    #[serde(default)]
    k: Option<String>,
    /// RS256: modulus, base64url.
    #[serde(default)]
    n: Option<String>,
    /// RS256: exponent, base64url.
    #[serde(default)]
    e: Option<String>,
    /// ES256: curve (`P-256`).
    #[serde(default)]
    crv: Option<String>,
    /// ES256: x coordinate, base64url.
    #[serde(default)]
    x: Option<String>,
    /// ES256: y coordinate, base64url.
    #[serde(default)]
    y: Option<String>,
}

/// A JWKS document.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
struct Jwks {
    keys: Vec<Jwk>,
}

/// Configuration of `jwt`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Inline keys.
    #[serde(default)]
    keys: Vec<Jwk>,
    /// A JWKS document (`{"keys": [...]}`), as a table or as JSON text.
    #[serde(default)]
    jwks: Option<Value>,
    /// Header carrying `Bearer <token>` (default `authorization`).
    #[serde(default = "authorization")]
    header: String,
    /// Query parameter that may carry the token instead (browsers cannot set headers on WebSockets).
    #[serde(default)]
    query: Option<String>,
    /// Required `iss`.
    #[serde(default)]
    issuer: Option<String>,
    /// Required `aud` (the token's `aud` must contain it).
    #[serde(default)]
    audience: Option<String>,
    /// Clock skew allowed for `exp` and `nbf`, in seconds (default 30).
    #[serde(default = "thirty")]
    leeway_seconds: u64,
    /// Refuse tokens without `exp` (default true).
    #[serde(default = "yes")]
    require_exp: bool,
    /// Claims published as connection attributes `claim.<name>`.
    #[serde(default)]
    publish_claims: Vec<String>,
    /// Close the connection when its token expires (`exp` + leeway), with
    /// 1008 "credentials expired" (default true).
    #[serde(default = "yes")]
    expire_connections: bool,
    /// Accept a fresh token in a client message on the connection (needs
    /// the plugin in the endpoint's client-to-server message chain too).
    #[serde(default)]
    renew: Option<Renew>,
    /// The usable keys, resolved by `validate`.
    #[serde(skip)]
    resolved: std::cell::OnceCell<Vec<Key>>,
}

/// How a client renews its token on an open connection.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Renew {
    /// The `type` of a renewal message: `{"type": "<this>", "token": "…"}`.
    #[serde(rename = "type")]
    kind: String,
}

/// A client's renewal message.
#[derive(serde::Deserialize)]
struct RenewMessage {
    #[serde(rename = "type")]
    kind: String,
    token: String,
}

/// Renewal messages are small; longer text is never parsed.
const MAX_RENEW_MESSAGE: usize = 16 * 1024;

/// State key under which the connection's `sub` is kept for renewals.
const SUBJECT_KEY: &str = "sub";

fn authorization() -> String {
    "authorization".into()
}
fn thirty() -> u64 {
    30
}
fn yes() -> bool {
    true
}

/// A key ready to verify signatures.
enum Verifier {
    Hs256(Vec<u8>),
    Rs256(Box<rsa::pkcs1v15::VerifyingKey<Sha256>>),
    Es256(Box<p256::ecdsa::VerifyingKey>),
}

struct Key {
    kid: Option<String>,
    verifier: Verifier,
}

impl Verifier {
    fn alg(&self) -> &'static str {
        match self {
            Self::Hs256(_) => "HS256",
            Self::Rs256(_) => "RS256",
            Self::Es256(_) => "ES256",
        }
    }

    fn verify(&self, signed: &[u8], signature: &[u8]) -> bool {
        match self {
            Self::Hs256(secret) => Hmac::<Sha256>::new_from_slice(secret)
                .map(|mut mac| {
                    mac.update(signed);
                    mac.verify_slice(signature).is_ok()
                })
                .unwrap_or(false),
            Self::Rs256(key) => {
                use rsa::signature::Verifier as _;
                rsa::pkcs1v15::Signature::try_from(signature)
                    .is_ok_and(|s| key.verify(signed, &s).is_ok())
            }
            Self::Es256(key) => {
                use p256::ecdsa::signature::Verifier as _;
                p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|s| key.verify(signed, &s).is_ok())
            }
        }
    }
}

fn b64(field: &str, value: Option<&String>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("missing `{field}`"))?;
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| format!("`{field}` is not base64url: {e}"))
}

fn resolve(jwk: &Jwk) -> Result<Key, String> {
    let alg = match (jwk.alg.as_deref(), jwk.kty.as_deref()) {
        (Some(alg), _) => alg.to_string(),
        (None, Some("oct")) => "HS256".into(),
        (None, Some("RSA")) => "RS256".into(),
        (None, Some("EC")) => "ES256".into(),
        (None, None) if jwk.secret.is_some() => "HS256".into(),
        _ => return Err("set `alg` (HS256, RS256 or ES256) or `kty`".into()),
    };
    let verifier = match alg.as_str() {
        "HS256" => Verifier::Hs256(match &jwk.secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => b64("k", jwk.k.as_ref())?,
        }),
        "RS256" => {
            let n = rsa::BigUint::from_bytes_be(&b64("n", jwk.n.as_ref())?);
            let e = rsa::BigUint::from_bytes_be(&b64("e", jwk.e.as_ref())?);
            let key = rsa::RsaPublicKey::new(n, e).map_err(|e| format!("bad RSA key: {e}"))?;
            Verifier::Rs256(Box::new(rsa::pkcs1v15::VerifyingKey::new(key)))
        }
        "ES256" => {
            if jwk.crv.as_deref().is_some_and(|c| c != "P-256") {
                return Err("ES256 needs curve P-256".into());
            }
            let mut point = vec![4u8];
            point.extend(b64("x", jwk.x.as_ref())?);
            point.extend(b64("y", jwk.y.as_ref())?);
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                .map_err(|_| "bad P-256 public key".to_string())?;
            Verifier::Es256(Box::new(key))
        }
        other => {
            return Err(format!(
                "unsupported algorithm `{other}` (HS256, RS256, ES256)"
            ));
        }
    };
    Ok(Key {
        kid: jwk.kid.clone(),
        verifier,
    })
}

fn resolve_all(config: &Config) -> Result<Vec<Key>, ConfigError> {
    let mut keys = Vec::new();
    for (i, jwk) in config.keys.iter().enumerate() {
        keys.push(resolve(jwk).map_err(|message| ConfigError {
            field: format!("/keys/{i}"),
            message,
        })?);
    }
    if let Some(jwks) = &config.jwks {
        let parsed: Result<Jwks, _> = match jwks {
            Value::String(text) => serde_json::from_str(text),
            other => serde_json::from_value(other.clone()),
        };
        let jwks = parsed.map_err(|e| ConfigError {
            field: "/jwks".into(),
            message: format!("not a JWKS document: {e}"),
        })?;
        for (i, jwk) in jwks.keys.iter().enumerate() {
            keys.push(resolve(jwk).map_err(|message| ConfigError {
                field: format!("/jwks/keys/{i}"),
                message,
            })?);
        }
    }
    if keys.is_empty() {
        return Err(ConfigError {
            field: "/keys".into(),
            message: "configure at least one key (keys or jwks)".into(),
        });
    }
    Ok(keys)
}

/// Why a token was refused: status and reason.
type Refusal = (u16, &'static str);

fn verify(config: &Config, keys: &[Key], token: &str, now: u64) -> Result<Value, Refusal> {
    const INVALID: Refusal = (401, "invalid token");
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(INVALID);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| INVALID);
    let header: Value = serde_json::from_slice(&decode(header)?).map_err(|_| INVALID)?;
    let claims: Value = serde_json::from_slice(&decode(payload)?).map_err(|_| INVALID)?;
    let signature = decode(signature)?;
    let alg = header["alg"].as_str().ok_or(INVALID)?;
    let kid = header["kid"].as_str();
    let signed = &token.as_bytes()[..token.rfind('.').ok_or(INVALID)?];
    let verified = keys
        .iter()
        .filter(|k| k.verifier.alg() == alg)
        .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
        .any(|k| k.verifier.verify(signed, &signature));
    if !verified {
        return Err((401, "invalid token signature"));
    }
    let leeway = config.leeway_seconds;
    match claims["exp"].as_u64() {
        Some(exp) if exp.saturating_add(leeway) <= now => return Err((401, "token expired")),
        None if config.require_exp => return Err((401, "token has no exp")),
        _ => {}
    }
    if claims["nbf"]
        .as_u64()
        .is_some_and(|nbf| nbf > now.saturating_add(leeway))
    {
        return Err((401, "token not yet valid"));
    }
    if let Some(issuer) = &config.issuer
        && claims["iss"].as_str() != Some(issuer)
    {
        return Err((403, "token from another issuer"));
    }
    if let Some(audience) = &config.audience {
        let matches = match &claims["aud"] {
            Value::String(aud) => aud == audience,
            Value::Array(auds) => auds.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !matches {
            return Err((403, "token for another audience"));
        }
    }
    Ok(claims)
}

fn token_of(config: &Config, request: &UpgradeRequest) -> Option<String> {
    let from_header = request.header(&config.header).and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    from_header.or_else(|| config.query.as_ref().and_then(|q| request.query_param(q)))
}

struct Jwt;

impl Plugin for Jwt {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        let keys = resolve_all(config)?;
        let _ = config.resolved.set(keys);
        Ok(())
    }
}

impl UpgradeFilter for Jwt {
    fn on_upgrade(config: &Config, request: UpgradeRequest) -> UpgradeVerdict {
        let refuse = |(status, reason): Refusal| {
            log::info(&format!("token refused: {reason}"));
            UpgradeVerdict::Reject(Rejection {
                status,
                headers: vec![Header::new(
                    "www-authenticate",
                    format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
                )],
                body: format!("{reason}\n"),
            })
        };
        let Some(token) = token_of(config, &request) else {
            return refuse((401, "missing bearer token"));
        };
        let Some(keys) = config.resolved.get() else {
            return refuse((500, "jwt keys unavailable"));
        };
        let now = context::now_ms() / 1000;
        match verify(config, keys, &token, now) {
            Ok(claims) => {
                for name in &config.publish_claims {
                    let value = match &claims[name.as_str()] {
                        Value::Null => continue,
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    state::set_attribute(&format!("claim.{name}"), &value);
                }
                if config.renew.is_some() {
                    state::set(SUBJECT_KEY, subject(&claims).as_bytes());
                }
                expire_with(config, &claims);
                UpgradeVerdict::Continue
            }
            Err(refusal) => refuse(refusal),
        }
    }
}

/// The token's `sub`, empty when it has none.
fn subject(claims: &Value) -> &str {
    claims["sub"].as_str().unwrap_or_default()
}

/// Make the connection expire with the token (`exp` + leeway, in ms).
fn expire_with(config: &Config, claims: &Value) {
    if !config.expire_connections {
        return;
    }
    if let Some(exp) = claims["exp"].as_u64() {
        let at = exp
            .saturating_add(config.leeway_seconds)
            .saturating_mul(1000);
        session::expire_at(at);
    }
}

/// What a renewal message asks, if `text` is one.
fn renewal(renew: &Renew, text: &str) -> Option<RenewMessage> {
    if text.len() > MAX_RENEW_MESSAGE || !text.trim_start().starts_with('{') {
        return None;
    }
    let message: RenewMessage = serde_json::from_str(text).ok()?;
    (message.kind == renew.kind).then_some(message)
}

/// Check a renewal token for the connection's subject; its claims on success.
fn renew_token(
    config: &Config,
    token: &str,
    subject_now: &str,
    now: u64,
) -> Result<Value, &'static str> {
    let keys = config.resolved.get().ok_or("jwt keys unavailable")?;
    let claims = verify(config, keys, token, now).map_err(|(_, reason)| reason)?;
    if subject(&claims) != subject_now {
        return Err("token for another subject");
    }
    Ok(claims)
}

impl MessageFilter for Jwt {
    fn on_message(config: &Config, direction: Direction, message: Message) -> MessageVerdict {
        let (Some(renew), Direction::ClientToServer, Message::Text(text)) =
            (&config.renew, direction, &message)
        else {
            return MessageVerdict::Forward;
        };
        let Some(request) = renewal(renew, text) else {
            return MessageVerdict::Forward;
        };
        let subject_now = state::get_string(SUBJECT_KEY).unwrap_or_default();
        let now = context::now_ms() / 1000;
        let answer = match renew_token(config, &request.token, &subject_now, now) {
            Ok(claims) => {
                expire_with(config, &claims);
                serde_json::json!({"type": renew.kind, "ok": true, "exp": claims["exp"]})
            }
            Err(reason) => {
                log::info(&format!("renewal refused: {reason}"));
                serde_json::json!({"type": renew.kind, "ok": false, "error": reason})
            }
        };
        MessageVerdict::Reply(vec![Message::Text(answer.to_string())])
    }
}

wsgate_plugin_sdk::export_filter!(Jwt);

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256_token(secret: &[u8], claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{payload}.{signature}")
    }

    fn config(extra: &str) -> Config {
        let config: Config = serde_json::from_str(&format!(
            r#"{{"keys": [{{"alg": "HS256", "secret": "s3cret"}}]{extra}}}"#
        ))
        .unwrap();
        Jwt::validate(&config).unwrap();
        config
    }

    #[test]
    fn hs256_tokens_are_checked_for_signature_and_time() {
        let config = config(r#", "issuer": "me", "audience": "ws""#);
        let keys = config.resolved.get().unwrap();
        let good = serde_json::json!({"sub": "ann", "exp": 2000, "iss": "me", "aud": ["ws"]});
        assert!(verify(&config, keys, &hs256_token(b"s3cret", &good), 1000).is_ok());
        assert_eq!(
            verify(&config, keys, &hs256_token(b"wrong", &good), 1000).err(),
            Some((401, "invalid token signature"))
        );
        assert_eq!(
            verify(&config, keys, &hs256_token(b"s3cret", &good), 2030).err(),
            Some((401, "token expired"))
        );
        // Within the leeway.
        assert!(verify(&config, keys, &hs256_token(b"s3cret", &good), 2029).is_ok());
        let other = serde_json::json!({"exp": 2000, "iss": "you", "aud": "ws"});
        assert_eq!(
            verify(&config, keys, &hs256_token(b"s3cret", &other), 1000).err(),
            Some((403, "token from another issuer"))
        );
    }

    #[test]
    fn algorithm_confusion_and_garbage_are_refused() {
        let config = config("");
        let keys = config.resolved.get().unwrap();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"exp":9999999999}"#)
        );
        assert!(verify(&config, keys, &none, 0).is_err());
        assert!(verify(&config, keys, "a.b", 0).is_err());
        assert!(verify(&config, keys, "!!.??.**", 0).is_err());
    }

    #[test]
    fn renewals_are_recognised_and_checked_for_the_same_subject() {
        let config = config(r#", "renew": {"type": "auth"}"#);
        let renew = config.renew.as_ref().unwrap();
        let token = hs256_token(b"s3cret", &serde_json::json!({"sub": "ann", "exp": 2000}));
        let message = format!(r#"{{"type": "auth", "token": "{token}"}}"#);
        let asked = renewal(renew, &message).unwrap();
        assert_eq!(asked.token, token);
        assert!(renewal(renew, r#"{"type": "chat", "token": "x"}"#).is_none());
        assert!(renewal(renew, "hello").is_none());
        assert_eq!(
            renew_token(&config, &token, "ann", 1000).unwrap()["exp"],
            2000
        );
        assert_eq!(
            renew_token(&config, &token, "bob", 1000).err(),
            Some("token for another subject")
        );
        assert_eq!(
            renew_token(&config, &token, "ann", 3000).err(),
            Some("token expired")
        );
    }

    #[test]
    fn bad_keys_name_their_field() {
        let config: Config =
            serde_json::from_str(r#"{"jwks": {"keys": [{"kty": "RSA", "n": "AQAB"}]}}"#).unwrap();
        assert_eq!(Jwt::validate(&config).err().unwrap().field, "/jwks/keys/0");
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
