//! A running gateway's lifecycle: start, deploy (with its history), the
//! live generations, shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use wsgate_config::{Config, ConfigErrors};
use wsgate_monitor::Monitor;
use wsgate_runtime::Runtime;

use crate::config_diff;
use crate::counters::TrafficCounters;
use crate::drain::{Drain, DrainPhase};
use crate::generation::Generation;
use crate::listener::{self, BindError};
use crate::shadow::Shadow;
use crate::shared::Shared;
use crate::workers::Workers;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its first configuration could not be deployed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The traffic monitor could not start.
    #[error(transparent)]
    Monitor(#[from] wsgate_monitor::MonitorError),
    /// Trace export could not start.
    #[error(transparent)]
    Tracing(#[from] wsgate_trace::TraceError),
    /// The connection worker threads could not start.
    #[error("cannot start the connection workers: {0}")]
    Workers(std::io::Error),
}

/// Why a deploy was refused; the running configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The configuration is invalid or a plugin failed to load.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// A listener the configuration adds could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The gateway is draining: it takes no new configuration.
    #[error("the gateway is draining; deploy to another replica")]
    Draining,
    /// The shadow generation's thread could not start.
    #[error("cannot start the shadow: {0}")]
    Shadow(String),
}

impl DeployError {
    /// Each problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Config(errors) => errors.0.iter().map(ToString::to_string).collect(),
            Self::Bind(error) => vec![error.to_string()],
            Self::Draining | Self::Shadow(_) => vec![self.to_string()],
        }
    }
}

/// Deploy attempts the history keeps (the latest).
const MAX_DEPLOY_HISTORY: usize = 256;

/// One deploy attempt, for the deploy history.
#[derive(Debug, Clone)]
pub struct DeployRecord {
    /// When it was attempted.
    pub at: SystemTime,
    /// The generation it installed, if it succeeded.
    pub generation: Option<u64>,
    /// Where the configuration came from (a path, `SIGHUP`, the admin API).
    pub source: String,
    /// The problems that refused it, one per line.
    pub errors: Vec<String>,
    /// What it changed in the configuration's text, as unified-diff lines
    /// (secret values hidden); empty for a refused deploy.
    pub changes: Arc<[String]>,
}

/// A live generation and its open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationStatus {
    /// The generation's id.
    pub id: u64,
    /// Connections open on it.
    pub connections: u64,
    /// Whether new connections use it.
    pub current: bool,
}

