//! The admin listener.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 while accepting, 503 once shutdown has begun |
//! | `POST /api/deploy` | body: a whole `host-config.toml`; header `x-wsgate-config-path` names it (relative plugin paths resolve against its directory). 200 `{"generation": N}`, or 422 `{"errors": [{file, line, column, field, message}]}` with the running configuration untouched |
//! | `GET /api/generations` | live generations and their open connections |
//! | `GET /api/deploys` | deploy history |
//! | `GET /metrics` | Prometheus text |
//!
//! With a token configured, every route but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsgate_config::ConfigErrors;
use wsgate_proxy::Gateway;

/// Largest configuration a deploy may post.
const MAX_DEPLOY_BODY: usize = 1 << 20;

type AdminResponse = Response<Full<Bytes>>;

/// Serve the admin API on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    token: Option<String>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let gateway = gateway.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                let token = token.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        route(&gateway, token.as_deref(), request).await,
                    )
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

async fn route(
    gateway: &Gateway,
    token: Option<&str>,
    request: Request<Incoming>,
) -> AdminResponse {
    let path = request.uri().path().to_string();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if gateway.is_ready() => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ if !authorized(&request, token) => {
            let mut response = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
        (&Method::POST, "/api/deploy") => deploy(gateway, request).await,
        (&Method::GET, "/api/generations") => json_response(StatusCode::OK, &generations(gateway)),
        (&Method::GET, "/api/deploys") => json_response(StatusCode::OK, &deploys(gateway)),
        (&Method::GET, "/metrics") => metrics(gateway),
        _ => text(StatusCode::NOT_FOUND, "no such admin route\n"),
    }
}

fn authorized(request: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn deploy(gateway: &Gateway, request: Request<Incoming>) -> AdminResponse {
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
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("cannot read the configuration: {error}\n"),
            );
        }
    };
    let Ok(text_body) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the configuration is not UTF-8\n");
    };
    match gateway.deploy_text(text_body, Path::new(&path)).await {
        Ok(generation) => json_response(StatusCode::OK, &json!({ "generation": generation })),
        Err(errors) => json_response(StatusCode::UNPROCESSABLE_ENTITY, &errors_json(&errors)),
    }
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
            })
        })
        .collect();
    json!({ "deploys": deploys })
}

fn metrics(gateway: &Gateway) -> AdminResponse {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP wsgate_connections_active Proxied connections open."
    );
    let _ = writeln!(out, "# TYPE wsgate_connections_active gauge");
    let _ = writeln!(
        out,
        "wsgate_connections_active {}",
        gateway.active_connections()
    );
    let _ = writeln!(
        out,
        "# HELP wsgate_generation_connections Connections open per live configuration generation."
    );
    let _ = writeln!(out, "# TYPE wsgate_generation_connections gauge");
    for g in gateway.generations() {
        let _ = writeln!(
            out,
            "wsgate_generation_connections{{generation=\"{}\",current=\"{}\"}} {}",
            g.id, g.current, g.connections
        );
    }
    let generation = gateway.generation();
    let _ = writeln!(
        out,
        "# HELP wsgate_endpoint_connections Connections open per endpoint (current generation)."
    );
    let _ = writeln!(out, "# TYPE wsgate_endpoint_connections gauge");
    for endpoint in &generation.endpoints {
        let _ = writeln!(
            out,
            "wsgate_endpoint_connections{{endpoint=\"{}\"}} {}",
            escape(endpoint.config.path.get_ref()),
            endpoint.active_connections()
        );
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_plugin_calls_total Plugin calls (current generation)."
    );
    let _ = writeln!(out, "# TYPE wsgate_plugin_calls_total counter");
    let _ = writeln!(
        out,
        "# HELP wsgate_plugin_faults_total Plugin calls that failed, by kind (current generation)."
    );
    let _ = writeln!(out, "# TYPE wsgate_plugin_faults_total counter");
    for (i, pool) in generation.pools.iter().enumerate() {
        let plugin = escape(pool.plugin().id());
        let stats = pool.stats();
        let _ = writeln!(
            out,
            "wsgate_plugin_calls_total{{plugin=\"{plugin}\",pool=\"{i}\"}} {}",
            stats.calls.load(Ordering::Relaxed)
        );
        for (kind, counter) in [
            ("deadline", &stats.deadline_faults),
            ("memory", &stats.memory_faults),
            ("trap", &stats.trap_faults),
            ("instantiate", &stats.instantiate_faults),
            ("output", &stats.output_faults),
        ] {
            let _ = writeln!(
                out,
                "wsgate_plugin_faults_total{{plugin=\"{plugin}\",pool=\"{i}\",kind=\"{kind}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_plugin_log_lines_dropped_total Plugin log lines over the log rate (current generation)."
    );
    let _ = writeln!(out, "# TYPE wsgate_plugin_log_lines_dropped_total counter");
    for (i, pool) in generation.pools.iter().enumerate() {
        let _ = writeln!(
            out,
            "wsgate_plugin_log_lines_dropped_total{{plugin=\"{}\",pool=\"{i}\"}} {}",
            escape(pool.plugin().id()),
            pool.stats().log_lines_dropped.load(Ordering::Relaxed)
        );
    }
    let deploys = gateway.deploys();
    let ok = deploys.iter().filter(|d| d.generation.is_some()).count();
    let _ = writeln!(
        out,
        "# HELP wsgate_deploys_total Deploy attempts by result."
    );
    let _ = writeln!(out, "# TYPE wsgate_deploys_total counter");
    let _ = writeln!(out, "wsgate_deploys_total{{result=\"ok\"}} {ok}");
    let _ = writeln!(
        out,
        "wsgate_deploys_total{{result=\"refused\"}} {}",
        deploys.len() - ok
    );
    let mut response = text(StatusCode::OK, &out);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Escape a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn text(status: StatusCode, body: &str) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_response(status: StatusCode, value: &Value) -> AdminResponse {
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

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
