//! `passthrough`: forwards every message unchanged. It measures what a
//! plugin call itself costs, and proves a chain position is wired.

use wsgate_plugin_sdk::prelude::*;

/// `passthrough` takes no configuration.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

struct Passthrough;

impl Plugin for Passthrough {
    type Config = Config;
}

impl MessageFilter for Passthrough {
    fn on_message(_config: &Config, _direction: Direction, _message: Message) -> MessageVerdict {
        MessageVerdict::Forward
    }
}

wsgate_plugin_sdk::export_message_filter!(Passthrough);
