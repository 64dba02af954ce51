//! Talking to one registry: push and pull plugins and their signatures.

use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::RegistryError;
use crate::artifact::{self, Descriptor, Manifest, Upload};

/// How to reach a registry: transport, trust and credentials.
#[derive(Clone, Default)]
pub struct Connection {
    /// Speak plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// Extra trusted CA certificates (PEM).
    pub ca_bundle: Option<Vec<u8>>,
    /// User name, with `password` for basic (or token) authentication.
    pub username: Option<String>,
    /// Password or token; alone, it is sent as a bearer token.
    pub password: Option<String>,
    /// Longest time to connect, and to wait for each response.
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("plain_http", &self.plain_http)
            .field("ca_bundle", &self.ca_bundle.is_some())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Connection {
    /// The connection a `[[registry]]` table describes (reads its CA bundle
    /// and password file, or its password variable).
    pub fn from_config(registry: &wsgate_config::Registry) -> Result<Self, String> {
        let ca_bundle = match &registry.ca_bundle {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read ca-bundle {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let password = match (&registry.password_file, &registry.password_env) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read password-file {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, Some(variable)) => Some(
                std::env::var(variable)
                    .map_err(|_| format!("password-env names ${variable}, which is not set"))?,
            ),
            (None, None) => None,
        };
        Ok(Self {
            plain_http: registry.plain_http,
            ca_bundle,
            username: registry.username.clone(),
            password,
            timeout: Some(registry.timeout.0),
        })
    }

    fn auth(&self) -> RegistryAuth {
        match (&self.username, &self.password) {
            (Some(user), Some(password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            (Some(user), None) => RegistryAuth::Basic(user.clone(), String::new()),
            (None, Some(token)) => RegistryAuth::Bearer(token.clone()),
            (None, None) => RegistryAuth::Anonymous,
        }
    }
}

/// A plugin as published in a registry.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The component's bytes (their digest checked).
    pub component: Vec<u8>,
    /// The component's digest: what `[[plugin]] digest` pins.
    pub component_digest: String,
    /// The plugin manifest's digest (what `oci://…@sha256:` names).
    pub manifest_digest: String,
    /// The wsgate manifest published with it, if any.
    pub entry: Option<wsgate_store::Entry>,
    /// The manifest's annotations (title, version, …).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The signature file published beside it, if any.
    pub signature: Option<String>,
    /// What the Wasm config says the component imports and exports.
    pub shape: Option<artifact::ComponentShape>,
}

/// What a push published.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The component's digest: what `[[plugin]] digest` pins.
    pub component_digest: String,
    /// The plugin manifest's digest.
    pub manifest_digest: String,
    /// The tag the signature was pushed under, if one was.
    pub signature_tag: Option<String>,
}

/// A client for one registry.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    host: String,
}

impl Registry {
    /// A client for the registry of `reference`.
    pub fn connect(reference: &Reference, connection: &Connection) -> Result<Self, RegistryError> {
        // reqwest builds a rustls configuration even for plain HTTP; the
        // gateway's provider is ring (a second install is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let host = reference.resolve_registry().to_string();
        let config = ClientConfig {
            protocol: if connection.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: connection
                .ca_bundle
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            connect_timeout: connection.timeout,
            read_timeout: connection.timeout,
            platform_resolver: None,
            user_agent: concat!("wsgate/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|e| RegistryError::Settings {
            registry: host.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            client,
            auth: connection.auth(),
            host,
        })
    }

    /// Publish `upload` (a plugin, see [`artifact::plugin_upload`]) under
    /// `reference`, and `signature` (a signature file's text) beside it.
    pub async fn push(
        &self,
        reference: &Reference,
        upload: &Upload,
        signature: Option<&str>,
    ) -> Result<Pushed, RegistryError> {
        self.client
            .auth(reference, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| self.failed(reference, e))?;
        let component_digest = upload
            .blobs
            .iter()
            .find(|blob| blob.descriptor.media_type == artifact::WASM_LAYER_MEDIA_TYPE)
            .map(|blob| blob.descriptor.digest.clone())
            .unwrap_or_default();
        self.upload(reference, upload).await?;
        let subject = upload.descriptor();
        let signature_tag = match signature {
            Some(text) => {
                let tag = artifact::signature_tag(&subject.digest);
                let upload = artifact::signature_upload(text, subject.clone())
                    .map_err(|e| self.failed(reference, e.into()))?;
                self.upload(&self.tagged(reference, &tag), &upload).await?;
                Some(tag)
            }
            None => None,
        };
        Ok(Pushed {
            component_digest,
            manifest_digest: subject.digest,
            signature_tag,
        })
    }

    async fn upload(&self, reference: &Reference, upload: &Upload) -> Result<(), RegistryError> {
        for blob in &upload.blobs {
            let present = self
                .client
                .blob_exists(reference, &blob.descriptor.digest)
                .await
                .map_err(|e| self.failed(reference, e))?;
            if !present {
                self.client
                    .push_blob(reference, blob.bytes.clone(), &blob.descriptor.digest)
                    .await
                    .map_err(|e| self.failed(reference, e))?;
            }
        }
        let content_type = artifact::MANIFEST_MEDIA_TYPE
            .parse()
            .map_err(|_| self.failed(reference, OciDistributionError::GenericError(None)))?;
        self.client
            .push_manifest_raw(reference, upload.manifest.clone(), content_type)
            .await
            .map_err(|e| self.failed(reference, e))?;
        Ok(())
    }

