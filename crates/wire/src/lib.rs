//! The WebSocket wire layer under the relay, one stack per side of a
//! connection (built by [`stack::open`]):
//!
//! ```text
//! relay ── WebSocket (tungstenite's context, polled by the relay task)
//!            └── Deflate (permessage-deflate, RFC 7692; plain frames above)
//!                 └── Tap (the monitor's frame log, wire frames below)
//!                      └── socket (TCP or TLS)
//! ```
//!
//! [`frame`] is the one frame-header codec the layers share.

#![deny(clippy::indexing_slicing)]

pub mod deflate;
pub mod frame;
pub mod stack;
pub mod tap;
#[cfg(test)]
mod testing;
pub mod websocket;

pub use stack::{ReadFailure, WsStream, open, shed};
pub use tap::{FrameLog, SharedFrameLog};