/// A running gateway. Clones share it.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Load `config` (every plugin compiled and configured), bind the listener
    /// and the configured echo servers, and start serving.
    pub async fn start(config: Config, runtime: &Runtime) -> Result<Self, StartError> {
        let monitor = Monitor::start(&config.monitor)?;
        let tracer = wsgate_trace::Tracer::start(&config.tracing)?;
        // This gateway's own quotas: its plugins count there, and (with
        // `[cluster] redis`) reconcile with the other replicas.
        let runtime = runtime.with_quotas(Arc::default());
        wsgate_registry::fetch_plugins(&config)
            .await
            .map_err(DeployError::from)?;
        let generation =
            Arc::new(Generation::build(1, config, &runtime).map_err(DeployError::from)?);
        let workers = Workers::start(*generation.config.gateway.workers.get_ref())
            .map_err(StartError::Workers)?;
        let shared = Arc::new(Shared::new(
            generation.clone(),
            runtime,
            monitor,
            workers,
            tracer,
        ));
        listener::apply(&shared, &generation.config)
            .await
            .map_err(DeployError::from)?;
        let cluster = &generation.config.cluster;
        let redis = cluster
            .redis
            .as_ref()
            .map(|url| wsgate_quota::sync::RedisSettings {
                url: url.get_ref().clone(),
                interval: cluster.sync_interval.0,
                timeout: cluster.redis_timeout.0,
            });
        shared.tracker.spawn(wsgate_quota::sync::run(
            shared.runtime.quotas().clone(),
            redis,
            shared.shutdown.child_token(),
        ));
        Ok(Self { shared })
    }

    /// Validate `config`, compile and configure every plugin, and only then
    /// make it the generation new connections use. Open connections keep the
    /// generation they started with. On any problem nothing changes and every
    /// problem is returned.
    pub async fn deploy(&self, config: Config, source: &str) -> Result<u64, DeployError> {
        self.deploy_parsed(Ok(config), source).await
    }

    /// [`Gateway::deploy`] the configuration `text`, read from `path`
    /// (relative plugin paths resolve against its directory).
    pub async fn deploy_text(&self, text: &str, path: &Path) -> Result<u64, DeployError> {
        self.deploy_source(text, path, &path.display().to_string())
            .await
    }

    /// [`Gateway::deploy_text`], recorded in the history as from `source`.
    pub async fn deploy_source(
        &self,
        text: &str,
        path: &Path,
        source: &str,
    ) -> Result<u64, DeployError> {
        self.deploy_parsed(wsgate_config::parse(text, path), source)
            .await
    }

    /// [`Gateway::deploy`] the configuration file at `path`.
    pub async fn deploy_file(&self, path: &Path, source: &str) -> Result<u64, DeployError> {
        self.deploy_parsed(wsgate_config::load(path), source).await
    }

    /// Deploy, and record the attempt (refused ones too) in the history.
    async fn deploy_parsed(
        &self,
        config: Result<Config, ConfigErrors>,
        source: &str,
    ) -> Result<u64, DeployError> {
        let _deploying = self.shared.deploying.lock().await;
        let id = self.shared.next_generation.load(Ordering::Relaxed);
        let serving = self.generation();
        let deployed_text = config.as_ref().ok().map(|c| c.source.clone());
        let result = if self.shared.drain.phase() == DrainPhase::Serving {
            self.build_and_install(id, config).await
        } else {
            Err(DeployError::Draining)
        };
        match &result {
            Ok(id) => tracing::info!(generation = id, source, "deployed"),
            Err(error) => tracing::warn!(
                source,
                problems = error.problems().len(),
                "deploy refused; the running configuration keeps serving"
            ),
        }
        let record = DeployRecord {
            at: SystemTime::now(),
            generation: result.as_ref().ok().copied(),
            source: source.to_string(),
            errors: result
                .as_ref()
                .err()
                .map(DeployError::problems)
                .unwrap_or_default(),
            changes: match (&result, deployed_text) {
                (Ok(_), Some(deployed)) => {
                    config_diff::changes(serving.config.source.text(), deployed.text()).into()
                }
                _ => Arc::default(),
            },
        };
        if let Some(total) = self.shared.deploy_totals.get(usize::from(result.is_err())) {
            total.fetch_add(1, Ordering::Relaxed);
        }
        let mut history = self
            .shared
            .deploys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if history.len() >= MAX_DEPLOY_HISTORY {
            history.remove(0);
        }
        history.push(record);
        result
    }

    /// Run the configuration `text` (read from `path`) in the shadow of
    /// the serving generation: its chains see `sample` of the connections
    /// on its endpoints (every n-th), their verdicts compared and never
    /// applied, off the serving path; its quotas count apart. Replaces a
    /// shadow already running. The serving generation is untouched.
    pub async fn deploy_shadow(
        &self,
        text: &str,
        path: &Path,
        source: &str,
        sample: f64,
    ) -> Result<u64, DeployError> {
        let _deploying = self.shared.deploying.lock().await;
        if self.shared.drain.phase() != DrainPhase::Serving {
            return Err(DeployError::Draining);
        }
        let config = wsgate_config::parse(text, path)?;
        wsgate_registry::fetch_plugins(&config).await?;
        let id = self.shared.next_generation.fetch_add(1, Ordering::Relaxed);
        let runtime = self.shared.runtime.with_quotas(Arc::default());
        let generation = Arc::new(Generation::build(id, config, &runtime)?);
        let shadow = Shadow::start(
            generation,
            source.to_string(),
            text.to_string(),
            path.to_path_buf(),
            sample,
            self.shared.monitor.mask().clone(),
        )
        .map_err(|error| DeployError::Shadow(error.to_string()))?;
        tracing::info!(generation = id, source, sample, "shadow deployed");
        *self
            .shared
            .shadow
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(shadow));
        Ok(id)
    }

    /// The shadow generation, if one runs.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shared.shadow()
    }

    /// Stop the shadow generation; whether one ran.
    pub fn stop_shadow(&self) -> bool {
        let stopped = self
            .shared
            .shadow
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        stopped.is_some()
    }

    /// Deploy the shadow's configuration as the serving generation (as
    /// [`Gateway::deploy_text`]) and stop the shadow; `None` when no
    /// shadow runs.
    pub async fn promote_shadow(&self) -> Option<Result<u64, DeployError>> {
        let shadow = self.shadow()?;
        let source = format!("promoted shadow ({})", shadow.source);
        let result = self
            .deploy_source(&shadow.text, &shadow.path, &source)
            .await;
        if result.is_ok() {
            // Only the shadow promoted: one deployed meanwhile keeps running.
            let mut running = self
                .shared
                .shadow
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if running.as_ref().is_some_and(|r| Arc::ptr_eq(r, &shadow)) {
                *running = None;
            }
        }
        Some(result)
    }

    /// Build generation `id` from `config`, bind what it adds, install it.
    async fn build_and_install(
        &self,
        id: u64,
        config: Result<Config, ConfigErrors>,
    ) -> Result<u64, DeployError> {
        let config = config?;
        // Plugins published in a registry and not yet in the store.
        wsgate_registry::fetch_plugins(&config).await?;
        let mut generation = Generation::build(id, config, &self.shared.runtime)?;
        generation.carry_limits_from(&self.shared.generation());
        let generation = Arc::new(generation);
        // A drain may have begun while the plugins compiled.
        if self.shared.drain.phase() != DrainPhase::Serving {
            return Err(DeployError::Draining);
        }
        listener::apply(&self.shared, &generation.config).await?;
        self.install(generation);
        Ok(id)
    }

    fn install(&self, generation: Arc<Generation>) {
        self.shared
            .next_generation
            .store(generation.id + 1, Ordering::Relaxed);
        self.shared
            .live_generations()
            .push(Arc::downgrade(&generation));
        *self
            .shared
            .generation
            .write()
            .unwrap_or_else(PoisonError::into_inner) = generation;
    }

    /// The client-facing listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared
            .listeners
            .local_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Addresses of the embedded echo servers, in configuration order.
    pub fn echo_addrs(&self) -> Vec<SocketAddr> {
        self.shared.listeners.echo_addrs()
    }

    /// Proxied connections open right now.
    pub fn active_connections(&self) -> u64 {
        self.shared.ledger.active()
    }

    /// Client connections accepted and not yet answered (TLS, request
    /// head, upgrade chain, upstream connect under way).
    pub fn pending_upgrades(&self) -> u64 {
        self.shared.ledger.pending().0
    }

    /// Client connections closed at accept, by the configuration key of
    /// the pending limit that closed them.
    pub fn pending_refusals(&self) -> Vec<(&'static str, u64)> {
        self.shared
            .ledger
            .pending_refusals()
            .map(|(refusal, count)| (refusal.key(), count))
            .collect()
    }

    /// Wait until fewer than or exactly `count` connections are open.
    pub async fn wait_for_connections(&self, count: u64) {
        self.shared.ledger.wait_for_at_most(count).await;
    }

    /// The generation new connections use.
    pub fn generation(&self) -> Arc<Generation> {
        self.shared.generation()
    }

    /// Every generation still alive (the current one, and older ones with
    /// open connections), oldest first.
    pub fn generations(&self) -> Vec<GenerationStatus> {
        let current = self.generation().id;
        self.shared
            .live_generations()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|g| GenerationStatus {
                id: g.id,
                connections: g.active.load(Ordering::Relaxed),
                current: g.id == current,
            })
            .collect()
    }

    /// The generations still alive themselves, oldest first.
    pub fn live_generations(&self) -> Vec<Arc<Generation>> {
        self.shared
            .live_generations()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Deploy attempts since start: (installed, refused).
    pub fn deploy_totals(&self) -> (u64, u64) {
        let [installed, refused] = &self.shared.deploy_totals;
        (
            installed.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        )
    }

    /// The deploy attempts since start (the latest 256), oldest first.
    pub fn deploys(&self) -> Vec<DeployRecord> {
        self.shared
            .deploys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// False once shutdown has begun.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// Spans exported, dropped and lost since start (zeros when tracing is off).
    pub fn trace_totals(&self) -> wsgate_trace::TraceTotals {
        self.shared
            .tracer
            .as_ref()
            .map(|tracer| tracer.totals())
            .unwrap_or_default()
    }

    /// The traffic monitor.
    pub fn monitor(&self) -> &Monitor {
        &self.shared.monitor
    }

    /// Traffic counters: upgrades, messages, bytes, verdicts.
    pub fn counters(&self) -> &TrafficCounters {
        &self.shared.counters
    }

    /// The quotas this gateway's plugins count in (`quota.take`).
    pub fn quotas(&self) -> &Arc<wsgate_quota::Quotas> {
        self.shared.runtime.quotas()
    }

    /// Begin a drain, unless one has begun: `/readyz` turns 503 now; the
    /// listener keeps accepting for `drain-grace`, then stops; every
    /// connection is closed with 1012 to the client and 1001 to the
    /// upstream, each at its own instant over `drain-window`; the drain is
    /// done when none is left or `shutdown-timeout` after the window.
    /// Returns whether this call began it.
    pub fn drain(&self) -> bool {
        if !self.shared.drain.begin() {
            return false;
        }
        self.shared.ready.store(false, Ordering::Relaxed);
        let gateway = &self.generation().config.gateway;
        let (grace, window, timeout) = (
            gateway.drain_grace.0,
            gateway.drain_window.0,
            gateway.shutdown_timeout.0,
        );
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                // A stop (SIGINT, a second SIGTERM) ends the drain at once.
                () = shared.shutdown.fired() => {}
                () = drain(&shared, grace, window, timeout) => {}
            }
            shared.drain.finish();
        });
        true
    }

    /// The drain: its phase, its progress, and a wait for its end.
    pub fn drain_state(&self) -> &Drain {
        &self.shared.drain
    }

    /// Stop accepting, close every connection (1001 to clients, 1000 to
    /// upstreams) and wait for them up to the shutdown timeout (a second at
    /// most after a drain, whose window was followed by that timeout).
    pub async fn shutdown(self) {
        self.shared.ready.store(false, Ordering::Relaxed);
        // After a drain, connections already had `shutdown-timeout` after
        // the window: what is left gets a second at most (the background
        // tasks' goodbyes, such as leaving the quota fleet), so the whole
        // budget stays grace + window + timeout (+1 s).
        let timeout = self.generation().config.gateway.shutdown_timeout.0;
        let drain = if self.shared.drain.phase() == DrainPhase::Done {
            timeout.min(Duration::from_secs(1))
        } else {
            timeout
        };
        tracing::info!(
            connections = self.active_connections(),
            "shutting down: closing connections"
        );
        self.shared.shutdown.fire();
        self.shared.tracker.close();
        if tokio::time::timeout(drain, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.active_connections(),
                "shutdown timeout reached with connections still open"
            );
        }
        self.shared.monitor.flush().await;
        if let Some(tracer) = self.shared.tracer.clone() {
            let _ = tokio::task::spawn_blocking(move || tracer.flush()).await;
        }
    }
}

