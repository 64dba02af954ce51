//! Connecting to the upstream WebSocket server the upgrade chain chose.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use wsgate_wire::deflate;

/// A WebSocket stream over an upgraded HTTP/1.1 connection (either side),
/// as [`wsgate_wire::open`] builds it.
pub type WsStream = wsgate_wire::WsStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why the upstream connection failed; each maps to the client's status.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The route's URL is unusable.
    #[error("invalid upstream url `{url}`: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// TCP or TLS connection failed.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// `host:port`.
        address: String,
        /// The I/O or TLS error.
        reason: String,
    },
    /// The upstream did not accept the WebSocket handshake.
    #[error("upstream {address} refused the websocket handshake: {reason}")]
    Handshake {
        /// `host:port`.
        address: String,
        /// What it answered.
        reason: String,
    },
    /// Connecting took longer than the remote host's connect timeout.
    #[error("upstream {address} did not complete the handshake within {timeout:?}")]
    Timeout {
        /// `host:port`.
        address: String,
        /// The timeout.
        timeout: std::time::Duration,
    },
}

impl UpstreamError {
    /// The status the client gets: 504 for a timeout, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A parsed upstream URL.
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    /// True for `wss://`.
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port, defaulted from the scheme.
    pub port: u16,
    /// Path and query for the request line.
    pub path_and_query: String,
}

impl UpstreamUrl {
    /// Parse a `ws://` or `wss://` URL.
    pub fn parse(url: &str) -> Result<Self, UpstreamError> {
        let bad = |reason: &str| UpstreamError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(bad("the scheme must be ws or wss")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        Ok(Self {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// `host:port`, lower-case, IPv6 in brackets: the key of `[[remote-host]]`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port).to_ascii_lowercase()
        } else {
            format!("{}:{}", self.host, self.port).to_ascii_lowercase()
        }
    }
}

/// An open upstream WebSocket and what it chose in its handshake.
pub struct Upstream {
    /// The WebSocket stream.
    pub stream: WsStream,
    /// The subprotocol the upstream selected.
    pub protocol: Option<HeaderValue>,
}

/// Connect to `url`, send the upgrade request with `headers` (which must not
/// include the handshake's own headers), and finish the WebSocket handshake,
/// offering permessage-deflate if `compress`.
pub async fn connect(
    url: &UpstreamUrl,
    headers: HeaderMap,
    ws_config: WebSocketConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    compress: bool,
) -> Result<Upstream, UpstreamError> {
    let address = url.address();
    let connect_error = |reason: String| UpstreamError::Connect {
        address: address.clone(),
        reason,
    };
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    // Latency matters more than packet count for interactive traffic.
    let _ = tcp.set_nodelay(true);
    let sender = if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| connect_error(format!("invalid TLS server name: {e}")))?;
        let tls =
            tokio_rustls::TlsConnector::from(tls.unwrap_or_else(crate::tls::default_client_config))
                .connect(name, tcp)
                .await
                .map_err(|e| connect_error(format!("TLS handshake failed: {e}")))?;
        handshake(TokioIo::new(tls), &address).await?
    } else {
        handshake(TokioIo::new(tcp), &address).await?
    };
    upgrade(sender, url, headers, &address, ws_config, compress).await
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Start an HTTP/1.1 client connection; its driver task lives until the
/// connection is upgraded (or fails).
async fn handshake<IO>(io: IO, address: &str) -> Result<Sender, UpstreamError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect {
            address: address.to_string(),
            reason: e.to_string(),
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream http connection ended");
        }
    });
    Ok(sender)
}

async fn upgrade(
    mut sender: Sender,
    url: &UpstreamUrl,
    headers: HeaderMap,
    address: &str,
    ws_config: WebSocketConfig,
    compress: bool,
) -> Result<Upstream, UpstreamError> {
    let refused = |reason: String| UpstreamError::Handshake {
        address: address.to_string(),
        reason,
    };
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let default_port = if url.tls { 443 } else { 80 };
    let host = if url.port == default_port {
        url.host.clone()
    } else if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let mut request = Request::get(url.path_and_query.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| refused(format!("cannot build the request: {e}")))?;
    let request_headers = request.headers_mut();
    *request_headers = headers;
    let fixed: [(HeaderName, &str); 5] = [
        (header::HOST, &host),
        (header::UPGRADE, "websocket"),
        (header::CONNECTION, "Upgrade"),
        (header::SEC_WEBSOCKET_KEY, &key),
        (header::SEC_WEBSOCKET_VERSION, "13"),
    ];
    for (name, value) in fixed {
        let value = HeaderValue::from_str(value)
            .map_err(|e| refused(format!("invalid {name} header: {e}")))?;
        request_headers.insert(name, value);
    }
    if compress {
        request_headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(deflate::UPSTREAM_OFFER),
        );
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| refused(e.to_string()))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refused(format!("it answered {}", response.status())));
    }
    let accept = response.headers().get(header::SEC_WEBSOCKET_ACCEPT);
    if accept.map(HeaderValue::as_bytes) != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return Err(refused("wrong or missing Sec-WebSocket-Accept".to_string()));
    }
    let protocol = response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .cloned();
    let answered = response
        .headers()
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let agreement = deflate::accept_answer(answered).map_err(&refused)?;
    if agreement.is_some() && !compress {
        return Err(refused(format!(
            "it answered {}, which was not offered",
            deflate::EXTENSION
        )));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| refused(format!("upgrade failed: {e}")))?;
    let stream = wsgate_wire::open(
        TokioIo::new(upgraded),
        Role::Client,
        agreement,
        None,
        ws_config,
    );
    Ok(Upstream { stream, protocol })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;

    #[test]
    fn urls_default_ports_by_scheme() {
        let url = UpstreamUrl::parse("ws://Example.com/chat?x=1").unwrap();
        assert_eq!(url.address(), "example.com:80");
        assert_eq!(url.path_and_query, "/chat?x=1");
        let url = UpstreamUrl::parse("wss://[::1]/").unwrap();
        assert_eq!(url.address(), "[::1]:443");
        assert!(UpstreamUrl::parse("http://x/").is_err());
    }
}
