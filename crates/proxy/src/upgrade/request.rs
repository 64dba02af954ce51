//! Checks on the client's request, before anything is spent on it, and the
//! plugin contract's view of it.

use std::net::SocketAddr;

use http::Request;
use http::header::{self, HeaderName, HeaderValue};
use wsgate_runtime::{Header, UpgradeRequest};

use super::{Refused, Secure};
use crate::generation::LiveEndpoint;

/// Is it a WebSocket upgrade the gateway can accept (RFC 6455 4.2.1)?
pub fn check_websocket<B>(request: &Request<B>) -> Result<(), Refused> {
    let headers = request.headers();
    let has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if request.method() != http::Method::GET
        || !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
    {
        return Err(Refused::NotAnUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Refused::UnsupportedVersion);
    }
    let key_ok = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .is_some_and(|key| key.len() == 24 && key.as_bytes().ends_with(b"=="));
    if !key_ok {
        return Err(Refused::BadKey);
    }
    Ok(())
}

/// Does the endpoint's `allowed-origins` admit the request's `Origin`
/// (cross-site WebSocket hijacking)?
pub fn check_origin<B>(endpoint: &LiveEndpoint, request: &Request<B>) -> Result<(), Refused> {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if endpoint.config.origin_allowed(origin) {
        Ok(())
    } else {
        tracing::warn!(origin = origin.unwrap_or(""), "origin not allowed");
        Err(Refused::Origin)
    }
}

/// The plugin contract's view of the upgrade request.
pub fn plugin_view<B>(request: &Request<B>, id: u64, client: SocketAddr) -> UpgradeRequest {
    UpgradeRequest {
        connection_id: id,
        method: request.method().as_str().to_string(),
        path: request.uri().path().to_string(),
        query: request.uri().query().unwrap_or_default().to_string(),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_string(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })
            .collect(),
        client_addr: client.to_string(),
        tls: request
            .extensions()
            .get::<Secure>()
            .is_some_and(|secure| secure.0),
    }
}
