//! Detached ed25519 signatures of plugin components.
//!
//! A signature file is one line: `ed25519 <key-name> <base64 signature>`,
//! the signature being over the component's bytes. Keys are 32 bytes,
//! written base64: the secret key in a file of its own, the public key in
//! `[signing] trusted-keys`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// A key pair, base64-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The secret key: keep it out of the gateway's configuration.
    pub secret: String,
    /// The public key, for `[signing] trusted-keys`.
    pub public: String,
}

/// Why a signature or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature file is not `ed25519 <key-name> <base64>`.
    #[error("malformed signature file (expected `ed25519 <key-name> <base64 signature>`)")]
    Malformed,
    /// The signature names a key the configuration does not trust.
    #[error("signed by `{0}`, which is not among the trusted keys")]
    UntrustedKey(String),
    /// A key is not 32 bytes of base64.
    #[error("key `{0}` is not a base64 ed25519 key")]
    BadKey(String),
    /// The signature does not match the component's bytes.
    #[error(
        "the signature by `{0}` does not verify: the component was changed or signed with another key"
    )]
    Invalid(String),
    /// No randomness for key generation.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

fn key_bytes(name: &str, base64: &str) -> Result<[u8; 32], SignatureError> {
    STANDARD
        .decode(base64.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| SignatureError::BadKey(name.to_string()))
}

/// A new random key pair.
pub fn generate_key() -> Result<KeyPair, SignatureError> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| SignatureError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&secret);
    Ok(KeyPair {
        secret: STANDARD.encode(secret),
        public: STANDARD.encode(key.verifying_key().to_bytes()),
    })
}

/// The signature file for `component`, signed by `key_name`'s secret key.
pub fn sign(key_name: &str, secret: &str, component: &[u8]) -> Result<String, SignatureError> {
    let key = SigningKey::from_bytes(&key_bytes(key_name, secret)?);
    let signature = key.sign(component);
    Ok(format!(
        "ed25519 {key_name} {}\n",
        STANDARD.encode(signature.to_bytes())
    ))
}

/// The key name a signature file claims, without checking anything.
pub fn signer(signature_file: &str) -> Option<String> {
    let mut parts = signature_file.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("ed25519"), Some(name)) => Some(name.to_string()),
        _ => None,
    }
}

/// Check `signature_file` over `component` against `trusted` (name, public
/// key) pairs; the name of the key that signed it.
pub fn verify<'a>(
    signature_file: &str,
    component: &[u8],
    trusted: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, SignatureError> {
    let mut parts = signature_file.split_whitespace();
    let (Some("ed25519"), Some(name), Some(encoded), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SignatureError::Malformed);
    };
    let signature = STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes))
        .ok_or(SignatureError::Malformed)?;
    let (_, public) = trusted
        .into_iter()
        .find(|(trusted_name, _)| *trusted_name == name)
        .ok_or_else(|| SignatureError::UntrustedKey(name.to_string()))?;
    let key = VerifyingKey::from_bytes(&key_bytes(name, public)?)
        .map_err(|_| SignatureError::BadKey(name.to_string()))?;
    key.verify_strict(component, &signature)
        .map(|()| name.to_string())
        .map_err(|_| SignatureError::Invalid(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_the_same_bytes_and_a_trusted_key() {
        let pair = generate_key().unwrap();
        let other = generate_key().unwrap();
        let file = sign("acme", &pair.secret, b"component").unwrap();
        let trusted = [("acme", pair.public.as_str())];
        assert_eq!(verify(&file, b"component", trusted), Ok("acme".to_string()));
        assert_eq!(
            verify(&file, b"c0mponent", trusted),
            Err(SignatureError::Invalid("acme".into()))
        );
        assert_eq!(
            verify(&file, b"component", [("acme", other.public.as_str())]),
            Err(SignatureError::Invalid("acme".into()))
        );
        assert_eq!(
            verify(&file, b"component", [("other", pair.public.as_str())]),
            Err(SignatureError::UntrustedKey("acme".into()))
        );
        assert_eq!(
            verify("garbage", b"component", trusted),
            Err(SignatureError::Malformed)
        );
    }
}
