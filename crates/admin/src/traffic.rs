//! The traffic monitor's API: connections, frames, the endpoints overview
//! and a live tail over WebSocket.

use std::collections::HashSet;

use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use wsgate_monitor::{ConnectionFilter, FrameFilter, Origin, Record};
use wsgate_proxy::Gateway;

use crate::{AdminResponse, Context, json_response, text};

/// Results returned when `limit` is not given, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// A live tail whose reader takes longer than this to accept one record
/// (it stopped reading) is closed, giving its place back.
const TAIL_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Query parameters, percent-decoded.
struct Params(Vec<(String, String)>);

impl Params {
    fn of(request: &Request<Incoming>) -> Self {
        Self(
            form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn text(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.text(name)
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| format!("`{name}` must be a number, not `{value}`"))
            })
            .transpose()
    }

    fn limit(&self) -> Result<usize, String> {
        Ok(self
            .number("limit")?
            .unwrap_or(DEFAULT_LIMIT)
            .clamp(1, MAX_LIMIT))
    }

    fn origin(&self) -> Result<Option<Origin>, String> {
        match self.text("origin").as_deref() {
            None => Ok(None),
            Some("client") => Ok(Some(Origin::Client)),
            Some("server") => Ok(Some(Origin::Server)),
            Some(other) => Err(format!("`origin` is `client` or `server`, not `{other}`")),
        }
    }

    /// `opcode` as a number or a name (`text`, `binary`, `close`, …).
    fn opcode(&self) -> Result<Option<u8>, String> {
        let Some(value) = self.text("opcode") else {
            return Ok(None);
        };
        let named = match value.as_str() {
            "continuation" => Some(0),
            "text" => Some(1),
            "binary" => Some(2),
            "close" => Some(8),
            "ping" => Some(9),
            "pong" => Some(10),
            _ => None,
        };
        named
            .or_else(|| value.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("`opcode` is a number or a name (text, binary, close, ping, pong), not `{value}`"))
    }
}

fn bad_request(message: &str) -> AdminResponse {
    text(StatusCode::BAD_REQUEST, &format!("{message}\n"))
}

/// Run a blocking monitor query off the async threads.
async fn query<T: Send + 'static>(
    gateway: &Gateway,
    run: impl FnOnce(&wsgate_monitor::Monitor) -> Result<T, wsgate_monitor::MonitorError>
    + Send
    + 'static,
) -> Result<T, AdminResponse> {
    let monitor = gateway.monitor().clone();
    match tokio::task::spawn_blocking(move || run(&monitor)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("{error}\n"),
        )),
        Err(error) => Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("query failed: {error}\n"),
        )),
    }
}

/// `GET /api/connections`: upgrades (with how they ended), newest first.
pub async fn connections(gateway: &Gateway, request: &Request<Incoming>) -> AdminResponse {
    let params = Params::of(request);
    let filter = (|| {
        Ok::<_, String>(ConnectionFilter {
            endpoint: params.text("endpoint"),
            since_us: params.number("since")?,
            until_us: params.number("until")?,
            status: params.number("status")?,
            close_code: params.number("close_code")?,
            opcode: params.opcode()?,
            limit: params.limit()?,
        })
    })();
    let filter = match filter {
        Ok(filter) => filter,
        Err(message) => return bad_request(&message),
    };
    match query(gateway, move |m| m.connections(&filter)).await {
        Ok(connections) => json_response(StatusCode::OK, &json!({ "connections": connections })),
        Err(response) => response,
    }
}

/// `GET /api/connections/{key}`: one connection and its frames, in order.
pub async fn connection(
    gateway: &Gateway,
    key: &str,
    request: &Request<Incoming>,
) -> AdminResponse {
    let params = Params::of(request);
    let limit = match params.number("limit") {
        Ok(limit) => limit.unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT),
        Err(message) => return bad_request(&message),
    };
    let key = key.to_string();
    let found = query(gateway, move |m| {
        let connection = m.connection(&key)?;
        let frames = m.frames(&FrameFilter {
            connection: Some(key),
            limit,
            ..FrameFilter::default()
        })?;
        Ok((connection, frames))
    })
    .await;
    match found {
        Ok((Some(connection), frames)) => json_response(
            StatusCode::OK,
            &json!({ "connection": connection, "frames": frames }),
        ),
        Ok((None, _)) => text(StatusCode::NOT_FOUND, "no such connection\n"),
        Err(response) => response,
    }
}

