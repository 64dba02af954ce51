//! What the gateway offers plugins: the `host` interface, and WASI with an
//! empty context (no files, no environment, no sockets, no arguments).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::types::{Header, LogLevel, UpgradeRequest};
use crate::bindings::v0_1::wsgate;
use crate::bindings::{v0_1, v0_2};
use crate::limiter::Limiter;
use crate::load::HostBudget;

/// Per-connection, per-plugin key-value state (the `state-*` host functions).
pub type StateMap = HashMap<String, Vec<u8>>;

/// Facts about one connection, shared by every plugin call on it.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Gateway-unique connection id.
    pub id: u64,
    /// The endpoint path the connection matched.
    pub endpoint_path: String,
    /// The endpoint's default MIME type.
    pub content_type: String,
    /// The client's upgrade request as the upgrade chain sees it (held
    /// once: each upgrade hook is lowered from it, and `request-headers`
    /// and `request-header` answer from it).
    pub request: UpgradeRequest,
    /// The upstream URL, set once the upgrade chain has routed.
    pub route_url: OnceLock<String>,
    /// Attributes any plugin on the connection may publish (`state.set-attribute`).
    pub attributes: Mutex<HashMap<String, String>>,
    /// When the connection must close (`session.expire-at`, the endpoint's `expire`).
    pub expiry: crate::Expiry,
    /// What `clocks.now-ms` answers while a recorded connection is
    /// replayed (Unix milliseconds, the recorded time); 0: the real clock.
    pub replay_clock_ms: AtomicU64,
}

impl Default for ConnectionInfo {
    fn default() -> Self {
        Self {
            id: 0,
            endpoint_path: String::new(),
            content_type: String::new(),
            request: UpgradeRequest {
                connection_id: 0,
                method: String::new(),
                path: String::new(),
                query: String::new(),
                headers: Vec::new(),
                client_addr: String::new(),
                tls: false,
            },
            route_url: OnceLock::new(),
            attributes: Mutex::default(),
            expiry: crate::Expiry::default(),
            replay_clock_ms: AtomicU64::new(0),
        }
    }
}

/// The context of calls into one plugin on behalf of one connection: the
/// connection's facts and this plugin's state for the connection.
#[derive(Debug, Default)]
pub struct CallContext {
    /// The connection.
    pub connection: Arc<ConnectionInfo>,
    /// This plugin's state on this connection.
    pub state: PluginState,
    /// What this plugin's calls on this connection have taken, in all,
    /// when they are `timed` (the pool's own clock readings: the chain's
    /// time in plugins costs no clock read of its own).
    pub spent: Duration,
    /// Every call is timed, because the connection's chain time is recorded
    /// (the monitor's time in filters, replay; a shadow's sample of
    /// messages, set per message); otherwise the pool times only some
    /// calls (see `pool::TIME_ONE_CALL_IN`), and `spent` is a partial sum.
    pub timed: bool,
}

impl CallContext {
    /// A context for `connection` with empty state, its calls timed by
    /// sample.
    pub fn new(connection: Arc<ConnectionInfo>) -> Self {
        Self {
            connection,
            state: PluginState::default(),
            spent: Duration::ZERO,
            timed: false,
        }
    }
}

/// One plugin's state on one connection, its size counted against the
/// plugin's per-connection budget and, through `held`, its gateway-wide one.
#[derive(Debug, Default)]
pub struct PluginState {
    values: StateMap,
    /// Bytes of keys and values.
    bytes: usize,
    /// The plugin's gateway-wide count these bytes are part of (set on the
    /// first write); given back when the state is dropped.
    held: Option<Arc<AtomicUsize>>,
    /// Places the plugin holds for the connection (`quota.hold`), given
    /// back when the state is dropped with the connection.
    holds: Vec<wsgate_quota::Hold>,
}

/// Places one plugin may hold for one connection (`quota.hold`).
pub const MAX_HOLDS_PER_CONNECTION: usize = 16;

