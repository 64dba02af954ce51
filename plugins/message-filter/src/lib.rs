//! `message-filter`: allows or denies JSON messages by the value of one
//! field (a JSON Pointer), e.g. only `type` in `["chat", "typing"]`.

use serde_json::Value;
use wsgate_plugin_sdk::policy::{Action, NonJson, json_of};
use wsgate_plugin_sdk::prelude::*;

/// Configuration of `message-filter`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The field, as a JSON Pointer (e.g. `/type`).
    field: String,
    /// Only these values pass (exclusive with `deny`).
    #[serde(default)]
    allow: Option<Vec<Value>>,
    /// These values are refused (exclusive with `allow`).
    #[serde(default)]
    deny: Option<Vec<Value>>,
    /// What a refused message gets: `drop` (default), `close` (1008) or `reply`.
    #[serde(default = "drop_action")]
    action: Action,
    /// Messages without the field: refused (default) or passed.
    #[serde(default)]
    missing_passes: bool,
    /// Binary messages and text that is not JSON.
    #[serde(default)]
    non_json: NonJson,
}

fn drop_action() -> Action {
    Action::Drop
}

struct MessageFilterPlugin;

impl Plugin for MessageFilterPlugin {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        if !config.field.starts_with('/') {
            return Err(ConfigError {
                field: "/field".into(),
                message: "a JSON Pointer starts with `/`".into(),
            });
        }
        if config.allow.is_some() == config.deny.is_some() {
            return Err(ConfigError {
                field: String::new(),
                message: "set exactly one of `allow` and `deny`".into(),
            });
        }
        Ok(())
    }
}

impl MessageFilter for MessageFilterPlugin {
    fn on_message(config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        if !matches!(message, Message::Text(_) | Message::Binary(_)) {
            return MessageVerdict::Forward;
        }
        let Some(json) = json_of(&message) else {
            return config.non_json.verdict();
        };
        let passes = match json.pointer(&config.field) {
            None => config.missing_passes,
            Some(value) => match (&config.allow, &config.deny) {
                (Some(allow), _) => allow.contains(value),
                (None, Some(deny)) => !deny.contains(value),
                (None, None) => true,
            },
        };
        if passes {
            MessageVerdict::Forward
        } else {
            config.action.verdict(1008, "message not allowed")
        }
    }
}

wsgate_plugin_sdk::export_message_filter!(MessageFilterPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_and_deny_lists_judge_the_field() {
        let allow: Config =
            serde_json::from_str(r#"{"field": "/type", "allow": ["chat", 7]}"#).unwrap();
        let judge = |config: &Config, text: &str| {
            MessageFilterPlugin::on_message(
                config,
                Direction::ClientToServer,
                Message::Text(text.into()),
            )
        };
        assert_eq!(judge(&allow, r#"{"type":"chat"}"#), MessageVerdict::Forward);
        assert_eq!(judge(&allow, r#"{"type":7}"#), MessageVerdict::Forward);
        assert_eq!(judge(&allow, r#"{"type":"spam"}"#), MessageVerdict::Drop);
        assert_eq!(judge(&allow, r#"{}"#), MessageVerdict::Drop);
        assert_eq!(judge(&allow, "not json"), MessageVerdict::Forward);
        let deny: Config =
            serde_json::from_str(r#"{"field": "/type", "deny": ["spam"], "action": "close"}"#)
                .unwrap();
        assert_eq!(
            judge(&deny, r#"{"type":"spam"}"#),
            MessageVerdict::close(1008, "message not allowed")
        );
        let both: Config =
            serde_json::from_str(r#"{"field": "/t", "allow": [], "deny": []}"#).unwrap();
        assert!(MessageFilterPlugin::validate(&both).is_err());
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
