//! `text-replace`: rewrites text messages with regular expressions, rule by
//! rule (`$1`, `${name}` refer to capture groups).

use regex::Regex;
use wsgate_plugin_sdk::prelude::*;

/// One rewrite rule.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Rule {
    /// Regular expression (Rust `regex` syntax).
    pattern: String,
    /// Replacement; `$1` or `${name}` insert capture groups.
    replacement: String,
}

/// Configuration of `text-replace`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Rules, applied in order.
    rules: Vec<Rule>,
    /// Compiled rules, built by `validate`.
    #[serde(skip)]
    compiled: std::cell::OnceCell<Vec<Regex>>,
}

struct TextReplace;

impl Plugin for TextReplace {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        let mut compiled = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            compiled.push(Regex::new(&rule.pattern).map_err(|e| ConfigError {
                field: format!("/rules/{i}/pattern"),
                message: e.to_string(),
            })?);
        }
        let _ = config.compiled.set(compiled);
        Ok(())
    }
}

fn apply(config: &Config, regexes: &[Regex], text: &str) -> String {
    let mut out = text.to_string();
    for (rule, regex) in config.rules.iter().zip(regexes) {
        out = regex
            .replace_all(&out, rule.replacement.as_str())
            .into_owned();
    }
    out
}

impl MessageFilter for TextReplace {
    fn on_message(config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        let (Message::Text(text), Some(regexes)) = (&message, config.compiled.get()) else {
            return MessageVerdict::Forward;
        };
        let replaced = apply(config, regexes, text);
        if replaced == *text {
            MessageVerdict::Forward
        } else {
            MessageVerdict::modify(Message::Text(replaced))
        }
    }
}

wsgate_plugin_sdk::export_message_filter!(TextReplace);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_apply_in_order_with_capture_groups() {
        let config: Config = serde_json::from_str(
            r#"{"rules": [{"pattern": "(\\w+)@old", "replacement": "$1@new"}, {"pattern": "new", "replacement": "NEW"}]}"#,
        )
        .unwrap();
        TextReplace::validate(&config).unwrap();
        assert_eq!(
            apply(&config, config.compiled.get().unwrap(), "to ann@old"),
            "to ann@NEW"
        );
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
