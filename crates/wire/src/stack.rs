//! The stream stack of one side of a proxied connection, built in one
//! place: the relay's [`WebSocket`] over permessage-deflate (when agreed)
//! over the monitor's tap over the socket.

use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::deflate::{Agreement, Deflate, End, InflateError};
use crate::tap::{SharedFrameLog, Tap};
use crate::websocket::WebSocket;

/// A WebSocket stream over `IO`, as the relay drives it.
pub type WsStream<IO> = WebSocket<Deflate<Tap<IO>>>;

/// Build the stack over `io`: `role` is the gateway's role on this side
/// (server towards the client, client towards the upstream), `deflate`
/// what was agreed with the peer, `frames` where the tap records frames.
pub fn open<IO>(
    io: IO,
    role: Role,
    deflate: Option<Agreement>,
    frames: Option<SharedFrameLog>,
    config: WebSocketConfig,
) -> WsStream<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let end = match role {
        Role::Server => End::Server,
        Role::Client => End::Client,
    };
    WebSocket::new(
        Deflate::new(Tap::new(io, frames), deflate, end),
        role,
        config,
    )
}

/// Give back what a quiet side holds between messages: tungstenite's
/// context ([`WebSocket::shed`]) and, once that is given back, the
/// permessage-deflate codec's compressor and buffers
/// ([`Deflate::shed`](crate::deflate::Deflate::shed)). Returns whether
/// anything was given back.
pub fn shed<IO>(stream: &mut WsStream<IO>) -> bool
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let shed = stream.shed();
    if shed {
        stream.get_mut().shed();
    }
    shed
}

/// Why reading from a peer ended, classified for the close that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFailure {
    /// The connection ended without (or after) a close handshake.
    Vanished,
    /// A message over the size limit: close 1009.
    TooBig,
    /// Invalid UTF-8 in a text message: close 1007.
    InvalidUtf8,
    /// Compressed data that does not inflate: close 1007.
    InvalidCompressed,
    /// Any other violation of RFC 6455: close 1002.
    Protocol,
    /// The socket failed.
    Io,
}

impl ReadFailure {
    /// Classify a read error.
    pub fn of(error: &WsError) -> Self {
        match error {
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Self::Vanished,
            WsError::Io(io) if io.get_ref().is_some_and(|e| e.is::<InflateError>()) => {
                Self::InvalidCompressed
            }
            WsError::Capacity(_) => Self::TooBig,
            WsError::Utf8(_) => Self::InvalidUtf8,
            WsError::Protocol(_) => Self::Protocol,
            _ => Self::Io,
        }
    }

    /// The close code and reason the peer that caused it gets, if it is
    /// owed one (a vanished or failed socket is not).
    pub fn close(self) -> Option<(u16, &'static str)> {
        match self {
            Self::TooBig => Some((1009, "message too big")),
            Self::InvalidUtf8 => Some((1007, "invalid utf-8 in a text message")),
            Self::InvalidCompressed => Some((1007, "invalid compressed data")),
            Self::Protocol => Some((1002, "websocket protocol error")),
            Self::Vanished | Self::Io => None,
        }
    }
}
