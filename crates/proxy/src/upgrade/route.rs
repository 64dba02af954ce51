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
        .allowed_upstreams
        .iter()
        .any(|allowed| allowed.admits(&url));
    if !allowed {
        tracing::warn!(route = %route.url, "route refused: not in the endpoint's allowed-upstreams");
        return Err(Refused::RouteNotAllowed);
    }
    Ok(url)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;
    use crate::upstream::AllowedUpstream;

    fn url(text: &str) -> UpstreamUrl {
        UpstreamUrl::parse(text).unwrap()
    }

    fn upstream_allowed(entry: &str, url: &UpstreamUrl) -> bool {
        AllowedUpstream::parse(entry).is_some_and(|allowed| allowed.admits(url))
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
