//! The artifact layout: how a component, its wsgate manifest and its
//! signature are written into OCI manifests.
//!
//! A plugin follows the CNCF convention for WebAssembly components in OCI
//! registries (TAG Runtime's "Wasm OCI Artifact"): an image manifest whose
//! config has the media type `application/vnd.wasm.config.v0+json` and
//! whose single layer, `application/wasm`, is the component's bytes. Other
//! tools (`wkg`, `oras`) pull it as a Wasm component; wsgate adds its own
//! manifest (name, version, role, capabilities, schema) as an annotation.
//!
//! A signature is a second manifest in the same repository, tagged
//! `sha256-<hex>.sig` after the plugin manifest's digest (cosign's tag
//! convention, which registries without the referrers API support), with
//! the plugin manifest as its `subject`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config of a Wasm artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer holding a Wasm component.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The artifact type of a wsgate signature.
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.wsgate.signature.v1";
/// The layer holding a signature file's text.
pub const SIGNATURE_LAYER_MEDIA_TYPE: &str = "application/vnd.wsgate.signature.v1+text";
/// OCI's empty config (`{}`), for artifacts without one.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The annotation holding the plugin's wsgate manifest (the store's index
/// entry, TOML).
pub const PLUGIN_ANNOTATION: &str = "dev.wsgate.plugin";
/// OCI's standard annotation for the artifact's name.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// OCI's standard annotation for the artifact's version.
pub const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";
/// OCI's standard annotation for the artifact's description.
pub const DESCRIPTION_ANNOTATION: &str = "org.opencontainers.image.description";

/// A content descriptor: what a manifest points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The pointed-to content's media type.
    pub media_type: String,
    /// Its `sha256:<hex>` digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// The descriptor of `bytes` as `media_type`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: wsgate_store::digest_of(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// An OCI image manifest, with the fields wsgate writes and reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// What kind of artifact this is, when the config does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The content blobs.
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (a signature's plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The config of a Wasm artifact (`application/vnd.wasm.config.v0+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// When the artifact was made (RFC 3339), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made it, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component.
    pub os: String,
    /// The layers' digests, in manifest order.
    pub layer_digests: Vec<String>,
    /// What the component imports and exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentShape>,
}

/// A component's imports and exports, as the Wasm config lists them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ComponentShape {
    /// Imported interfaces (`wsgate:plugin/log@0.1.0`, …).
    #[serde(default)]
    pub imports: Vec<String>,
    /// Exported interfaces.
    #[serde(default)]
    pub exports: Vec<String>,
    /// The world the component targets, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A blob to upload and the descriptor that names it.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Its descriptor.
    pub descriptor: Descriptor,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            descriptor: Descriptor::of(media_type, &bytes),
            bytes,
        }
    }
}

/// A manifest ready to upload: its blobs, then its own bytes.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The blobs it points to (config first).
    pub blobs: Vec<Blob>,
    /// The manifest's JSON.
    pub manifest: Vec<u8>,
}

impl Upload {
    /// The manifest's descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::of(MANIFEST_MEDIA_TYPE, &self.manifest)
    }

    fn new(
        config: Blob,
        layer: Blob,
        annotations: BTreeMap<String, String>,
        artifact_type: Option<&str>,
        subject: Option<Descriptor>,
    ) -> Result<Self, serde_json::Error> {
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
            artifact_type: artifact_type.map(str::to_string),
            config: config.descriptor.clone(),
            layers: vec![layer.descriptor.clone()],
            subject,
            annotations,
        };
        Ok(Self {
            manifest: serde_json::to_vec(&manifest)?,
            blobs: vec![config, layer],
        })
    }
}

/// What is published about a plugin besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct Description {
    /// The plugin's store entry (its wsgate manifest and schema), when known.
    pub entry: Option<wsgate_store::Entry>,
    /// What the component imports and exports.
    pub shape: ComponentShape,
    /// When it was published (RFC 3339).
    pub created: Option<String>,
}

