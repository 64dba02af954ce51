//! The client-facing listener and the embedded echo servers: binding them
//! as a configuration asks, the accept loop, TLS accept, and serving
//! HTTP/1.1 on each accepted connection until it upgrades.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsgate_config::Config;

use crate::echo;
use crate::ledger::{Handshake, PendingLimits};
use crate::shared::Shared;
use crate::upgrade;

/// A listener could not be bound. Its message includes the system's error,
/// so that error is not also its `source` (a chain would print it twice).
#[derive(Debug, thiserror::Error)]
#[error("{field}: cannot listen on {address}: {error}")]
pub struct BindError {
    /// The configuration field that asked for it (`gateway.listen`, `echo-server[0].listen`).
    pub field: String,
    /// The address.
    pub address: SocketAddr,
    /// The system's error.
    pub error: std::io::Error,
}

/// A bound listener and the token that stops its accept loop.
struct Bound {
    /// The address as configured (may have port 0).
    configured: SocketAddr,
    /// The address actually bound.
    local: SocketAddr,
    stop: CancellationToken,
    /// The gateway listener's accept loops, one per worker (none for an
    /// echo server): a move waits for them to drop their sockets.
    accepting: Vec<tokio::task::JoinHandle<()>>,
}

/// The gateway's listener and its echo servers, as bound now.
#[derive(Default)]
pub(crate) struct Listeners {
    gateway: Mutex<Option<Bound>>,
    echo_servers: Mutex<Vec<Bound>>,
}

impl Listeners {
    /// The client-facing listener's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.gateway
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|l| l.local)
    }

    /// Stop accepting on the client-facing listener (a drain's grace is
    /// over); connections accepted already are untouched.
    pub fn stop_accepting(&self) {
        if let Some(bound) = self
            .gateway
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            bound.stop.cancel();
        }
    }

    /// Addresses of the embedded echo servers, in configuration order.
    pub fn echo_addrs(&self) -> Vec<SocketAddr> {
        self.echo_servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|e| e.local)
            .collect()
    }
}

