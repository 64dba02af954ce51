//! The client's 101, sent only once the upstream has answered its own:
//! the client's key answered, the upstream's subprotocol if the client
//! offered it, and permessage-deflate if the client offered it and the
//! endpoint allows it.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsgate_wire::deflate::{self, Agreement};

use super::HttpResponse;
use crate::generation::LiveEndpoint;

/// The 101 for the client, and what was agreed for permessage-deflate.
pub fn answer<B>(
    request: &Request<B>,
    endpoint: &LiveEndpoint,
    protocol: Option<HeaderValue>,
) -> (HttpResponse, Option<Agreement>) {
    let deflate = endpoint
        .config
        .permessage_deflate
        .with_client()
        .then(|| {
            deflate::accept_offer(
                request
                    .headers()
                    .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            )
        })
        .flatten();
    let response = switching_protocols(
        request,
        protocol,
        deflate.as_ref().map(|(_, answer)| answer.as_str()),
    );
    (response, deflate.map(|(agreement, _)| agreement))
}

/// The client's 101, answering its key, with the upstream's subprotocol if
/// the client offered it, and the extensions agreed with it.
fn switching_protocols<B>(
    request: &Request<B>,
    protocol: Option<HeaderValue>,
    extensions: Option<&str>,
) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let key = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key)) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol.filter(|p| client_offered(request, p)) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    if let Some(value) = extensions.and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    response
}

/// Did the client offer `protocol` in its Sec-WebSocket-Protocol header(s)?
fn client_offered<B>(request: &Request<B>, protocol: &HeaderValue) -> bool {
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|offered| offered.trim().as_bytes() == protocol.as_bytes())
}
