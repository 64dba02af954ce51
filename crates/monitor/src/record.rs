//! What the monitor records: one upgrade per connection, its frames, its end.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One upgrade plugin's verdict on a request.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PluginVerdict {
    /// The plugin, `name@version`.
    pub plugin: String,
    /// `continue`, `modify`, `reject <status>`, `route <url>` or `fault <kind>`.
    pub verdict: String,
    /// Time the call took, in microseconds.
    pub duration_us: u64,
}

/// The upgrade request and the gateway's answer.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct UpgradeRecord {
    /// The connection's key, unique across gateway restarts.
    pub connection: String,
    /// The connection id plugins see.
    pub id: u64,
    /// The configuration generation that served it.
    pub generation: u64,
    /// When the request arrived, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The endpoint's path.
    pub endpoint: String,
    /// The client's address.
    pub client: String,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Query string, without `?`.
    pub query: String,
    /// Request headers, in order.
    pub request_headers: Vec<(String, String)>,
    /// The status the client got (101 when upgraded).
    pub status: u16,
    /// Response headers, in order.
    pub response_headers: Vec<(String, String)>,
    /// Time from the request to the answer, in microseconds.
    pub duration_us: u64,
    /// The upstream URL the chain routed to.
    pub route: Option<String>,
    /// Each upgrade plugin's verdict, in chain order.
    pub verdicts: Vec<PluginVerdict>,
    /// The endpoint's monitor level when it was recorded.
    pub level: String,
}

/// Which side sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The client sent it to the gateway.
    Client,
    /// The gateway sent it to the client (the server's side of the conversation).
    Server,
}

impl Origin {
    /// `client` or `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// One WebSocket frame on the client's connection.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FrameRecord {
    /// The connection's key (shared by its frames).
    pub connection: Arc<str>,
    /// Position among the connection's frames, from 1.
    pub seq: u64,
    /// When the frame was complete, microseconds since the Unix epoch.
    pub time_us: u64,
    /// Who sent it.
    pub origin: Origin,
    /// The opcode (0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// The FIN bit: the last frame of its message.
    pub fin: bool,
    /// RSV1, RSV2, RSV3 bits.
    pub rsv: [bool; 3],
    /// The masking key, on frames from the client (hex in JSON).
    pub masking_key: Option<MaskingKey>,
    /// Payload length in bytes.
    pub length: u64,
    /// The payload (unmasked), base64, up to the endpoint's capture size
    /// (level `full` only).
    pub payload: Option<String>,
    /// The payload was cut at the capture size.
    pub truncated: bool,
    /// Time the message spent in filters (their calls, as the plugin pools
    /// time them), in microseconds (last frame of a message).
    pub filter_us: Option<u64>,
    /// What the filters decided (last frame of a message); shared by the
    /// frames of messages that got the same verdicts.
    pub verdict: Option<Arc<str>>,
    /// The message's length uncompressed, on the last frame of a message
    /// sent with permessage-deflate (`length` is what crossed the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u64>,
}

/// A client frame's 32-bit masking key, written as 8 hex digits
/// (`"37fa213d"`) in JSON and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskingKey(pub [u8; 4]);

impl std::fmt::Display for MaskingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", u32::from_be_bytes(self.0))
    }
}

impl Serialize for MaskingKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MaskingKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        // `from_str_radix` alone would take a sign ("+1234567").
        Some(&text)
            .filter(|text| text.len() == 8 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|text| u32::from_str_radix(text, 16).ok())
            .map(|key| Self(key.to_be_bytes()))
            .ok_or_else(|| serde::de::Error::custom("a masking key is 8 hex digits"))
    }
}

impl FrameRecord {
    /// The opcode's name.
    pub fn opcode_name(&self) -> &'static str {
        opcode_name(self.opcode)
    }
}

/// The name of an opcode.
pub fn opcode_name(opcode: u8) -> &'static str {
    match opcode {
        0 => "continuation",
        1 => "text",
        2 => "binary",
        8 => "close",
        9 => "ping",
        10 => "pong",
        _ => "reserved",
    }
}

/// One message, in the form replay keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Payload {
    /// A text message.
    Text {
        /// Its text (masked).
        data: String,
    },
    /// A binary message.
    Binary {
        /// Its bytes, base64.
        base64: String,
    },
    /// A close frame.
    Close {
        /// Its code, if it has one.
        code: Option<u16>,
        /// Its reason.
        reason: String,
    },
}

/// One message through its message chain (monitor level `replay`): as it
/// entered the chain and what left it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MessageRecord {
    /// The connection's key.
    pub connection: String,
    /// Position among the connection's recorded messages, from 1.
    pub seq: u64,
    /// When it was read (before its chain), microseconds since the Unix
    /// epoch; replay's `clocks.now-ms` answers this.
    pub time_us: u64,
    /// Who sent it: `client` or `upstream`.
    pub from: String,
    /// The message as read.
    pub input: Payload,
    /// What the chain sent on to the other side.
    pub forward: Vec<Payload>,
    /// What the chain sent back to the sender.
    pub replies: Vec<Payload>,
    /// The close (code, reason) the chain ended the connection with.
    pub close: Option<(u16, String)>,
    /// Time in the chain's plugin calls, in microseconds.
    pub filter_us: u64,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct EndRecord {
    /// The connection's key.
    pub connection: String,
    /// When it ended, microseconds since the Unix epoch.
    pub time_us: u64,
    /// Who closed first: `client`, `upstream` or `gateway`.
    pub closed_by: String,
    /// The close code sent or received first, if any.
    pub code: Option<u16>,
    /// Its reason.
    pub reason: String,
    /// The endpoint's `expire` ended it.
    pub expired: bool,
}

/// Anything the monitor records.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    /// A connection's upgrade (boxed, as the largest: a frame, the most
    /// common record, is not made as large as an upgrade).
    Upgrade(Box<UpgradeRecord>),
    /// One frame.
    Frame(FrameRecord),
    /// One message through its chain (level `replay`; boxed).
    Message(Box<MessageRecord>),
    /// A connection's end.
    End(EndRecord),
}

impl Record {
    /// The connection the record belongs to.
    pub fn connection(&self) -> &str {
        match self {
            Self::Upgrade(r) => &r.connection,
            Self::Frame(r) => &r.connection,
            Self::Message(r) => &r.connection,
            Self::End(r) => &r.connection,
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Payload {
    /// The bytes its text, base64 or reason holds.
    fn held_bytes(&self) -> usize {
        match self {
            Self::Text { data } => data.len(),
            Self::Binary { base64 } => base64.len(),
            Self::Close { reason, .. } => reason.len(),
        }
    }
}

impl Record {
    /// About how many bytes of payload, headers and text the record holds
    /// (what bounds the monitor's queue by size).
    pub fn held_bytes(&self) -> usize {
        let pairs = |headers: &[(String, String)]| -> usize {
            headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum()
        };
        match self {
            Self::Upgrade(upgrade) => {
                pairs(&upgrade.request_headers)
                    + pairs(&upgrade.response_headers)
                    + upgrade.path.len()
                    + upgrade.query.len()
            }
            Self::Frame(frame) => frame.payload.as_ref().map_or(0, String::len),
            Self::Message(message) => {
                message.input.held_bytes()
                    + message
                        .forward
                        .iter()
                        .chain(&message.replies)
                        .map(Payload::held_bytes)
                        .sum::<usize>()
                    + message.close.as_ref().map_or(0, |(_, reason)| reason.len())
            }
            Self::End(end) => end.reason.len(),
        }
    }
}
