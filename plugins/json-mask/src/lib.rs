//! `json-mask`: replaces the values of chosen keys in JSON text messages, at
//! any depth, with a mask. Non-JSON text, binary and control messages pass
//! unchanged. The same filter exists in JavaScript, Python and C under
//! `plugins/languages/`; all four pass the same end-to-end test.

use serde_json::Value;
use wsgate_plugin_sdk::prelude::*;

/// Configuration of `json-mask`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Keys whose values are masked, wherever they appear.
    #[cfg_attr(test, schemars(length(min = 1)))]
    fields: Vec<String>,
    /// What replaces a masked value (a JSON string).
    #[serde(default = "default_mask")]
    mask: String,
}

fn default_mask() -> String {
    "***".to_string()
}

struct JsonMask;

impl Plugin for JsonMask {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        if config.fields.is_empty() {
            return Err(ConfigError {
                field: "/fields".to_string(),
                message: "required: a non-empty list of key names".to_string(),
            });
        }
        Ok(())
    }
}

/// Mask matching keys in `value` in place; true when anything changed.
/// Every branch is visited (no short-circuit): all matches are masked.
fn mask(config: &Config, value: &mut Value) -> bool {
    let mut changed = false;
    match value {
        Value::Array(items) => {
            for item in items {
                changed |= mask(config, item);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if config.fields.iter().any(|field| field == key) {
                    *item = Value::String(config.mask.clone());
                    changed = true;
                } else {
                    changed |= mask(config, item);
                }
            }
        }
        _ => {}
    }
    changed
}

impl MessageFilter for JsonMask {
    fn on_message(config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        let Message::Text(text) = &message else {
            return MessageVerdict::Forward;
        };
        let Ok(mut document) = serde_json::from_str::<Value>(text) else {
            return MessageVerdict::Forward;
        };
        if !mask(config, &mut document) {
            return MessageVerdict::Forward;
        }
        MessageVerdict::modify(Message::Text(document.to_string()))
    }
}

wsgate_plugin_sdk::export_message_filter!(JsonMask);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_matching_keys_at_any_depth_and_only_those() {
        let config: Config = serde_json::from_str(r#"{"fields": ["password"]}"#).unwrap();
        let mut document: Value =
            serde_json::from_str(r#"{"a": {"password": 1, "b": [{"password": "x"}]}, "c": 2}"#)
                .unwrap();
        assert!(mask(&config, &mut document));
        assert_eq!(
            document,
            serde_json::json!({"a": {"password": "***", "b": [{"password": "***"}]}, "c": 2})
        );
        assert!(!mask(&config, &mut serde_json::json!({"other": 1})));
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
