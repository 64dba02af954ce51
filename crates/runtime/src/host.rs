//! What the gateway offers plugins: the `host` interface, and WASI with an
//! empty context (no files, no environment, no sockets, no arguments).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::types::{Header, LogLevel};
use crate::bindings::{Filter, wsgate};
use crate::limiter::Limiter;

/// Per-connection, per-plugin key-value state (the `state-*` host functions).
pub type StateMap = HashMap<String, Vec<u8>>;

/// Facts about one connection, shared by every plugin call on it.
#[derive(Debug, Default)]
pub struct ConnectionInfo {
    /// Gateway-unique connection id.
    pub id: u64,
    /// The endpoint path the connection matched.
    pub endpoint_path: String,
    /// The endpoint's default MIME type.
    pub content_type: String,
    /// The client's upgrade request headers.
    pub request_headers: Vec<Header>,
    /// The upstream URL, set once the upgrade chain has routed.
    pub route_url: OnceLock<String>,
    /// Attributes any plugin on the connection may publish (`state.set-attribute`).
    pub attributes: Mutex<HashMap<String, String>>,
}

/// The context of calls into one plugin on behalf of one connection: the
/// connection's facts and this plugin's state for the connection.
#[derive(Debug, Default)]
pub struct CallContext {
    /// The connection.
    pub connection: Arc<ConnectionInfo>,
    /// This plugin's state on this connection.
    pub state: StateMap,
}

impl CallContext {
    /// A context for `connection` with empty state.
    pub fn new(connection: Arc<ConnectionInfo>) -> Self {
        Self {
            connection,
            state: StateMap::new(),
        }
    }
}

/// Log lines per second for one plugin, across its instances: a token
/// bucket holding one second of lines. Lines over the rate are dropped and
/// counted.
#[derive(Debug)]
pub struct LogLimiter {
    rate: f64,
    bucket: Mutex<(f64, Instant)>,
    dropped: Arc<AtomicU64>,
}

impl LogLimiter {
    /// `rate` lines per second; drops are added to `dropped`.
    pub fn new(rate: u32, dropped: Arc<AtomicU64>) -> Self {
        let rate = f64::from(rate);
        Self {
            rate,
            bucket: Mutex::new((rate, Instant::now())),
            dropped,
        }
    }

    /// Whether one more line may be written now.
    fn allow(&self) -> bool {
        let allowed = self.bucket.lock().is_ok_and(|mut bucket| {
            let now = Instant::now();
            let refill = now.duration_since(bucket.1).as_secs_f64() * self.rate;
            bucket.0 = (bucket.0 + refill).min(self.rate);
            bucket.1 = now;
            if bucket.0 >= 1.0 {
                bucket.0 -= 1.0;
                true
            } else {
                false
            }
        });
        if !allowed {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }
}

/// The data of one instance's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limiter,
    pub(crate) plugin_id: Arc<str>,
    pub(crate) config_json: Arc<str>,
    /// The call in progress; `None` during `configure`.
    pub(crate) call: Option<CallContext>,
    log_limiter: Arc<LogLimiter>,
}