impl PluginState {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.values.get(key)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Store `value` under `key` within `budget`, counting it in `held`
    /// (the plugin's gateway-wide count); on refusal nothing changes and
    /// the budget exceeded is named.
    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        budget: &HostBudget,
        held: &Arc<AtomicUsize>,
    ) -> Result<(), String> {
        let old = self.values.get(&key).map_or(0, |v| key.len() + v.len());
        let new = key.len() + value.len();
        if !self.values.contains_key(&key) && self.values.len() >= budget.state_keys {
            return Err(format!("max-state-keys ({})", budget.state_keys));
        }
        let bytes = self.bytes - old + new;
        if bytes > budget.state_bytes {
            return Err(format!(
                "max-state ({} bytes; this write would make {bytes})",
                budget.state_bytes
            ));
        }
        let grow = new.saturating_sub(old);
        if grow > 0 {
            let before = held.fetch_add(grow, Ordering::Relaxed);
            if before + grow > budget.state_total {
                held.fetch_sub(grow, Ordering::Relaxed);
                return Err(format!(
                    "max-state-total ({} bytes across all connections)",
                    budget.state_total
                ));
            }
        } else {
            held.fetch_sub(old - new, Ordering::Relaxed);
        }
        self.held.get_or_insert_with(|| held.clone());
        self.values.insert(key, value);
        self.bytes = bytes;
        Ok(())
    }

    /// Remove `key`, giving its bytes back.
    fn delete(&mut self, key: &str) {
        if let Some(value) = self.values.remove(key) {
            let freed = key.len() + value.len();
            self.bytes -= freed;
            if let Some(held) = &self.held {
                held.fetch_sub(freed, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for PluginState {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            held.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// Log lines and bytes per second for one plugin, across its instances:
/// two token buckets, each holding one second of its rate. Lines over
/// either rate are dropped and counted.
#[derive(Debug)]
pub struct LogLimiter {
    lines_rate: f64,
    bytes_rate: f64,
    /// Lines and bytes that may be written now, and when they were counted.
    buckets: Mutex<(f64, f64, Instant)>,
    dropped: Arc<AtomicU64>,
}

impl LogLimiter {
    /// `lines_rate` lines and `bytes_rate` bytes per second; drops are added
    /// to `dropped`.
    pub fn new(lines_rate: u32, bytes_rate: usize, dropped: Arc<AtomicU64>) -> Self {
        let lines_rate = f64::from(lines_rate);
        let bytes_rate = bytes_rate as f64;
        Self {
            lines_rate,
            bytes_rate,
            buckets: Mutex::new((lines_rate, bytes_rate, Instant::now())),
            dropped,
        }
    }

    /// Whether one more line of `bytes` may be written now.
    fn allow(&self, bytes: usize) -> bool {
        let bytes = bytes as f64;
        let allowed = self.buckets.lock().is_ok_and(|mut buckets| {
            let (lines, available, then) = &mut *buckets;
            let now = Instant::now();
            let elapsed = now.duration_since(*then).as_secs_f64();
            *lines = (*lines + elapsed * self.lines_rate).min(self.lines_rate);
            *available = (*available + elapsed * self.bytes_rate).min(self.bytes_rate);
            *then = now;
            if *lines >= 1.0 && *available >= bytes {
                *lines -= 1.0;
                *available -= bytes;
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

/// `message` cut to at most `limit` bytes (at a character boundary), the
/// cut marked with how many bytes it removed.
fn truncate_line(mut message: String, limit: usize) -> String {
    if message.len() <= limit {
        return message;
    }
    let mut cut = limit;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let removed = message.len() - cut;
    message.truncate(cut);
    message.push_str(&format!("… [{removed} bytes cut]"));
    message
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
    /// What the plugin may make the host hold.
    budget: HostBudget,
    /// State bytes all connections hold for the plugin.
    state_held: Arc<AtomicUsize>,
    /// The quotas the plugin counts in, and its scope there.
    quotas: Arc<wsgate_quota::Quotas>,
    quota_scope: Arc<wsgate_quota::QuotaScope>,
    /// The call in progress asked for more than its host budget allows:
    /// its failure is a budget fault.
    pub(crate) budget_exceeded: bool,
}

impl HostState {
    pub(crate) fn new(
        plugin_id: Arc<str>,
        config_json: Arc<str>,
        limits: Limiter,
        log_limiter: Arc<LogLimiter>,
        budget: HostBudget,
        state_held: Arc<AtomicUsize>,
        (quotas, quota_scope): (Arc<wsgate_quota::Quotas>, Arc<wsgate_quota::QuotaScope>),
    ) -> Self {
        Self {
            budget,
            state_held,
            quotas,
            quota_scope,
            budget_exceeded: false,
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
    v0_1::Filter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    v0_2::Filter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
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

    /// Fault the call: it asked for more than `budget` allows.
    fn over_budget(&mut self, budget: String) -> wasmtime::Error {
        self.budget_exceeded = true;
        wasmtime::Error::msg(format!("over its host budget: {budget}"))
    }
}

/// Publish attribute `name` = `value` on `attributes` within `budget`, or
/// name the budget it would exceed.
fn set_attribute(
    attributes: &mut HashMap<String, String>,
    name: String,
    value: String,
    budget: &HostBudget,
) -> Result<(), String> {
    if value.len() > budget.attribute_value {
        return Err(format!(
            "max-attribute-value ({} bytes)",
            budget.attribute_value
        ));
    }
    let old = attributes.get(&name).map(|v| name.len() + v.len());
    if old.is_none() && attributes.len() >= budget.attributes {
        return Err(format!("max-attributes ({})", budget.attributes));
    }
    let total: usize = attributes
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        - old.unwrap_or(0)
        + name.len()
        + value.len();
    if total > budget.attribute_bytes {
        return Err(format!(
            "max-attribute-bytes ({} bytes per connection)",
            budget.attribute_bytes
        ));
    }
    attributes.insert(name, value);
    Ok(())
}

impl wsgate::plugin::types::Host for HostState {}

impl wsgate::plugin::log::Host for HostState {
    fn write(&mut self, level: LogLevel, message: String) {
        let message = truncate_line(message, self.budget.log_line);
        if !self.log_limiter.allow(message.len()) {
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

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        let Some(call) = self.call.as_mut() else {
            return Ok(());
        };
        match call.state.set(key, value, &self.budget, &self.state_held) {
            Ok(()) => Ok(()),
            Err(budget) => Err(self.over_budget(budget)),
        }
    }

    fn delete(&mut self, key: String) {
        if let Some(call) = self.call.as_mut() {
            call.state.delete(&key);
        }
    }

    fn attribute(&mut self, name: String) -> Option<String> {
        let attributes = self.connection()?.attributes.lock().ok()?;
        attributes.get(&name).cloned()
    }

    fn set_attribute(&mut self, name: String, value: String) -> wasmtime::Result<()> {
        let refused = self.connection().and_then(|c| {
            let mut attributes = c.attributes.lock().unwrap_or_else(PoisonError::into_inner);
            set_attribute(&mut attributes, name, value, &self.budget).err()
        });
        match refused {
            Some(budget) => Err(self.over_budget(budget)),
            None => Ok(()),
        }
    }
}

impl wsgate::plugin::clocks::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        let replayed = self.call.as_ref().map_or(0, |call| {
            call.connection.replay_clock_ms.load(Ordering::Relaxed)
        });
        if replayed > 0 {
            return replayed;
        }
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
            .map(|c| c.request.headers.clone())
            .unwrap_or_default()
    }

    fn request_header(&mut self, name: String) -> Option<String> {
        self.connection()?
            .request
            .headers
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

/// Contract 0.2.0's interfaces shared with 0.1.0 do what 0.1.0's do.
mod v0_2_host {
    use super::{Header, HostState, LogLevel, MAX_HOLDS_PER_CONNECTION, v0_2, wsgate};
    use v0_2::wsgate::plugin::quota::Grant;

    impl v0_2::wsgate::plugin::log::Host for HostState {
        fn write(&mut self, level: LogLevel, message: String) {
            wsgate::plugin::log::Host::write(self, level, message);
        }
    }

    impl v0_2::wsgate::plugin::state::Host for HostState {
        fn get(&mut self, key: String) -> Option<Vec<u8>> {
            wsgate::plugin::state::Host::get(self, key)
        }
        fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
            wsgate::plugin::state::Host::set(self, key, value)
        }
        fn delete(&mut self, key: String) {
            wsgate::plugin::state::Host::delete(self, key);
        }
        fn attribute(&mut self, name: String) -> Option<String> {
            wsgate::plugin::state::Host::attribute(self, name)
        }
        fn set_attribute(&mut self, name: String, value: String) -> wasmtime::Result<()> {
            wsgate::plugin::state::Host::set_attribute(self, name, value)
        }
    }

    impl v0_2::wsgate::plugin::clocks::Host for HostState {
        fn now_ms(&mut self) -> u64 {
            wsgate::plugin::clocks::Host::now_ms(self)
        }
        fn monotonic_ns(&mut self) -> u64 {
            wsgate::plugin::clocks::Host::monotonic_ns(self)
        }
    }

    impl v0_2::wsgate::plugin::context::Host for HostState {
        fn connection_id(&mut self) -> u64 {
            wsgate::plugin::context::Host::connection_id(self)
        }
        fn endpoint_path(&mut self) -> String {
            wsgate::plugin::context::Host::endpoint_path(self)
        }
        fn content_type(&mut self) -> String {
            wsgate::plugin::context::Host::content_type(self)
        }
        fn request_headers(&mut self) -> Vec<Header> {
            wsgate::plugin::context::Host::request_headers(self)
        }
        fn request_header(&mut self, name: String) -> Option<String> {
            wsgate::plugin::context::Host::request_header(self, name)
        }
        fn route_url(&mut self) -> Option<String> {
            wsgate::plugin::context::Host::route_url(self)
        }
        fn config(&mut self) -> String {
            wsgate::plugin::context::Host::config(self)
        }
    }

    impl v0_2::wsgate::plugin::quota::Host for HostState {
        fn take(
            &mut self,
            key: String,
            units: u32,
            limit: u32,
            window_ms: u32,
        ) -> wasmtime::Result<Grant> {
            match self
                .quotas
                .take(&self.quota_scope, &key, units, limit, window_ms)
            {
                Ok(grant) => Ok(to_wit(grant)),
                Err(refused) => Err(self.over_budget(refused.to_string())),
            }
        }

        fn hold(&mut self, key: String, limit: u32) -> wasmtime::Result<Grant> {
            self.hold_place(&key, limit)
                .map_err(|budget| self.over_budget(budget))
        }
    }

    /// A quota's answer as the contract spells it.
    fn to_wit(grant: wsgate_quota::Grant) -> Grant {
        Grant {
            allowed: grant.allowed,
            remaining: grant.remaining,
            retry_after_ms: grant.retry_after_ms,
        }
    }

    impl HostState {
        /// `quota.hold`: a place for the connection of the call in progress.
        fn hold_place(&mut self, key: &str, limit: u32) -> Result<Grant, String> {
            let refused = Grant {
                allowed: false,
                remaining: 0,
                retry_after_ms: 0,
            };
            let Some(call) = self.call.as_mut() else {
                return Ok(refused);
            };
            if call.state.holds.len() >= MAX_HOLDS_PER_CONNECTION {
                return Err(format!(
                    "at most {MAX_HOLDS_PER_CONNECTION} quota places per connection"
                ));
            }
            let (grant, hold) = self
                .quotas
                .hold(&self.quota_scope, key, limit)
                .map_err(|refused| refused.to_string())?;
            call.state.holds.extend(hold);
            Ok(to_wit(grant))
        }
    }

    impl v0_2::wsgate::plugin::session::Host for HostState {
        fn expire_at(&mut self, unix_ms: u64) {
            if let Some(call) = &self.call {
                call.connection.expiry.set(&self.plugin_id, unix_ms);
            }
        }
        fn expires_at(&mut self) -> Option<u64> {
            self.connection()?.expiry.earliest()
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn long_log_lines_are_cut_at_a_char_boundary_and_marked() {
        assert_eq!(truncate_line("short".to_string(), 10), "short");
        let cut = truncate_line("ééééé".to_string(), 5);
        assert_eq!(cut, "éé… [6 bytes cut]");
    }

    #[test]
    fn the_log_byte_rate_drops_lines_past_one_second_of_bytes() {
        let dropped = Arc::new(AtomicU64::new(0));
        let limiter = LogLimiter::new(1000, 1000, dropped.clone());
        let allowed = (0..20).filter(|_| limiter.allow(100)).count();
        assert_eq!(allowed, 10);
        assert_eq!(dropped.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn state_within_its_budgets_is_counted_and_given_back() {
        let budget = HostBudget {
            state_bytes: 10,
            state_keys: 2,
            state_total: 12,
            attributes: 1,
            attribute_bytes: 8,
            attribute_value: 4,
            log_line: 100,
            log_bytes_rate: 100,
            messages: 1,
        };
        let held = Arc::new(AtomicUsize::new(0));
        let mut state = PluginState::default();
        assert_eq!(state.set("a".into(), vec![0; 4], &budget, &held), Ok(()));
        assert!(state.set("b".into(), vec![0; 5], &budget, &held).is_err());
        assert!(state.set("b".into(), vec![0; 1], &budget, &held).is_ok());
        assert!(state.set("c".into(), Vec::new(), &budget, &held).is_err());
        assert_eq!((state.bytes(), held.load(Ordering::Relaxed)), (7, 7));
        let mut other = PluginState::default();
        assert!(other.set("d".into(), vec![0; 5], &budget, &held).is_err());
        assert!(other.set("d".into(), vec![0; 4], &budget, &held).is_ok());
        state.delete("a");
        assert_eq!(held.load(Ordering::Relaxed), 7);
        drop((state, other));
        assert_eq!(held.load(Ordering::Relaxed), 0);

        let mut attributes = HashMap::new();
        let set = |a: &mut HashMap<String, String>, n: &str, v: &str| {
            set_attribute(a, n.into(), v.into(), &budget)
        };
        assert!(set(&mut attributes, "n", "12345").is_err());
        assert!(set(&mut attributes, "n", "1234").is_ok());
        assert!(set(&mut attributes, "m", "1").is_err());
        assert!(set(&mut attributes, "nnnn", "1234").is_err());
    }
}