/// The upload of `component` as a Wasm artifact described by `description`.
pub fn plugin_upload(
    component: Vec<u8>,
    description: &Description,
) -> Result<Upload, serde_json::Error> {
    let layer = Blob::new(WASM_LAYER_MEDIA_TYPE, component);
    let config = WasmConfig {
        created: description.created.clone(),
        author: None,
        architecture: "wasm".to_string(),
        os: "wasip2".to_string(),
        layer_digests: vec![layer.descriptor.digest.clone()],
        component: Some(description.shape.clone()),
    };
    let config = Blob::new(WASM_CONFIG_MEDIA_TYPE, serde_json::to_vec(&config)?);
    let mut annotations = BTreeMap::new();
    if let Some(entry) = &description.entry {
        annotations.insert(TITLE_ANNOTATION.to_string(), entry.manifest.name.clone());
        annotations.insert(
            VERSION_ANNOTATION.to_string(),
            entry.manifest.version.clone(),
        );
        annotations.insert(
            DESCRIPTION_ANNOTATION.to_string(),
            entry.manifest.description.clone(),
        );
        if let Ok(text) = toml::to_string(entry) {
            annotations.insert(PLUGIN_ANNOTATION.to_string(), text);
        }
    }
    if let Some(created) = &description.created {
        annotations.insert(
            "org.opencontainers.image.created".to_string(),
            created.clone(),
        );
    }
    Upload::new(config, layer, annotations, None, None)
}

/// The upload of a signature file's `text` for the plugin manifest `subject`.
pub fn signature_upload(text: &str, subject: Descriptor) -> Result<Upload, serde_json::Error> {
    let config = Blob::new(EMPTY_MEDIA_TYPE, b"{}".to_vec());
    let layer = Blob::new(SIGNATURE_LAYER_MEDIA_TYPE, text.as_bytes().to_vec());
    Upload::new(
        config,
        layer,
        BTreeMap::new(),
        Some(SIGNATURE_ARTIFACT_TYPE),
        Some(subject),
    )
}

/// The tag of the signature of the manifest `digest` (`sha256-<hex>.sig`).
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// The component layer of a plugin manifest: the one `application/wasm`
/// layer, or why the manifest is not a Wasm component.
pub fn component_layer(manifest: &Manifest) -> Result<&Descriptor, String> {
    if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
        return Err(format!(
            "not a WebAssembly component artifact: its config is {}, not {WASM_CONFIG_MEDIA_TYPE}",
            manifest.config.media_type
        ));
    }
    match manifest.layers.as_slice() {
        [layer] if layer.media_type == WASM_LAYER_MEDIA_TYPE => Ok(layer),
        [layer] => Err(format!(
            "its layer is {}, not {WASM_LAYER_MEDIA_TYPE}",
            layer.media_type
        )),
        layers => Err(format!(
            "a Wasm artifact has exactly one layer; this one has {}",
            layers.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_manifest_follows_the_wasm_artifact_convention() {
        let upload = plugin_upload(b"\0asm".to_vec(), &Description::default()).unwrap();
        let manifest: Manifest = serde_json::from_slice(&upload.manifest).unwrap();
        assert_eq!(manifest.media_type.as_deref(), Some(MANIFEST_MEDIA_TYPE));
        assert_eq!(manifest.config.media_type, WASM_CONFIG_MEDIA_TYPE);
        let layer = component_layer(&manifest).unwrap();
        assert_eq!(layer.digest, wsgate_store::digest_of(b"\0asm"));
        let config: serde_json::Value = serde_json::from_slice(&upload.blobs[0].bytes).unwrap();
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["os"], "wasip2");
        assert_eq!(config["layerDigests"][0], layer.digest.as_str());
    }

    #[test]
    fn a_signature_is_tagged_after_its_subject() {
        assert_eq!(signature_tag("sha256:ab12"), "sha256-ab12.sig");
        let subject = Descriptor::of(MANIFEST_MEDIA_TYPE, b"m");
        let upload = signature_upload("ed25519 k sig\n", subject.clone()).unwrap();
        let manifest: Manifest = serde_json::from_slice(&upload.manifest).unwrap();
        assert_eq!(manifest.subject, Some(subject));
        assert!(component_layer(&manifest).is_err());
    }
}
