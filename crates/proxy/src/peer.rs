//! The two peers of a proxied connection, and who failed when something
//! does.

use wsgate_runtime::Direction;

/// One of the two peers the gateway connects. The gateway's one name for
/// the WebSocket server it connects to is "upstream"; the released 0.1.0
/// plugin contract calls the same peer "server" ([`Direction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The client that sent the upgrade request.
    Client,
    /// The WebSocket server the upgrade chain routed to.
    Upstream,
}

impl Peer {
    /// The plugin contract's direction of a message read from this peer.
    pub fn direction_from(self) -> Direction {
        match self {
            Peer::Client => Direction::ClientToServer,
            Peer::Upstream => Direction::ServerToClient,
        }
    }

    /// The direction of a message read from this peer, as traces say it.
    pub fn direction_name(self) -> &'static str {
        match self {
            Peer::Client => "client-to-upstream",
            Peer::Upstream => "upstream-to-client",
        }
    }

    /// `client` or `upstream`, as logs and the monitor say it.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Client => "client",
            Peer::Upstream => "upstream",
        }
    }
}

/// Who is at fault when an upgrade or a connection fails: logged as the
/// `failed` field, so an operator knows where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// The client sent something the gateway refuses.
    Client,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// A plugin faulted or gave an unusable answer.
    Plugin,
    /// The configuration does not allow what was asked.
    Configuration,
    /// The gateway itself (its limits, its shutdown).
    Gateway,
}

impl Culprit {
    /// The name logged.
    pub fn name(self) -> &'static str {
        match self {
            Culprit::Client => "client",
            Culprit::Upstream => "upstream",
            Culprit::Plugin => "plugin",
            Culprit::Configuration => "configuration",
            Culprit::Gateway => "gateway",
        }
    }
}
