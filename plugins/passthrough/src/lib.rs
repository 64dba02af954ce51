//! `passthrough`: forwards every message unchanged. It measures what a
//! plugin call itself costs, and proves a chain position is wired.

use wsgate_plugin_sdk::prelude::*;

/// `passthrough` takes no configuration.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
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

#[cfg(test)]
mod config_schema {
    /// `config.schema.json` is generated from `Config`; this keeps it current.
    #[test]
    fn the_config_schema_is_current() {
        wsgate_plugin_sdk::schema::check::<super::Config>(env!("CARGO_MANIFEST_DIR")).unwrap();
    }
}
