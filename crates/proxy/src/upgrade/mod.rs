//! One HTTP request on the client-facing listener, as the phases of
//! `docs/phases.md`: find the endpoint, check the upgrade and the origin,
//! admit the connection under its limits, run the upgrade chain, check the
//! route, connect upstream, answer the client 101, hand both sides to the
//! relay. Each phase is one function; a refusal at any phase is a
//! [`Refused`] that says who failed and what the client gets.

mod answer;
pub(crate) mod chain;
mod headers;
mod refused;
mod request;
mod route;
pub(crate) use route::AdmittedRoutes;

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::Instrument;
use wsgate_runtime::{CallContext, ConnectionInfo, Expiry, HeaderOp, Route};
use wsgate_trace::ConnectionFacts;
use wsgate_wire::deflate::Agreement;

use crate::generation::{DEFAULT_CONNECT_TIMEOUT, Generation, LiveEndpoint};
use crate::ledger::{Limits, Place};
use crate::observe::{Observer, RequestSummary};
use crate::relay::{self, Session};
use crate::shared::Shared;
use crate::socket::Socket;
use crate::upstream::{self, Upstream, UpstreamError, UpstreamUrl};

pub use refused::{HttpResponse, Refused};

/// Request extension: the request came over TLS (`wss://`).
#[derive(Debug, Clone, Copy)]
pub struct Secure(pub bool);

/// Handle one request on the client-facing listener.
pub async fn handle(
    shared: Arc<Shared>,
    client: SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    // 1-3: the endpoint by path, and a WebSocket upgrade at all.
    let generation = shared.generation();
    let Some(endpoint) = generation.endpoint_for(request.uri().path()).cloned() else {
        return Refused::NotFound.response();
    };
    if let Err(refused) = request::check_websocket(&request) {
        return refused.response();
    }
    let id = shared.next_connection_id();
    let path = endpoint.config.path.get_ref();
    let span = tracing::info_span!(
        "connection",
        id,
        endpoint = %path,
        %client,
        trace_id = tracing::field::Empty
    );
    let shadow = shared
        .shadow()
        .and_then(|shadow| shadow.sample(request.uri().path(), id));
    let trace = shared
        .tracer
        .as_ref()
        .and_then(|tracer| begin_trace(tracer, &endpoint, generation.id, id, client, &request));
    if let Some(trace) = &trace {
        span.record("trace_id", trace.trace_id());
    }
    let traceparent = trace
        .as_ref()
        .map(wsgate_trace::ConnectionTrace::traceparent);
    let observer = Observer::new(
        shared.counters.clone(),
        &shared.monitor,
        endpoint.config.monitor,
        usize::try_from(endpoint.config.monitor_capture.0).unwrap_or(usize::MAX),
        id,
        generation.id,
        path,
        client,
        RequestSummary {
            method: request.method().as_str(),
            path: request.uri().path(),
            query: request.uri().query().unwrap_or(""),
            headers: request.headers(),
        },
        shadow,
        trace,
    );
    // The monitor recorded the client's traceparent; plugins and the
    // upstream see this connection's span as the parent.
    let mut request = request;
    if let Some(value) = traceparent.and_then(|t| http::HeaderValue::try_from(t).ok()) {
        request.headers_mut().insert("traceparent", value);
    }
    let connection = Connection {
        shared,
        generation,
        endpoint,
        id,
        client,
    };
    connection.upgrade(request, observer).instrument(span).await
}

/// The trace of connection `id` (with `[tracing]` on), its parent the
/// request's one `traceparent` (more than one is no trace context, as W3C
/// Trace Context says), its messages sampled at the endpoint's rate.
fn begin_trace(
    tracer: &Arc<wsgate_trace::Tracer>,
    endpoint: &LiveEndpoint,
    generation: u64,
    id: u64,
    client: SocketAddr,
    request: &Request<Incoming>,
) -> Option<wsgate_trace::ConnectionTrace> {
    let sample = endpoint
        .config
        .trace_sample
        .as_ref()
        .map_or(tracer.default_sample(), |s| *s.get_ref());
    let mut parents = request.headers().get_all("traceparent").iter();
    let parent = match (parents.next(), parents.next()) {
        (Some(one), None) => Some(one.as_bytes()),
        _ => None,
    };
    tracer.connection(
        parent,
        &ConnectionFacts {
            id,
            generation,
            endpoint: endpoint.config.path.get_ref(),
            path: request.uri().path(),
            client,
            sample,
        },
    )
}

