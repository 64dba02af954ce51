//! `header-rewrite`: adds, sets and removes headers of the upstream request.
//! Values are templates: `${claim.NAME}` (a JWT claim `jwt` published),
//! `${attribute.NAME}`, `${header.NAME}`, `${query.NAME}`, `${path}`,
//! `${host}`, `${client-ip}`, `${connection-id}`. A header whose template
//! has no value is skipped, or the upgrade refused (`missing = "reject"`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use wsgate_plugin_sdk::prelude::*;
use wsgate_plugin_sdk::{render_template, template_names};

#[derive(serde::Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
enum Missing {
    /// Leave that header out.
    #[default]
    Skip,
    /// Refuse the upgrade with 400.
    Reject,
}

/// Configuration of `header-rewrite`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Headers to set (replacing same-named ones): name -> template.
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Headers to add: name -> template.
    #[serde(default)]
    append: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(default)]
    remove: Vec<String>,
    /// A template without a value: `skip` the header (default) or `reject`.
    #[serde(default)]
    missing: Missing,
}

fn known(name: &str) -> bool {
    matches!(name, "path" | "host" | "client-ip" | "connection-id")
        || ["claim.", "attribute.", "header.", "query."]
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|n| !n.is_empty()))
}

fn lookup(request: &UpgradeRequest, name: &str) -> Option<String> {
    match name {
        "path" => Some(request.path.clone()),
        "host" => request.host().map(str::to_string),
        "connection-id" => Some(request.connection_id.to_string()),
        "client-ip" => request
            .client_addr
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip().to_string()),
        _ => {
            if let Some(claim) = name.strip_prefix("claim.") {
                state::attribute(&format!("claim.{claim}"))
            } else if let Some(attribute) = name.strip_prefix("attribute.") {
                state::attribute(attribute)
            } else if let Some(header) = name.strip_prefix("header.") {
                request.header(header).map(str::to_string)
            } else {
                request.query_param(name.strip_prefix("query.")?)
            }
        }
    }
}

struct HeaderRewrite;

impl Plugin for HeaderRewrite {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        let templates = config
            .set
            .iter()
            .map(|(k, v)| (format!("/set/{k}"), v))
            .chain(
                config
                    .append
                    .iter()
                    .map(|(k, v)| (format!("/append/{k}"), v)),
            );
        for (field, template) in templates {
            if let Some(bad) = template_names(template).into_iter().find(|n| !known(n)) {
                return Err(ConfigError {
                    field,
                    message: format!("unknown placeholder `${{{bad}}}`"),
                });
            }
        }
        Ok(())
    }
}

impl UpgradeFilter for HeaderRewrite {
    fn on_upgrade(config: &Config, request: UpgradeRequest) -> UpgradeVerdict {
        let mut ops: Vec<HeaderOp> = config
            .remove
            .iter()
            .map(|name| HeaderOp::Remove(name.to_ascii_lowercase()))
            .collect();
        let entries = config
            .set
            .iter()
            .map(|(name, template)| (true, name, template))
            .chain(
                config
                    .append
                    .iter()
                    .map(|(name, template)| (false, name, template)),
            );
        for (replace, name, template) in entries {
            match render_template(template, |n| lookup(&request, n)) {
                Ok(value) => {
                    let header = Header::new(name, value);
                    ops.push(if replace {
                        HeaderOp::Set(header)
                    } else {
                        HeaderOp::Append(header)
                    });
                }
                Err(missing) if config.missing == Missing::Reject => {
                    return UpgradeVerdict::reject(
                        400,
                        &format!("no value for `{missing}` (header {name})\n"),
                    );
                }
                Err(_) => {}
            }
        }
        UpgradeVerdict::Modify(ops)
    }
}

wsgate_plugin_sdk::export_upgrade_filter!(HeaderRewrite);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_placeholders_are_refused_at_load() {
        let good: Config =
            serde_json::from_str(r#"{"set": {"x": "${claim.sub}-${client-ip}"}}"#).unwrap();
        assert!(HeaderRewrite::validate(&good).is_ok());
        let bad: Config = serde_json::from_str(r#"{"append": {"x": "${env.HOME}"}}"#).unwrap();
        assert_eq!(
            HeaderRewrite::validate(&bad).err().unwrap().field,
            "/append/x"
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
