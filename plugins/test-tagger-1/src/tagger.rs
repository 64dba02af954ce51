// Shared by test-tagger-1 and test-tagger-2: one source, two versions.

use wsgate_plugin_sdk::prelude::*;

/// The tagger takes no configuration.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

struct Tagger;

impl Plugin for Tagger {
    type Config = Config;
}

impl MessageFilter for Tagger {
    fn on_message(_config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        match message {
            Message::Text(text) => MessageVerdict::modify(Message::Text(format!(
                "{text}+v{}",
                env!("CARGO_PKG_VERSION")
            ))),
            _ => MessageVerdict::Forward,
        }
    }
}

wsgate_plugin_sdk::export_message_filter!(Tagger);
