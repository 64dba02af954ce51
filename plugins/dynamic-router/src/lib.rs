//! `dynamic-router`: chooses among configured upstreams by the request's
//! host, a path segment, a header, a query parameter or a JWT claim. Never open-ended:
//! every possible upstream is written in the configuration.

use wsgate_plugin_sdk::prelude::*;

/// One routing rule: exactly one selector, the value it must equal, and the upstream.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Rule {
    /// Match the Host header (without port), case-insensitively.
    #[serde(default)]
    host: Option<String>,
    /// Match the path segment at this 0-based index.
    #[serde(default)]
    segment: Option<usize>,
    /// Match this request header's value.
    #[serde(default)]
    header: Option<String>,
    /// Match this query parameter's value.
    #[serde(default)]
    query: Option<String>,
    /// Match this JWT claim, as published by `jwt` (`publish-claims`).
    #[serde(default)]
    claim: Option<String>,
    /// The value a `segment`, `header` or `query` selector must equal.
    #[serde(default)]
    equals: Option<String>,
    /// The upstream to route to.
    url: String,
}

/// Configuration of `dynamic-router`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Rules, tried in order; the first match routes.
    rules: Vec<Rule>,
    /// Upstream when no rule matches; without it the upgrade is refused.
    #[serde(default)]
    default: Option<String>,
    /// Status of the refusal when no rule matches.
    #[serde(default = "not_found")]
    no_match_status: u16,
}

fn not_found() -> u16 {
    404
}

fn is_ws_url(url: &str) -> bool {
    url.starts_with("ws://") || url.starts_with("wss://")
}

impl Rule {
    fn matches(&self, request: &UpgradeRequest) -> bool {
        let equals = |value: Option<&str>| value.is_some() && value == self.equals.as_deref();
        if let Some(host) = &self.host {
            return request.host().is_some_and(|h| h.eq_ignore_ascii_case(host));
        }
        if let Some(index) = self.segment {
            return equals(request.path_segment(index));
        }
        if let Some(name) = &self.header {
            return equals(request.header(name));
        }
        if let Some(name) = &self.query {
            return equals(request.query_param(name).as_deref());
        }
        if let Some(name) = &self.claim {
            return equals(state::attribute(&format!("claim.{name}")).as_deref());
        }
        false
    }
}

struct DynamicRouter;

impl Plugin for DynamicRouter {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        let error = |field: String, message: &str| ConfigError {
            field,
            message: message.to_string(),
        };
        for (i, rule) in config.rules.iter().enumerate() {
            let selectors = [
                rule.host.is_some(),
                rule.segment.is_some(),
                rule.header.is_some(),
                rule.query.is_some(),
                rule.claim.is_some(),
            ];
            if selectors.iter().filter(|s| **s).count() != 1 {
                return Err(error(
                    format!("/rules/{i}"),
                    "a rule needs exactly one of host, segment, header, query or claim",
                ));
            }
            if rule.host.is_none() && rule.equals.is_none() {
                return Err(error(
                    format!("/rules/{i}/equals"),
                    "segment, header, query and claim rules need `equals`",
                ));
            }
            if !is_ws_url(&rule.url) {
                return Err(error(
                    format!("/rules/{i}/url"),
                    "not a ws:// or wss:// URL",
                ));
            }
        }
        if config.default.as_deref().is_some_and(|url| !is_ws_url(url)) {
            return Err(error("/default".into(), "not a ws:// or wss:// URL"));
        }
        if !(400..=599).contains(&config.no_match_status) {
            return Err(error("/no-match-status".into(), "must be 400-599"));
        }
        Ok(())
    }
}

impl UpgradeFilter for DynamicRouter {
    fn on_upgrade(config: &Config, request: UpgradeRequest) -> UpgradeVerdict {
        let chosen = config
            .rules
            .iter()
            .find(|rule| rule.matches(&request))
            .map(|rule| rule.url.as_str())
            .or(config.default.as_deref());
        match chosen {
            Some(url) => UpgradeVerdict::route_to(url),
            None => {
                UpgradeVerdict::reject(config.no_match_status, "no route matches this request\n")
            }
        }
    }
}

wsgate_plugin_sdk::export_upgrade_filter!(DynamicRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, query: &str, headers: &[(&str, &str)]) -> UpgradeRequest {
        UpgradeRequest {
            connection_id: 1,
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            headers: headers.iter().map(|(n, v)| Header::new(n, *v)).collect(),
            client_addr: "127.0.0.1:1".into(),
            tls: false,
        }
    }

    fn rules(json: &str) -> Config {
        let config: Config = serde_json::from_str(json).unwrap();
        DynamicRouter::validate(&config).unwrap();
        config
    }

    #[test]
    fn the_first_matching_rule_routes() {
        let config = rules(
            r#"{"rules": [
                {"host": "a.example", "url": "ws://a/"},
                {"segment": 0, "equals": "b", "url": "ws://b/"},
                {"header": "x-r", "equals": "c", "url": "ws://c/"},
                {"query": "q", "equals": "d", "url": "ws://d/"}
            ]}"#,
        );
        let route = |r: UpgradeRequest| match DynamicRouter::on_upgrade(&config, r) {
            UpgradeVerdict::Route(route) => route.url,
            UpgradeVerdict::Reject(rejection) => rejection.status.to_string(),
            _ => "other".into(),
        };
        assert_eq!(
            route(request("/", "", &[("host", "A.example:80")])),
            "ws://a/"
        );
        assert_eq!(route(request("/b/x", "", &[])), "ws://b/");
        assert_eq!(route(request("/", "", &[("x-r", "c")])), "ws://c/");
        assert_eq!(route(request("/", "q=d", &[])), "ws://d/");
        assert_eq!(route(request("/z", "", &[])), "404");
    }

    #[test]
    fn rules_need_exactly_one_selector_and_a_ws_url() {
        for bad in [
            r#"{"rules": [{"url": "ws://a/"}]}"#,
            r#"{"rules": [{"host": "a", "query": "q", "equals": "1", "url": "ws://a/"}]}"#,
            r#"{"rules": [{"header": "h", "url": "ws://a/"}]}"#,
            r#"{"rules": [{"host": "a", "url": "http://a/"}]}"#,
        ] {
            let config: Config = serde_json::from_str(bad).unwrap();
            assert!(DynamicRouter::validate(&config).is_err(), "{bad}");
        }
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
