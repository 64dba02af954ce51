//! The admin listener.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 while accepting, 503 once a drain or shutdown has begun |
//! | `POST /api/deploy` | body: a whole `host-config.toml`; header `x-wsgate-config-path` names it (relative plugin paths resolve against its directory). 200 `{"generation": N}`, or 422 `{"errors": [{file, line, column, field, message}]}` with the running configuration untouched |
//! | `POST /api/shadow?sample=R` | body: a whole `host-config.toml` (as `/api/deploy`), run in the shadow of the serving generation on the share `R` (0 to 1, default 1) of the connections on its endpoints: verdicts compared, never applied. 200 `{"generation": N}` or 422 |
//! | `GET /api/shadow` | the shadow: generation, source, sample, connections sampled, dropped, counts per endpoint (same, changed, dropped, closed, upgrades_changed), the latest differences, its plugins' calls and faults; 404 without one |
//! | `DELETE /api/shadow` | stop the shadow |
//! | `POST /api/shadow/promote` | deploy the shadow's configuration as the serving generation and stop the shadow: as `/api/deploy` |
//! | `POST /api/drain` | begin a drain (as SIGTERM): 202 with its state, or 200 when one had begun; the process exits when it is done |
//! | `GET /api/drain` | the drain: `phase` (serving, grace, closing, done), open `connections`, `closed` with 1012, `grace_ms`, `window_ms` |
//! | `GET /api/generations` | live generations and their open connections |
//! | `GET /api/deploys` | deploy history, newest last: when, from where, the generation or the errors that refused it, what it changed (unified-diff lines of the configuration, secret values hidden) |
//! | `GET /api/overview?range=5m\|1h\|24h` | the console's Overview: per-second rates (upgrades by status, messages and bytes by direction), open connections, close codes, per-plugin calls, p50/p99 call time and faults by kind, monitor drops, one point per second, 10 s or minute; and the range's deploys |
//! | `GET /api/endpoints` | the listener, endpoints with their chains and monitor levels, plugins |
//! | `GET /api/connections` | recorded connections, newest first; filters `endpoint`, `since`, `until` (µs since the epoch), `status`, `close_code`, `opcode`, `limit` |
//! | `GET /api/connections/{key}` | one connection: its upgrade, its end, its frames in order |
//! | `GET /api/frames` | frames; filters `connection`, `endpoint`, `origin` (client/server), `opcode`, `since`, `until`, `limit` |
//! | `GET /api/tail` | WebSocket: every record from now on as JSON; filters `endpoint`, `connection` |
//! | `GET /metrics` | Prometheus text |
//! | `GET /console/` | the web console (Overview, Traffic > HTTP, Traffic > WebSockets, endpoints and plugins, test client, Shadow, Deploys) |
//!
//! With a token configured, every route but `/healthz`, `/readyz` and the
//! console's files needs `Authorization: Bearer <token>` (`?token=` on
//! `/api/tail`, which browsers open without headers).
//!
//! What a caller can hold is bounded whether or not it has the token:
//! `[admin] max-connections` connections at once (more are closed at
//! accept), `[admin] max-tails` live tails (more get 503), a request head
//! within `[gateway] handshake-timeout` (an idle keep-alive connection is
//! closed after it too) and 64 KiB, a deploy's body within 1 MiB (413).

#![deny(clippy::indexing_slicing)]

use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsgate_config::ConfigErrors;
use wsgate_proxy::{DeployError, Gateway};

mod console;
mod load;
mod metrics;
mod overview;
mod traffic;

use load::{AdminLimits, Counted, Load};
use overview::{Overview, Range};

/// Largest configuration a deploy may post.
const MAX_DEPLOY_BODY: usize = 1 << 20;

/// Largest request head (hyper's read buffer) on the admin listener.
const MAX_HEAD_BYTES: usize = 64 << 10;

pub(crate) type AdminResponse = Response<Full<Bytes>>;

/// Serve the admin API on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    token: Option<String>,
    stop: CancellationToken,
) {
    let load = Arc::new(Load::default());
    let overview = Overview::start(gateway.clone(), stop.clone());
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, caller)) = accepted else {
            continue;
        };
        let limits = AdminLimits::of(&gateway);
        let Some(place) = load.connection(limits.max_connections) else {
            tracing::warn!(
                %caller,
                limit = "admin.max-connections",
                open = load.connections(),
                "too many admin connections; closed at accept"
            );
            drop(stream);
            continue;
        };
        let context = Arc::new(Context {
            gateway: gateway.clone(),
            token: token.clone(),
            load: load.clone(),
            overview: overview.clone(),
            limits,
        });
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let context = context.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&context, request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                // The read buffer's cap alone let a 70 KiB head through.
                .max_header_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(Counted::new(stream, place)), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%caller, %error, "admin connection ended with an error");
            }
        });
    }
}