/// What every phase of one upgrade works on.
struct Connection {
    shared: Arc<Shared>,
    generation: Arc<Generation>,
    endpoint: Arc<LiveEndpoint>,
    id: u64,
    client: SocketAddr,
}

/// An upgrade that got through every phase: what the relay takes over.
struct Accepted {
    response: HttpResponse,
    upstream: Upstream,
    deflate: Option<Agreement>,
    connection: Arc<ConnectionInfo>,
    contexts: Vec<CallContext>,
    place: Place,
    on_upgrade: OnUpgrade,
}

impl Connection {
    /// Every phase after the request's own checks; the answer the client gets.
    async fn upgrade(self, mut request: Request<Incoming>, mut observer: Observer) -> HttpResponse {
        match self.phases(&mut request, &mut observer).await {
            Ok(accepted) => {
                let status = accepted.response.status().as_u16();
                observer.answered(status, accepted.response.headers());
                tracing::info!(status, "upgrade answered");
                self.hand_to_relay(accepted, observer)
            }
            Err(refused) => {
                let failed = refused.culprit().name();
                let reason = refused.to_string();
                let response = refused.response();
                let status = response.status().as_u16();
                observer.answered(status, response.headers());
                tracing::info!(status, failed, %reason, "upgrade answered");
                response
            }
        }
    }

    /// Steps 4-9 of `docs/phases.md`, in order: origin, admission, the
    /// upgrade chain, the route, the upstream, the client's 101.
    async fn phases(
        &self,
        request: &mut Request<Incoming>,
        observer: &mut Observer,
    ) -> Result<Accepted, Refused> {
        request::check_origin(&self.endpoint, request)?;
        let mut place = self.admit()?;
        let view = request::plugin_view(request, self.id, self.client);
        let (info, mut contexts) = self.plugin_contexts(view, observer.records_chain_time());
        let (route, header_ops) =
            chain::run_upgrade_chain(&self.endpoint, &mut contexts, observer).await?;
        observer.routed(&route.url);
        let url = route::check_route(&self.endpoint, &route)?;
        let upstream = self
            .connect(request, &info.request, header_ops, &route, &url, &mut place)
            .await?;
        let (response, deflate) =
            answer::answer(request, &self.endpoint, upstream.protocol.clone());
        let _ = info.route_url.set(route.url);
        Ok(Accepted {
            response,
            upstream,
            deflate,
            connection: info,
            contexts,
            place,
            on_upgrade: hyper::upgrade::on(&mut *request),
        })
    }

    /// The connection's facts as plugins see them, and its call contexts
    /// (every call `timed` or a sample).
    fn plugin_contexts(
        &self,
        view: wsgate_runtime::UpgradeRequest,
        timed: bool,
    ) -> (Arc<ConnectionInfo>, Vec<CallContext>) {
        plugin_contexts(&self.endpoint, self.id, view, timed)
    }

    /// Take the connection's place under the gateway, endpoint and client limits.
    fn admit(&self) -> Result<Place, Refused> {
        let limits = Limits {
            gateway: self.generation.config.gateway.max_connections,
            endpoint: self.endpoint.config.path.get_ref(),
            per_endpoint: self.endpoint.config.max_connections,
            per_client: self.endpoint.config.max_connections_per_ip,
        };
        self.shared
            .ledger
            .admit(&limits, self.client.ip())
            .map_err(|refusal| {
                tracing::warn!(?refusal, "connection limit reached");
                Refused::Limit(refusal)
            })
    }

