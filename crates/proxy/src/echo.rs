//! A WebSocket echo server: `wsgate echo`, and `[[echo-server]]` in the config.
//!
//! It sends every text and binary message back unchanged, answers pings and
//! the close handshake, and selects the first subprotocol a client offers.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serve echo connections on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = echo_connection(stream, peer) => {}
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "echo server: accept failed"),
        }
    }
    tracker.close();
    tracker.wait().await;
}

// tungstenite's handshake callback returns its large error type by value.
#[allow(clippy::result_large_err)]
async fn echo_connection(stream: TcpStream, peer: SocketAddr) {
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
    while let Some(message) = ws.next().await {
        let reply = match message {
            Ok(Message::Text(text)) => Message::Text(text),
            Ok(Message::Binary(data)) => Message::Binary(data),
            Ok(_) => continue,
            Err(_) => break,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}
