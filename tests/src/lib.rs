//! End-to-end test support: plugins built from source, a gateway on port 0,
//! upstream servers the tests control, and WebSocket clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err,
    missing_docs
)]

pub mod authority;
pub mod tls;
pub mod webdriver;

pub use authority::Authority;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsgate_proxy::Gateway;
use wsgate_runtime::Runtime;

/// A client-side WebSocket.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// A server-side WebSocket held by a test upstream.
pub type ServerWs = WebSocketStream<TcpStream>;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Run `cargo build --release --target wasm32-wasip2` on the plugins
/// workspace with `extra` arguments, into `target_dir`; `what` names the
/// build in a failure. Returns the directory of the `.wasm` files.
fn build_plugins(extra: &[&str], target_dir: &Path, what: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .args(extra)
        .arg("--manifest-path")
        .arg(repo_root().join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap_or_else(|e| panic!("run cargo to build {what}: {e}"));
    assert!(
        output.status.success(),
        "building {what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target_dir.join("wasm32-wasip2/release")
}

/// Build every plugin in `plugins/` (once per process) and return the
/// directory holding the `.wasm` files.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_plugins(&[], &repo_root().join("plugins/target"), "the plugins"))
}

/// The plugins kept built against the frozen contract `wsgate:plugin@0.1.0`
/// (the SDK's `contract-0-1` feature), to prove 0.1.0 plugins keep loading
/// beside 0.2.0 ones.
pub const CONTRACT_0_1_PLUGINS: [&str; 2] = ["passthrough", "static-router"];

/// Build [`CONTRACT_0_1_PLUGINS`] against 0.1.0 (once per process, in a
/// target directory of their own) and return the component of `name`.
pub fn contract_0_1_plugin_path(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let mut extra = vec!["--features", "wsgate-plugin-sdk/contract-0-1"];
        for plugin in CONTRACT_0_1_PLUGINS {
            extra.extend(["-p", plugin]);
        }
        let target = repo_root().join("plugins/target/contract-0.1");
        build_plugins(&extra, &target, "the 0.1.0 plugins")
    });
    dir.join(format!("{}.wasm", name.replace('-', "_")))
}

/// Build the plugins written in JavaScript, Python and C
/// (`scripts/build-language-plugins`, once per process) and return the
/// component of the one named `name` in its manifest (e.g. `json-mask-js`).
pub fn language_plugin_path(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = repo_root();
        let output = Command::new(root.join("scripts/build-language-plugins"))
            .output()
            .expect("run scripts/build-language-plugins");
        assert!(
            output.status.success(),
            "building the JavaScript, Python and C plugins failed \
             (scripts/setup-languages installs their tools):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        root.join("plugins/target/languages")
    });
    dir.join(format!("{name}.wasm"))
}

/// A plugin runtime whose precompiled artifacts persist in `target/`, for
/// tests of large components (JavaScript, Python) that take seconds to compile.
pub fn cached_runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let dir = repo_root().join("target/test-plugin-cache");
        std::fs::create_dir_all(&dir).expect("create the test plugin cache");
        Runtime::with_cache(Some(dir)).expect("start the plugin runtime")
    })
}

/// The `.wasm` path of plugin crate `name` (e.g. `static-router`).
pub fn plugin_path(name: &str) -> PathBuf {
    plugin_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// A `[[plugin]]` block declaring plugin crate `crate_name` as `name@version`,
/// granted every capability (tests of grants write their own blocks).
pub fn named_plugin_block(name: &str, version: &str, crate_name: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\nversion = \"{version}\"\npath = \"{}\"\n\
         grants = [\"log\", \"state\", \"clocks\", \"context\", \"random\", \"quota\"]\n\n",
        plugin_path(crate_name).display()
    )
}