/// A drain's steps: accept through `grace`, then stop accepting and let
/// every connection close at its instant in `window`; wait for the last
/// one (upgrades still under way included), at most `window + timeout`.
async fn drain(shared: &Shared, grace: Duration, window: Duration, timeout: Duration) {
    tracing::info!(
        connections = shared.ledger.active(),
        ?grace,
        ?window,
        "draining: not ready; accepting for the grace"
    );
    tokio::time::sleep(grace).await;
    shared.listeners.stop_accepting();
    shared.drain.start_closing(window);
    tracing::info!(
        connections = shared.ledger.active(),
        "draining: stopped accepting; closing connections with 1012 over the window"
    );
    let all_closed = async {
        loop {
            shared.ledger.wait_for_at_most(0).await;
            // An upgrade accepted in the grace may still be under way: it
            // becomes a connection that closes at once with 1012.
            if shared.ledger.pending().0 == 0 && shared.ledger.active() == 0 {
                return;
            }
            tokio::time::sleep(PENDING_POLL).await;
        }
    };
    if tokio::time::timeout(window + timeout, all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = shared.ledger.active(),
            "drain window and shutdown timeout over with connections still open"
        );
    }
    tracing::info!(closed = shared.drain.closed(), "drained");
}

/// How often a drain looks again for upgrades still under way.
const PENDING_POLL: Duration = Duration::from_millis(10);
