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

mod convert;
pub mod echo;
pub mod generation;
mod relay;
pub mod upgrade;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsgate_config::{Config, ConfigErrors};
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
}

/// State shared by the listener, every request and every relay task.
pub struct Shared {
    generation: RwLock<Arc<Generation>>,
    next_id: AtomicU64,
    active: AtomicU64,
    connection_closed: Notify,
    shutdown: CancellationToken,
    tracker: TaskTracker,
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
    fn ws_config(&self, endpoint: &LiveEndpoint) -> WebSocketConfig {
        let generation = self.generation();
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

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    echo_addrs: Vec<SocketAddr>,
    shutdown_timeout: Duration,
}

impl Gateway {
    /// Load `config` (every plugin compiled and configured), bind the listener
    /// and the configured echo servers, and start serving.
    pub async fn start(config: Config, runtime: &Runtime) -> Result<Self, StartError> {
        let generation = Generation::build(config, runtime)?;
        let gateway = &generation.config.gateway;
        let listen = gateway.listen;
        let header_timeout = gateway.handshake_timeout.0;
        let shutdown_timeout = gateway.shutdown_timeout.0;
        let echo_configs = generation.config.echo_servers.clone();
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                address: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            address: listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            generation: RwLock::new(Arc::new(generation)),
            next_id: AtomicU64::new(1),
            active: AtomicU64::new(0),
            connection_closed: Notify::new(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });

        let mut echo_addrs = Vec::new();
        for echo in echo_configs {
            let listener =
                TcpListener::bind(echo.listen)
                    .await
                    .map_err(|source| StartError::Bind {
                        address: echo.listen,
                        source,
                    })?;
            let address = listener.local_addr().map_err(|source| StartError::Bind {
                address: echo.listen,
                source,
            })?;
            tracing::info!(%address, "embedded echo server listening");
            echo_addrs.push(address);
            shared
                .tracker
                .spawn(echo::serve(listener, shared.shutdown.clone()));
        }

        tracing::info!(address = %local_addr, "gateway listening");
        shared
            .tracker
            .spawn(accept_loop(shared.clone(), listener, header_timeout));
        Ok(Self {
            shared,
            local_addr,
            echo_addrs,
            shutdown_timeout,
        })
    }

    /// The client-facing listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Addresses of the embedded echo servers, in configuration order.
    pub fn echo_addrs(&self) -> &[SocketAddr] {
        &self.echo_addrs
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

    /// The live configuration generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.shared.generation()
    }

    /// Stop accepting, close every connection (1001 to clients, 1000 to
    /// upstreams) and wait for them up to the shutdown timeout.
    pub async fn shutdown(self) {
        tracing::info!(
            connections = self.active_connections(),
            "shutting down: closing connections"
        );
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.active_connections(),
                "shutdown timeout reached with connections still open"
            );
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, header_timeout: Duration) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
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
        let shared = shared.clone();
        let task_shared = shared.clone();
        shared.tracker.spawn(async move {
            let service = service_fn(move |request| {
                let shared = task_shared.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        upgrade::handle(shared, client, request).await,
                    )
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                tracing::debug!(%client, %error, "http connection ended with an error");
            }
        });
    }
}
