//! The WebSocket proxy.
//!
//! A connection's life, top-down (see `docs/phases.md`):
//! 1. [`Gateway::start`] binds the listener; hyper reads each request with a
//!    header timeout ([`upgrade::handle`]).
//! 2. The endpoint is found by path; non-upgrades get 426, unknown paths 404.
//! 3. The endpoint's upgrade chain runs: continue, change upstream headers,
//!    reject with a status, or route.
//! 4. The gateway connects upstream (allowed-upstreams, remote-host limits,
//!    connect timeout) and only then answers the client 101.
//! 5. `relay::run` moves messages both ways through the message chains and
//!    carries the close handshake, expiry and shutdown.

pub mod admission;
mod convert;
pub mod counters;
pub mod deflate;
pub mod echo;
pub mod generation;
mod relay;
pub mod tap;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod websocket;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsgate_config::{Config, ConfigErrors};
use wsgate_monitor::Monitor;
use wsgate_runtime::Runtime;

pub use generation::{Generation, LiveEndpoint};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid or a plugin failed to load.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The traffic monitor could not start.
    #[error("{0}")]
    Monitor(#[from] wsgate_monitor::MonitorError),
}

/// A bound listener and the token that stops its accept loop.
struct Listener {
    /// The address as configured (may have port 0).
    configured: SocketAddr,
    /// The address actually bound.
    local: SocketAddr,
    stop: CancellationToken,
}

