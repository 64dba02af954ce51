//! The byte stream under one side's WebSocket stack: the client's
//! connection as hyper hands it over after our 101, or the upstream's
//! socket (plain or TLS) that the gateway's own handshake opened, with
//! whatever the upstream sent right behind its 101.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

/// One side's socket.
pub enum Socket {
    /// Either side over TCP.
    Tcp(Early<TcpStream>),
    /// The client over TLS (boxed, as the next: TLS state is large, and a
    /// plain side should not carry its size).
    ClientTls(Early<Box<server::TlsStream<TcpStream>>>),
    /// The upstream over TLS.
    UpstreamTls(Early<Box<client::TlsStream<TcpStream>>>),
    /// The client's connection as hyper upgraded it, when it is none of
    /// the streams above.
    Upgraded(TokioIo<Upgraded>),
}

impl Socket {
    /// The client's connection after our 101: its TCP or TLS stream
    /// itself, with the bytes hyper read past the request, so reads and
    /// writes do not go through hyper's boxed stream.
    pub fn client(upgraded: Upgraded) -> Self {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => return Self::Tcp(Early::new(parts.io.into_inner(), parts.read_buf)),
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<server::TlsStream<TcpStream>>>() {
            Ok(parts) => {
                Self::ClientTls(Early::new(Box::new(parts.io.into_inner()), parts.read_buf))
            }
            Err(upgraded) => {
                // Correct, only slower: the listener handed hyper a stream
                // of another type.
                tracing::debug!(
                    "the client's stream is not a TCP or TLS stream; read through hyper's"
                );
                Self::Upgraded(TokioIo::new(upgraded))
            }
        }
    }
}

/// A stream whose first bytes were already read: `early` is served
/// before anything more is read from `io`.
pub struct Early<S> {
    early: Bytes,
    io: S,
}

impl<S> Early<S> {
    /// `io`, with `early` to be read first. An empty `early` is not kept:
    /// hyper's, even empty, shares the request's whole read buffer, which a
    /// quiet connection would otherwise hold for its life.
    pub fn new(io: S, early: Bytes) -> Self {
        let mut stream = Self { early, io };
        stream.release_when_read();
        stream
    }

