//! A WebSocket connection driven by the one task that relays it.
//!
//! tungstenite's [`WebSocketContext`] over any tokio I/O, polled with the
//! relay task's own context. tokio-tungstenite's `WebSocketStream` allows a
//! stream to be split across tasks, so every poll re-registers read and
//! write wakers in proxies of its own; a relay owns both halves of both
//! connections in one task and needs none of that.
//!
//! tungstenite's context holds a read buffer of `read-buffer-size`; it is
//! made when the connection first has something to read or write, so a
//! connection that stays idle holds none.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Bytes of the first read from an idle connection, taken on the stack.
const FIRST_READ: usize = 512;

/// One end of a WebSocket connection over `S`.
pub struct WebSocket<S> {
    io: S,
    /// Made on first use (see the module's note).
    context: Option<WebSocketContext>,
    role: Role,
    config: WebSocketConfig,
    /// The connection closed or failed: reads yield nothing more.
    ended: bool,
    /// Nothing is queued that has to be written before another message.
    ready: bool,
    /// The last read from `io` filled tungstenite's buffer: more is
    /// probably waiting.
    read_full: bool,
}

/// `S` seen as blocking I/O for tungstenite, within one poll: "would block"
/// stands for `Pending`, and `S` has registered the task's waker.
struct Blocking<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
    /// Set when a read fills the buffer it was given.
    read_full: &'a mut bool,
}

impl<S: AsyncRead + Unpin> Read for Blocking<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                *self.read_full = buf.remaining() == 0;
                Ok(buf.filled().len())
            }
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
            context: None,
            role,
            config,
            ended: false,
            ready: true,
            read_full: false,
        }
    }

    /// Whether another message is probably ready to read at once: the
    /// last read filled the buffer, so the socket may hold more.
    pub fn probably_more(&self) -> bool {
        self.read_full
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
        let Some(context) = self.context.as_mut() else {
            // Nothing was ever written.
            return Poll::Ready(Ok(()));
        };
        let mut io = Blocking {
            io: &mut self.io,
            cx,
            read_full: &mut self.read_full,
        };
        let result = std::task::ready!(pending_on_block(context.flush(&mut io)));
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
            let (role, config) = (self.role, self.config);
            let context = self
                .context
                .get_or_insert_with(|| WebSocketContext::new(role, Some(config)));
            let mut io = Blocking {
                io: &mut self.io,
                cx,
                read_full: &mut self.read_full,
            };
            match context.write(&mut io, message) {
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
        if this.context.is_none() {
            // Idle so far: wait for the first bytes without a buffer.
            let mut first = [0u8; FIRST_READ];
            let mut buf = ReadBuf::new(&mut first);
            match std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut buf)) {
                Ok(()) => {
                    this.context = Some(WebSocketContext::from_partially_read(
                        buf.filled().to_vec(),
                        this.role,
                        Some(this.config),
                    ));
                }
                Err(error) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(WsError::Io(error))));
                }
            }
        }
        let Some(context) = this.context.as_mut() else {
            return Poll::Ready(None);
        };
        let mut io = Blocking {
            io: &mut this.io,
            cx,
            read_full: &mut this.read_full,
        };
        match std::task::ready!(pending_on_block(context.read(&mut io))) {
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