/// `GET /api/frames`: frames across connections (newest first), or one
/// connection's (in order).
pub async fn frames(gateway: &Gateway, request: &Request<Incoming>) -> AdminResponse {
    let params = Params::of(request);
    let filter = (|| {
        Ok::<_, String>(FrameFilter {
            connection: params.text("connection"),
            endpoint: params.text("endpoint"),
            origin: params.origin()?,
            opcode: params.opcode()?,
            since_us: params.number("since")?,
            until_us: params.number("until")?,
            limit: params.limit()?,
        })
    })();
    let filter = match filter {
        Ok(filter) => filter,
        Err(message) => return bad_request(&message),
    };
    match query(gateway, move |m| m.frames(&filter)).await {
        Ok(frames) => json_response(StatusCode::OK, &json!({ "frames": frames })),
        Err(response) => response,
    }
}

/// `GET /api/endpoints`: the listener, each endpoint with its chains, and
/// every plugin, from the current generation.
pub fn endpoints(gateway: &Gateway) -> Value {
    let generation = gateway.generation();
    let chain = |entries: &[wsgate_config::ChainEntry]| -> Vec<Value> {
        entries
            .iter()
            .map(|e| {
                json!({
                    "plugin": e.plugin.get_ref(),
                    "fail": format!("{:?}", e.fail).to_lowercase(),
                    "config": serde_json::to_value(&e.config).unwrap_or(Value::Null),
                })
            })
            .collect()
    };
    let endpoints: Vec<Value> = generation
        .endpoints
        .iter()
        .map(|e| {
            let c = &e.config;
            json!({
                "path": c.path.get_ref(),
                "match": format!("{:?}", c.path_match).to_lowercase(),
                "enabled": c.enabled,
                "monitor": c.monitor.as_str(),
                "monitor_capture": c.monitor_capture.0,
                "allowed_upstreams": c.allowed_upstreams.iter().map(|u| u.get_ref().clone()).collect::<Vec<_>>(),
                "max_message_size": c.max_message_size.0,
                "upgrade": chain(&c.upgrade),
                "client_messages": chain(&c.client_messages),
                "upstream_messages": chain(&c.upstream_messages),
                "connections": e.active_connections(),
            })
        })
        .collect();
    let plugins: Vec<Value> = generation
        .plugins
        .iter()
        .zip(&generation.config.plugins)
        .map(|(plugin, decl)| {
            let roles = plugin.roles();
            json!({
                "id": plugin.id(),
                "digest": plugin.digest(),
                "upgrade": roles.upgrade,
                "message": roles.message,
                "signed_by": plugin.signed_by(),
                "grants": decl.grants.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "listen": gateway.local_addr().to_string(),
        "tls": generation.listener_tls.is_some(),
        "generation": generation.id,
        "monitor_database": gateway.monitor().database().map(|p| p.display().to_string()),
        "endpoints": endpoints,
        "plugins": plugins,
    })
}

/// `GET /api/tail` (a WebSocket): every record from now on, as JSON text
/// messages, optionally only for one `endpoint` or one `connection`; at
/// most `[admin] max-tails` at once (more: 503).
pub fn tail(context: &Context, mut request: Request<Incoming>) -> AdminResponse {
    let gateway = &context.gateway;
    let params = Params::of(&request);
    let Some(key) = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return text(StatusCode::UPGRADE_REQUIRED, "/api/tail is a WebSocket\n");
    };
    let Some(place) = context.load.tail(context.limits.max_tails) else {
        tracing::warn!(
            limit = "admin.max-tails",
            open = context.load.tails(),
            "too many live tails; refused"
        );
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live tails are open\n",
        );
    };
    let endpoint = params.text("endpoint");
    let connection = params.text("connection");
    let mut live = gateway.monitor().subscribe();
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // Connections on the wanted endpoint, learnt from their upgrades.
        let mut on_endpoint: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                record = live.recv() => {
                    let text = match record {
                        Ok(record) => {
                            if let (Some(wanted), Record::Upgrade(upgrade)) = (&endpoint, record.as_ref())
                                && upgrade.endpoint == *wanted
                            {
                                on_endpoint.insert(upgrade.connection.clone());
                            }
                            let wanted = connection.as_ref().is_none_or(|c| c == record.connection())
                                && (endpoint.is_none() || on_endpoint.contains(record.connection()));
                            if !wanted {
                                continue;
                            }
                            serde_json::to_string(record.as_ref()).unwrap_or_default()
                        }
                        Err(RecvError::Lagged(missed)) => json!({ "type": "lagged", "missed": missed }).to_string(),
                        Err(RecvError::Closed) => break,
                    };
                    match tokio::time::timeout(TAIL_SEND_TIMEOUT, ws.send(Message::text(text))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            tracing::info!(timeout = ?TAIL_SEND_TIMEOUT, "a live tail stopped reading; closed");
                            break;
                        }
                    }
                }
                incoming = ws.next() => match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        // The place goes back before the reader sees the close.
        drop(place);
        let _ = ws.close(None).await;
    });
    let mut response = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}
