//! The route's check: a usable `ws://`/`wss://` URL inside the endpoint's
//! `allowed-upstreams`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wsgate_runtime::Route;

use super::Refused;
use crate::generation::LiveEndpoint;
use crate::upstream::UpstreamUrl;

/// How many admitted routes an endpoint remembers; past it, it starts over.
const REMEMBERED_ROUTES: usize = 64;

/// The routes an endpoint's chain chose lately, parsed and admitted by its
/// `allowed-upstreams`: most chains send every connection to one of a few
/// upstreams, and parsing the URL is the dearest string work of an
/// upgrade. It lives with its generation's endpoint, so a deploy starts
/// it empty.
#[derive(Debug, Default)]
pub struct AdmittedRoutes(Mutex<HashMap<Box<str>, Arc<UpstreamUrl>>>);

impl AdmittedRoutes {
    /// The parsed URL of `url`, when it was admitted before.
    fn get(&self, url: &str) -> Option<Arc<UpstreamUrl>> {
        let routes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        routes.get(url).cloned()
    }

    /// Remember that `url` parses to `parsed` and is admitted.
    fn remember(&self, url: &str, parsed: Arc<UpstreamUrl>) {
        let mut routes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if routes.len() >= REMEMBERED_ROUTES {
            routes.clear();
        }
        routes.insert(url.into(), parsed);
    }
}

/// The route's URL, when the endpoint allows it.
pub fn check_route(endpoint: &LiveEndpoint, route: &Route) -> Result<Arc<UpstreamUrl>, Refused> {
    if let Some(url) = endpoint.admitted_routes.get(&route.url) {
        return Ok(url);
    }
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
    let url = Arc::new(url);
    endpoint.admitted_routes.remember(&route.url, url.clone());
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
    fn admitted_routes_are_remembered_and_start_over_when_full() {
        let routes = AdmittedRoutes::default();
        let route = |i: usize| format!("ws://127.0.0.1:{}/", 9000 + i);
        assert!(routes.get(&route(0)).is_none());
        routes.remember(&route(0), Arc::new(url(&route(0))));
        assert_eq!(routes.get(&route(0)).unwrap().port, 9000);
        assert!(routes.get(&route(1)).is_none());
        for i in 1..REMEMBERED_ROUTES {
            routes.remember(&route(i), Arc::new(url(&route(i))));
        }
        assert_eq!(routes.get(&route(0)).unwrap().port, 9000);
        // One more than it holds: it starts over with the newest.
        let newest = route(REMEMBERED_ROUTES);
        routes.remember(&newest, Arc::new(url(&newest)));
        assert!(routes.get(&route(0)).is_none());
        assert!(routes.get(&newest).is_some());
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
