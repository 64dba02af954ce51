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
use tokio_rustls::client::TlsStream;

/// One side's socket.
pub enum Socket {
    /// The client's connection, upgraded by hyper.
    Client(TokioIo<Upgraded>),
    /// The upstream over TCP.
    Upstream(Early<TcpStream>),
    /// The upstream over TLS (boxed: its state is large, and the plain
    /// side should not carry it).
    UpstreamTls(Early<Box<TlsStream<TcpStream>>>),
}

/// A stream whose first bytes were already read: `early` is served
/// before anything more is read from `io`.
pub struct Early<S> {
    early: Bytes,
    io: S,
}

impl<S> Early<S> {
    /// `io`, with `early` to be read first.
    pub fn new(io: S, early: Bytes) -> Self {
        Self { early, io }
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
        Poll::Ready(Ok(()))
    }
}

/// Call `$call` on the stream under any variant; a write goes past the
/// early bytes, which are only read.
macro_rules! write_through {
    ($this:ident, $call:ident ( $($arg:expr),* )) => {
        match $this.get_mut() {
            Socket::Client(io) => Pin::new(io).$call($($arg),*),
            Socket::Upstream(early) => Pin::new(&mut early.io).$call($($arg),*),
            Socket::UpstreamTls(early) => Pin::new(&mut early.io).$call($($arg),*),
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
            Socket::Client(io) => Pin::new(io).poll_read(cx, buf),
            Socket::Upstream(io) => Pin::new(io).poll_read(cx, buf),
            Socket::UpstreamTls(io) => Pin::new(io).poll_read(cx, buf),
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
            Socket::Client(io) => io.is_write_vectored(),
            Socket::Upstream(early) => early.io.is_write_vectored(),
            Socket::UpstreamTls(early) => early.io.is_write_vectored(),
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
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
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
        let mut socket = Socket::Upstream(Early::new(tcp, Bytes::from_static(b"early")));
        let mut small = [0u8; 3];
        socket.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"ear");
        let mut rest = Vec::new();
        socket.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"ly-later");
        writer.await.unwrap();
    }
}
