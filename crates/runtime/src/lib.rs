//! The plugin runtime: hosts wsgate plugins (WebAssembly components) with wasmtime.
//!
//! * [`Runtime`] owns the engine (epoch interruption, trimmed features), the
//!   linker (the `wsgate:plugin/host` interface and WASI with an empty
//!   context) and the epoch ticker thread.
//! * [`Runtime::load`] compiles one declared plugin, checks its digest and
//!   tells its role from its exports.
//! * [`PluginPool`] keeps fungible instances of one plugin with one
//!   configuration; any instance serves any connection, one call at a time.
//!   Per-connection state lives in the host ([`CallContext`]), not in guests.
//! * A call that traps, overruns its deadline or its memory cap returns a
//!   [`PluginFault`]; the instance that failed is discarded, never reused.

mod bindings;
mod host;
mod pool;
pub mod signing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config as EngineConfig, Engine};

pub use bindings::types::{
    CloseFrame, Direction, Header, HeaderOp, LogLevel, Message, MessageVerdict, Rejection, Route,
    UpgradeRequest, UpgradeVerdict,
};
pub use host::{CallContext, ConnectionInfo, StateMap};
pub use pool::{
    FaultKind, LATENCY_BUCKETS_US, LatencyHistogram, PluginFault, PluginPool, PluginStats,
};

use host::HostState;

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Export names that tell a plugin's role.
const LIFECYCLE_EXPORT: &str = "wsgate:plugin/lifecycle@0.1.0";
const UPGRADE_EXPORT: &str = "wsgate:plugin/upgrade@0.1.0";
const MESSAGE_EXPORT: &str = "wsgate:plugin/message@0.1.0";

/// Why the runtime could not start or a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine or linker could not be set up.
    #[error("cannot start the plugin runtime: {0}")]
    Engine(String),
    /// The plugin's file could not be read.
    #[error("plugin {plugin}: cannot read {path}: {message}")]
    Read {
        /// The plugin as `name@version`.
        plugin: String,
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The file's digest differs from the pinned one.
    #[error(
        "plugin {plugin}: digest mismatch: the configuration pins {expected} but {path} is {actual}"
    )]
    Digest {
        /// The plugin as `name@version`.
        plugin: String,
        /// The file.
        path: String,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The file is not a valid component, or it does not fit the contract.
    #[error("plugin {plugin}: {message}")]
    Invalid {
        /// The plugin as `name@version`.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The plugin's signature is missing where required, or does not verify.
    #[error("plugin {plugin}: {message}")]
    Signature {
        /// The plugin as `name@version`.
        plugin: String,
        /// Why it was refused.
        message: String,
    },
    /// The plugin refused its configuration.
    #[error("plugin {plugin} rejects its config at `{field}`: {message}")]
    Config {
        /// The plugin as `name@version`.
        plugin: String,
        /// The offending field, as a JSON Pointer (empty: the whole config).
        field: String,
        /// The plugin's explanation.
        message: String,
    },
    /// Creating or configuring an instance failed (trap, limit).
    #[error("plugin {plugin}: cannot create an instance: {message}")]
    Instantiate {
        /// The plugin as `name@version`.
        plugin: String,
        /// What failed.
        message: String,
    },
}

/// The hooks a plugin implements, told from its component's exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Exports `wsgate:plugin/upgrade`: may sit in an upgrade chain.
    pub upgrade: bool,
    /// Exports `wsgate:plugin/message`: may sit in a message chain.
    pub message: bool,
}

/// Sandbox budget of one plugin.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Longest time one call may run.
    pub deadline: Duration,
    /// Largest linear memory, in bytes.
    pub memory_limit: usize,
    /// Largest output of one call, in bytes.
    pub max_output: usize,
    /// Log lines per second, all instances together.
    pub log_rate: u32,
}

/// The engine, linker and epoch ticker shared by every plugin.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    /// Compiled components by content digest: reloading an unchanged plugin
    /// (another endpoint, a new configuration) skips compilation.
    compiled: Arc<Mutex<HashMap<String, Component>>>,
    /// Where precompiled components persist across restarts, if anywhere.
    cache_dir: Option<std::path::PathBuf>,
}

