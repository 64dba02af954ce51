//! Connecting to the upstream WebSocket server the upgrade chain chose.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::{StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use wsgate_wire::deflate;

use crate::socket::{Early, Socket};

/// A WebSocket stream over either side's socket, as [`wsgate_wire::open`]
/// builds it.
pub type WsStream = wsgate_wire::WsStream<Socket>;

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
    /// `host:port`, lower-case, IPv6 in brackets.
    address: String,
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
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
        .to_ascii_lowercase();
        Ok(Self {
            tls,
            host,
            port,
            path_and_query,
            address,
        })
    }

    /// `host:port`, lower-case, IPv6 in brackets: the key of `[[remote-host]]`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// One entry of an endpoint's `allowed-upstreams`, parsed once when its
/// generation is built.
#[derive(Debug, Clone)]
pub enum AllowedUpstream {
    /// A scheme alone (`ws://` or `wss://`): any host.
    Scheme {
        /// True for `wss://`.
        tls: bool,
    },
    /// Scheme, host and port, with a path prefix (`/` for any path).
    Under(UpstreamUrl),
}

impl AllowedUpstream {
    /// Parse an entry; `None` when it is no usable URL (it then admits nothing).
    pub fn parse(entry: &str) -> Option<Self> {
        match entry {
            "ws://" => Some(Self::Scheme { tls: false }),
            "wss://" => Some(Self::Scheme { tls: true }),
            _ => UpstreamUrl::parse(entry).ok().map(Self::Under),
        }
    }

    /// Does this entry admit `url`? A path prefix must end at a segment
    /// boundary.
    pub fn admits(&self, url: &UpstreamUrl) -> bool {
        let entry = match self {
            Self::Scheme { tls } => return *tls == url.tls,
            Self::Under(entry) => entry,
        };
        if entry.tls != url.tls || entry.address != url.address {
            return false;
        }
        let prefix = entry.path_and_query.as_str();
        if prefix == "/" {
            return true;
        }
        let path = url.path_and_query.as_str();
        path.strip_prefix(prefix).is_some_and(|rest| {
            prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?'])
        })
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
        address: address.to_string(),
        reason,
    };
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    // Latency matters more than packet count for interactive traffic.
    let _ = tcp.set_nodelay(true);
    let request = upgrade_request(url, &headers, compress, address)?;
    let (socket, answer) = if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| connect_error(format!("invalid TLS server name: {e}")))?;
        let mut tls =
            tokio_rustls::TlsConnector::from(tls.unwrap_or_else(crate::tls::default_client_config))
                .connect(name, tcp)
                .await
                .map_err(|e| connect_error(format!("TLS handshake failed: {e}")))?;
        let mut answer = handshake(&mut tls, &request).await?;
        let early = std::mem::take(&mut answer.early);
        (
            Socket::UpstreamTls(Early::new(Box::new(tls), early)),
            answer,
        )
    } else {
        let mut tcp = tcp;
        let mut answer = handshake(&mut tcp, &request).await?;
        let early = std::mem::take(&mut answer.early);
        (Socket::Tcp(Early::new(tcp, early)), answer)
    };
    let agreement = answer.check(&request, compress)?;
    let stream = wsgate_wire::open(socket, Role::Client, agreement, None, ws_config);
    Ok(Upstream {
        stream,
        protocol: answer.protocol,
    })
}

/// The longest 101 answer read: an upstream's handshake headers beyond
/// this are refused.
const MAX_ANSWER: usize = 16 * 1024;

/// The most header lines read in an upstream's answer.
const MAX_ANSWER_HEADERS: usize = 64;

/// The upgrade request as sent to the upstream, and what checking its
/// answer needs.
struct HandshakeRequest<'a> {
    bytes: Vec<u8>,
    key: String,
    address: &'a str,
}

