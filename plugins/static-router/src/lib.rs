//! `static-router`: routes every upgrade on an endpoint to one upstream URL.

use wsgate_plugin_sdk::prelude::*;

/// Configuration of `static-router`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// `ws://` or `wss://` URL of the upstream.
    url: String,
    /// Headers to set on the upstream request.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// Subprotocols to offer upstream (default: the client's).
    #[serde(default)]
    subprotocols: Vec<String>,
}

struct StaticRouter;

impl Plugin for StaticRouter {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        if config.url.starts_with("ws://") || config.url.starts_with("wss://") {
            Ok(())
        } else {
            Err(ConfigError {
                field: "/url".into(),
                message: format!("`{}` is not a ws:// or wss:// URL", config.url),
            })
        }
    }
}

impl UpgradeFilter for StaticRouter {
    fn on_upgrade(config: &Config, _request: UpgradeRequest) -> UpgradeVerdict {
        UpgradeVerdict::Route(Route {
            url: config.url.clone(),
            headers: config
                .headers
                .iter()
                .map(|(name, value)| Header::new(name, value.clone()))
                .collect(),
            subprotocols: config.subprotocols.clone(),
        })
    }
}

wsgate_plugin_sdk::export_upgrade_filter!(StaticRouter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_websocket_urls_are_accepted() {
        let config = |url: &str| Config {
            url: url.into(),
            headers: Default::default(),
            subprotocols: Vec::new(),
        };
        assert!(StaticRouter::validate(&config("wss://a/")).is_ok());
        assert_eq!(
            StaticRouter::validate(&config("http://a/"))
                .err()
                .unwrap()
                .field,
            "/url"
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
