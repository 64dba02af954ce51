//! Configurable reactions shared by validating plugins.

use crate::{Message, MessageVerdict};

/// What a validator does with a message that fails it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Close both sides with the plugin's close code.
    #[default]
    Close,
    /// Drop the message.
    Drop,
    /// Drop the message and reply to its sender with `{"error": reason, "code": code}`.
    Reply,
}

impl Action {
    /// The verdict for a failed message.
    pub fn verdict(self, code: u16, reason: &str) -> MessageVerdict {
        match self {
            Self::Close => MessageVerdict::close(code, reason),
            Self::Drop => MessageVerdict::Drop,
            Self::Reply => MessageVerdict::Reply(vec![Message::Text(
                serde_json::json!({ "error": reason, "code": code }).to_string(),
            )]),
        }
    }
}

/// What a JSON plugin does with binary messages and text that is not JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum NonJson {
    /// Forward it unchanged.
    #[default]
    Pass,
    /// Drop it.
    Drop,
    /// Close both sides with 1007 (invalid payload data).
    Close,
}

impl NonJson {
    /// The verdict for a message that is not JSON.
    pub fn verdict(self) -> MessageVerdict {
        match self {
            Self::Pass => MessageVerdict::Forward,
            Self::Drop => MessageVerdict::Drop,
            Self::Close => MessageVerdict::close(1007, "expected a JSON text message"),
        }
    }
}

/// The JSON value of a text message, if it is one.
pub fn json_of(message: &Message) -> Option<serde_json::Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text).ok(),
        _ => None,
    }
}

/// Whether a message is text or binary (the ones validators judge).
pub fn is_data(message: &Message) -> bool {
    matches!(message, Message::Text(_) | Message::Binary(_))
}

/// Payload length in bytes of a text or binary message (0 for control frames).
pub fn data_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(data) => data.len(),
        _ => 0,
    }
}
