//! Pools of fungible plugin instances, and fault containment per call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::{Store, StoreLimitsBuilder, Trap};

use crate::bindings::{Hooks, types};
use crate::host::{CallContext, HostState};
use crate::{EPOCH_TICK, Plugin, RuntimeError};

/// Most idle instances a pool keeps; more are created under load and dropped after.
const MAX_IDLE: usize = 8;

/// Why one plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The call overran its deadline (an endless loop, or just too slow).
    Deadline,
    /// The instance tried to grow its memory past the cap.
    Memory,
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access).
    Trap,
    /// A fresh instance could not be created.
    Instantiate,
}

impl FaultKind {
    /// A short lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Trap => "trap",
            Self::Instantiate => "instantiate",
        }
    }
}

/// A failed plugin call. The instance that failed has been discarded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin} failed ({}): {message}", kind.as_str())]
pub struct PluginFault {
    /// The plugin as `name@version`.
    pub plugin: Arc<str>,
    /// What went wrong.
    pub kind: FaultKind,
    /// Details from the runtime.
    pub message: String,
}

/// Call and fault counts of one pool.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that overran their deadline.
    pub deadline_faults: AtomicU64,
    /// Calls that hit the memory cap.
    pub memory_faults: AtomicU64,
    /// Calls that trapped.
    pub trap_faults: AtomicU64,
    /// Instances that could not be created.
    pub instantiate_faults: AtomicU64,
    /// Instances created (the first at load, then to replace faulted ones
    /// or to serve concurrent calls).
    pub instances_created: AtomicU64,
}

impl PluginStats {
    fn count(&self, kind: FaultKind) {
        let counter = match kind {
            FaultKind::Deadline => &self.deadline_faults,
            FaultKind::Memory => &self.memory_faults,
            FaultKind::Trap => &self.trap_faults,
            FaultKind::Instantiate => &self.instantiate_faults,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Faults of every kind.
    pub fn faults(&self) -> u64 {
        self.deadline_faults.load(Ordering::Relaxed)
            + self.memory_faults.load(Ordering::Relaxed)
            + self.trap_faults.load(Ordering::Relaxed)
            + self.instantiate_faults.load(Ordering::Relaxed)
    }
}

struct PluginInstance {
    store: Store<HostState>,
    hooks: Hooks,
}

/// Instances of one plugin configured with one configuration.
pub struct PluginPool {
    plugin: Arc<Plugin>,
    config_json: Arc<str>,
    deadline_ticks: u64,
    idle: Mutex<Vec<PluginInstance>>,
    stats: PluginStats,
}

impl std::fmt::Debug for PluginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginPool")
            .field("plugin", &self.plugin.id())
            .field("config", &self.config_json)
            .finish_non_exhaustive()
    }
}

impl PluginPool {
    /// Create a pool and one configured instance; the plugin's `configure`
    /// runs here, so a bad configuration is reported before traffic flows.
    pub fn new(plugin: Arc<Plugin>, config_json: &str) -> Result<Self, RuntimeError> {
        let tick = EPOCH_TICK.as_nanos().max(1);
        let ticks = plugin.budget().deadline.as_nanos().div_ceil(tick);
        // One extra tick: the current tick may be about to end.
        let deadline_ticks = u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1);
        let pool = Self {
            plugin,
            config_json: config_json.into(),
            deadline_ticks,
            idle: Mutex::new(Vec::new()),
            stats: PluginStats::default(),
        };
        let first = pool.instantiate()?;
        pool.put_back(first);
        Ok(pool)
    }

    /// The plugin this pool runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Its configuration, as JSON text.
    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    /// Call and fault counts.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// Idle instances held right now.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Run the plugin's upgrade hook.
    pub fn on_upgrade(
        &self,
        context: &mut CallContext,
        request: &types::UpgradeRequest,
    ) -> Result<types::UpgradeVerdict, PluginFault> {
        self.call(context, |instance| match &instance.hooks.upgrade {
            Some(hook) => hook.call_on_upgrade(&mut instance.store, request),
            None => Err(wasmtime::Error::msg("the plugin has no upgrade hook")),
        })
    }

    /// Run the plugin's message hook.
    pub fn on_message(
        &self,
        context: &mut CallContext,
        direction: types::Direction,
        message: &types::Message,
    ) -> Result<types::MessageVerdict, PluginFault> {
        self.call(context, |instance| match &instance.hooks.message {
            Some(hook) => hook.call_on_message(&mut instance.store, direction, message),
            None => Err(wasmtime::Error::msg("the plugin has no message hook")),
        })
    }

    /// Take an instance, run `f` with `context` installed, and give the
    /// instance back, or discard it if the call failed.
    fn call<R>(
        &self,
        context: &mut CallContext,
        f: impl FnOnce(&mut PluginInstance) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFault> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut instance = match self.take() {
            Ok(instance) => instance,
            Err(error) => {
                self.stats.count(FaultKind::Instantiate);
                return Err(PluginFault {
                    plugin: self.plugin.id.clone(),
                    kind: FaultKind::Instantiate,
                    message: error.to_string(),
                });
            }
        };
        let data = instance.store.data_mut();
        data.call = Some(CallContext {
            connection: context.connection.clone(),
            state: std::mem::take(&mut context.state),
        });
        instance.store.set_epoch_deadline(self.deadline_ticks);
        let result = f(&mut instance);
        if let Some(call) = instance.store.data_mut().call.take() {
            context.state = call.state;
        }
        match result {
            Ok(value) => {
                self.put_back(instance);
                Ok(value)
            }
            Err(error) => {
                let kind = classify(&error);
                self.stats.count(kind);
                // The instance is dropped here: its state may be corrupt.
                Err(PluginFault {
                    plugin: self.plugin.id.clone(),
                    kind,
                    message: format!("{error:#}"),
                })
            }
        }
    }

    fn take(&self) -> Result<PluginInstance, RuntimeError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(instance) => Ok(instance),
            None => self.instantiate(),
        }
    }

    fn put_back(&self, instance: PluginInstance) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(instance);
        }
    }

    /// Create and configure a fresh instance.
    fn instantiate(&self) -> Result<PluginInstance, RuntimeError> {
        let plugin = &self.plugin;
        let failed = |error: wasmtime::Error| RuntimeError::Instantiate {
            plugin: plugin.id().to_string(),
            message: format!("{error:#}"),
        };
        let limits = StoreLimitsBuilder::new()
            .memory_size(plugin.budget().memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState::new(plugin.id.clone(), self.config_json.clone(), limits);
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.deadline_ticks);
        let instance = plugin.pre.instantiate(&mut store).map_err(failed)?;
        let hooks = plugin.exports.load(&mut store, &instance).map_err(failed)?;
        store.set_epoch_deadline(self.deadline_ticks);
        hooks
            .lifecycle
            .call_configure(&mut store, &self.config_json)
            .map_err(failed)?
            .map_err(|error| RuntimeError::Config {
                plugin: plugin.id().to_string(),
                field: error.field,
                message: error.message,
            })?;
        self.stats.instances_created.fetch_add(1, Ordering::Relaxed);
        Ok(PluginInstance { store, hooks })
    }
}

fn classify(error: &wasmtime::Error) -> FaultKind {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FaultKind::Deadline,
        Some(_) => FaultKind::Trap,
        None if format!("{error:#}").contains("memory") => FaultKind::Memory,
        None => FaultKind::Trap,
    }
}
