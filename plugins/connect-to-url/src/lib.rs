//! `connect-to-url`: routes to a URL built from a template over the upgrade
//! request, e.g. `ws://${host}:9001/rooms/${segment.1}?user=${query.user}`.
//!
//! Placeholders: `${host}` (Host header without port), `${path}`,
//! `${segment.N}` (0-based), `${query.NAME}`, `${header.NAME}`, `${claim.NAME}`
//! (a JWT claim `jwt` published). A value the
//! request lacks refuses the upgrade with 400; values may only hold URL-safe
//! characters. The endpoint's `allowed-upstreams` bounds where this can go.

use std::collections::BTreeMap;

use wsgate_plugin_sdk::prelude::*;
use wsgate_plugin_sdk::{render_template, template_names};

/// Configuration of `connect-to-url`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// URL template of the upstream.
    url: String,
    /// Header templates to set on the upstream request.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn known(name: &str) -> bool {
    matches!(name, "host" | "path")
        || name
            .strip_prefix("segment.")
            .is_some_and(|n| n.parse::<usize>().is_ok())
        || name.strip_prefix("query.").is_some_and(|n| !n.is_empty())
        || name.strip_prefix("header.").is_some_and(|n| !n.is_empty())
        || name.strip_prefix("claim.").is_some_and(|n| !n.is_empty())
}

fn lookup(request: &UpgradeRequest, name: &str) -> Option<String> {
    match name {
        "host" => request.host().map(str::to_string),
        "path" => Some(request.path.clone()),
        _ => {
            if let Some(n) = name.strip_prefix("segment.") {
                request.path_segment(n.parse().ok()?).map(str::to_string)
            } else if let Some(q) = name.strip_prefix("query.") {
                request.query_param(q)
            } else if name.starts_with("claim.") {
                state::attribute(name)
            } else {
                request
                    .header(name.strip_prefix("header.")?)
                    .map(str::to_string)
            }
        }
    }
}

/// Characters a substituted value may contain (RFC 3986 unreserved, and `/` for `${path}`).
fn url_safe(name: &str, value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'~')
                || (b == b'/' && name == "path")
        })
}

struct ConnectToUrl;

impl Plugin for ConnectToUrl {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        if !(config.url.starts_with("ws://") || config.url.starts_with("wss://")) {
            return Err(ConfigError {
                field: "/url".into(),
                message: "the template must start with ws:// or wss://".into(),
            });
        }
        let templates = std::iter::once(("/url".to_string(), &config.url)).chain(
            config
                .headers
                .iter()
                .map(|(k, v)| (format!("/headers/{k}"), v)),
        );
        for (field, template) in templates {
            if let Some(bad) = template_names(template).into_iter().find(|n| !known(n)) {
                return Err(ConfigError {
                    field,
                    message: format!(
                        "unknown placeholder `${{{bad}}}` (use host, path, segment.N, query.NAME, header.NAME, claim.NAME)"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl UpgradeFilter for ConnectToUrl {
    fn on_upgrade(config: &Config, request: UpgradeRequest) -> UpgradeVerdict {
        let mut unsafe_value = None;
        let url = render_template(&config.url, |name| {
            let value = lookup(&request, name)?;
            if !url_safe(name, &value) {
                unsafe_value = Some(name.to_string());
            }
            Some(value)
        });
        let url = match (url, unsafe_value) {
            (Ok(url), None) => url,
            (_, Some(name)) => {
                return UpgradeVerdict::reject(
                    400,
                    &format!("`{name}` holds characters not allowed in an upstream url\n"),
                );
            }
            (Err(missing), None) => {
                return UpgradeVerdict::reject(
                    400,
                    &format!("the request has no `{missing}` to route by\n"),
                );
            }
        };
        let mut headers = Vec::new();
        for (name, template) in &config.headers {
            match render_template(template, |n| lookup(&request, n)) {
                Ok(value) => headers.push(Header::new(name, value)),
                Err(missing) => {
                    return UpgradeVerdict::reject(
                        400,
                        &format!("the request has no `{missing}` to route by\n"),
                    );
                }
            }
        }
        UpgradeVerdict::Route(Route {
            url,
            headers,
            subprotocols: Vec::new(),
        })
    }
}

wsgate_plugin_sdk::export_upgrade_filter!(ConnectToUrl);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_resolve_from_the_request() {
        let request = UpgradeRequest {
            connection_id: 1,
            method: "GET".into(),
            path: "/rooms/lobby".into(),
            query: "user=ann".into(),
            headers: vec![
                Header::new("host", "chat.example:8080"),
                Header::new("x-t", "acme"),
            ],
            client_addr: "127.0.0.1:1".into(),
            tls: false,
        };
        assert_eq!(lookup(&request, "host").as_deref(), Some("chat.example"));
        assert_eq!(lookup(&request, "segment.1").as_deref(), Some("lobby"));
        assert_eq!(lookup(&request, "query.user").as_deref(), Some("ann"));
        assert_eq!(lookup(&request, "header.x-t").as_deref(), Some("acme"));
        assert_eq!(lookup(&request, "segment.5"), None);
    }

    #[test]
    fn only_url_safe_values_and_known_placeholders_pass() {
        assert!(url_safe("query.user", "ann-1.b_c~"));
        assert!(!url_safe("query.user", "a/../admin"));
        assert!(url_safe("path", "/a/b"));
        assert!(!url_safe("host", ""));
        assert!(
            known("claim.tenant")
                && known("segment.0")
                && !known("segment.x")
                && !known("env.HOME")
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