impl HostState {
    pub(crate) fn new(
        plugin_id: Arc<str>,
        config_json: Arc<str>,
        limits: Limiter,
        log_limiter: Arc<LogLimiter>,
    ) -> Self {
        Self {
            // Nothing ambient: no preopens, env, args, sockets or stdin.
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits,
            plugin_id,
            config_json,
            call: None,
            log_limiter,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The version of wasmtime-wasi's p2 interfaces; guests importing any 0.2.x
/// version link against them (semver-compatible lookup).
const WASI_VERSION: &str = "0.2.12";

/// WASI functions that would hand a plugin a stream, a pollable or a socket.
/// They are replaced by traps: nothing outside is reachable through them,
/// and wasmtime-wasi's synchronous streams and polling block on a nested
/// tokio runtime, which the gateway's worker threads must never do. Without
/// one of these handles no blocking WASI function can be called at all.
const WITHHELD: [(&str, &str, &str); 10] = [
    (
        "wasi:cli/stdin",
        "get-stdin",
        "stdin is not available to plugins",
    ),
    (
        "wasi:cli/stdout",
        "get-stdout",
        "stdout is not available to plugins; use the log interface",
    ),
    (
        "wasi:cli/stderr",
        "get-stderr",
        "stderr is not available to plugins; use the log interface",
    ),
    (
        "wasi:clocks/monotonic-clock",
        "subscribe-duration",
        "timers are not available to plugins",
    ),
    (
        "wasi:clocks/monotonic-clock",
        "subscribe-instant",
        "timers are not available to plugins",
    ),
    (
        "wasi:filesystem/preopens",
        "get-directories",
        "plugins have no files",
    ),
    (
        "wasi:sockets/instance-network",
        "instance-network",
        "plugins have no network",
    ),
    (
        "wasi:sockets/tcp-create-socket",
        "create-tcp-socket",
        "plugins have no network",
    ),
    (
        "wasi:sockets/udp-create-socket",
        "create-udp-socket",
        "plugins have no network",
    ),
    (
        "wasi:sockets/ip-name-lookup",
        "resolve-addresses",
        "plugins have no network",
    ),
];

/// The linker every plugin is instantiated with: the wsgate host interfaces
/// and WASI p2 with an empty context (no preopens, environment, arguments or
/// network), minus the functions in [`WITHHELD`].
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    linker.allow_shadowing(true);
    for (interface, function, reason) in WITHHELD {
        let mut instance = linker.instance(&format!("{interface}@{WASI_VERSION}"))?;
        instance.func_new(function, move |_, _, _, _| {
            Err(wasmtime::Error::msg(reason))
        })?;
    }
    linker.allow_shadowing(false);
    Filter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    Ok(linker)
}

fn monotonic_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl HostState {
    fn connection(&self) -> Option<&ConnectionInfo> {
        self.call.as_ref().map(|call| &*call.connection)
    }
}

impl wsgate::plugin::types::Host for HostState {}

impl wsgate::plugin::log::Host for HostState {
    fn write(&mut self, level: LogLevel, message: String) {
        if !self.log_limiter.allow() {
            return;
        }
        let plugin = &*self.plugin_id;
        let connection = self.connection().map_or(0, |c| c.id);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, connection, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, connection, "{message}"),
            LogLevel::Info => tracing::info!(plugin, connection, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, connection, "{message}"),
            LogLevel::Error => tracing::error!(plugin, connection, "{message}"),
        }
    }
}

impl wsgate::plugin::state::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.call.as_ref()?.state.get(&key).cloned()
    }

    fn set(&mut self, key: String, value: Vec<u8>) {
        if let Some(call) = self.call.as_mut() {
            call.state.insert(key, value);
        }
    }

    fn delete(&mut self, key: String) {
        if let Some(call) = self.call.as_mut() {
            call.state.remove(&key);
        }
    }

    fn attribute(&mut self, name: String) -> Option<String> {
        let attributes = self.connection()?.attributes.lock().ok()?;
        attributes.get(&name).cloned()
    }

    fn set_attribute(&mut self, name: String, value: String) {
        if let Some(mut attributes) = self.connection().and_then(|c| c.attributes.lock().ok()) {
            attributes.insert(name, value);
        }
    }
}

impl wsgate::plugin::clocks::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&mut self) -> u64 {
        u64::try_from(monotonic_origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl wsgate::plugin::context::Host for HostState {
    fn connection_id(&mut self) -> u64 {
        self.connection().map_or(0, |c| c.id)
    }

    fn endpoint_path(&mut self) -> String {
        self.connection()
            .map(|c| c.endpoint_path.clone())
            .unwrap_or_default()
    }

    fn content_type(&mut self) -> String {
        self.connection()
            .map(|c| c.content_type.clone())
            .unwrap_or_default()
    }

    fn request_headers(&mut self) -> Vec<Header> {
        self.connection()
            .map(|c| c.request_headers.clone())
            .unwrap_or_default()
    }

    fn request_header(&mut self, name: String) -> Option<String> {
        self.connection()?
            .request_headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(&name))
            .map(|h| h.value.clone())
    }

    fn route_url(&mut self) -> Option<String> {
        self.connection()?.route_url.get().cloned()
    }

    fn config(&mut self) -> String {
        self.config_json.to_string()
    }
}