    /// Let go of the early bytes' buffer once they have all been read.
    fn release_when_read(&mut self) {
        if self.early.is_empty() {
            self.early = Bytes::new();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Early<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.early.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.early.len().min(buf.remaining());
        buf.put_slice(self.early.get(..n).unwrap_or_default());
        self.early.advance(n);
        self.release_when_read();
        Poll::Ready(Ok(()))
    }
}

/// Call `$call` on the stream under any variant; a write goes past the
/// early bytes, which are only read.
macro_rules! write_through {
    ($this:ident, $call:ident ( $($arg:expr),* )) => {
        match $this.get_mut() {
            Socket::Tcp(early) => Pin::new(&mut early.io).$call($($arg),*),
            Socket::ClientTls(early) => Pin::new(&mut early.io).$call($($arg),*),
            Socket::UpstreamTls(early) => Pin::new(&mut early.io).$call($($arg),*),
            Socket::Upgraded(io) => Pin::new(io).$call($($arg),*),
        }
    };
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(early) => Pin::new(early).poll_read(cx, buf),
            Socket::ClientTls(early) => Pin::new(early).poll_read(cx, buf),
            Socket::UpstreamTls(early) => Pin::new(early).poll_read(cx, buf),
            Socket::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        write_through!(self, poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        write_through!(self, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(early) => early.io.is_write_vectored(),
            Socket::ClientTls(early) => early.io.is_write_vectored(),
            Socket::UpstreamTls(early) => early.io.is_write_vectored(),
            Socket::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        write_through!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        write_through!(self, poll_shutdown(cx))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn early_bytes_are_read_before_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            peer.write_all(b"-later").await.unwrap();
        });
        let tcp = TcpStream::connect(address).await.unwrap();
        let mut socket = Socket::Tcp(Early::new(tcp, Bytes::from_static(b"early")));
        let mut small = [0u8; 3];
        socket.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"ear");
        let mut rest = Vec::new();
        socket.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"ly-later");
        writer.await.unwrap();
    }

    /// Hyper hands over the bytes behind a request as a slice of its read
    /// buffer: empty, or once read, the stream must not keep that buffer
    /// alive (a quiet connection would hold it for its life).
    #[tokio::test]
    async fn early_bytes_let_go_of_their_buffer_once_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let tcp = TcpStream::connect(address).await.unwrap();
        let peer = accepted.await.unwrap();
        // A read buffer as hyper leaves it: the request split off, what
        // follows it frozen.
        let read_buffer = |behind: &[u8]| {
            let mut buffer = bytes::BytesMut::with_capacity(8192);
            buffer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            buffer.extend_from_slice(behind);
            let request = buffer.split_to(18).freeze();
            (request, buffer.freeze())
        };

        let (request, behind) = read_buffer(b"");
        assert!(!request.is_unique(), "the two share one buffer");
        let _empty = Early::new(tcp, behind);
        assert!(request.is_unique(), "an empty early held the buffer");

        let (request, behind) = read_buffer(b"hi");
        let mut early = Early::new(peer, behind);
        assert!(!request.is_unique());
        let mut two = [0u8; 2];
        early.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"hi");
        assert!(request.is_unique(), "read early bytes held the buffer");
    }

    /// Serve one upgrade request on `io` with hyper, as the gateway does,
    /// and hand the upgraded connection to [`Socket::client`]; read the
    /// five bytes the client sent behind its request and answer `bye`.
    async fn hand_over<IO>(io: IO) -> (Socket, [u8; 5])
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (upgraded, answered) = tokio::sync::oneshot::channel();
        let upgraded = std::sync::Mutex::new(Some(upgraded));
        let service = hyper::service::service_fn(move |mut request| {
            if let Some(upgraded) = upgraded.lock().unwrap().take() {
                let _ = upgraded.send(hyper::upgrade::on(&mut request));
            }
            async {
                let response = http::Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades();
        let (_, on_upgrade) = tokio::join!(connection, answered);
        let mut socket = Socket::client(on_upgrade.unwrap().await.unwrap());
        let mut first = [0u8; 5];
        // Bytes lost in the hand-over would leave this read waiting.
        let read = socket.read_exact(&mut first);
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the bytes behind the request arrive")
            .unwrap();
        socket.write_all(b"bye").await.unwrap();
        socket.flush().await.unwrap();
        (socket, first)
    }

    /// Send an upgrade request with `hello` behind it in one write, and
    /// read until the server's `bye`.
    async fn upgrade_saying_hello<S: AsyncRead + AsyncWrite + Unpin>(mut client: S) {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nhello")
            .await
            .unwrap();
        client.flush().await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"bye") {
            let mut byte = [0u8; 1];
            client.read_exact(&mut byte).await.unwrap();
            answer.push(byte[0]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 101"));
    }

    #[tokio::test]
    async fn a_plain_client_after_the_101_is_its_tcp_stream_with_what_followed_the_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            hand_over(TokioIo::new(tcp)).await
        });
        upgrade_saying_hello(TcpStream::connect(address).await.unwrap()).await;
        let (socket, first) = server.await.unwrap();
        assert!(matches!(socket, Socket::Tcp(_)));
        assert_eq!(&first, b"hello");
    }

    #[tokio::test]
    async fn a_tls_client_after_the_101_is_its_tls_stream_with_what_followed_the_request() {
        let provider = || std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let certificate = issued.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(issued.signing_key.serialize_der().into());
        let server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_config));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            hand_over(TokioIo::new(acceptor.accept(tcp).await.unwrap())).await
        });
        let tcp = TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let client = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config))
            .connect(name, tcp)
            .await
            .unwrap();
        upgrade_saying_hello(client).await;
        let (socket, first) = server.await.unwrap();
        assert!(matches!(socket, Socket::ClientTls(_)));
        assert_eq!(&first, b"hello");
    }
}
