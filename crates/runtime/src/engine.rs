//! The engine's configuration and the epoch ticker that drives call deadlines.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
        let ticker = EpochTicker::spawn(&engine)?;
        Ok(Self {
            engine,
            ticker,
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

/// How long a resting ticker sleeps before it looks whether its engine is
/// gone, or a call marked itself without waking it (a call that starts
/// wakes it at once; this bounds what a lost wake-up could cost). In this
/// crate's unit tests it is a minute, so that a test sees such a call.
const REST: Duration = if cfg!(test) {
    Duration::from_secs(60)
} else {
    Duration::from_secs(1)
};

/// One engine's epoch ticker. It advances the epoch every [`EPOCH_TICK`]
/// while guest code may be running, so that a call past its deadline is
/// interrupted, and rests once no call can still be inside its deadline:
/// an idle gateway does not wake 200 times a second.
///
/// Each entry into guest code (after its deadline is set) marks that a
/// call started; each tick takes the mark back. A tick that finds no mark
/// for longer than the longest deadline any call of the engine was given
/// (plus two ticks: the mark and the deadline may be a tick apart) knows
/// every call has ended or been interrupted, and the ticker parks. The
/// next call's mark finds it parked and wakes it. Both sides write their
/// own flag first and then read the other's (sequentially consistent), so
/// at least one of them sees the other: a call never runs while the ticker
/// rests.
pub(crate) struct EpochTicker {
    /// A call entered guest code since the last tick.
    started: AtomicBool,
    /// The ticker is parked, or about to be.
    resting: AtomicBool,
    /// The longest deadline, in ticks, any call of this engine was given.
    longest_deadline: AtomicU64,
    /// The ticker's thread, to wake it.
    thread: OnceLock<std::thread::Thread>,
}

impl EpochTicker {
    /// Start the ticker of `engine`; it ends once the engine is dropped.
    fn spawn(engine: &Engine) -> Result<Arc<Self>, RuntimeError> {
        let ticker = Arc::new(Self {
            started: AtomicBool::new(false),
            resting: AtomicBool::new(false),
            longest_deadline: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let weak = engine.weak();
        let own = ticker.clone();
        let handle = std::thread::Builder::new()
            .name("wsgate-epoch".into())
            .spawn(move || own.run(&weak))
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    /// Guest code is about to run, its deadline (`deadline_ticks`) set.
    pub(crate) fn call_starts(&self, deadline_ticks: u64) {
        if self.longest_deadline.load(Ordering::Relaxed) < deadline_ticks {
            self.longest_deadline
                .fetch_max(deadline_ticks, Ordering::SeqCst);
        }
        // Marked already and the ticker awake: it takes the mark at its
        // next tick, which covers this call too. (Were it resting, the
        // call that marked may not have woken it yet: this one wakes it
        // itself rather than wait on another thread.)
        if self.started.load(Ordering::SeqCst) && !self.resting.load(Ordering::SeqCst) {
            return;
        }
        self.started.store(true, Ordering::SeqCst);
        if self.resting.load(Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
    }

    /// Whether the ticker is resting (tests wait for it).
    #[cfg(test)]
    pub(crate) fn is_resting(&self) -> bool {
        self.resting.load(Ordering::SeqCst)
    }

    fn run(&self, engine: &wasmtime::EngineWeak) {
        // Ticks since a tick last found a call's mark.
        let mut quiet: u64 = 0;
        while let Some(engine) = engine.upgrade() {
            engine.increment_epoch();
            TICKS.fetch_add(1, Ordering::Relaxed);
            drop(engine);
            if self.started.swap(false, Ordering::SeqCst) {
                quiet = 0;
            } else {
                quiet = quiet.saturating_add(1);
            }
            let longest = self.longest_deadline.load(Ordering::SeqCst);
            if quiet <= longest.saturating_add(2) {
                std::thread::sleep(EPOCH_TICK);
                continue;
            }
            // Every call has ended or passed its deadline: rest, unless a
            // call marked itself meanwhile (it may not have seen `resting`).
            self.resting.store(true, Ordering::SeqCst);
            if !self.started.load(Ordering::SeqCst) {
                std::thread::park_timeout(REST);
            }
            self.resting.store(false, Ordering::SeqCst);
            // A whole tick before the next: a call that woke it gets its
            // deadline's ticks as when the ticker never rested (the first
            // one counts the tick already under way).
            std::thread::sleep(EPOCH_TICK);
        }
    }
}
