//! `json-schema`: validates JSON messages against a JSON Schema (draft
//! 2020-12). A message that fails is dropped, closes the connection with
//! 1007 (invalid payload data), or is answered with the validation error.

use serde_json::Value;
use wsgate_plugin_sdk::policy::Action;
use wsgate_plugin_sdk::prelude::*;

/// What to do with binary messages and text that is not JSON.
#[derive(serde::Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
enum NotJson {
    /// Treat it as a validation failure (default).
    #[default]
    Fail,
    /// Let it through.
    Pass,
}

/// Configuration of `json-schema`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The schema: a table, or JSON text.
    schema: Value,
    /// `close` (1007, default), `drop`, or `reply` with the error.
    #[serde(default)]
    action: Action,
    /// Messages that are not JSON: `fail` (default) or `pass`.
    #[serde(default)]
    non_json: NotJson,
    /// The compiled validator, built by `validate`.
    #[serde(skip)]
    validator: std::cell::OnceCell<jsonschema::Validator>,
}

struct JsonSchema;

impl Plugin for JsonSchema {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        let schema = match &config.schema {
            Value::String(text) => serde_json::from_str(text).map_err(|e| ConfigError {
                field: "/schema".into(),
                message: format!("not JSON: {e}"),
            })?,
            other => other.clone(),
        };
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .map_err(|e| ConfigError {
                field: format!("/schema{}", e.instance_path()),
                message: format!("invalid schema: {e}"),
            })?;
        let _ = config.validator.set(validator);
        Ok(())
    }
}

impl MessageFilter for JsonSchema {
    fn on_message(config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        let Some(validator) = config.validator.get() else {
            return MessageVerdict::Forward;
        };
        let json = match &message {
            Message::Text(text) => serde_json::from_str::<Value>(text).ok(),
            Message::Binary(_) => None,
            _ => return MessageVerdict::Forward,
        };
        let Some(json) = json else {
            return match config.non_json {
                NotJson::Pass => MessageVerdict::Forward,
                NotJson::Fail => config.action.verdict(1007, "message is not JSON"),
            };
        };
        match validator.iter_errors(&json).next() {
            None => MessageVerdict::Forward,
            Some(error) => {
                let path = error.instance_path().to_string();
                let at = if path.is_empty() {
                    "/".to_string()
                } else {
                    path
                };
                let reason = format!("schema violation at {at}: {error}");
                log::debug(&reason);
                // Close reasons are short; replies carry the whole error.
                match config.action {
                    Action::Reply => config.action.verdict(1007, &reason),
                    action => action.verdict(1007, "message does not match the schema"),
                }
            }
        }
    }
}

wsgate_plugin_sdk::export_message_filter!(JsonSchema);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_schema_is_refused_and_a_good_one_validates() {
        let config: Config =
            serde_json::from_str(r#"{"schema": {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["chat"]}}}}"#)
                .unwrap();
        JsonSchema::validate(&config).unwrap();
        let validator = config.validator.get().unwrap();
        assert!(validator.is_valid(&serde_json::json!({"type": "chat"})));
        assert!(!validator.is_valid(&serde_json::json!({"type": "spam"})));
        let bad: Config = serde_json::from_str(r#"{"schema": {"type": 12}}"#).unwrap();
        assert!(JsonSchema::validate(&bad).is_err());
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
