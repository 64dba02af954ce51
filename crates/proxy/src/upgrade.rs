//! One HTTP request, top-down: endpoint lookup, upgrade checks, the upgrade
//! chain, the upstream connection, the client's 101, then the relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::Instrument;
use wsgate_config::{FailPolicy, MonitorLevel};
use wsgate_monitor::{PluginVerdict, Record, UpgradeRecord, now_us};
use wsgate_runtime::{
    CallContext, ConnectionInfo, Header, HeaderOp, Route, UpgradeRequest, UpgradeVerdict,
};

use crate::Shared;
use crate::admission::Limits;
use crate::counters::TrafficCounters;
use crate::deflate::{self, Deflate, End};
use crate::generation::{DEFAULT_CONNECT_TIMEOUT, Generation, LiveEndpoint};
use crate::relay::{self, Held, Session, Watch};
use crate::tap::{Recorder, Tap};
use crate::upstream::{self, UpstreamUrl};

/// Request extension: the request came over TLS (`wss://`).
#[derive(Debug, Clone, Copy)]
pub struct Secure(pub bool);

/// The response type of the client-facing listener.
pub type HttpResponse = Response<Full<Bytes>>;

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

/// Handle one request on the client-facing listener.
pub async fn handle(
    shared: Arc<Shared>,
    client: SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    let generation = shared.generation();
    let path = request.uri().path().to_string();
    let Some(endpoint) = generation.endpoint_for(&path).cloned() else {
        return plain(
            StatusCode::NOT_FOUND,
            "no websocket endpoint at this path\n",
        );
    };
    if let Some(refusal) = refuse_non_websocket(&request) {
        return refusal;
    }
    let id = shared.next_connection_id();
    let span =
        tracing::info_span!("connection", id, endpoint = %endpoint.config.path.get_ref(), %client);
    let level = endpoint.config.monitor;
    let endpoint_path = endpoint.config.path.get_ref().clone();
    let mut trace = UpgradeTrace {
        enabled: level > MonitorLevel::Off,
        ..UpgradeTrace::default()
    };
    let recorded = trace.enabled.then(|| {
        let record = UpgradeRecord {
            connection: shared.monitor.key(id),
            id,
            generation: generation.id,
            time_us: now_us(),
            endpoint: endpoint.config.path.get_ref().clone(),
            client: client.to_string(),
            method: request.method().to_string(),
            path: path.clone(),
            query: request.uri().query().unwrap_or("").to_string(),
            request_headers: header_pairs(request.headers()),
            status: 0,
            response_headers: Vec::new(),
            duration_us: 0,
            route: None,
            verdicts: Vec::new(),
            level: level.as_str().to_string(),
        };
        (std::time::Instant::now(), record)
    });
    async move {
        let response = upgrade(
            &shared, generation, endpoint, id, client, request, &mut trace,
        )
        .await;
        tracing::info!(status = response.status().as_u16(), "upgrade answered");
        shared
            .counters
            .upgrade(&endpoint_path, response.status().as_u16());
        if let Some((started, mut record)) = recorded {
            record.status = response.status().as_u16();
            record.response_headers = header_pairs(response.headers());
            record.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            record.route = trace.route;
            record.verdicts = trace.verdicts;
            shared.monitor.record(Record::Upgrade(record));
        }
        response
    }
    .instrument(span)
    .await
}

/// What the monitor learns while the upgrade runs.
#[derive(Default)]
struct UpgradeTrace {
    /// Whether anything is recorded for this endpoint.
    enabled: bool,
    /// Each upgrade plugin's verdict.
    verdicts: Vec<PluginVerdict>,
    /// Where the chain routed.
    route: Option<String>,
}

