//! The route's check: a usable `ws://`/`wss://` URL inside the endpoint's
//! `allowed-upstreams`.

use wsgate_runtime::Route;

use super::Refused;
use crate::generation::LiveEndpoint;
use crate::upstream::UpstreamUrl;

/// The route's URL, when the endpoint allows it.
pub fn check_route(endpoint: &LiveEndpoint, route: &Route) -> Result<UpstreamUrl, Refused> {
    let url = UpstreamUrl::parse(&route.url).map_err(|error| {
        tracing::error!(%error, "the upgrade chain routed to an unusable url");
        Refused::BadRoute(error)
    })?;
    let allowed = endpoint
        .config
        .allowed_upstreams
        .iter()
        .any(|allowed| upstream_allowed(allowed.get_ref(), &url));
    if !allowed {
        tracing::warn!(route = %route.url, "route refused: not in the endpoint's allowed-upstreams");
        return Err(Refused::RouteNotAllowed);
    }
    Ok(url)
}

/// Does the `allowed-upstreams` entry `allowed` admit `url`? An entry is a
/// scheme alone (`wss://`: any host), or scheme, host and port with an
/// optional path prefix that must end at a segment boundary.
pub fn upstream_allowed(allowed: &str, url: &UpstreamUrl) -> bool {
    let scheme_only = match allowed {
        "ws://" => Some(false),
        "wss://" => Some(true),
        _ => None,
    };
    if let Some(tls) = scheme_only {
        return tls == url.tls;
    }
    let Ok(entry) = UpstreamUrl::parse(allowed) else {
        return false;
    };
    if entry.tls != url.tls || entry.address() != url.address() {
        return false;
    }
    let prefix = entry.path_and_query.as_str();
    if prefix == "/" {
        return true;
    }
    let path = url.path_and_query.as_str();
    path.strip_prefix(prefix).is_some_and(|rest| {
        prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?'])
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;

    fn url(text: &str) -> UpstreamUrl {
        UpstreamUrl::parse(text).unwrap()
    }

    #[test]
    fn allowed_upstreams_match_host_port_and_path_prefix() {
        assert!(upstream_allowed(
            "ws://127.0.0.1:9001",
            &url("ws://127.0.0.1:9001/x")
        ));
        assert!(!upstream_allowed(
            "ws://127.0.0.1:9001",
            &url("ws://127.0.0.1:9002/")
        ));
        assert!(!upstream_allowed(
            "ws://127.0.0.1:9001",
            &url("wss://127.0.0.1:9001/")
        ));
        assert!(upstream_allowed("ws://a:80/api", &url("ws://A/api/v1")));
        assert!(upstream_allowed("ws://a/api", &url("ws://a/api?x=1")));
        assert!(!upstream_allowed("ws://a/api", &url("ws://a/apix")));
        assert!(upstream_allowed("wss://", &url("wss://anything.example/")));
        assert!(!upstream_allowed("wss://", &url("ws://anything.example/")));
    }
}
