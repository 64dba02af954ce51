//! Connecting to the upstream WebSocket server the upgrade chain chose.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
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
    /// The upgrade request's `Host`: IPv6 in brackets, the port only when
    /// it is not the scheme's.
    host_header: String,
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
        let default_port = if tls { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let address = format!("{bracketed}:{port}").to_ascii_lowercase();
        let host_header = if port == default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        Ok(Self {
            tls,
            host,
            port,
            path_and_query,
            address,
            host_header,
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
    let request = upgrade_request(url, &headers, compress, address);
    let (socket, answer) = if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| connect_error(format!("invalid TLS server name: {e}")))?;
        let tls =
            tokio_rustls::TlsConnector::from(tls.unwrap_or_else(crate::tls::default_client_config))
                .connect(name, tcp)
                .await
                .map_err(|e| connect_error(format!("TLS handshake failed: {e}")))?;
        let (io, answer) = handshake(Box::new(tls), &request).await?;
        (Socket::UpstreamTls(io), answer)
    } else {
        let (io, answer) = handshake(tcp, &request).await?;
        (Socket::Tcp(io), answer)
    };
    let agreement = answer.check(&request, compress)?;
    let stream = wsgate_wire::open(socket, Role::Client, agreement, None, ws_config);
    Ok(Upstream {
        stream,
        protocol: answer.protocol,
    })
}

/// The most bytes of an upstream's answer read (with any informational
/// answers before it): an answer longer than this is refused.
const MAX_ANSWER: usize = 16 * 1024;

/// The most header fields in an upstream's answer (hyper's client's
/// default, which the gateway used before it read answers itself).
const MAX_ANSWER_HEADERS: usize = 100;

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
) -> HandshakeRequest<'a> {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let head: [&[u8]; 7] = [
        b"GET ",
        url.path_and_query.as_bytes(),
        b" HTTP/1.1\r\nhost: ",
        url.host_header.as_bytes(),
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
    HandshakeRequest {
        bytes,
        key,
        address,
    }
}

/// What the upstream answered, as far as the gateway reads it.
struct Answer {
    status: u16,
    /// It says `Upgrade: websocket`.
    upgrades_to_websocket: bool,
    /// Its `Connection` has the `upgrade` token.
    connection_upgrade: bool,
    accept: Option<Vec<u8>>,
    protocol: Option<HeaderValue>,
    extensions: Vec<String>,
    /// Bytes read past the answer: the upstream's first frames.
    early: Bytes,
}