/// Build the HTTP/1.1 upgrade request for `url`: the handshake's own
/// headers, then `headers`.
fn upgrade_request<'a>(
    url: &UpstreamUrl,
    headers: &HeaderMap,
    compress: bool,
    address: &'a str,
) -> Result<HandshakeRequest<'a>, UpstreamError> {
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
    if HeaderValue::from_str(&host).is_err() {
        return Err(refused(format!("invalid host header: {host}")));
    }
    let head: [&[u8]; 7] = [
        b"GET ",
        url.path_and_query.as_bytes(),
        b" HTTP/1.1\r\nhost: ",
        host.as_bytes(),
        b"\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: ",
        key.as_bytes(),
        b"\r\nsec-websocket-version: 13\r\n",
    ];
    let offer: [&[u8]; 3] = if compress {
        [
            b"sec-websocket-extensions: ",
            deflate::UPSTREAM_OFFER.as_bytes(),
            b"\r\n",
        ]
    } else {
        [b"", b"", b""]
    };
    let lines = || {
        headers
            .iter()
            .map(|(name, value)| [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"])
    };
    let parts = || {
        head.into_iter()
            .chain(offer)
            .chain(lines().flatten())
            .chain([&b"\r\n"[..]])
    };
    // Sized once: the request is written in one go.
    let mut bytes = Vec::with_capacity(parts().map(<[u8]>::len).sum());
    for part in parts() {
        bytes.extend_from_slice(part);
    }
    Ok(HandshakeRequest {
        bytes,
        key,
        address,
    })
}

/// What the upstream answered, as far as the gateway reads it.
struct Answer {
    status: u16,
    accept: Option<Vec<u8>>,
    protocol: Option<HeaderValue>,
    extensions: Vec<String>,
    /// Bytes read past the answer: the upstream's first frames.
    early: Bytes,
}

impl Answer {
    /// Check the answer against `request`: a 101 with the right
    /// `Sec-WebSocket-Accept`, and permessage-deflate only if offered.
    /// Returns what was agreed for permessage-deflate.
    fn check(
        &self,
        request: &HandshakeRequest<'_>,
        compress: bool,
    ) -> Result<Option<deflate::Agreement>, UpstreamError> {
        let refused = |reason: String| UpstreamError::Handshake {
            address: request.address.to_string(),
            reason,
        };
        if self.status != StatusCode::SWITCHING_PROTOCOLS.as_u16() {
            let status = StatusCode::from_u16(self.status)
                .map_or_else(|_| self.status.to_string(), |s| s.to_string());
            return Err(refused(format!("it answered {status}")));
        }
        if self.accept.as_deref() != Some(derive_accept_key(request.key.as_bytes()).as_bytes()) {
            return Err(refused("wrong or missing Sec-WebSocket-Accept".to_string()));
        }
        let agreement =
            deflate::accept_answer(self.extensions.iter().map(String::as_str)).map_err(&refused)?;
        if agreement.is_some() && !compress {
            return Err(refused(format!(
                "it answered {}, which was not offered",
                deflate::EXTENSION
            )));
        }
        Ok(agreement)
    }
}

/// Send `request` on `io` and read the upstream's answer (up to
/// [`MAX_ANSWER`] bytes of it), keeping what follows it.
async fn handshake<S>(io: &mut S, request: &HandshakeRequest<'_>) -> Result<Answer, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = |reason: String| UpstreamError::Handshake {
        address: request.address.to_string(),
        reason,
    };
    io.write_all(&request.bytes)
        .await
        .map_err(|e| failed(format!("cannot send the request: {e}")))?;
    io.flush()
        .await
        .map_err(|e| failed(format!("cannot send the request: {e}")))?;
    let mut read = BytesMut::with_capacity(1024);
    loop {
        if read.len() >= MAX_ANSWER {
            return Err(failed(format!(
                "its answer is longer than {MAX_ANSWER} bytes"
            )));
        }
        let n = io
            .read_buf(&mut read)
            .await
            .map_err(|e| failed(format!("cannot read the answer: {e}")))?;
        if n == 0 {
            return Err(failed(
                "it closed the connection before answering".to_string(),
            ));
        }
        if let Some(answer) = parse_answer(&read).map_err(failed)? {
            return Ok(answer);
        }
    }
}

