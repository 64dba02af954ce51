//! Why an upgrade was refused, typed by who failed, and the answer each
//! refusal gives the client.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use wsgate_runtime::Rejection;

use crate::ledger::Refusal;
use crate::peer::Culprit;
use crate::upstream::UpstreamError;

/// The response type of the client-facing listener.
pub type HttpResponse = Response<Full<Bytes>>;

/// An upgrade that ends without a relay.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No enabled endpoint at the path: 404.
    #[error("no endpoint at this path")]
    NotFound,
    /// Not a WebSocket upgrade: 426 with `Upgrade: websocket`.
    #[error("not a websocket upgrade")]
    NotAnUpgrade,
    /// A WebSocket version other than 13: 426 with `Sec-WebSocket-Version: 13`.
    #[error("unsupported websocket version")]
    UnsupportedVersion,
    /// A missing or malformed `Sec-WebSocket-Key`: 400.
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
    /// An `Origin` the endpoint does not allow: 403.
    #[error("origin not allowed")]
    Origin,
    /// A connection limit: 503 or 429.
    #[error("connection limit: {0:?}")]
    Limit(Refusal),
    /// A plugin rejected the upgrade with its own answer.
    #[error("rejected by a plugin with status {}", .0.status)]
    Rejected(Rejection),
    /// A plugin failed under fail-closed, or answered with an unusable status: 500.
    #[error("an upgrade plugin failed")]
    PluginFailed,
    /// The upgrade chain ended without a route: 500.
    #[error("the upgrade chain did not route")]
    NoRoute,
    /// The chain routed to a URL that is not a usable `ws://`/`wss://` URL: 502.
    #[error("unusable route: {0}")]
    BadRoute(UpstreamError),
    /// The chain routed outside the endpoint's `allowed-upstreams`: 403.
    #[error("route outside allowed-upstreams")]
    RouteNotAllowed,
    /// The upstream could not be reached or refused the handshake: 502, or 504 on timeout.
    #[error("{0}")]
    Upstream(UpstreamError),
}

impl Refused {
    /// Who is at fault.
    pub fn culprit(&self) -> Culprit {
        match self {
            Self::NotFound
            | Self::NotAnUpgrade
            | Self::UnsupportedVersion
            | Self::BadKey
            | Self::Origin => Culprit::Client,
            Self::Limit(Refusal::Client) => Culprit::Client,
            Self::Limit(_) => Culprit::Gateway,
            Self::Rejected(_) | Self::PluginFailed | Self::BadRoute(_) => Culprit::Plugin,
            Self::NoRoute | Self::RouteNotAllowed => Culprit::Configuration,
            Self::Upstream(_) => Culprit::Upstream,
        }
    }

    /// The client's answer.
    pub fn response(self) -> HttpResponse {
        match self {
            Self::NotFound => plain(
                StatusCode::NOT_FOUND,
                "no websocket endpoint at this path\n",
            ),
            Self::NotAnUpgrade => with_headers(
                plain(
                    StatusCode::UPGRADE_REQUIRED,
                    "this endpoint only accepts websocket upgrades\n",
                ),
                [
                    (header::UPGRADE, "websocket"),
                    (header::CONNECTION, "Upgrade"),
                ],
            ),
            Self::UnsupportedVersion => with_headers(
                plain(
                    StatusCode::UPGRADE_REQUIRED,
                    "unsupported websocket version; use 13\n",
                ),
                [(header::SEC_WEBSOCKET_VERSION, "13")],
            ),
            Self::BadKey => plain(
                StatusCode::BAD_REQUEST,
                "missing or malformed Sec-WebSocket-Key\n",
            ),
            Self::Origin => plain(
                StatusCode::FORBIDDEN,
                "this origin may not open connections here\n",
            ),
            Self::Limit(refusal) => plain(refusal.status(), refusal.body()),
            Self::Rejected(rejection) => rejection_response(rejection),
            Self::PluginFailed => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "an upgrade filter failed\n",
            ),
            Self::NoRoute => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the endpoint's upgrade chain did not route the connection\n",
            ),
            Self::BadRoute(_) => plain(
                StatusCode::BAD_GATEWAY,
                "the route's upstream url is invalid\n",
            ),
            Self::RouteNotAllowed => plain(
                StatusCode::FORBIDDEN,
                "the requested upstream is not allowed\n",
            ),
            Self::Upstream(error @ UpstreamError::Timeout { .. }) => plain(
                error.status(),
                "the upstream websocket server did not answer in time\n",
            ),
            Self::Upstream(error) => plain(
                error.status(),
                "the upstream websocket server is unavailable\n",
            ),
        }
    }
}

/// A plugin's rejection as the client's answer; a status outside 400-599
/// is the plugin's fault: 500.
fn rejection_response(rejection: Rejection) -> HttpResponse {
    let status = StatusCode::from_u16(rejection.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error());
    let Some(status) = status else {
        tracing::error!(
            status = rejection.status,
            failed = Culprit::Plugin.name(),
            "a plugin rejected with a status outside 400-599"
        );
        return Refused::PluginFailed.response();
    };
    let mut response = plain(status, &rejection.body);
    for h in &rejection.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(h.name.as_str()),
            HeaderValue::try_from(h.value.as_str()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn with_headers<const N: usize>(
    mut response: HttpResponse,
    headers: [(HeaderName, &'static str); N],
) -> HttpResponse {
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A plain-text response.
pub fn plain(status: StatusCode, body: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
