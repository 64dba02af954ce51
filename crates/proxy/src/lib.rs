//! The WebSocket proxy: the flow of a connection, and nothing else.
//!
//! A connection's life, top-down (see `docs/phases.md`, which names the
//! function of each phase):
//! 1. `listener` accepts it under the pending limits (`ledger`'s
//!    `Handshake`, held until the request is answered), then TLS, and
//!    hyper reads one request under the handshake timeout and the header
//!    size and count limits;
//! 2. `upgrade` runs the phases of the upgrade: endpoint, WebSocket
//!    checks, origin, connection limits (`ledger`), the upgrade chain,
//!    the route's check, the upstream connection (`upstream`), the
//!    client's 101;
//! 3. `relay` moves messages both ways through the message chains and
//!    carries the close handshake, expiry, drain and shutdown.
//!
//! One `observe::Observer` per connection tells the counters and the
//! traffic monitor what happened. The bytes on the wire (WebSocket framing,
//! permessage-deflate, the monitor's frame tap) are `wsgate-wire`'s job.

#![deny(clippy::indexing_slicing)]

#[cfg(feature = "bench")]
pub mod bench;
mod config_diff;
mod convert;
pub mod counters;
mod drain;
pub mod echo;
mod gateway;
mod generation;
mod ledger;
mod listener;
mod observe;
mod peer;
mod relay;
pub mod replay;
pub mod shadow;
mod shared;
mod signal;
mod socket;
mod tls;
mod upgrade;
mod upstream;
mod workers;

pub use drain::{Drain, DrainPhase};
pub use gateway::{DeployError, DeployRecord, Gateway, GenerationStatus, StartError};
pub use generation::{ChainStep, Generation, LiveEndpoint, RemoteLimit};
pub use listener::BindError;
pub use peer::Peer;