/// Bind what `config` adds (the gateway listener if it moved, new echo
/// servers) before stopping what it removes; connections already accepted
/// are never touched. On a bind failure nothing changes.
pub(crate) async fn apply(shared: &Arc<Shared>, config: &Config) -> Result<(), BindError> {
    let listeners = &shared.listeners;
    let listen = config.gateway.listen;
    let moved = listeners
        .gateway
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .is_none_or(|l| l.configured != listen);
    let new_listener = if moved {
        Some(bind_shared(
            "gateway.listen",
            listen,
            shared.workers.count(),
        )?)
    } else {
        None
    };
    let running: Vec<SocketAddr> = listeners
        .echo_servers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|e| e.configured)
        .collect();
    let mut new_echo = Vec::new();
    for (i, echo) in config.echo_servers.iter().enumerate() {
        if !running.contains(&echo.listen) {
            let field = format!("echo-server[{i}].listen");
            new_echo.push((echo.listen, bind(&field, echo.listen).await?));
        }
    }

    // Everything bound: start the new, stop the old.
    if let Some((sockets, local)) = new_listener {
        let stop = shared.shutdown.child_token();
        tracing::info!(address = %local, workers = sockets.len(), "gateway listening");
        let accepting = sockets
            .into_iter()
            .enumerate()
            .map(|(index, socket)| {
                let accept = accept_loop(shared.clone(), socket, stop.clone());
                shared
                    .workers
                    .spawn_on(index, shared.tracker.track_future(accept))
            })
            .collect();
        let replaced = listeners
            .gateway
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(Bound {
                configured: listen,
                local,
                stop,
                accepting,
            });
        if let Some(old) = replaced {
            tracing::info!(address = %old.local, "listener moved; the old address stops accepting");
            old.stop.cancel();
            // Once the deploy returns, the old address refuses connections.
            for accept_loop in old.accepting {
                let _ = accept_loop.await;
            }
        }
    }
    let mut echo_servers = listeners
        .echo_servers
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (configured, (listener, local)) in new_echo {
        let stop = shared.shutdown.child_token();
        tracing::info!(address = %local, "embedded echo server listening");
        shared
            .tracker
            .spawn(echo::serve(listener, stop.clone(), None));
        echo_servers.push(Bound {
            configured,
            local,
            stop,
            accepting: Vec::new(),
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
    Ok(())
}

/// `count` listening sockets on `address`, one per worker, sharing its port
/// (`SO_REUSEPORT`). A plain socket is bound first, and closed: it resolves
/// a port 0, and it fails if anything else listens there, even a process
/// that set `SO_REUSEPORT` too (another gateway started on the same
/// address), which would otherwise silently take a share of connections.
fn bind_shared(
    field: &str,
    address: SocketAddr,
    count: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), BindError> {
    let failed = |error| BindError {
        field: field.to_string(),
        address,
        error,
    };
    let local = std::net::TcpListener::bind(address)
        .and_then(|probe| probe.local_addr())
        .map_err(failed)?;
    let sockets = (0..count.max(1))
        .map(|_| listen_reusing_port(local))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    Ok((sockets, local))
}

/// A non-blocking listening socket on `address` with `SO_REUSEPORT` set.
fn listen_reusing_port(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn bind(field: &str, address: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let failed = |error| BindError {
        field: field.to_string(),
        address,
        error,
    };
    let listener = TcpListener::bind(address).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// Limits on an upgrade request before it reaches the gateway's code.
#[derive(Debug, Clone, Copy)]
struct HttpLimits {
    /// Time to send the request head (slowloris), TLS handshake included.
    header_timeout: Duration,
    /// Largest request head; larger: 431.
    max_header_bytes: usize,
    /// Most header fields in a request head; more: 431.
    max_headers: usize,
}

/// Accept connections on `socket` (one worker's) and serve each on this
/// worker until `stop`.
async fn accept_loop(shared: Arc<Shared>, socket: std::net::TcpListener, stop: CancellationToken) {
    let listener = match TcpListener::from_std(socket) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "a worker cannot take its listening socket");
            return;
        }
    };
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
        let generation = shared.generation();
        let gateway = &generation.config.gateway;
        let pending = PendingLimits {
            gateway: *gateway.max_pending_upgrades.get_ref(),
            per_client: *gateway.max_pending_upgrades_per_ip.get_ref(),
        };
        // Counted from the accept, before a byte is read: TLS handshakes,
        // request heads still arriving, upgrade chains and upstream
        // connects all hold a pending place until the client is answered.
        let handshake = match shared.ledger.begin_handshake(pending, client.ip()) {
            Ok(handshake) => handshake,
            Err(refusal) => {
                let (pending, addresses) = shared.ledger.pending();
                tracing::warn!(
                    %client,
                    limit = refusal.key(),
                    pending,
                    addresses,
                    "too many connections awaiting an answer; closed at accept"
                );
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let limits = HttpLimits {
            header_timeout: gateway.handshake_timeout.0,
            max_header_bytes: usize::try_from(gateway.max_header_bytes.get_ref().0)
                .unwrap_or(usize::MAX),
            max_headers: usize::try_from(*gateway.max_headers.get_ref()).unwrap_or(usize::MAX),
        };
        let tls = generation.listener_tls.clone();
        drop(generation);
        // Boxed: the task moves a pointer, not the connection's
        // kilobytes of future state (docs/performance.md, "Futures moved").
        shared.tracker.spawn(Box::pin(serve_connection(
            shared.clone(),
            stream,
            client,
            tls,
            limits,
            handshake,
        )));
    }
}

/// Serve one accepted connection: TLS (if the listener has it), then HTTP
/// until it upgrades or is answered.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    client: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HttpLimits,
    handshake: Handshake,
) {
    let Some(tls) = tls else {
        serve_http(
            shared,
            TokioIo::new(stream),
            client,
            false,
            limits,
            handshake,
        )
        .await;
        return;
    };
    // The TLS handshake counts against the handshake timeout too.
    let accepted = tokio::time::timeout(
        limits.header_timeout,
        tokio_rustls::TlsAcceptor::from(tls).accept(stream),
    )
    .await;
    match accepted {
        Ok(Ok(stream)) => {
            serve_http(
                shared,
                TokioIo::new(stream),
                client,
                true,
                limits,
                handshake,
            )
            .await;
        }
        Ok(Err(error)) => tracing::info!(%client, %error, "TLS handshake failed"),
        Err(_) => tracing::info!(%client, "TLS handshake timed out"),
    }
}

/// Serve one HTTP/1.1 request (an upgrade, or its refusal) on one client
/// connection, plain or TLS. The connection's pending place is given back
/// once the request is answered (before the answer is written), or when
/// the connection ends unanswered. Every answer but a 101 says
/// `connection: close` and closes the connection, so one connection cannot
/// hold the gateway with request after request.
async fn serve_http<IO>(
    shared: Arc<Shared>,
    io: IO,
    client: SocketAddr,
    tls: bool,
    limits: HttpLimits,
    handshake: Handshake,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let pending = Arc::new(Mutex::new(Some(handshake)));
    let answered = pending.clone();
    let service = service_fn(move |mut request| {
        let shared = shared.clone();
        let answered = answered.clone();
        request.extensions_mut().insert(upgrade::Secure(tls));
        async move {
            // Boxed: hyper moves its in-flight future by value.
            let mut response = Box::pin(upgrade::handle(shared, client, request)).await;
            if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            drop(
                answered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        // The read buffer's cap is not an exact bound (a head read in
        // large chunks can get past it); this checks the parsed head.
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .serve_connection(io, service)
        .with_upgrades();
    if let Err(error) = connection.await {
        tracing::debug!(%client, %error, "http connection ended with an error");
    }
    drop(pending);
}