    /// Connect to the routed upstream under its remote host's limit and
    /// connect timeout, and finish its WebSocket handshake.
    async fn connect(
        &self,
        request: &Request<Incoming>,
        view: &wsgate_runtime::UpgradeRequest,
        header_ops: Vec<HeaderOp>,
        route: &Route,
        url: &UpstreamUrl,
        place: &mut Place,
    ) -> Result<Upstream, Refused> {
        let address = url.address();
        let remote = self.generation.remote_hosts.get(address);
        place
            .take_remote_permit(remote.map(Arc::as_ref))
            .map_err(|refusal| {
                tracing::warn!(%address, "remote host at its max-connections");
                Refused::Limit(refusal)
            })?;
        let timeout = remote.map_or(DEFAULT_CONNECT_TIMEOUT, |r| r.connect_timeout);
        let tls = remote.and_then(|r| r.tls.clone());
        let headers = headers::upstream_headers(request, view, header_ops, route, self.client);
        let connected = tokio::time::timeout(
            timeout,
            upstream::connect(
                url,
                headers,
                self.endpoint.ws_config(&self.generation),
                tls,
                self.endpoint.config.permessage_deflate.with_upstream(),
            ),
        )
        .await;
        let error = match connected {
            Ok(Ok(upstream)) => return Ok(upstream),
            Ok(Err(error)) => error,
            Err(_) => UpstreamError::Timeout {
                address: address.to_string(),
                timeout,
            },
        };
        tracing::warn!(%error, "upstream connection failed");
        Err(Refused::Upstream(error))
    }

    /// Spawn the relay: once the client's connection is upgraded (after
    /// our 101 is written), its stream stack is built and the relay runs.
    fn hand_to_relay(self, accepted: Accepted, observer: Observer) -> HttpResponse {
        let Self {
            shared,
            generation,
            endpoint,
            id,
            client: _,
        } = self;
        let Accepted {
            response,
            upstream,
            deflate,
            connection,
            contexts,
            mut place,
            on_upgrade,
        } = accepted;
        place.open(endpoint.clone(), generation.clone());
        let ws_config = endpoint.ws_config(&generation);
        let frames = observer.frame_log();
        let session = Session {
            id,
            generation,
            endpoint,
            connection,
            contexts,
            place,
            observer,
            shutdown: shared.shutdown.clone(),
            drain: shared.drain.clone(),
        };
        let waiting = Box::new(relay::Waiting {
            session,
            upstream: upstream.stream,
        });
        let relay = async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let client = wsgate_wire::open(
                        Socket::client(upgraded),
                        Role::Server,
                        deflate,
                        frames,
                        ws_config,
                    );
                    relay::run(waiting.with_client(client)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "client upgrade failed after 101");
                    relay::abandon(waiting).await;
                }
            }
        };
        // Boxed: the task moves a pointer, not the relay's state.
        shared
            .tracker
            .spawn(Box::pin(relay.instrument(tracing::Span::current())));
        response
    }
}

/// Connection `id`'s facts as plugins see them, holding its upgrade
/// request `view`, and one call context (with its own state) per distinct
/// plugin on `endpoint`, with every call `timed` (when its chain time is
/// recorded) or a sample.
pub(crate) fn plugin_contexts(
    endpoint: &LiveEndpoint,
    id: u64,
    view: wsgate_runtime::UpgradeRequest,
    timed: bool,
) -> (Arc<ConnectionInfo>, Vec<CallContext>) {
    let info = Arc::new(ConnectionInfo {
        id,
        endpoint_path: endpoint.config.path.get_ref().clone(),
        content_type: endpoint.config.content_type.clone(),
        request: view,
        expiry: Expiry::new(endpoint.config.lifetime().map(unix_ms_after)),
        ..ConnectionInfo::default()
    });
    let contexts = (0..endpoint.slots)
        .map(|_| CallContext {
            timed,
            ..CallContext::new(info.clone())
        })
        .collect();
    (info, contexts)
}

/// Unix milliseconds `after` from now.
fn unix_ms_after(after: std::time::Duration) -> u64 {
    let at = std::time::SystemTime::now() + after;
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