/// What every admin request of one listener shares.
pub(crate) struct Context {
    gateway: Gateway,
    token: Option<String>,
    /// Connections and tails open.
    load: Arc<Load>,
    /// The counters sampled for the console's Overview.
    overview: Arc<Overview>,
    /// The limits read when the request's connection was accepted.
    limits: AdminLimits,
}

async fn route(context: &Context, request: Request<Incoming>) -> AdminResponse {
    let (gateway, token) = (&context.gateway, context.token.as_deref());
    let path = request.uri().path().to_string();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if gateway.is_ready() => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        // The console's files hold no data; the API it calls needs the token.
        (&Method::GET, "/") => console::redirect(),
        (&Method::GET, asset) if asset.starts_with("/console") => console::asset(asset),
        _ if !authorized(&request, token) => {
            let mut response = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
        (&Method::POST, "/api/deploy") => deploy(gateway, request).await,
        (&Method::POST, "/api/shadow") => deploy_shadow(gateway, request).await,
        (&Method::GET, "/api/shadow") => shadow_status(gateway),
        (&Method::DELETE, "/api/shadow") if gateway.stop_shadow() => {
            text(StatusCode::OK, "shadow stopped\n")
        }
        (&Method::DELETE, "/api/shadow") => {
            text(StatusCode::NOT_FOUND, "no shadow generation runs\n")
        }
        (&Method::POST, "/api/shadow/promote") => match gateway.promote_shadow().await {
            Some(result) => deploy_response(result),
            None => text(StatusCode::NOT_FOUND, "no shadow generation runs\n"),
        },
        (&Method::POST, "/api/drain") => {
            let began = gateway.drain();
            json_response(
                if began {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                },
                &drain(gateway),
            )
        }
        (&Method::GET, "/api/drain") => json_response(StatusCode::OK, &drain(gateway)),
        (&Method::GET, "/api/generations") => json_response(StatusCode::OK, &generations(gateway)),
        (&Method::GET, "/api/deploys") => json_response(StatusCode::OK, &deploys(gateway)),
        (&Method::GET, "/api/overview") => {
            let range = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "range")
                .map_or(Some(Range::FiveMinutes), |(_, v)| Range::parse(&v));
            match range {
                Some(range) => {
                    json_response(StatusCode::OK, &context.overview.report(gateway, range))
                }
                None => text(StatusCode::BAD_REQUEST, "range is 5m, 1h or 24h\n"),
            }
        }
        (&Method::GET, "/api/endpoints") => {
            json_response(StatusCode::OK, &traffic::endpoints(gateway))
        }
        (&Method::GET, "/api/connections") => traffic::connections(gateway, &request).await,
        (&Method::GET, key) if key.starts_with("/api/connections/") => {
            let key = key.trim_start_matches("/api/connections/").to_string();
            traffic::connection(gateway, &key, &request).await
        }
        (&Method::GET, "/api/frames") => traffic::frames(gateway, &request).await,
        (&Method::GET, "/api/tail") => traffic::tail(context, request),
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, &metrics::render(gateway, &context.load));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "no such admin route\n"),
    }
}

fn authorized(request: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    // Browsers cannot set headers on a WebSocket: the tail takes `?token=`.
    let given = bearer.or_else(|| {
        (request.uri().path() == "/api/tail")
            .then(|| {
                form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
                    .find(|(k, _)| k == "token")
                    .map(|(_, v)| v.into_owned())
            })
            .flatten()
    });
    given.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn deploy(gateway: &Gateway, request: Request<Incoming>) -> AdminResponse {
    let (text_body, path) = match deployed_file(request).await {
        Ok(file) => file,
        Err(response) => return response,
    };
    deploy_response(gateway.deploy_text(&text_body, Path::new(&path)).await)
}

/// `POST /api/shadow?sample=R`: the body's configuration in the shadow.
async fn deploy_shadow(gateway: &Gateway, request: Request<Incoming>) -> AdminResponse {
    let sample = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "sample")
        .map(|(_, v)| v.parse::<f64>());
    let sample = match sample {
        None => 1.0,
        Some(Ok(sample)) if (0.0..=1.0).contains(&sample) => sample,
        Some(_) => return text(StatusCode::BAD_REQUEST, "sample is a number from 0 to 1\n"),
    };
    let (text_body, path) = match deployed_file(request).await {
        Ok(file) => file,
        Err(response) => return response,
    };
    let source = format!("admin API (shadow) {path}");
    deploy_response(
        gateway
            .deploy_shadow(&text_body, Path::new(&path), &source, sample)
            .await,
    )
}