/// Parse a complete answer at the start of `read` (what follows it is
/// kept as the early bytes); `None` while it is incomplete.
fn parse_answer(read: &BytesMut) -> Result<Option<Answer>, String> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut response = httparse::Response::new(&mut lines);
    let length = match response.parse(read) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("its answer is not HTTP/1.1: {error}")),
    };
    let mut answer = Answer {
        status: response.code.unwrap_or_default(),
        accept: None,
        protocol: None,
        extensions: Vec::new(),
        early: Bytes::new(),
    };
    for line in response.headers.iter() {
        let name = line.name;
        if name.eq_ignore_ascii_case("sec-websocket-accept") {
            answer.accept = Some(line.value.to_vec());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            answer.protocol = HeaderValue::from_bytes(line.value).ok();
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions")
            && let Ok(value) = std::str::from_utf8(line.value)
        {
            answer.extensions.push(value.to_string());
        }
    }
    // Almost always nothing follows; what does is copied out once.
    if let Some(early) = read.get(length..).filter(|early| !early.is_empty()) {
        answer.early = Bytes::copy_from_slice(early);
    }
    Ok(Some(answer))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    /// An upstream on a real socket that reads one request, writes
    /// `answer(key)` in one write and closes; returns its URL and the
    /// request it read.
    async fn upstream_answering(
        answer: fn(&str) -> Vec<u8>,
    ) -> (UpstreamUrl, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = UpstreamUrl::parse(&format!(
            "ws://{}/chat?room=1",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let read = tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                peer.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .find_map(|line| line.strip_prefix("sec-websocket-key: "))
                .unwrap();
            // An upstream that stops reading early may close first.
            let _ = peer.write_all(&answer(key)).await;
            let _ = peer.shutdown().await;
            request
        });
        (url, read)
    }

    fn switching(key: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: chat.v2\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
    }

    async fn connect_to(url: &UpstreamUrl) -> Result<Upstream, UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        headers.append("x-tenant", HeaderValue::from_static("second"));
        connect(url, headers, WebSocketConfig::default(), None, false).await
    }

    #[tokio::test]
    async fn the_upgrade_request_carries_the_handshake_and_the_headers() {
        let (url, read) = upstream_answering(|key| switching(key).into_bytes()).await;
        let upstream = connect_to(&url).await.unwrap();
        assert_eq!(upstream.protocol.unwrap(), "chat.v2");
        drop(upstream.stream);
        let request = read.await.unwrap();
        let mut lines = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut lines);
        assert!(parsed.parse(request.as_bytes()).unwrap().is_complete());
        assert_eq!(parsed.method, Some("GET"));
        assert_eq!(parsed.path, Some("/chat?room=1"));
        let values = |name: &str| -> Vec<&str> {
            parsed
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap())
                .collect()
        };
        assert_eq!(values("host"), [url.address()]);
        assert_eq!(values("upgrade"), ["websocket"]);
        assert_eq!(values("sec-websocket-version"), ["13"]);
        assert_eq!(values("x-tenant"), ["acme", "second"]);
        assert!(values("sec-websocket-extensions").is_empty());
    }

    #[tokio::test]
    async fn frames_sent_right_behind_the_101_are_the_first_messages() {
        let (url, _read) = upstream_answering(|key| {
            let mut bytes = switching(key).into_bytes();
            bytes.extend_from_slice(&[0x81, 5]);
            bytes.extend_from_slice(b"hello");
            bytes.extend_from_slice(&[0x81, 5]);
            bytes.extend_from_slice(b"again");
            bytes
        })
        .await;
        let mut upstream = connect_to(&url).await.unwrap();
        for expected in ["hello", "again"] {
            let message = upstream.stream.next().await.unwrap().unwrap();
            assert_eq!(message, Message::text(expected));
        }
    }

    #[tokio::test]
    async fn a_refusal_says_what_the_upstream_answered() {
        let (url, _read) =
            upstream_answering(|_| b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec())
                .await;
        let error = connect_to(&url).await.err().unwrap();
        assert!(matches!(error, UpstreamError::Handshake { .. }), "{error}");
        assert!(
            error.to_string().ends_with("it answered 404 Not Found"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_wrong_accept_key_is_refused() {
        let (url, _read) = upstream_answering(|_| switching("another key").into_bytes()).await;
        let error = connect_to(&url).await.err().unwrap();
        assert!(
            error
                .to_string()
                .ends_with("wrong or missing Sec-WebSocket-Accept"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_endless_answer_is_refused() {
        let (url, _read) = upstream_answering(|_| {
            let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
            while bytes.len() <= MAX_ANSWER {
                bytes.extend_from_slice(b"x-filler: 0123456789\r\n");
            }
            bytes
        })
        .await;
        let error = connect_to(&url).await.err().unwrap();
        assert!(matches!(error, UpstreamError::Handshake { .. }), "{error}");
    }

    #[tokio::test]
    async fn an_upstream_that_closes_before_answering_is_refused() {
        let (url, _read) = upstream_answering(|_| Vec::new()).await;
        let error = connect_to(&url).await.err().unwrap();
        assert!(
            error
                .to_string()
                .ends_with("closed the connection before answering"),
            "{error}"
        );
    }

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