/// State shared by the listener, every request and every relay task.
pub struct Shared {
    generation: RwLock<Arc<Generation>>,
    /// Every generation ever installed, to list the ones still alive.
    generations: Mutex<Vec<Weak<Generation>>>,
    next_generation: AtomicU64,
    deploys: Mutex<Vec<DeployRecord>>,
    /// Serialises deploys.
    deploying: tokio::sync::Mutex<()>,
    runtime: Runtime,
    listener: Mutex<Option<Listener>>,
    echo_servers: Mutex<Vec<Listener>>,
    next_id: AtomicU64,
    active: AtomicU64,
    ready: AtomicBool,
    connection_closed: Notify,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The traffic monitor (its storage is set at start; deploys change
    /// only what each endpoint records).
    monitor: Monitor,
    /// Traffic counters for `/metrics`.
    counters: counters::TrafficCounters,
    /// Open connections under the gateway, endpoint and client limits.
    admissions: Arc<admission::Admissions>,
}

impl Shared {
    /// The configuration generation new connections use.
    fn generation(&self) -> Arc<Generation> {
        match self.generation.read() {
            Ok(generation) => generation.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// WebSocket settings for either side of a connection on `endpoint`.
    fn ws_config(generation: &Generation, endpoint: &LiveEndpoint) -> WebSocketConfig {
        let read_buffer =
            usize::try_from(generation.config.gateway.read_buffer_size.0).unwrap_or(4096);
        let max_message = usize::try_from(endpoint.config.max_message_size.0).ok();
        WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(0)
            .max_message_size(max_message)
            .max_frame_size(max_message)
    }
}

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
        let generation = Arc::new(Generation::build(1, config, runtime)?);
        let shared = Arc::new(Shared {
            generation: RwLock::new(generation.clone()),
            generations: Mutex::new(vec![Arc::downgrade(&generation)]),
            next_generation: AtomicU64::new(2),
            deploys: Mutex::new(Vec::new()),
            deploying: tokio::sync::Mutex::new(()),
            runtime: runtime.clone(),
            listener: Mutex::new(None),
            echo_servers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            active: AtomicU64::new(0),
            ready: AtomicBool::new(true),
            connection_closed: Notify::new(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            monitor,
            counters: counters::TrafficCounters::default(),
            admissions: Arc::default(),
        });
        let gateway = Self { shared };
        gateway.apply_listeners(&generation.config).await?;
        Ok(gateway)
    }

    /// Validate `config`, compile and configure every plugin, and only then
    /// make it the generation new connections use. Open connections keep the
    /// generation they started with. On any problem nothing changes and every
    /// problem is returned.
    pub async fn deploy(&self, config: Config, source: &str) -> Result<u64, ConfigErrors> {
        self.deploy_parsed(Ok(config), source).await
    }

    /// [`Gateway::deploy`] the configuration `text`, read from `path`
    /// (relative plugin paths resolve against its directory).
    pub async fn deploy_text(&self, text: &str, path: &Path) -> Result<u64, ConfigErrors> {
        let source = path.display().to_string();
        self.deploy_parsed(wsgate_config::parse(text, path), &source)
            .await
    }

    /// [`Gateway::deploy`] the configuration file at `path`.
    pub async fn deploy_file(&self, path: &Path, source: &str) -> Result<u64, ConfigErrors> {
        self.deploy_parsed(wsgate_config::load(path), source).await
    }

    /// Deploy, and record the attempt (refused ones too) in the history.
    async fn deploy_parsed(
        &self,
        config: Result<Config, ConfigErrors>,
        source: &str,
    ) -> Result<u64, ConfigErrors> {
        let _deploying = self.shared.deploying.lock().await;
        let id = self.shared.next_generation.load(Ordering::Relaxed);
        let current = self.shared.generation();
        let built = config
            .and_then(|config| Generation::build(id, config, &self.shared.runtime))
            .map(|mut generation| {
                generation.carry_limits_from(&current);
                generation
            });
        let result = match built {
            Ok(generation) => {
                let generation = Arc::new(generation);
                match self.apply_listeners(&generation.config).await {
                    Ok(()) => {
                        self.install(generation);
                        Ok(id)
                    }
                    Err(StartError::Config(errors)) => Err(errors),
                    Err(StartError::Monitor(error)) => Err(ConfigErrors::from(
                        generation
                            .config
                            .source
                            .error(0..0, "monitor", error.to_string()),
                    )),
                    Err(StartError::Bind { address, source }) => {
                        Err(ConfigErrors::from(generation.config.source.error(
                            0..0,
                            "gateway.listen",
                            format!("cannot listen on {address}: {source}"),
                        )))
                    }
                }
            }
            Err(errors) => Err(errors),
        };
        let record = DeployRecord {
            at: SystemTime::now(),
            generation: result.as_ref().ok().copied(),
            source: source.to_string(),
            errors: result
                .as_ref()
                .err()
                .map(|e| e.0.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
        };
        match &result {
            Ok(id) => tracing::info!(generation = id, source, "deployed"),
            Err(errors) => {
                tracing::warn!(
                    source,
                    problems = errors.0.len(),
                    "deploy refused; the running configuration keeps serving"
                );
            }
        }
        if let Ok(mut deploys) = self.shared.deploys.lock() {
            deploys.push(record);
        }
        result
    }

    fn install(&self, generation: Arc<Generation>) {
        self.shared
            .next_generation
            .store(generation.id + 1, Ordering::Relaxed);
        if let Ok(mut generations) = self.shared.generations.lock() {
            generations.retain(|g| g.strong_count() > 0);
            generations.push(Arc::downgrade(&generation));
        }
        match self.shared.generation.write() {
            Ok(mut current) => *current = generation,
            Err(poisoned) => *poisoned.into_inner() = generation,
        }
    }

    /// Bind what `config` adds (the gateway listener if it moved, new echo
    /// servers) before stopping what it removes; connections already
    /// accepted are never touched.
    async fn apply_listeners(&self, config: &Config) -> Result<(), StartError> {
        let shared = &self.shared;
        let gateway = &config.gateway;
        let moved = shared.listener.lock().map_or(true, |l| {
            l.as_ref().is_none_or(|l| l.configured != gateway.listen)
        });
        let new_listener = if moved {
            let listener = bind(gateway.listen).await?;
            Some(listener)
        } else {
            None
        };

        let running: Vec<SocketAddr> = shared
            .echo_servers
            .lock()
            .map(|echo| echo.iter().map(|e| e.configured).collect())
            .unwrap_or_default();
        let mut new_echo = Vec::new();
        for echo in &config.echo_servers {
            if !running.contains(&echo.listen) {
                new_echo.push((echo.listen, bind(echo.listen).await?));
            }
        }

        // Everything bound: start the new, stop the old.
        if let Some((listener, local)) = new_listener {
            let stop = shared.shutdown.child_token();
            tracing::info!(address = %local, "gateway listening");
            shared
                .tracker
                .spawn(accept_loop(shared.clone(), listener, stop.clone()));
            let replaced = shared.listener.lock().ok().and_then(|mut current| {
                current.replace(Listener {
                    configured: gateway.listen,
                    local,
                    stop,
                })
            });
            if let Some(old) = replaced {
                tracing::info!(address = %old.local, "listener moved; the old address stops accepting");
                old.stop.cancel();
            }
        }
        if let Ok(mut echo_servers) = shared.echo_servers.lock() {
            for (configured, (listener, local)) in new_echo {
                let stop = shared.shutdown.child_token();
                tracing::info!(address = %local, "embedded echo server listening");
                shared.tracker.spawn(echo::serve(listener, stop.clone()));
                echo_servers.push(Listener {
                    configured,
                    local,
                    stop,
                });
            }
            echo_servers.retain(|echo| {
                let keep = config
                    .echo_servers
                    .iter()
                    .any(|e| e.listen == echo.configured);
                if !keep {
                    echo.stop.cancel();
                }
                keep
            });
        }
        Ok(())
    }

    /// The client-facing listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared
            .listener
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|l| l.local))
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Addresses of the embedded echo servers, in configuration order.
    pub fn echo_addrs(&self) -> Vec<SocketAddr> {
        self.shared
            .echo_servers
            .lock()
            .map(|echo| echo.iter().map(|e| e.local).collect())
            .unwrap_or_default()
    }

