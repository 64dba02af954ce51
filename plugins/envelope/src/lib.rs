//! `envelope`: wraps messages in a JSON envelope, or unwraps them from one.
//!
//! `wrap`: `{"<field>": <message>, ...metadata}`; a JSON message is embedded
//! as JSON, any other text as a string, binary as base64 in `"<field>"` with
//! `"encoding": "base64"`. Metadata values are templates over the connection
//! (`${connection-id}`, `${endpoint}`, `${direction}`, `${now-ms}`,
//! `${header.NAME}`, `${attribute.NAME}`).
//! `unwrap`: the `<field>` of a JSON envelope becomes the message (a string
//! as text, anything else as JSON text).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use wsgate_plugin_sdk::policy::{NonJson, json_of};
use wsgate_plugin_sdk::prelude::*;
use wsgate_plugin_sdk::{
    connection_value, is_connection_placeholder, render_template, template_names,
};

#[derive(serde::Deserialize, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Wrap,
    Unwrap,
}

/// Configuration of `envelope`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// `wrap` or `unwrap`.
    mode: Mode,
    /// The envelope field holding the message (default `payload`).
    #[serde(default = "payload")]
    field: String,
    /// Extra envelope fields when wrapping; string values are templates.
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
    /// When unwrapping: messages that are not an envelope.
    #[serde(default)]
    non_json: NonJson,
}

fn payload() -> String {
    "payload".to_string()
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Envelope;

impl Plugin for Envelope {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        for (key, value) in &config.metadata {
            if let Value::String(template) = value
                && let Some(bad) = template_names(template)
                    .into_iter()
                    .find(|n| !is_connection_placeholder(n))
            {
                return Err(ConfigError {
                    field: format!("/metadata/{key}"),
                    message: format!("unknown placeholder `${{{bad}}}`"),
                });
            }
        }
        Ok(())
    }
}

impl MessageFilter for Envelope {
    fn on_message(config: &Config, direction: Direction, message: Message) -> MessageVerdict {
        match config.mode {
            Mode::Wrap => wrap(config, direction, message),
            Mode::Unwrap => unwrap(config, message),
        }
    }
}

fn wrap(config: &Config, direction: Direction, message: Message) -> MessageVerdict {
    let mut envelope = Map::new();
    for (key, value) in &config.metadata {
        let value = match value {
            Value::String(template) => Value::String(
                render_template(template, |n| connection_value(n, direction)).unwrap_or_default(),
            ),
            other => other.clone(),
        };
        envelope.insert(key.clone(), value);
    }
    match message {
        Message::Text(text) => {
            let inner = serde_json::from_str(&text).unwrap_or(Value::String(text));
            envelope.insert(config.field.clone(), inner);
        }
        Message::Binary(data) => {
            envelope.insert(config.field.clone(), Value::String(base64(&data)));
            envelope.insert("encoding".into(), Value::String("base64".into()));
        }
        _ => return MessageVerdict::Forward,
    }
    MessageVerdict::modify(Message::Text(Value::Object(envelope).to_string()))
}

fn unwrap(config: &Config, message: Message) -> MessageVerdict {
    if !matches!(message, Message::Text(_) | Message::Binary(_)) {
        return MessageVerdict::Forward;
    }
    let Some(Value::Object(mut envelope)) = json_of(&message) else {
        return config.non_json.verdict();
    };
    match envelope.remove(&config.field) {
        Some(Value::String(text)) => MessageVerdict::modify(Message::Text(text)),
        Some(inner) => MessageVerdict::modify(Message::Text(inner.to_string())),
        None => config.non_json.verdict(),
    }
}

wsgate_plugin_sdk::export_message_filter!(Envelope);

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads_like_rfc_4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}

#[cfg(test)]
mod config_schema {
    /// `config.schema.json` is generated from `Config`; this keeps it current.
    #[test]
    fn the_config_schema_is_current() {
        wsgate_plugin_sdk::schema::check::<super::Config>(env!("CARGO_MANIFEST_DIR")).unwrap();
    }
}
