//! A WebSocket connection driven by the one task that relays it.
//!
//! tungstenite's [`WebSocketContext`] over any tokio I/O, polled with the
//! relay task's own context. tokio-tungstenite's `WebSocketStream` allows a
//! stream to be split across tasks, so every poll re-registers read and
//! write wakers in proxies of its own; a relay owns both halves of both
//! connections in one task and needs none of that.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// One end of a WebSocket connection over `S`.
pub struct WebSocket<S> {
    io: S,
    context: WebSocketContext,
    /// The connection closed or failed: reads yield nothing more.
    ended: bool,
    /// Nothing is queued that has to be written before another message.
    ready: bool,
}

/// `S` seen as blocking I/O for tungstenite, within one poll: "would block"
/// stands for `Pending`, and `S` has registered the task's waker.
struct Blocking<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for Blocking<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for Blocking<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A tungstenite result as a poll: "would block" is `Pending`.
fn pending_on_block<T>(result: Result<T, WsError>) -> Poll<Result<T, WsError>> {
    match result {
        Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// A connection over `io`, whose handshake is done, in `role`.
    pub fn new(io: S, role: Role, config: WebSocketConfig) -> Self {
        Self {
            io,
            context: WebSocketContext::new(role, Some(config)),
            ended: false,
            ready: true,
        }
    }

    /// The I/O under the connection.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The I/O under the connection, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let mut io = Blocking {
            io: &mut self.io,
            cx,
        };
        let result = std::task::ready!(pending_on_block(self.context.flush(&mut io)));
        self.ready = true;
        Poll::Ready(match result {
            // The connection has just closed: the flush is complete.
            Err(WsError::ConnectionClosed) => Ok(()),
            other => other,
        })
    }

    /// Queue `message` and start writing it; [`WebSocket::flush`] finishes.
    /// Waits only while earlier messages are still being written.
    pub async fn feed(&mut self, message: Message) -> Result<(), WsError> {
        let mut message = Some(message);
        std::future::poll_fn(|cx| {
            if !self.ready {
                std::task::ready!(self.poll_flush(cx))?;
            }
            let Some(message) = message.take() else {
                return Poll::Ready(Ok(()));
            };
            let mut io = Blocking {
                io: &mut self.io,
                cx,
            };
            match self.context.write(&mut io, message) {
                Ok(()) => Poll::Ready(Ok(())),
                // Queued, but the socket is full: the next feed or flush
                // writes it.
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    Poll::Ready(Ok(()))
                }
                Err(error) => Poll::Ready(Err(error)),
            }
        })
        .await
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message, WsError>;

    /// The next message; `None` once the connection has closed, or after
    /// an error has been returned.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut io = Blocking {
            io: &mut this.io,
            cx,
        };
        match std::task::ready!(pending_on_block(this.context.read(&mut io))) {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(error) => {
                this.ended = true;
                match error {
                    WsError::AlreadyClosed | WsError::ConnectionClosed => Poll::Ready(None),
                    error => Poll::Ready(Some(Err(error))),
                }
            }
        }
    }
}