impl Runtime {
    /// Start an engine with epoch interruption and a ticker thread.
    pub fn new() -> Result<Self, RuntimeError> {
        Self::with_cache(None)
    }

    /// [`Runtime::new`], keeping precompiled plugins in `cache_dir`
    /// (created if missing) so later starts skip compilation.
    pub fn with_cache(cache_dir: Option<std::path::PathBuf>) -> Result<Self, RuntimeError> {
        let mut config = EngineConfig::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let linker = host::linker(&engine).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        spawn_epoch_ticker(&engine)?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            compiled: Arc::default(),
            cache_dir,
        })
    }

    /// Compile the plugin `decl`, check its pinned digest and tell its role.
    /// Signatures are not checked; see [`Runtime::load_signed`].
    pub fn load(&self, decl: &wsgate_config::PluginDecl) -> Result<Arc<Plugin>, RuntimeError> {
        self.load_signed(decl, &wsgate_config::Signing::default())
    }

    /// [`Runtime::load`], also checking the plugin's detached signature
    /// against `signing`: a signature that is present must verify with a
    /// trusted key; an unsigned plugin is refused when `signing` requires
    /// signatures.
    pub fn load_signed(
        &self,
        decl: &wsgate_config::PluginDecl,
        signing: &wsgate_config::Signing,
    ) -> Result<Arc<Plugin>, RuntimeError> {
        let id = decl.id();
        let path = decl.path.display().to_string();
        let bytes = std::fs::read(&decl.path).map_err(|e| RuntimeError::Read {
            plugin: id.clone(),
            path: path.clone(),
            message: e.to_string(),
        })?;
        let digest = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
        if let Some(expected) = &decl.digest
            && !expected.get_ref().eq_ignore_ascii_case(&digest)
        {
            return Err(RuntimeError::Digest {
                plugin: id,
                path,
                expected: expected.get_ref().clone(),
                actual: digest,
            });
        }
        let invalid = |message: String| RuntimeError::Invalid {
            plugin: id.clone(),
            message,
        };
        if let Some(entry) = &decl.store_entry {
            check_store_entry(entry, &digest).map_err(invalid)?;
        }
        let signed_by =
            check_signature(decl, signing, &bytes).map_err(|message| RuntimeError::Signature {
                plugin: id.clone(),
                message,
            })?;
        let component = self
            .compile(&digest, &bytes)
            .map_err(|e| invalid(format!("{path} is not a loadable component: {e:#}")))?;
        let info = self.describe(&component).map_err(invalid)?;
        for (import, capability) in &info.imports {
            if let Some(capability) = capability
                && !decl.grants.contains(capability)
            {
                return Err(invalid(format!(
                    "imports {import}, which needs the `{}` capability; it is not granted (add it to the plugin's grants)",
                    capability.as_str()
                )));
            }
        }
        let roles = info.roles;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "imports something the gateway does not offer: {e:#}"
            ))
        })?;
        let exports = bindings::Exports::new(&pre, roles)
            .map_err(|e| invalid(format!("exports do not match the contract: {e:#}")))?;
        Ok(Arc::new(Plugin {
            id: id.as_str().into(),
            digest,
            signed_by,
            roles,
            budget: Budget {
                deadline: decl.deadline.0,
                memory_limit: usize::try_from(decl.memory_limit.0).unwrap_or(usize::MAX),
                max_output: usize::try_from(decl.max_output.0).unwrap_or(usize::MAX),
                log_rate: decl.log_rate,
            },
            engine: self.engine.clone(),
            pre,
            exports,
        }))
    }
}

/// What a component imports and exports, as the gateway sees it.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    /// The hooks it implements.
    pub roles: Roles,
    /// Every import, with the capability it needs (`None`: reaches nothing).
    pub imports: Vec<(String, Option<wsgate_config::Capability>)>,
    /// Every export.
    pub exports: Vec<String>,
}

