//! Loading a declared plugin: its bytes, pinned digest, store entry,
//! signature and grants, then compiling it and resolving its hooks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::Digest;
use wasmtime::Engine;
use wasmtime::component::InstancePre;

use crate::host::HostState;
use crate::offload::{Offload, OffloadSettings};
use crate::{Contract, Roles, Runtime, RuntimeError, bindings, signing};

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
    /// What the plugin may make the host hold or do on its behalf.
    pub host: HostBudget,
    /// When and how its calls leave the I/O workers.
    pub offload: OffloadSettings,
}

/// What one plugin may make the host hold or do for it: each bound is
/// checked where the host takes the resource, and exceeding one faults the
/// call (the log's bounds truncate or drop instead).
#[derive(Debug, Clone, Copy)]
pub struct HostBudget {
    /// State bytes (keys and values) per connection.
    pub state_bytes: usize,
    /// State keys per connection.
    pub state_keys: usize,
    /// State bytes across all connections.
    pub state_total: usize,
    /// Attributes per connection, when this plugin publishes one.
    pub attributes: usize,
    /// Attribute bytes (names and values) per connection, when this plugin publishes one.
    pub attribute_bytes: usize,
    /// Longest attribute value.
    pub attribute_value: usize,
    /// Longest log line, in bytes (longer: cut and marked).
    pub log_line: usize,
    /// Log bytes per second, all instances together.
    pub log_bytes_rate: usize,
    /// Messages in one verdict.
    pub messages: usize,
}

impl HostBudget {
    /// The budget `decl` declares.
    pub fn of(decl: &wsgate_config::PluginDecl) -> Self {
        let bytes = |size: wsgate_config::ByteSize| usize::try_from(size.0).unwrap_or(usize::MAX);
        let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Self {
            state_bytes: bytes(decl.max_state),
            state_keys: count(decl.max_state_keys),
            state_total: decl.max_state_total.map_or(0, bytes),
            attributes: count(decl.max_attributes),
            attribute_bytes: bytes(decl.max_attribute_bytes),
            attribute_value: bytes(decl.max_attribute_value),
            log_line: bytes(decl.max_log_line),
            log_bytes_rate: bytes(decl.log_bytes_rate),
            messages: count(decl.max_messages),
        }
    }
}

impl Runtime {
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
            wsgate_store::check_entry(entry, &digest).map_err(invalid)?;
        }
        let signed_by =
            check_signature(decl, signing, &bytes).map_err(|message| RuntimeError::Signature {
                plugin: id.clone(),
                message,
            })?;
        let component = self
            .compile(&digest, &bytes)
            .map_err(|e| invalid(format!("{path} is not a loadable component: {e:#}")))?;
        let info = self.component_info(&component).map_err(invalid)?;
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
        let exports = bindings::Exports::new(&pre, roles, info.contract)
            .map_err(|e| invalid(format!("exports do not match the contract: {e:#}")))?;
        let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let offload = OffloadSettings {
            above: decl.offload_above.0,
            threads: count(decl.offload_threads),
            queue: count(decl.offload_queue),
        };
        Ok(Arc::new(Plugin {
            id: id.as_str().into(),
            digest,
            signed_by,
            roles,
            contract: info.contract,
            budget: Budget {
                deadline: decl.deadline.0,
                memory_limit: usize::try_from(decl.memory_limit.0).unwrap_or(usize::MAX),
                max_output: usize::try_from(decl.max_output.0).unwrap_or(usize::MAX),
                log_rate: decl.log_rate,
                host: HostBudget::of(decl),
                offload,
            },
            offload: Offload::new(id.as_str().into(), offload),
            state_held: Arc::default(),
            quotas: self.quotas.clone(),
            quota_scope: Arc::new(wsgate_quota::QuotaScope::new(
                decl.name.get_ref(),
                usize::try_from(decl.max_quota_key.0).unwrap_or(usize::MAX),
                usize::try_from(decl.max_quota_keys).unwrap_or(usize::MAX),
            )),
            engine: self.engine.clone(),
            ticker: self.ticker.clone(),
            pre,
            exports,
        }))
    }
}

/// A compiled plugin, ready to be instantiated into pools.
pub struct Plugin {
    pub(crate) id: Arc<str>,
    digest: String,
    signed_by: Option<String>,
    roles: Roles,
    contract: Contract,
    budget: Budget,
    /// Its recent call time and its offload threads, for all its pools.
    pub(crate) offload: Offload,
    /// State bytes all connections hold for this plugin now.
    pub(crate) state_held: Arc<AtomicUsize>,
    /// The quotas it counts in, and its scope and budget there.
    pub(crate) quotas: Arc<wsgate_quota::Quotas>,
    pub(crate) quota_scope: Arc<wsgate_quota::QuotaScope>,
    pub(crate) engine: Engine,
    /// Its engine's epoch ticker, told when a call enters guest code.
    pub(crate) ticker: Arc<crate::engine::EpochTicker>,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) exports: bindings::Exports,
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
    /// The contract version it was built against.
    pub fn contract(&self) -> Contract {
        self.contract
    }
    /// Its sandbox budget.
    pub fn budget(&self) -> Budget {
        self.budget
    }
    /// The moving average of its recent call times (all its pools).
    pub fn recent_call_time(&self) -> Duration {
        self.offload.recent()
    }

    /// Whether its calls run on its offload threads now (recent calls slower
    /// than its `offload-above`).
    pub fn is_offloaded(&self) -> bool {
        self.offload.is_slow()
    }

    /// State bytes all connections hold for it now.
    pub fn state_held(&self) -> usize {
        self.state_held.load(Ordering::Relaxed)
    }
    /// Quota buckets it holds now.
    pub fn quota_buckets(&self) -> usize {
        self.quota_scope.held()
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
