// Shared by tagger-v1 and tagger-v2: one source, two versions.

use wsgate_plugin_sdk::prelude::*;

/// The tagger takes no configuration.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {}

struct Tagger;

impl Plugin for Tagger {
    type Config = Config;
}

/// The stamp: `tagger@<version>`.
fn stamp() -> String {
    format!("tagger@{}", env!("CARGO_PKG_VERSION"))
}

impl MessageFilter for Tagger {
    fn on_message(_config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        let Message::Text(text) = message else {
            return MessageVerdict::Forward;
        };
        let tagged = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(mut object)) => {
                object.insert("tagged-by".into(), stamp().into());
                serde_json::Value::Object(object).to_string()
            }
            _ => format!("{text}+v{}", env!("CARGO_PKG_VERSION")),
        };
        MessageVerdict::modify(Message::Text(tagged))
    }
}

wsgate_plugin_sdk::export_message_filter!(Tagger);

#[cfg(test)]
mod config_schema {
    /// `config.schema.json` is generated from `Config`; this keeps it current.
    #[test]
    fn the_config_schema_is_current() {
        wsgate_plugin_sdk::schema::check::<super::Config>(env!("CARGO_MANIFEST_DIR")).unwrap();
    }
}