impl ComponentInfo {
    /// Whether `manifest` tells the truth about this component: the same
    /// role, and a request for every capability its imports need.
    pub fn check_manifest(&self, manifest: &wsgate_store::Manifest) -> Result<(), String> {
        let role = wsgate_store::Role::of_exports(self.roles.upgrade, self.roles.message);
        if role != Some(manifest.role) {
            return Err(format!(
                "the manifest says role `{}`, but the component is {}",
                manifest.role.as_str(),
                role.map_or("neither", wsgate_store::Role::as_str)
            ));
        }
        for (import, capability) in &self.imports {
            if let Some(capability) = capability
                && !manifest.capabilities.contains(capability)
            {
                return Err(format!(
                    "the component imports {import}, which needs the `{}` capability; the manifest does not request it",
                    capability.as_str()
                ));
            }
        }
        Ok(())
    }

    /// The capabilities its imports need, each once, in grant order.
    pub fn capabilities(&self) -> Vec<wsgate_config::Capability> {
        let mut needed: Vec<_> = self.imports.iter().filter_map(|(_, c)| *c).collect();
        needed.sort_by_key(|c| c.as_str());
        needed.dedup();
        needed
    }
}

impl Runtime {
    /// Compile `bytes` (or reuse their precompiled artifact) and describe
    /// the component: its role, imports with the capabilities they need,
    /// and exports. Refuses what the gateway could not load as a plugin.
    pub fn inspect(&self, bytes: &[u8]) -> Result<ComponentInfo, String> {
        let digest = format!("sha256:{:x}", sha2::Sha256::digest(bytes));
        let component = self
            .compile(&digest, bytes)
            .map_err(|e| format!("not a loadable component: {e:#}"))?;
        self.describe(&component)
    }

    /// The role, imports and exports of `component`, checked against the contract.
    fn describe(&self, component: &Component) -> Result<ComponentInfo, String> {
        let component_type = component.component_type();
        let exports: Vec<String> = component_type
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        if !has(LIFECYCLE_EXPORT) {
            return Err(format!(
                "does not export {LIFECYCLE_EXPORT}; build it against a wsgate:plugin world (exports: {})",
                exports.join(", ")
            ));
        }
        let roles = Roles {
            upgrade: has(UPGRADE_EXPORT),
            message: has(MESSAGE_EXPORT),
        };
        if !roles.upgrade && !roles.message {
            return Err(format!(
                "exports neither {UPGRADE_EXPORT} nor {MESSAGE_EXPORT}"
            ));
        }
        let imports = component_type
            .imports(&self.engine)
            .map(|(name, _)| (name.to_string(), wsgate_config::Capability::of_import(name)))
            .collect();
        Ok(ComponentInfo {
            roles,
            imports,
            exports,
        })
    }

    /// Compile `bytes`, or reuse the component compiled for `digest`.
    fn compile(&self, digest: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let cached = self
            .compiled
            .lock()
            .ok()
            .and_then(|compiled| compiled.get(digest).cloned());
        if let Some(component) = cached {
            return Ok(component);
        }
        let component = match &self.cache_dir {
            Some(dir) => self.compile_cached(dir, digest, bytes)?,
            None => Component::new(&self.engine, bytes)?,
        };
        if let Ok(mut compiled) = self.compiled.lock() {
            compiled.insert(digest.to_string(), component.clone());
        }
        Ok(component)
    }
}