/// A deployed file: its text and the path it names (relative plugin paths
/// resolve against its directory); or the response refusing it.
async fn deployed_file(request: Request<Incoming>) -> Result<(String, String), AdminResponse> {
    let path = request
        .headers()
        .get("x-wsgate-config-path")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("deployed-config.toml")
        .to_string();
    let body = match Limited::new(request.into_body(), MAX_DEPLOY_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("cannot read the configuration: {error}\n"),
            ));
        }
    };
    match String::from_utf8(body.to_vec()) {
        Ok(text_body) => Ok((text_body, path)),
        Err(_) => Err(text(
            StatusCode::BAD_REQUEST,
            "the configuration is not UTF-8\n",
        )),
    }
}

/// A deploy's answer: 200 with the generation, or its problems.
fn deploy_response(result: Result<u64, DeployError>) -> AdminResponse {
    match result {
        Ok(generation) => json_response(StatusCode::OK, &json!({ "generation": generation })),
        Err(DeployError::Config(errors)) => {
            json_response(StatusCode::UNPROCESSABLE_ENTITY, &errors_json(&errors))
        }
        Err(error @ (DeployError::Draining | DeployError::Shadow(_))) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "errors": [{ "field": "", "message": error.to_string(), "text": error.to_string() }] }),
        ),
        Err(DeployError::Bind(error)) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({ "errors": [{
                "field": error.field,
                "message": format!("cannot listen on {}: {}", error.address, error.error),
                "text": error.to_string(),
            }] }),
        ),
    }
}

/// `GET /api/shadow`: what the shadow generation has seen.
fn shadow_status(gateway: &Gateway) -> AdminResponse {
    let Some(shadow) = gateway.shadow() else {
        return text(StatusCode::NOT_FOUND, "no shadow generation runs\n");
    };
    let plugins: Vec<Value> = shadow
        .generation
        .pools
        .iter()
        .enumerate()
        .map(|(i, pool)| {
            let stats = pool.stats();
            let faults: serde_json::Map<String, Value> = wsgate_runtime::FaultKind::ALL
                .iter()
                .map(|kind| (kind.as_str().to_string(), json!(stats.fault_count(*kind))))
                .filter(|(_, count)| count.as_u64() != Some(0))
                .collect();
            json!({
                "plugin": pool.plugin().id(),
                "pool": i,
                "calls": stats.calls(),
                "faults": faults,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "generation": shadow.generation.id,
            "source": shadow.source,
            "sample": shadow.sample,
            "connections": shadow.stats.connections.load(std::sync::atomic::Ordering::Relaxed),
            "dropped": shadow.stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
            "skipped": shadow.stats.skipped.load(std::sync::atomic::Ordering::Relaxed),
            "endpoints": shadow.stats.counts(),
            "examples": shadow.stats.examples(),
            "plugins": plugins,
        }),
    )
}

/// Configuration errors as JSON, one object per problem.
pub fn errors_json(errors: &ConfigErrors) -> Value {
    let errors: Vec<Value> = errors
        .0
        .iter()
        .map(|e| {
            json!({
                "file": e.file,
                "line": e.line,
                "column": e.column,
                "field": e.field,
                "message": e.message,
                "text": e.to_string(),
            })
        })
        .collect();
    json!({ "errors": errors })
}

/// The drain's phase and progress.
fn drain(gateway: &Gateway) -> Value {
    let drain = gateway.drain_state();
    let settings = &gateway.generation().config.gateway;
    json!({
        "phase": drain.phase().name(),
        "connections": gateway.active_connections(),
        "closed": drain.closed(),
        "grace_ms": settings.drain_grace.0.as_millis(),
        "window_ms": settings.drain_window.0.as_millis(),
    })
}

fn generations(gateway: &Gateway) -> Value {
    let generations: Vec<Value> = gateway
        .generations()
        .iter()
        .map(|g| json!({ "id": g.id, "connections": g.connections, "current": g.current }))
        .collect();
    json!({ "current": gateway.generation().id, "generations": generations })
}

fn deploys(gateway: &Gateway) -> Value {
    let deploys: Vec<Value> = gateway
        .deploys()
        .iter()
        .map(|d| {
            json!({
                "at_ms": d.at.duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis()),
                "generation": d.generation,
                "source": d.source,
                "errors": d.errors,
                "changes": &*d.changes,
            })
        })
        .collect();
    json!({ "deploys": deploys })
}

pub(crate) fn text(status: StatusCode, body: &str) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