/// Headers as (name, value) pairs, values lossily as text.
fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Everything before the relay starts: on success, the 101 for the client.
async fn upgrade(
    shared: &Arc<Shared>,
    generation: Arc<Generation>,
    endpoint: Arc<LiveEndpoint>,
    id: u64,
    client: SocketAddr,
    mut request: Request<Incoming>,
    trace: &mut UpgradeTrace,
) -> HttpResponse {
    // Cheap refusals first: a foreign origin, then the connection limits.
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !endpoint.config.origin_allowed(origin) {
        tracing::warn!(origin = origin.unwrap_or(""), "origin not allowed");
        return plain(
            StatusCode::FORBIDDEN,
            "this origin may not open connections here\n",
        );
    }
    let limits = Limits {
        gateway: generation.config.gateway.max_connections,
        endpoint: endpoint.config.path.get_ref(),
        per_endpoint: endpoint.config.max_connections,
        per_client: endpoint.config.max_connections_per_ip,
    };
    let admission = match shared.admissions.admit(&limits, client.ip()) {
        Ok(admission) => admission,
        Err(refusal) => {
            tracing::warn!(?refusal, "connection limit reached");
            return plain(refusal.status(), refusal.body());
        }
    };
    let upgrade_request = describe(&request, id, client);
    let info = Arc::new(ConnectionInfo {
        id,
        endpoint_path: endpoint.config.path.get_ref().clone(),
        content_type: endpoint.config.content_type.clone(),
        request_headers: upgrade_request.headers.clone(),
        ..ConnectionInfo::default()
    });
    let mut contexts: Vec<CallContext> = (0..endpoint.slots)
        .map(|_| CallContext::new(info.clone()))
        .collect();

    let (route, header_ops) = match run_upgrade_chain(
        &endpoint,
        &upgrade_request,
        &mut contexts,
        trace,
        &shared.counters,
    ) {
        ChainOutcome::Route(route, ops) => (route, ops),
        ChainOutcome::Respond(response) => return response,
    };
    if trace.enabled {
        trace.route = Some(route.url.clone());
    }
    let url = match UpstreamUrl::parse(&route.url) {
        Ok(url) => url,
        Err(error) => {
            tracing::error!(%error, "the upgrade chain routed to an unusable url");
            return plain(
                StatusCode::BAD_GATEWAY,
                "the route's upstream url is invalid\n",
            );
        }
    };
    if !endpoint
        .config
        .allowed_upstreams
        .iter()
        .any(|allowed| upstream_allowed(allowed.get_ref(), &url))
    {
        tracing::warn!(route = %route.url, "route refused: not in the endpoint's allowed-upstreams");
        return plain(
            StatusCode::FORBIDDEN,
            "the requested upstream is not allowed\n",
        );
    }

    let address = url.address();
    let remote = generation.remote_hosts.get(&address).cloned();
    let permit = match remote.as_ref().and_then(|r| r.permits.clone()) {
        Some(permits) => match permits.try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                tracing::warn!(%address, "remote host at its max-connections");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the upstream is at its connection limit\n",
                );
            }
        },
        None => None,
    };
    let timeout = remote
        .as_ref()
        .map_or(DEFAULT_CONNECT_TIMEOUT, |r| r.connect_timeout);
    let tls = remote.and_then(|r| r.tls.clone());
    let headers = upstream_headers(&request, &upgrade_request, header_ops, &route, client);
    let ws_config = Shared::ws_config(&generation, &endpoint);
    let connected = tokio::time::timeout(
        timeout,
        upstream::connect(
            &url,
            headers,
            ws_config,
            tls,
            endpoint.config.permessage_deflate.with_upstream(),
        ),
    )
    .await;
    let upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            tracing::warn!(%error, "upstream connection failed");
            return plain(
                error.status(),
                "the upstream websocket server is unavailable\n",
            );
        }
        Err(_) => {
            tracing::warn!(%address, ?timeout, "upstream connection timed out");
            return plain(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream websocket server did not answer in time\n",
            );
        }
    };

    // The client gets 101 only now, with the upstream's subprotocol if the
    // client offered it, and permessage-deflate if it offered that.
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
        &request,
        upstream.protocol,
        deflate.as_ref().map(|(_, answer)| answer.as_str()),
    );
    let agreement = deflate.map(|(agreement, _)| agreement);
    let _ = info.route_url.set(route.url.clone());
    let on_upgrade = hyper::upgrade::on(&mut request);
    let level = endpoint.config.monitor;
    let watch = (level > MonitorLevel::Off).then(|| Watch::new(shared.monitor.clone(), id, level));
    let recorder = (level >= MonitorLevel::Metadata).then(|| {
        let capture = if level == MonitorLevel::Full {
            usize::try_from(endpoint.config.monitor_capture.0).unwrap_or(usize::MAX)
        } else {
            0
        };
        Recorder::new(shared.monitor.clone(), shared.monitor.key(id), capture)
    });
    let session = Session::new(
        id,
        generation,
        endpoint,
        contexts,
        shared.clone(),
        Held { permit, admission },
        watch,
    );
    let relay = async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let client = crate::websocket::WebSocket::new(
                    Deflate::new(
                        Tap::new(TokioIo::new(upgraded), recorder),
                        agreement,
                        End::Server,
                    ),
                    Role::Server,
                    ws_config,
                );
                relay::run(session, client, upstream.stream).await;
            }
            Err(error) => {
                tracing::warn!(%error, "client upgrade failed after 101");
                relay::abandon(session, upstream.stream).await;
            }
        }
    };
    shared
        .tracker
        .spawn(relay.instrument(tracing::Span::current()));
    response
}

