//! One side of the relay: its stream and where its close handshake stands.

use std::task::Poll;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::convert::close_frame;
use crate::observe::Observer;
use crate::peer::Peer;
use crate::upstream::WsStream;

/// A side whose messages come at least this far apart reads rarely; a
/// connection whose sides both do gives its buffers back between messages
/// (see [`Side::note_read`]).
const RARELY: Duration = Duration::from_millis(50);

/// Why a write to a side failed: either way the side is gone.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] WsError),
    /// A write waited longer than the send timeout: the peer stopped reading.
    #[error("the peer stopped reading (send timeout)")]
    Stalled,
}

/// One side of the relay.
pub struct Side {
    /// The side's WebSocket stream.
    pub stream: WsStream,
    /// Which peer it is.
    pub peer: Peer,
    /// Still worth reading from.
    pub readable: bool,
    /// We sent this side a close frame.
    pub close_sent: bool,
    /// This side sent us a close frame (tungstenite has answered it).
    pub close_received: bool,
    /// A write failed: the connection is gone.
    broken: bool,
    /// Longest wait for this side to accept a write.
    send_timeout: Option<Duration>,
    /// A write waited longer than `send_timeout`: this side stopped reading.
    pub stalled: bool,
    /// Messages were fed since the last flush.
    unflushed: bool,
    /// Messages to this side are compressed (permessage-deflate).
    compresses: bool,
    /// When a read from this side last brought messages.
    last_read: Option<Instant>,
    /// Those messages came at least [`RARELY`] after the ones before (or
    /// were its first); true until it has sent any.
    reads_rarely: bool,
}

impl Side {
    /// `peer`'s side over `stream`.
    pub fn new(stream: WsStream, peer: Peer, send_timeout: Option<Duration>) -> Self {
        let compresses = stream.get_ref().compresses();
        Self {
            stream,
            peer,
            readable: true,
            close_sent: false,
            close_received: false,
            broken: false,
            send_timeout,
            stalled: false,
            unflushed: false,
            compresses,
            last_read: None,
            reads_rarely: true,
        }
    }

    /// Run a write, giving up after the send timeout: the peer stopped
    /// reading, so it is treated as gone rather than buffered for.
    async fn write(&mut self, message: Option<WsMessage>) -> Result<(), WriteFailure> {
        let limit = self.send_timeout;
        let write = async {
            match message {
                Some(message) => self.stream.feed(message).await,
                None => self.stream.flush().await,
            }
        };
        let mut write = std::pin::pin!(write);
        // Most writes complete at once: the send timeout's timer is only
        // armed for one that has to wait.
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        let written = match (first, limit) {
            (Poll::Ready(result), _) => Ok(result),
            (Poll::Pending, Some(limit)) => tokio::time::timeout(limit, write).await,
            (Poll::Pending, None) => Ok(write.await),
        };
        match written {
            Ok(result) => Ok(result?),
            Err(_) => {
                self.stalled = true;
                Err(WriteFailure::Stalled)
            }
        }
    }

    /// Queue messages (sent by the next [`Side::flush`]); nothing goes out
    /// after a close either way, and a failed write means this side is gone.
    pub async fn send_all(
        &mut self,
        messages: impl IntoIterator<Item = WsMessage>,
        observer: &Observer,
    ) {
        for message in messages {
            if self.close_sent || self.close_received || self.broken {
                break;
            }
            match &message {
                WsMessage::Close(_) => self.close_sent = true,
                WsMessage::Text(_) | WsMessage::Binary(_) if self.compresses => {
                    observer.writing_compressed(self.peer, payload(&message));
                }
                _ => {}
            }
            self.unflushed = true;
            if let Err(error) = self.write(Some(message)).await {
                tracing::info!(peer = self.peer.name(), %error, "write failed");
                self.broken = true;
                self.readable = false;
                return;
            }
        }
    }

    /// Note that this side's messages were read at `read_at`: whether they
    /// came at least [`RARELY`] after its previous ones (or are its first).
    /// Keeping tungstenite's buffers between messages for a connection
    /// whose sides both read rarely costs memory for nothing; making them
    /// again per message costs a few allocations, worth it only when
    /// messages are rare.
    pub fn note_read(&mut self, read_at: Instant) -> bool {
        self.reads_rarely = self
            .last_read
            .is_none_or(|at| read_at.duration_since(at) >= RARELY);
        self.last_read = Some(read_at);
        self.reads_rarely
    }

    /// Whether this side's last messages came at least [`RARELY`] after the
    /// ones before (true until it has sent any).
    pub fn reads_rarely(&self) -> bool {
        self.reads_rarely
    }

    /// tungstenite has queued a pong to this side (it read a ping): the next
    /// [`Side::flush`] sends it.
    pub fn owes_pong(&mut self) {
        self.unflushed = true;
    }

    /// Send what was queued since the last flush.
    pub async fn flush(&mut self) {
        if !std::mem::take(&mut self.unflushed) || self.broken {
            return;
        }
        if let Err(error) = self.write(None).await {
            tracing::info!(peer = self.peer.name(), %error, "flush failed");
            self.broken = true;
            self.readable = false;
        }
    }

    /// This side's close handshake is over (it answered ours, or we answered
    /// its): flush our answer and stop reading. Dropping the stream then
    /// closes the TCP connection, as RFC 6455 7.1.1 asks of a server.
    pub async fn finish(&mut self) {
        self.unflushed = false;
        let _ = self.stream.flush().await;
        self.readable = false;
    }

    /// Start the close handshake with this side, unless one is under way.
    pub async fn close(&mut self, code: u16, reason: &str, observer: &Observer) {
        if !self.close_sent && !self.close_received {
            self.send_all(
                [WsMessage::Close(Some(close_frame(code, reason)))],
                observer,
            )
            .await;
            self.flush().await;
        }
    }
}

/// A message's payload bytes (a close frame's: none).
pub fn payload(message: &WsMessage) -> &[u8] {
    match message {
        WsMessage::Text(text) => text.as_bytes(),
        WsMessage::Binary(data) | WsMessage::Ping(data) | WsMessage::Pong(data) => data,
        WsMessage::Close(_) | WsMessage::Frame(_) => &[],
    }
}
