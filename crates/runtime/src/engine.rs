//! The engine's configuration and the epoch ticker that drives call deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::{Config as EngineConfig, Engine};

use crate::{Runtime, RuntimeError, host};

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

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
            quotas: Arc::default(),
        })
    }

    /// This runtime, its plugins counting in `quotas` (each gateway has
    /// its own; a fresh runtime has an empty, local one).
    pub fn with_quotas(&self, quotas: Arc<wsgate_quota::Quotas>) -> Self {
        Self {
            quotas,
            ..self.clone()
        }
    }

    /// The quotas its plugins count in.
    pub fn quotas(&self) -> &Arc<wsgate_quota::Quotas> {
        &self.quotas
    }
}

/// Epoch ticks so far, of every engine in the process: a call that sees
/// this change ran across a tick, so it may have been slow (the pool then
/// times the plugin's next call; see `pool::TIME_ONE_CALL_IN`).
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Epoch ticks so far (see [`TICKS`]).
pub(crate) fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wsgate-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                TICKS.fetch_add(1, Ordering::Relaxed);
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))
}
