//! The state every request and every relay task of one gateway shares.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

use tokio_util::task::TaskTracker;
use wsgate_monitor::Monitor;
use wsgate_runtime::Runtime;

use crate::counters::TrafficCounters;
use crate::drain::Drain;
use crate::gateway::DeployRecord;
use crate::generation::Generation;
use crate::ledger::Ledger;
use crate::listener::Listeners;
use crate::shadow::Shadow;
use crate::signal::Signal;
use crate::workers::Workers;

/// State shared by the listener, every request and every relay task.
pub(crate) struct Shared {
    /// The generation new connections use.
    pub generation: RwLock<Arc<Generation>>,
    /// Every generation ever installed, to list the ones still alive.
    pub generations: Mutex<Vec<Weak<Generation>>>,
    /// The id the next deploy gets.
    pub next_generation: AtomicU64,
    /// Every deploy attempt, oldest first.
    pub deploys: Mutex<Vec<DeployRecord>>,
    /// Deploy attempts since start: installed, refused.
    pub deploy_totals: [std::sync::atomic::AtomicU64; 2],
    /// Serialises deploys.
    pub deploying: tokio::sync::Mutex<()>,
    /// Compiles and loads plugins for deploys.
    pub runtime: Runtime,
    /// The client-facing listener and the embedded echo servers.
    pub listeners: Listeners,
    next_id: AtomicU64,
    /// False once shutdown has begun.
    pub ready: AtomicBool,
    /// Fired at shutdown: every accept loop and relay stops.
    pub shutdown: Arc<Signal>,
    /// The drain (SIGTERM, `POST /api/drain`): relays close at their
    /// instant in its window.
    pub drain: Arc<Drain>,
    /// Every task the gateway spawned, to wait for at shutdown.
    pub tracker: TaskTracker,
    /// The traffic monitor (its storage is set at start; deploys change
    /// only what each endpoint records).
    pub monitor: Monitor,
    /// Traffic counters for `/metrics`.
    pub counters: Arc<TrafficCounters>,
    /// Open connections under every limit.
    pub ledger: Arc<Ledger>,
    /// The threads that serve connections.
    pub workers: Workers,
    /// The candidate generation running in the shadow of the serving
    /// one, if any.
    pub shadow: RwLock<Option<Arc<Shadow>>>,
    /// Exports traces (`[tracing]`, set at start), if it is on.
    pub tracer: Option<Arc<wsgate_trace::Tracer>>,
}

impl Shared {
    /// State for a gateway starting with `generation`.
    pub fn new(
        generation: Arc<Generation>,
        runtime: Runtime,
        monitor: Monitor,
        workers: Workers,
        tracer: Option<Arc<wsgate_trace::Tracer>>,
    ) -> Self {
        Self {
            next_generation: AtomicU64::new(generation.id + 1),
            generations: Mutex::new(vec![Arc::downgrade(&generation)]),
            generation: RwLock::new(generation),
            deploys: Mutex::new(Vec::new()),
            deploy_totals: Default::default(),
            deploying: tokio::sync::Mutex::new(()),
            runtime,
            listeners: Listeners::default(),
            next_id: AtomicU64::new(1),
            ready: AtomicBool::new(true),
            shutdown: Arc::new(Signal::new()),
            drain: Arc::default(),
            tracker: TaskTracker::new(),
            monitor,
            counters: Arc::default(),
            ledger: Arc::default(),
            workers,
            shadow: RwLock::new(None),
            tracer,
        }
    }

    /// The shadow generation, if one runs.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The configuration generation new connections use.
    pub fn generation(&self) -> Arc<Generation> {
        match self.generation.read() {
            Ok(generation) => generation.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Every generation still alive, oldest first (the list, pruned).
    pub fn live_generations(&self) -> MutexGuard<'_, Vec<Weak<Generation>>> {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        generations.retain(|g| g.strong_count() > 0);
        generations
    }

    /// A new connection's id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