/// Every plugin in the repository as (name, version, crate); the two test
/// taggers are one plugin, `tagger`, at two versions.
const PLUGINS: [(&str, &str, &str); 23] = [
    ("static-router", "1.0.0", "static-router"),
    ("dynamic-router", "1.0.0", "dynamic-router"),
    ("connect-to-url", "1.0.0", "connect-to-url"),
    ("json-transform", "1.0.0", "json-transform"),
    ("json-mask", "1.0.0", "json-mask"),
    ("test-verdicts", "0.1.0", "test-verdicts"),
    ("test-faults", "0.1.0", "test-faults"),
    ("passthrough", "1.0.0", "passthrough"),
    ("api-key", "1.1.0", "api-key"),
    ("basic-auth", "1.1.0", "basic-auth"),
    ("ip-filter", "1.0.0", "ip-filter"),
    ("header-rewrite", "1.0.0", "header-rewrite"),
    ("jwt", "1.1.0", "jwt"),
    ("size-limit", "1.0.0", "size-limit"),
    ("rate-limit", "1.1.0", "rate-limit"),
    ("key-limit", "1.0.0", "key-limit"),
    ("message-filter", "1.0.0", "message-filter"),
    ("envelope", "1.0.0", "envelope"),
    ("redact", "1.0.0", "redact"),
    ("text-replace", "1.0.0", "text-replace"),
    ("json-schema", "1.0.0", "json-schema"),
    ("tagger", "1.0.0", "tagger-v1"),
    ("tagger", "2.0.0", "tagger-v2"),
];

/// `[[plugin]]` blocks for every plugin in the repository.
pub fn all_plugins() -> String {
    PLUGINS
        .iter()
        .map(|(name, version, krate)| named_plugin_block(name, version, krate))
        .collect()
}

/// A whole configuration: the gateway on port 0, `body`, and a `[[plugin]]`
/// block for each plugin `body` references (so each test compiles only
/// the plugins it uses).
pub fn config_text(body: &str) -> String {
    config_with_gateway("", body)
}

/// [`config_text`] with extra lines (`gateway_lines`) in the `[gateway]` table.
pub fn config_with_gateway(gateway_lines: &str, body: &str) -> String {
    let plugins: String = PLUGINS
        .iter()
        .filter(|(name, version, _)| body.contains(&format!("\"{name}@{version}\"")))
        .map(|(name, version, krate)| named_plugin_block(name, version, krate))
        .collect();
    format!("[gateway]\nlisten = \"127.0.0.1:0\"\n{gateway_lines}\n{plugins}{body}")
}

/// Parse a whole configuration text.
pub fn parse_config(text: &str) -> wsgate_config::Config {
    wsgate_config::parse(text, Path::new("test-config.toml"))
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"))
}

/// Log to the test's output when `RUST_LOG` is set.
pub fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// A shared plugin runtime for a test process.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new().expect("start the plugin runtime"))
}

/// Start a gateway on `127.0.0.1:0` whose configuration is `body` (the
/// `[gateway]` table is added) with every plugin declared.
pub async fn start_gateway(body: &str) -> Gateway {
    init_logging();
    Gateway::start(parse_config(&config_text(body)), runtime())
        .await
        .unwrap_or_else(|e| panic!("gateway failed to start: {e}"))
}

/// An endpoint at `path` routed by static-router to `upstream`, with extra
/// TOML lines (chains, limits) appended to the endpoint table.
pub fn endpoint(path: &str, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"{path}\"\nallowed-upstreams = [\"ws://{upstream}\"]\n{extra}\n\
         [[endpoint.upgrade]]\nplugin = \"static-router@1.0.0\"\nconfig = {{ url = \"ws://{upstream}/\" }}\n\n"
    )
}

/// An endpoint at `path` in front of `upstream` with `tagger@{version}` on
/// its client messages (the tests' plugin whose version shows in each reply).
pub fn tagged_endpoint(path: &str, upstream: SocketAddr, version: &str) -> String {
    endpoint(
        path,
        upstream,
        &format!("client-messages = [{{ plugin = \"tagger@{version}\" }}]"),
    )
}

/// Start the product's echo server on port 0.
pub async fn start_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // Lives until the test process ends.
    tokio::spawn(wsgate_proxy::echo::serve(
        listener,
        CancellationToken::new(),
        None,
    ));
    address
}

/// One connection accepted by a [`TestUpstream`].
pub struct UpstreamConnection {
    /// The upgrade request's headers, as the upstream saw them.
    pub headers: Vec<(String, String)>,
    /// The request path and query.
    pub uri: String,
    /// The WebSocket, for the test to drive.
    pub ws: ServerWs,
}