/// The client's 101, answering its key, with the upstream's subprotocol if
/// the client offered it, and the extensions agreed with it.
fn switching_protocols(
    request: &Request<Incoming>,
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

enum ChainOutcome {
    Route(Route, Vec<HeaderOp>),
    Respond(HttpResponse),
}

/// Run the endpoint's upgrade chain until a plugin routes or rejects.
fn run_upgrade_chain(
    endpoint: &LiveEndpoint,
    request: &UpgradeRequest,
    contexts: &mut [CallContext],
    trace: &mut UpgradeTrace,
    counters: &TrafficCounters,
) -> ChainOutcome {
    let mut header_ops = Vec::new();
    for step in &endpoint.upgrade {
        let Some(context) = contexts.get_mut(step.slot) else {
            continue;
        };
        let started = std::time::Instant::now();
        let verdict = step.pool.on_upgrade(context, request);
        counters.upgrade_verdict(match &verdict {
            Ok(UpgradeVerdict::Continue) => 0,
            Ok(UpgradeVerdict::Modify(_)) => 1,
            Ok(UpgradeVerdict::Reject(_)) => 2,
            Ok(UpgradeVerdict::Route(_)) => 3,
            Err(_) => 4,
        });
        if trace.enabled {
            trace.verdicts.push(PluginVerdict {
                plugin: step.pool.plugin().id().to_string(),
                verdict: match &verdict {
                    Ok(UpgradeVerdict::Continue) => "continue".to_string(),
                    Ok(UpgradeVerdict::Modify(ops)) => format!("modify ({} header ops)", ops.len()),
                    Ok(UpgradeVerdict::Reject(rejection)) => format!("reject {}", rejection.status),
                    Ok(UpgradeVerdict::Route(route)) => format!("route {}", route.url),
                    Err(fault) => format!("fault {} (fail {:?})", fault.kind.as_str(), step.fail),
                },
                duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            });
        }
        match verdict {
            Ok(UpgradeVerdict::Continue) => {}
            Ok(UpgradeVerdict::Modify(ops)) => header_ops.extend(ops),
            Ok(UpgradeVerdict::Reject(rejection)) => {
                tracing::info!(
                    plugin = step.pool.plugin().id(),
                    status = rejection.status,
                    "upgrade rejected by plugin"
                );
                return ChainOutcome::Respond(rejection_response(rejection));
            }
            Ok(UpgradeVerdict::Route(route)) => {
                tracing::info!(plugin = step.pool.plugin().id(), url = %route.url, "upgrade routed");
                return ChainOutcome::Route(route, header_ops);
            }
            Err(fault) => {
                tracing::error!(plugin = %fault.plugin, kind = fault.kind.as_str(), error = %fault.message, fail = ?step.fail, "upgrade plugin failed");
                if step.fail == FailPolicy::Closed {
                    return ChainOutcome::Respond(plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "an upgrade filter failed\n",
                    ));
                }
            }
        }
    }
    tracing::error!("the upgrade chain ended without routing the connection");
    ChainOutcome::Respond(plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the endpoint's upgrade chain did not route the connection\n",
    ))
}

/// The refusal for a request that is not a WebSocket upgrade the gateway can accept.
fn refuse_non_websocket(request: &Request<Incoming>) -> Option<HttpResponse> {
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
        let mut response = plain(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint only accepts websocket upgrades\n",
        );
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        return Some(response);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = plain(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported websocket version; use 13\n",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Some(response);
    }
    let key_ok = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .is_some_and(|key| key.len() == 24 && key.as_bytes().ends_with(b"=="));
    if !key_ok {
        return Some(plain(
            StatusCode::BAD_REQUEST,
            "missing or malformed Sec-WebSocket-Key\n",
        ));
    }
    None
}

/// The plugin contract's view of the upgrade request.
fn describe(request: &Request<Incoming>, id: u64, client: SocketAddr) -> UpgradeRequest {
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

/// Headers for the upstream request: the client's end-to-end headers, the
/// forwarding headers, then the chain's changes and the route's headers.
fn upstream_headers(
    request: &Request<Incoming>,
    upgrade: &UpgradeRequest,
    ops: Vec<HeaderOp>,
    route: &Route,
    client: SocketAddr,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    set(&mut headers, "x-forwarded-for", &forwarded_for);
    set(
        &mut headers,
        "x-forwarded-proto",
        if upgrade.tls { "wss" } else { "ws" },
    );
    if let Some(host) = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        set(&mut headers, "x-forwarded-host", host);
    }
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
    // The gateway negotiates extensions with each side itself.
    for name in NOT_FORWARDED {
        headers.remove(name);
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

/// Did the client offer `protocol` in its Sec-WebSocket-Protocol header(s)?
fn client_offered(request: &Request<Incoming>, protocol: &HeaderValue) -> bool {
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|offered| offered.trim().as_bytes() == protocol.as_bytes())
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

fn rejection_response(rejection: wsgate_runtime::Rejection) -> HttpResponse {
    let status = StatusCode::from_u16(rejection.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error());
    let Some(status) = status else {
        tracing::error!(
            status = rejection.status,
            "a plugin rejected with a status outside 400-599"
        );
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "an upgrade filter failed\n",
        );
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

impl LiveEndpoint {
    /// Connections open on this endpoint right now.
    pub fn active_connections(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
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
