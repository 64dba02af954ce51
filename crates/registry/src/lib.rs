//! Plugins in OCI registries.
//!
//! `wsgate plugin push` publishes a component (with its wsgate manifest and
//! signature) in the CNCF Wasm artifact layout ([`artifact`]); `wsgate
//! plugin pull` and `[[plugin]] source = "oci://…"` fetch it into the
//! plugin store ([`fetch_plugins`]), verified against the pinned digest.
//! Once the store holds a digest, nothing needs the registry again: a
//! restart or a new replica with the same store starts without it.

pub mod artifact;
mod client;
mod fetch;

pub use client::{Connection, Pulled, Pushed, Registry};
pub use fetch::{connection_for, fetch_plugins};
pub use oci_client::Reference;

/// Why a registry operation failed, naming the registry or the reference.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference is not `oci://HOST/REPOSITORY[:TAG][@DIGEST]`.
    #[error(
        "`{reference}` is not an OCI reference (`oci://HOST[:PORT]/REPOSITORY:TAG`): {message}"
    )]
    Reference {
        /// The reference as written.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// The client could not be set up (TLS settings).
    #[error("registry {registry}: {message}")]
    Settings {
        /// The registry's host.
        registry: String,
        /// What is wrong.
        message: String,
    },
    /// The registry could not be reached.
    #[error("registry {registry} is unreachable: {message}")]
    Unreachable {
        /// The registry's host.
        registry: String,
        /// Why.
        message: String,
    },
    /// The registry answered with an error (authentication, permissions, …).
    #[error("registry {registry} refused: {message}")]
    Refused {
        /// The registry's host.
        registry: String,
        /// What it said.
        message: String,
    },
    /// The registry has nothing under the reference.
    #[error("{reference} is not in the registry")]
    NotFound {
        /// The reference.
        reference: String,
    },
    /// What the reference names is not a wsgate plugin (or its signature).
    #[error("{reference}: {message}")]
    NotAPlugin {
        /// The reference.
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// The component is not the pinned one.
    #[error("{reference} holds component {actual}, but the pin is {expected}")]
    Digest {
        /// The reference.
        reference: String,
        /// The pinned digest.
        expected: String,
        /// The published component's digest.
        actual: String,
    },
}

/// Parse `oci://HOST[:PORT]/REPOSITORY[:TAG][@DIGEST]`.
pub fn parse_reference(source: &str) -> Result<Reference, RegistryError> {
    let invalid = |message: &str| RegistryError::Reference {
        reference: source.to_string(),
        message: message.to_string(),
    };
    let rest = source
        .strip_prefix("oci://")
        .ok_or_else(|| invalid("it does not start with oci://"))?;
    let (host, _) = rest
        .split_once('/')
        .ok_or_else(|| invalid("it names no repository"))?;
    if host.is_empty() {
        return Err(invalid("it names no registry host"));
    }
    let reference: Reference = rest
        .parse()
        .map_err(|e: oci_client::ParseError| invalid(&e.to_string()))?;
    // A host without a dot or port would be read as a Docker Hub namespace.
    if reference.registry() != host {
        return Err(invalid("the first part must be the registry's host[:port]"));
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_registry() {
        let reference = parse_reference("oci://127.0.0.1:5000/wsgate/echo:1.0.0").unwrap();
        assert_eq!(reference.registry(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "wsgate/echo");
        assert_eq!(reference.tag(), Some("1.0.0"));
        let pinned = format!(
            "oci://registry.example.com/p/echo@sha256:{}",
            "a".repeat(64)
        );
        assert!(parse_reference(&pinned).unwrap().digest().is_some());
        assert!(parse_reference("127.0.0.1:5000/wsgate/echo:1").is_err());
        assert!(parse_reference("oci://echo").is_err());
        assert!(parse_reference("oci://Bad Host/echo").is_err());
    }
}