/// An upstream WebSocket server whose connections are handed to the test.
pub struct TestUpstream {
    pub address: SocketAddr,
    connections: mpsc::UnboundedReceiver<UpstreamConnection>,
}

impl TestUpstream {
    /// Listen on port 0; accepts the first offered subprotocol, if any.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (sender, connections) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let mut seen = (Vec::new(), String::new());
                    let callback = |request: &Request, response: Response| {
                        seen.0 = request
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                            })
                            .collect();
                        seen.1 = request.uri().to_string();
                        Ok(response)
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                        let _ = sender.send(UpstreamConnection {
                            headers: seen.0,
                            uri: seen.1,
                            ws,
                        });
                    }
                });
            }
        });
        Self {
            address,
            connections,
        }
    }

    /// The next connection the gateway opens.
    pub async fn accept(&mut self) -> UpstreamConnection {
        self.connections
            .recv()
            .await
            .expect("upstream listener alive")
    }
}

impl UpstreamConnection {
    /// The first value of a request header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A TCP listener that accepts connections and never answers.
pub async fn start_silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    address
}

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    address
}

/// Connect a client to `path` on `gateway`.
pub async fn connect(gateway: &Gateway, path: &str) -> Client {
    let url = format!("ws://{}{path}", gateway.local_addr());
    tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {path}: {e}"))
        .0
}

/// An upgrade refused: its status, `Retry-After` and body.
#[derive(Debug)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body, as text.
    pub body: String,
}

/// An upgrade to `ws://{address}{path}` as `user` (the `x-user` header; none
/// when empty): the client, or the refusal.
pub async fn upgrade_as(address: &str, path: &str, user: &str) -> Result<Client, Refusal> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{address}{path}")
        .into_client_request()
        .unwrap();
    if !user.is_empty() {
        request
            .headers_mut()
            .insert("x-user", user.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((client, _)) => Ok(client),
        Err(WsError::Http(response)) => Err(Refusal {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned(),
        }),
        Err(other) => panic!("unexpected upgrade error: {other}"),
    }
}

/// Try an upgrade with extra headers; the HTTP status and body when refused.
pub async fn try_upgrade(
    gateway: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    (u16, String),
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}{path}", gateway.local_addr());
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => Ok(ok),
        Err(WsError::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(other) => panic!("unexpected upgrade error: {other}"),
    }
}

/// The next data message (text or binary), skipping pings and pongs.
pub async fn next_data<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return message,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The next text message.
pub async fn next_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match next_data(ws).await {
        Message::Text(text) => text.as_str().to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Read until the peer's close frame, then finish the close handshake
/// (our reply is flushed while draining); the peer's code and reason.
pub async fn expect_close<S>(ws: &mut WebSocketStream<S>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => {
                while let Some(Ok(_)) = ws.next().await {}
                return frame.map_or((1005, String::new()), |f: CloseFrame| {
                    (u16::from(f.code), f.reason.as_str().to_string())
                });
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Send a text message.
pub async fn send_text<S>(ws: &mut WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
}

/// Serve `gateway`'s admin API on port 0; its address and the token that stops it.
pub async fn start_admin(
    gateway: &Gateway,
    token: Option<&str>,
) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(wsgate_admin::serve(
        listener,
        gateway.clone(),
        token.map(str::to_string),
        stop.clone(),
    ));
    (address, stop)
}

/// A minimal HTTP/1.1 request to an admin listener; status and body.
pub async fn admin_http(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(address).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// `GET` an admin JSON route (no token).
pub async fn admin_json(address: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = admin_http(address, "GET", path, None, "").await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Send `size`-byte binary messages on `ws` as fast as the peer takes
/// them until it closes us; its close frame and how many messages went out.
/// (For a gateway whose other side stopped reading.)
pub async fn flood_until_closed(ws: ServerWs, size: usize) -> (CloseFrame, usize) {
    let (mut sink, mut stream) = ws.split();
    let sender = tokio::spawn(async move {
        let mut sent = 0usize;
        while sink.send(Message::binary(vec![7u8; size])).await.is_ok() {
            sent += 1;
        }
        sent
    });
    let close = loop {
        match stream.next().await {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    drop(stream);
    (close, sender.await.expect("the sender task"))
}
