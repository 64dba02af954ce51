//! A WebSocket echo server: `wsgate echo`, and `[[echo-server]]` in the config.
//!
//! It sends every text and binary message back unchanged, answers pings and
//! the close handshake, and selects the first subprotocol a client offers.
//! With a [`Ticker`] it also sends one message to every connection at once
//! at a fixed interval, as a chat room or a market ticker fans one event out
//! (the benchmark's broadcast workload).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A message sent to every connection at once, every `every`.
#[derive(Clone, Copy, Debug)]
pub struct Ticker {
    /// The interval between two broadcasts.
    pub every: Duration,
    /// Each broadcast's size in bytes (at least 8): a binary message that
    /// starts with its send time, nanoseconds since the Unix epoch, as a
    /// little-endian `u64`.
    pub size: usize,
}

/// Serve echo connections on `listener` until `shutdown` is cancelled,
/// broadcasting to all of them when a `ticker` is given.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken, ticker: Option<Ticker>) {
    let tracker = TaskTracker::new();
    // One slot: a connection that falls behind skips to the newest tick.
    let (ticks, _) = tokio::sync::broadcast::channel::<Bytes>(1);
    if let Some(ticker) = ticker {
        let ticks = ticks.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tick(ticker, ticks) => {}
            }
        });
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shutdown = shutdown.clone();
                let ticks = ticker.map(|_| ticks.subscribe());
                tracker.spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = echo_connection(stream, peer, ticks) => {}
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "echo server: accept failed"),
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// Send a stamped message to every subscribed connection every `ticker.every`.
async fn tick(ticker: Ticker, ticks: tokio::sync::broadcast::Sender<Bytes>) {
    let mut interval = tokio::time::interval(ticker.every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        let mut payload = nanos.to_le_bytes().to_vec();
        payload.resize(ticker.size.max(8), b'x');
        // No receivers is not an error here: nobody is connected yet.
        let _ = ticks.send(Bytes::from(payload));
    }
}

// tungstenite's handshake callback returns its large error type by value.
#[allow(clippy::result_large_err)]
async fn echo_connection(
    stream: TcpStream,
    peer: SocketAddr,
    mut ticks: Option<tokio::sync::broadcast::Receiver<Bytes>>,
) {
    let _ = stream.set_nodelay(true);
    let choose_protocol = |request: &Request, mut response: Response| {
        let first = request
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|p| p.trim().to_string());
        if let Some(protocol) = first.and_then(|p| HeaderValue::from_str(&p).ok()) {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", protocol);
        }
        Ok(response)
    };
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let mut ws = match tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        choose_protocol,
        Some(config),
    )
    .await
    {
        Ok(ws) => ws,
        Err(error) => {
            tracing::debug!(%peer, %error, "echo server: handshake failed");
            return;
        }
    };
    loop {
        let reply = tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => Message::Text(text),
                Some(Ok(Message::Binary(data))) => Message::Binary(data),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break,
            },
            tick = next_tick(&mut ticks) => match tick {
                Some(payload) => Message::Binary(payload),
                None => continue,
            },
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

/// The next broadcast, or never when the server has no ticker; `None`
/// when this connection lagged behind (it skips to the newest).
async fn next_tick(ticks: &mut Option<tokio::sync::broadcast::Receiver<Bytes>>) -> Option<Bytes> {
    match ticks {
        Some(ticks) => ticks.recv().await.ok(),
        None => std::future::pending().await,
    }
}