    /// Fetch the plugin `reference` names. With `expected` (a component
    /// digest), a manifest whose component has another digest is refused
    /// before the component is downloaded.
    pub async fn pull(
        &self,
        reference: &Reference,
        expected: Option<&str>,
    ) -> Result<Pulled, RegistryError> {
        let (manifest, manifest_digest) = self.manifest(reference).await?;
        let layer =
            artifact::component_layer(&manifest).map_err(|message| RegistryError::NotAPlugin {
                reference: reference.whole(),
                message,
            })?;
        if let Some(expected) = expected
            && !layer.digest.eq_ignore_ascii_case(expected)
        {
            return Err(RegistryError::Digest {
                reference: reference.whole(),
                expected: expected.to_string(),
                actual: layer.digest.clone(),
            });
        }
        let component = self.blob(reference, layer).await?;
        let entry = match manifest.annotations.get(artifact::PLUGIN_ANNOTATION) {
            Some(text) => Some(toml::from_str::<wsgate_store::Entry>(text).map_err(|e| {
                RegistryError::NotAPlugin {
                    reference: reference.whole(),
                    message: format!(
                        "its {} annotation is malformed: {e}",
                        artifact::PLUGIN_ANNOTATION
                    ),
                }
            })?),
            None => None,
        };
        let config = self.blob(reference, &manifest.config).await?;
        let shape = serde_json::from_slice::<artifact::WasmConfig>(&config)
            .ok()
            .and_then(|config| config.component);
        let signature = self.signature(reference, &manifest_digest).await?;
        Ok(Pulled {
            shape,
            component,
            component_digest: layer.digest.clone(),
            manifest_digest,
            entry,
            annotations: manifest.annotations.clone(),
            signature,
        })
    }

    /// The signature published for the manifest `digest`, if there is one.
    async fn signature(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<Option<String>, RegistryError> {
        let tagged = self.tagged(reference, &artifact::signature_tag(digest));
        let (manifest, _) = match self.manifest(&tagged).await {
            Ok(found) => found,
            Err(RegistryError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let not_a_signature = |message: String| RegistryError::NotAPlugin {
            reference: tagged.whole(),
            message,
        };
        if manifest.subject.as_ref().map(|s| s.digest.as_str()) != Some(digest) {
            return Err(not_a_signature(format!(
                "the signature's subject is not {digest}"
            )));
        }
        let layer = manifest
            .layers
            .iter()
            .find(|l| l.media_type == artifact::SIGNATURE_LAYER_MEDIA_TYPE)
            .ok_or_else(|| not_a_signature("it has no signature layer".to_string()))?;
        let text = self.blob(&tagged, layer).await?;
        String::from_utf8(text)
            .map(Some)
            .map_err(|_| not_a_signature("the signature is not text".to_string()))
    }

    async fn manifest(&self, reference: &Reference) -> Result<(Manifest, String), RegistryError> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &[artifact::MANIFEST_MEDIA_TYPE])
            .await
            .map_err(|e| self.failed(reference, e))?;
        let manifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::NotAPlugin {
            reference: reference.whole(),
            message: format!("its manifest is not an OCI image manifest: {e}"),
        })?;
        Ok((manifest, digest))
    }

    async fn blob(
        &self,
        reference: &Reference,
        layer: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let descriptor = oci_client::manifest::OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: i64::try_from(layer.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        if layer.size > MAX_BLOB {
            return Err(RegistryError::NotAPlugin {
                reference: reference.whole(),
                message: format!(
                    "{} is {} bytes, over the {MAX_BLOB} a plugin may have",
                    layer.digest, layer.size
                ),
            });
        }
        let mut out = Bounded {
            bytes: Vec::new(),
            limit: usize::try_from(layer.size).unwrap_or(usize::MAX),
        };
        self.client
            .pull_blob(reference, &descriptor, &mut out)
            .await
            .map_err(|e| self.failed(reference, e))?;
        Ok(out.bytes)
    }

    fn tagged(&self, reference: &Reference, tag: &str) -> Reference {
        Reference::with_tag(
            reference.registry().to_string(),
            reference.repository().to_string(),
            tag.to_string(),
        )
    }

    /// Name who failed: the registry (unreachable, refused) or the reference.
    fn failed(&self, reference: &Reference, error: OciDistributionError) -> RegistryError {
        let message = describe(&error);
        match error {
            OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound {
                reference: reference.whole(),
            },
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) =>
            {
                RegistryError::NotFound {
                    reference: reference.whole(),
                }
            }
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => RegistryError::Refused {
                registry: self.host.clone(),
                message,
            },
            OciDistributionError::RequestError(_) => RegistryError::Unreachable {
                registry: self.host.clone(),
                message,
            },
            _ => RegistryError::Refused {
                registry: self.host.clone(),
                message,
            },
        }
    }
}

/// The largest blob a pull downloads (the largest plugin in the repository,
/// Python's json-mask, is 18 MB).
const MAX_BLOB: u64 = 256 << 20;

/// A download that holds no more than its descriptor's size: a registry
/// sending more is cut off, not buffered.
struct Bounded {
    bytes: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len() + buf.len() > self.limit {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {} bytes the manifest declares",
                self.limit
            ))));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// An error and its causes on one line (reqwest's own message leaves out
/// why a connection failed).
fn describe(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_download_stops_at_its_declared_size() {
        let mut out = Bounded {
            bytes: Vec::new(),
            limit: 4,
        };
        out.write_all(b"wasm").await.unwrap();
        assert!(out.write_all(b"!").await.is_err());
        assert_eq!(out.bytes, b"wasm");
    }
}
