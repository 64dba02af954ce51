//! Searches over recorded traffic.

use serde::Serialize;

use crate::record::{EndRecord, Origin, UpgradeRecord};

/// A connection as the views list it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Connection {
    /// Its upgrade.
    pub upgrade: UpgradeRecord,
    /// How it ended, once it has.
    pub end: Option<EndRecord>,
    /// Frames recorded.
    pub frames: u64,
}

/// Which connections to list (newest first). Unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    /// Endpoint path.
    pub endpoint: Option<String>,
    /// Upgrades at or after, microseconds since the epoch.
    pub since_us: Option<u64>,
    /// Upgrades at or before.
    pub until_us: Option<u64>,
    /// Status the client got.
    pub status: Option<u16>,
    /// Close code the connection ended with.
    pub close_code: Option<u16>,
    /// Connections with at least one frame of this opcode.
    pub opcode: Option<u8>,
    /// Most results.
    pub limit: usize,
}

impl ConnectionFilter {
    pub(crate) fn matches(&self, connection: &Connection, has_opcode: impl Fn(u8) -> bool) -> bool {
        let upgrade = &connection.upgrade;
        self.endpoint
            .as_ref()
            .is_none_or(|e| *e == upgrade.endpoint)
            && self.since_us.is_none_or(|t| upgrade.time_us >= t)
            && self.until_us.is_none_or(|t| upgrade.time_us <= t)
            && self.status.is_none_or(|s| upgrade.status == s)
            && self
                .close_code
                .is_none_or(|c| connection.end.as_ref().and_then(|e| e.code) == Some(c))
            && self.opcode.is_none_or(has_opcode)
    }
}

/// Which frames to list: a connection's in order, otherwise newest first.
#[derive(Debug, Clone, Default)]
pub struct FrameFilter {
    /// One connection's frames, in order.
    pub connection: Option<String>,
    /// Frames of connections on this endpoint.
    pub endpoint: Option<String>,
    /// Sent by this side.
    pub origin: Option<Origin>,
    /// This opcode.
    pub opcode: Option<u8>,
    /// At or after, microseconds since the epoch.
    pub since_us: Option<u64>,
    /// At or before.
    pub until_us: Option<u64>,
    /// Most results.
    pub limit: usize,
}

impl FrameFilter {
    /// Whether a frame with these fields, on `connection` at `endpoint`, is wanted.
    pub(crate) fn matches(
        &self,
        endpoint: &str,
        connection: &str,
        origin: Origin,
        opcode: u8,
        time_us: u64,
    ) -> bool {
        self.connection.as_ref().is_none_or(|c| c == connection)
            && self.endpoint.as_ref().is_none_or(|e| e == endpoint)
            && self.origin.is_none_or(|o| o == origin)
            && self.opcode.is_none_or(|o| o == opcode)
            && self.since_us.is_none_or(|t| time_us >= t)
            && self.until_us.is_none_or(|t| time_us <= t)
    }
}