impl Answer {
    /// Check the answer against `request`: a 101 with `Upgrade:
    /// websocket`, `Connection: upgrade` and the right
    /// `Sec-WebSocket-Accept` (RFC 6455, 4.1), and permessage-deflate only
    /// if offered.
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
        if !self.upgrades_to_websocket {
            return Err(refused(
                "its 101 does not say Upgrade: websocket".to_string(),
            ));
        }
        if !self.connection_upgrade {
            return Err(refused(
                "its 101 does not say Connection: upgrade".to_string(),
            ));
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

/// Send `request` on `io` and read the upstream's answer (at most
/// [`MAX_ANSWER`] bytes, informational answers such as `103 Early Hints`
/// skipped, as HTTP clients do): `io` with what the upstream sent behind
/// its answer to be read first, and the answer.
async fn handshake<S>(
    mut io: S,
    request: &HandshakeRequest<'_>,
) -> Result<(Early<S>, Answer), UpstreamError>
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
    let mut total = 0;
    loop {
        match parse_answer(&read).map_err(&failed)? {
            Parsed::Answer(mut answer) => {
                let early = std::mem::take(&mut answer.early);
                return Ok((Early::new(io, early), answer));
            }
            Parsed::Informational(length) => {
                read.advance(length);
                continue;
            }
            Parsed::Incomplete => {}
        }
        if total >= MAX_ANSWER {
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
        total += n;
    }
}

/// What the start of the bytes read so far holds.
enum Parsed {
    /// Not a whole answer yet.
    Incomplete,
    /// An informational answer (1xx other than 101) of this many bytes.
    Informational(usize),
    /// The answer, with the bytes that followed it as its early bytes.
    Answer(Answer),
}

/// Parse the answer at the start of `read`. The first
/// `Sec-WebSocket-Accept` and `Sec-WebSocket-Protocol` count, as they did
/// when hyper's client read answers.
fn parse_answer(read: &[u8]) -> Result<Parsed, String> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut response = httparse::Response::new(&mut lines);
    let length = match response.parse(read) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!(
                "its answer has more than {MAX_ANSWER_HEADERS} header fields"
            ));
        }
        Err(error) => return Err(format!("its answer is not HTTP/1.1: {error}")),
    };
    let status = response.code.unwrap_or_default();
    if (100..200).contains(&status) && status != StatusCode::SWITCHING_PROTOCOLS.as_u16() {
        return Ok(Parsed::Informational(length));
    }
    let mut answer = Answer {
        status,
        upgrades_to_websocket: false,
        connection_upgrade: false,
        accept: None,
        protocol: None,
        extensions: Vec::new(),
        early: Bytes::new(),
    };
    let mut protocol_seen = false;
    for line in response.headers.iter() {
        let name = line.name;
        if name.eq_ignore_ascii_case("upgrade") {
            answer.upgrades_to_websocket |= line.value.eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            answer.connection_upgrade |= line
                .value
                .split(|byte| *byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            if answer.accept.is_none() {
                answer.accept = Some(line.value.to_vec());
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            if !protocol_seen {
                protocol_seen = true;
                answer.protocol = HeaderValue::from_bytes(line.value).ok();
            }
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
    Ok(Parsed::Answer(answer))
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests index what they built, and fail loudly"
)]
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

    /// Why connecting to an upstream that writes `answer(key)` fails.
    async fn refusal(answer: fn(&str) -> Vec<u8>) -> UpstreamError {
        let (url, _read) = upstream_answering(answer).await;
        connect_to(&url).await.err().unwrap()
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
        assert_eq!(values("connection"), ["Upgrade"]);
        assert_eq!(values("sec-websocket-key").len(), 1);
        assert_eq!(values("sec-websocket-version"), ["13"]);
        assert_eq!(values("x-tenant"), ["acme", "second"]);
        assert!(values("sec-websocket-extensions").is_empty());
    }

    /// The head of the request built for `url`: its header lines.
    fn request_lines(url: &str, compress: bool) -> Vec<String> {
        let url = UpstreamUrl::parse(url).unwrap();
        let request = upgrade_request(&url, &HeaderMap::new(), compress, url.address());
        let text = String::from_utf8(request.bytes).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_host_header_has_the_port_only_when_it_is_not_the_schemes() {
        let host = |url: &str| {
            request_lines(url, false)
                .into_iter()
                .find_map(|line| line.strip_prefix("host: ").map(str::to_string))
                .unwrap()
        };
        assert_eq!(host("ws://Example.com/chat"), "Example.com");
        assert_eq!(host("wss://example.com:443/"), "example.com");
        assert_eq!(host("ws://example.com:8080/"), "example.com:8080");
        assert_eq!(host("ws://[::1]/"), "[::1]");
        assert_eq!(host("wss://[::1]:9443/"), "[::1]:9443");
    }

    #[test]
    fn permessage_deflate_is_offered_only_when_asked() {
        let offer = format!("sec-websocket-extensions: {}", deflate::UPSTREAM_OFFER);
        assert!(request_lines("ws://a/", true).contains(&offer));
        assert!(
            !request_lines("ws://a/", false)
                .iter()
                .any(|line| line.starts_with("sec-websocket-extensions"))
        );
    }

    /// The answer parsed from `text`, which must be complete and final.
    fn answer_of(text: &[u8]) -> Answer {
        match parse_answer(text).unwrap() {
            Parsed::Answer(answer) => answer,
            Parsed::Incomplete | Parsed::Informational(_) => panic!("not a final answer"),
        }
    }

    #[test]
    fn what_follows_the_answer_is_kept_and_the_first_handshake_headers_count() {
        let answer = answer_of(
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: first\r\n\
              sec-websocket-accept: second\r\nSec-WebSocket-Protocol: one\r\n\
              Sec-WebSocket-Protocol: two\r\n\r\n\x81\x02hi",
        );
        assert_eq!(answer.status, 101);
        assert_eq!(answer.accept.as_deref(), Some(&b"first"[..]));
        assert_eq!(answer.protocol.unwrap(), "one");
        assert_eq!(&answer.early[..], b"\x81\x02hi");
        let answer = answer_of(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(answer.early.is_empty());
        assert!(matches!(
            parse_answer(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"),
            Ok(Parsed::Incomplete)
        ));
    }

    #[tokio::test]
    async fn informational_answers_before_the_101_are_skipped() {
        let (url, _read) = upstream_answering(|key| {
            let mut bytes = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n".to_vec();
            bytes.extend_from_slice(switching(key).as_bytes());
            bytes
        })
        .await;
        let upstream = connect_to(&url).await.unwrap();
        assert_eq!(upstream.protocol.unwrap(), "chat.v2");
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
        let error =
            refusal(|_| b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
        assert!(matches!(error, UpstreamError::Handshake { .. }), "{error}");
        assert!(
            error.to_string().ends_with("it answered 404 Not Found"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_101_without_the_upgrade_headers_is_refused() {
        let error = refusal(|key| {
            switching(key)
                .replace("Upgrade: websocket\r\n", "")
                .into_bytes()
        })
        .await;
        assert!(
            error
                .to_string()
                .ends_with("does not say Upgrade: websocket"),
            "{error}"
        );
        let error = refusal(|key| {
            switching(key)
                .replace("Connection: Upgrade", "Connection: keep-alive")
                .into_bytes()
        })
        .await;
        assert!(
            error
                .to_string()
                .ends_with("does not say Connection: upgrade"),
            "{error}"
        );
        // A list with the token, in any case, is an upgrade.
        let (url, _read) = upstream_answering(|key| {
            switching(key)
                .replace("Connection: Upgrade", "Connection: keep-alive, UPGRADE")
                .into_bytes()
        })
        .await;
        connect_to(&url).await.unwrap();
    }

    #[tokio::test]
    async fn a_wrong_accept_key_is_refused() {
        let error = refusal(|_| switching("another key").into_bytes()).await;
        assert!(
            error
                .to_string()
                .ends_with("wrong or missing Sec-WebSocket-Accept"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_answer_longer_than_the_limit_is_refused() {
        let error = refusal(|_| {
            let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nx-filler: ".to_vec();
            bytes.resize(bytes.len() + MAX_ANSWER, b'x');
            bytes
        })
        .await;
        assert!(matches!(error, UpstreamError::Handshake { .. }), "{error}");
        assert!(
            error
                .to_string()
                .ends_with("its answer is longer than 16384 bytes"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_answer_with_too_many_header_fields_is_refused() {
        let error = refusal(|key| {
            let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
            for i in 0..MAX_ANSWER_HEADERS {
                bytes.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
            }
            bytes.extend_from_slice(switching(key).split_once("\r\n").unwrap().1.as_bytes());
            bytes
        })
        .await;
        assert!(
            error
                .to_string()
                .ends_with("its answer has more than 100 header fields"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_upstream_that_closes_before_answering_is_refused() {
        let error = refusal(|_| Vec::new()).await;
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