    /// Proxied connections open right now.
    pub fn active_connections(&self) -> u64 {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Wait until fewer than or exactly `count` connections are open.
    pub async fn wait_for_connections(&self, count: u64) {
        loop {
            let notified = self.shared.connection_closed.notified();
            if self.active_connections() <= count {
                return;
            }
            notified.await;
        }
    }

    /// The generation new connections use.
    pub fn generation(&self) -> Arc<Generation> {
        self.shared.generation()
    }

    /// Every generation still alive (the current one, and older ones with
    /// open connections), oldest first.
    pub fn generations(&self) -> Vec<GenerationStatus> {
        let current = self.generation().id;
        let Ok(mut generations) = self.shared.generations.lock() else {
            return Vec::new();
        };
        generations.retain(|g| g.strong_count() > 0);
        generations
            .iter()
            .filter_map(Weak::upgrade)
            .map(|g| GenerationStatus {
                id: g.id,
                connections: g.active.load(Ordering::Relaxed),
                current: g.id == current,
            })
            .collect()
    }

    /// Every deploy attempt since start, oldest first.
    pub fn deploys(&self) -> Vec<DeployRecord> {
        self.shared
            .deploys
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// False once shutdown has begun.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// The traffic monitor.
    pub fn monitor(&self) -> &Monitor {
        &self.shared.monitor
    }

    /// Traffic counters: upgrades, messages, bytes, verdicts.
    pub fn counters(&self) -> &counters::TrafficCounters {
        &self.shared.counters
    }

    /// Stop accepting, close every connection (1001 to clients, 1000 to
    /// upstreams) and wait for them up to the shutdown timeout.
    pub async fn shutdown(self) {
        self.shared.ready.store(false, Ordering::Relaxed);
        let drain = self.generation().config.gateway.shutdown_timeout.0;
        tracing::info!(
            connections = self.active_connections(),
            "shutting down: closing connections"
        );
        self.shared.shutdown.cancel();
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
    }
}

async fn bind(address: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Bind { address, source };
    let listener = TcpListener::bind(address).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// Limits on an upgrade request before it reaches the gateway's code.
#[derive(Debug, Clone, Copy)]
struct HttpLimits {
    /// Time to send the request head (slowloris).
    header_timeout: Duration,
    /// Largest request head; larger: 431.
    max_header_bytes: usize,
}

/// Serve HTTP/1.1 (and upgrades) on one client connection, plain or TLS.
async fn serve_http<IO>(
    shared: Arc<Shared>,
    io: IO,
    client: SocketAddr,
    tls: bool,
    limits: HttpLimits,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |mut request| {
        let shared = shared.clone();
        request.extensions_mut().insert(upgrade::Secure(tls));
        async move { Ok::<_, std::convert::Infallible>(upgrade::handle(shared, client, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(io, service)
        .with_upgrades();
    if let Err(error) = connection.await {
        tracing::debug!(%client, %error, "http connection ended with an error");
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let generation = shared.generation();
        let limits = HttpLimits {
            header_timeout: generation.config.gateway.handshake_timeout.0,
            max_header_bytes: usize::try_from(
                generation.config.gateway.max_header_bytes.get_ref().0,
            )
            .unwrap_or(usize::MAX),
        };
        let header_timeout = limits.header_timeout;
        let tls = generation.listener_tls.clone();
        drop(generation);
        let task_shared = shared.clone();
        shared.tracker.spawn(async move {
            let Some(tls) = tls else {
                serve_http(task_shared, TokioIo::new(stream), client, false, limits).await;
                return;
            };
            // The TLS handshake counts against the handshake timeout too.
            let accepted = tokio::time::timeout(
                header_timeout,
                tokio_rustls::TlsAcceptor::from(tls).accept(stream),
            )
            .await;
            match accepted {
                Ok(Ok(stream)) => {
                    serve_http(task_shared, TokioIo::new(stream), client, true, limits).await;
                }
                Ok(Err(error)) => tracing::info!(%client, %error, "TLS handshake failed"),
                Err(_) => tracing::info!(%client, "TLS handshake timed out"),
            }
        });
    }
}
