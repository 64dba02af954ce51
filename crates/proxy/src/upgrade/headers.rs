//! The upstream request's headers: the client's end-to-end headers, the
//! forwarding headers, then the upgrade chain's changes and the route's.

use std::net::SocketAddr;

use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use wsgate_runtime::{HeaderOp, Route, UpgradeRequest};

/// Headers that describe one hop, or the client's own handshake; never forwarded upstream.
const NOT_FORWARDED: [&str; 14] = [
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

// The forwarding headers the gateway sets.
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Headers for the upstream request: the client's end-to-end headers, the
/// forwarding headers, then the chain's changes and the route's headers.
pub fn upstream_headers<B>(
    request: &Request<B>,
    upgrade: &UpgradeRequest,
    ops: Vec<HeaderOp>,
    route: &Route,
    client: SocketAddr,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(request.headers().len() + 4);
    for (name, value) in request.headers() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    // The gateway's own names and values are static or moved in: no copy.
    let forwarded_for = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert(HeaderName::from_static(X_FORWARDED_FOR), value);
    }
    headers.insert(
        HeaderName::from_static(X_FORWARDED_PROTO),
        HeaderValue::from_static(if upgrade.tls { "wss" } else { "ws" }),
    );
    if let Some(host) = request
        .headers()
        .get(header::HOST)
        .filter(|h| h.to_str().is_ok())
    {
        headers.insert(HeaderName::from_static(X_FORWARDED_HOST), host.clone());
    }
    let changed = !ops.is_empty() || !route.headers.is_empty();
    for op in ops {
        match op {
            HeaderOp::Set(h) => set(&mut headers, &h.name, &h.value),
            HeaderOp::Append(h) => {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::try_from(h.name.as_str()),
                    HeaderValue::try_from(h.value.as_str()),
                ) {
                    headers.append(name, value);
                }
            }
            HeaderOp::Remove(name) => {
                headers.remove(name.as_str());
            }
        }
    }
    for h in &route.headers {
        set(&mut headers, &h.name, &h.value);
    }
    if !route.subprotocols.is_empty() {
        set(
            &mut headers,
            "sec-websocket-protocol",
            &route.subprotocols.join(", "),
        );
    }
    // The gateway negotiates extensions with each side itself: the chain
    // and the route cannot set a hop's headers either.
    if changed {
        for name in NOT_FORWARDED {
            headers.remove(name);
        }
    }
    headers
}

fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
        }
        _ => tracing::warn!(name, "a plugin set an invalid header; ignored"),
    }
}