impl Runtime {
    /// Load the precompiled artifact for `digest` from `dir`, or compile
    /// `bytes`, store the artifact (atomically) and load it.
    #[allow(unsafe_code)]
    fn compile_cached(
        &self,
        dir: &std::path::Path,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let name = format!(
            "{}-{:016x}.cwasm",
            digest.trim_start_matches("sha256:"),
            hasher.finish()
        );
        let path = dir.join(name);
        // Read into memory rather than mapping the file: an artifact replaced
        // or truncated on disk later cannot then fault the process.
        if let Ok(artifact) = std::fs::read(&path) {
            // SAFETY: artifacts in the cache directory are written only by
            // this function, from `Engine::precompile_component`, under a name
            // derived from the source's digest and this engine's
            // compatibility hash; wasmtime also checks the artifact's header
            // against the engine. The directory must be writable only by the
            // gateway (documented with `plugin-cache-dir`).
            match unsafe { Component::deserialize(&self.engine, &artifact) } {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "stale plugin cache entry; recompiling");
                }
            }
        }
        let artifact = self.engine.precompile_component(bytes)?;
        std::fs::create_dir_all(dir)?;
        // Unique per writer: two loads of one plugin may race (two deploys,
        // two runtimes in one process); each renames its own complete file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temporary = path.with_extension(format!("tmp{}-{write}", std::process::id()));
        std::fs::write(&temporary, &artifact)?;
        std::fs::rename(&temporary, &path)?;
        // SAFETY: `artifact` was just produced by this engine's
        // `precompile_component`.
        unsafe { Component::deserialize(&self.engine, &artifact) }
    }
}

/// A compiled plugin, ready to be instantiated into pools.
pub struct Plugin {
    id: Arc<str>,
    digest: String,
    signed_by: Option<String>,
    roles: Roles,
    budget: Budget,
    engine: Engine,
    pre: InstancePre<HostState>,
    exports: bindings::Exports,
}

impl Plugin {
    /// `name@version`.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The component's content digest, `sha256:…`.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// The trusted key that signed it, if it is signed.
    pub fn signed_by(&self) -> Option<&str> {
        self.signed_by.as_deref()
    }
    /// The hooks it implements.
    pub fn roles(&self) -> Roles {
        self.roles
    }
    /// Its sandbox budget.
    pub fn budget(&self) -> Budget {
        self.budget
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("id", &self.id)
            .field("digest", &self.digest)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// The plugin store's index entry must record the digest the configuration pins.
fn check_store_entry(entry: &std::path::Path, digest: &str) -> Result<(), String> {
    if !entry.exists() {
        return Err(format!(
            "not in the plugin store (no {}; add it with `wsgate plugin add`)",
            entry.display()
        ));
    }
    let recorded = wsgate_store::Entry::read(entry).map_err(|e| e.to_string())?;
    if !recorded.digest.eq_ignore_ascii_case(digest) {
        return Err(format!(
            "the plugin store has it as {}, but the configuration pins {digest}",
            recorded.digest
        ));
    }
    Ok(())
}

/// The trusted key that signed `bytes`, `None` if unsigned (and allowed).
fn check_signature(
    decl: &wsgate_config::PluginDecl,
    signing: &wsgate_config::Signing,
    bytes: &[u8],
) -> Result<Option<String>, String> {
    let path = decl.signature.clone().unwrap_or_else(|| {
        let mut path = decl.path.clone().into_os_string();
        path.push(".sig");
        path.into()
    });
    match std::fs::read_to_string(&path) {
        Ok(file) => {
            let trusted = signing
                .trusted_keys
                .iter()
                .map(|k| (k.name.as_str(), k.public_key.as_str()));
            signing::verify(&file, bytes, trusted)
                .map(Some)
                .map_err(|e| format!("signature {}: {e}", path.display()))
        }
        Err(_) if decl.signature.is_some() => {
            Err(format!("cannot read its signature file {}", path.display()))
        }
        Err(_) if signing.require_signed => Err(format!(
            "unsigned (no {}), and [signing] require-signed is set",
            path.display()
        )),
        Err(_) => Ok(None),
    }
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wsgate-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    /// Released contract versions never change: plugins built against
    /// `wsgate:plugin@0.1.0` must keep loading. Changing the WIT means a new
    /// package version (and a new entry here), never an edit of this one.
    #[test]
    fn the_released_wit_contract_is_unchanged() {
        let text = include_str!("../../../wit/plugin.wit");
        assert!(text.contains("package wsgate:plugin@0.1.0;"));
        let digest = format!("{:x}", sha2::Sha256::digest(text.as_bytes()));
        assert_eq!(
            digest, "6a0a48eaf9c92e3c4581c2e613732f197cf89816a243bfe384e52d3e4a66917b",
            "wit/plugin.wit changed: released contract text is frozen; add a new package version instead"
        );
    }
}
