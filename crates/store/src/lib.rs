//! The plugin store: a directory of components addressed by content.
//!
//! ```text
//! <store>/blobs/sha256/<hex>          the component, named by its sha256 digest
//! <store>/blobs/sha256/<hex>.sig      its detached signature, when it has one
//! <store>/index/<name>/<version>.toml the manifest, the digest and the size
//! ```
//!
//! A name and version, once added, always mean the same bytes: adding other
//! bytes under an existing `name@version` is refused. The gateway's
//! configuration pins each stored plugin as `name@version` with its digest
//! and loads `blobs/sha256/<hex>`; the index entry must agree with the pin.

#![deny(clippy::indexing_slicing)]

mod manifest;

use std::path::{Path, PathBuf};

use sha2::Digest;

pub use manifest::{Manifest, Role};

/// Errors from the plugin store, each naming the file or plugin concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A manifest or index entry is malformed.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with line and column where the parser gives them.
        message: String,
    },
    /// `name@version` is not in the store.
    #[error("{plugin} is not in the plugin store {store} (add it with `wsgate plugin add`)")]
    Missing {
        /// `name@version`.
        plugin: String,
        /// The store's directory.
        store: String,
    },
    /// `name@version` is already stored with other bytes.
    #[error(
        "{plugin} is already in the store as {stored}; these bytes are {offered}. A stored version never changes: give the new build a new version"
    )]
    Immutable {
        /// `name@version`.
        plugin: String,
        /// The digest already stored.
        stored: String,
        /// The digest of the refused bytes.
        offered: String,
    },
    /// A stored component's bytes no longer match its digest.
    #[error("{plugin}: {path} is {actual}, not {expected}: the store is damaged")]
    Damaged {
        /// `name@version`.
        plugin: String,
        /// The blob.
        path: String,
        /// The digest the index records.
        expected: String,
        /// The blob's digest now.
        actual: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

/// The `sha256:<hex>` digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// One stored plugin: its manifest and what the store recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Entry {
    /// The plugin's manifest.
    #[serde(flatten)]
    pub manifest: Manifest,
    /// Content digest of the component, `sha256:<hex>`.
    pub digest: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// The configuration schema (JSON text), copied from the manifest's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema_json: Option<String>,
}

impl Entry {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    /// Read an index entry.
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        toml::from_str(&text).map_err(|error| StoreError::Invalid {
            path: path.display().to_string(),
            message: error.to_string(),
        })
    }
}

/// Check that the index entry at `path` exists and records `digest`, the
/// digest a configuration pins for it.
pub fn check_entry(path: &Path, digest: &str) -> Result<(), String> {
    if !path.exists() {
        return Err(format!(
            "not in the plugin store (no {}; add it with `wsgate plugin add`)",
            path.display()
        ));
    }
    let recorded = Entry::read(path).map_err(|e| e.to_string())?;
    if !recorded.digest.eq_ignore_ascii_case(digest) {
        return Err(format!(
            "the plugin store has it as {}, but the configuration pins {digest}",
            recorded.digest
        ));
    }
    Ok(())
}

/// A plugin store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `root` (created on the first `add`).
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the component with `digest` (`sha256:<hex>`) is kept.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.root, digest)
    }

    /// Where the index entry of `name@version` is kept.
    pub fn entry_path(&self, name: &str, version: &str) -> PathBuf {
        entry_path(&self.root, name, version)
    }

    /// Store `component` under `manifest`, with its detached `signature`
    /// (the `.sig` file's text) and configuration schema (JSON text).
    /// Adding the same bytes again is a no-op; other bytes under an existing
    /// `name@version` are refused.
    pub fn add(
        &self,
        component: &[u8],
        manifest: Manifest,
        config_schema_json: Option<String>,
        signature: Option<&str>,
    ) -> Result<Entry, StoreError> {
        let digest = digest_of(component);
        let entry = Entry {
            manifest,
            digest: digest.clone(),
            size: component.len() as u64,
            config_schema_json,
        };
        let entry_path = self.entry_path(&entry.manifest.name, &entry.manifest.version);
        if entry_path.exists() {
            let stored = Entry::read(&entry_path)?;
            if stored.digest != digest {
                return Err(StoreError::Immutable {
                    plugin: entry.id(),
                    stored: stored.digest,
                    offered: digest,
                });
            }
        }
        let blob = self.blob_path(&digest);
        // Written when missing, or again when damaged.
        let intact = std::fs::read(&blob).is_ok_and(|bytes| digest_of(&bytes) == digest);
        if !intact {
            write_atomically(&blob, component)?;
        }
        if let Some(signature) = signature {
            write_atomically(&signature_path(&blob), signature.as_bytes())?;
        }
        let text = toml::to_string(&entry).map_err(|error| StoreError::Invalid {
            path: entry_path.display().to_string(),
            message: error.to_string(),
        })?;
        write_atomically(&entry_path, text.as_bytes())?;
        Ok(entry)
    }

    /// The entry of `name@version`.
    pub fn get(&self, name: &str, version: &str) -> Result<Entry, StoreError> {
        let path = self.entry_path(name, version);
        if !path.exists() {
            return Err(StoreError::Missing {
                plugin: format!("{name}@{version}"),
                store: self.root.display().to_string(),
            });
        }
        Entry::read(&path)
    }

    /// Every stored plugin, by name then version.
    pub fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let index = self.root.join("index");
        let mut entries = Vec::new();
        let Ok(names) = std::fs::read_dir(&index) else {
            return Ok(entries);
        };
        for name in names {
            let name = name.map_err(io_error(&index))?.path();
            for version in std::fs::read_dir(&name).map_err(io_error(&name))? {
                let path = version.map_err(io_error(&name))?.path();
                if path.extension().is_some_and(|e| e == "toml") {
                    entries.push(Entry::read(&path)?);
                }
            }
        }
        entries.sort_by(|a, b| {
            (&a.manifest.name, &a.manifest.version).cmp(&(&b.manifest.name, &b.manifest.version))
        });
        Ok(entries)
    }

    /// Check that `entry`'s component is present and still has its digest.
    pub fn verify(&self, entry: &Entry) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(&entry.digest);
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        let actual = digest_of(&bytes);
        if actual != entry.digest {
            return Err(StoreError::Damaged {
                plugin: entry.id(),
                path: path.display().to_string(),
                expected: entry.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// The detached signature stored with the component `digest`, if any.
    pub fn signature(&self, digest: &str) -> Option<String> {
        std::fs::read_to_string(signature_path(&self.blob_path(digest))).ok()
    }
}

/// Where a store rooted at `root` keeps the component `digest`.
pub fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs")
        .join("sha256")
        .join(digest.trim_start_matches("sha256:").to_ascii_lowercase())
}

/// Where a store rooted at `root` keeps the index entry of `name@version`.
pub fn entry_path(root: &Path, name: &str, version: &str) -> PathBuf {
    root.join("index")
        .join(name)
        .join(format!("{version}.toml"))
}

fn signature_path(blob: &Path) -> PathBuf {
    let mut path = blob.as_os_str().to_owned();
    path.push(".sig");
    path.into()
}

/// Write `bytes` to `path` through a temporary file and a rename, so readers
/// never see a partial file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    // Unique per process and write: replicas sharing a store over a
    // network volume may all be process 1 in their containers.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp{}-{write}-{nanos}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes).map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests;
