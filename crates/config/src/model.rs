//! The configuration's types, as written in `host-config.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{ConfigError, SourceMap};
use crate::units::{ByteSize, HumanDuration};

/// A whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The listener and gateway-wide settings.
    pub gateway: Gateway,
    /// The admin listener (deploys, generations, health); none when absent.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Plugin signatures: trusted keys and whether signatures are required.
    #[serde(default)]
    pub signing: Signing,
    /// The traffic monitor's storage; endpoints choose what is recorded.
    #[serde(default)]
    pub monitor: MonitorSettings,
    /// What replicas of the gateway share (quotas, through Redis).
    #[serde(default)]
    pub cluster: Cluster,
    /// OpenTelemetry traces exported over OTLP; off unless an endpoint is set.
    #[serde(default)]
    pub tracing: TracingSettings,
    /// Echo WebSocket servers the gateway runs in-process (for demos and tests).
    #[serde(default, rename = "echo-server")]
    pub echo_servers: Vec<EchoServer>,
    /// The plugin components the endpoints may use.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginDecl>,
    /// Per-upstream limits and timeouts.
    #[serde(default, rename = "remote-host")]
    pub remote_hosts: Vec<RemoteHost>,
    /// How to reach the OCI registries that `[[plugin]] source` names.
    #[serde(default, rename = "registry")]
    pub registries: Vec<Registry>,
    /// The WebSocket endpoints, matched by path.
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<Endpoint>,
    /// Where the configuration came from, for error positions.
    #[serde(skip)]
    pub source: SourceMap,
    /// Problems that do not stop the configuration from loading (deprecated
    /// keys), in file order; the caller shows them as warnings.
    #[serde(skip)]
    pub warnings: Vec<ConfigError>,
}

/// Gateway-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Gateway {
    /// Address of the client-facing HTTP/WebSocket listener.
    pub listen: SocketAddr,
    /// Time a client has to send a complete upgrade request.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Largest upgrade request head (request line and headers); larger
    /// ones get 431. At least 8 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Spanned<ByteSize>,
    /// Most header fields in a request head; more get 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: Spanned<u32>,
    /// Most client connections accepted but not yet answered (TLS and
    /// request head still arriving, upgrade chain, upstream connect), all
    /// addresses together; over it a new connection is closed at once.
    #[serde(default = "default_max_pending_upgrades")]
    pub max_pending_upgrades: Spanned<u32>,
    /// Most such connections from one client address; over it a new
    /// connection from that address is closed at once.
    #[serde(default = "default_max_pending_upgrades_per_ip")]
    pub max_pending_upgrades_per_ip: Spanned<u32>,
    /// Threads that serve connections, each with a single-threaded
    /// scheduler and a listening socket of its own (`SO_REUSEPORT`: the
    /// kernel deals connections out among them); a connection stays on the
    /// worker that accepted it. `0` (the default): one per core the process
    /// may run on; at most 1024. Read at start; a deploy that changes it
    /// takes effect at restart.
    #[serde(default = "default_workers")]
    pub workers: Spanned<u32>,
    /// Time open connections get to finish their close handshake at shutdown
    /// (and, in a drain, after the drain window).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    /// How often `wsgate run` looks at its configuration file and the files
    /// it names (plugins, TLS identity); a change that stays the same for
    /// one more look is deployed with the checks of `wsgate deploy` (a
    /// refused one is logged and changes nothing). `0` (the default): never.
    /// Read at start.
    #[serde(default = "default_watch_config")]
    pub watch_config: HumanDuration,
    /// In a drain (SIGTERM, `POST /api/drain`): how long the gateway keeps
    /// accepting after `/readyz` turned 503, while load balancers notice.
    #[serde(default = "default_drain_grace")]
    pub drain_grace: HumanDuration,
    /// In a drain, after the grace: the time over which connections are
    /// closed with 1012 (Service Restart), each at its own instant, so that
    /// clients do not all reconnect at once.
    #[serde(default = "default_drain_window")]
    pub drain_window: HumanDuration,
    /// Read buffer per WebSocket stream while it reads (tungstenite's
    /// default, 128 KiB, costs too much memory per connection; 1 KiB holds a
    /// small message, and larger ones are read ahead 65 KiB at a time).
    #[serde(default = "default_read_buffer")]
    pub read_buffer_size: ByteSize,
    /// Directory for precompiled plugins, keyed by content digest and engine;
    /// relative to the configuration file. None: compile at every start.
    /// It must be writable only by the gateway's user.
    #[serde(default)]
    pub plugin_cache_dir: Option<PathBuf>,
    /// Most proxied connections open at once, all endpoints together;
    /// upgrades over it get 503. None: unlimited.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Serve `wss://`: the listener's certificate chain and key (PEM).
    /// None: plain `ws://`.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// The plugin store (`wsgate plugin add`) that `[[plugin]]` entries
    /// without a `path` load from; relative to the configuration file.
    #[serde(default)]
    pub plugin_store: Option<PathBuf>,
    /// Most the host may hold on all plugins' behalf (their state, all
    /// connections together): the ceiling their `max-state-total` budgets
    /// share.
    #[serde(default = "default_plugin_host_memory")]
    pub plugin_host_memory: ByteSize,
}

/// The listener's TLS identity (paths relative to the configuration file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerTls {
    /// The certificate chain, leaf first (PEM).
    pub certificate: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The admin listener: deploys, generations, health, metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Admin {
    /// Address to listen on; loopback unless a `token` is set. Applied at
    /// start; a deploy cannot move it.
    pub listen: Spanned<SocketAddr>,
    /// Bearer token required on every admin request except `/healthz` and `/readyz`.
    #[serde(default)]
    pub token: Option<String>,
    /// Most admin connections open at once; over it a new connection is
    /// closed at once.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: Spanned<u32>,
    /// Most live tails (`/api/tail`) open at once; over it: 503.
    #[serde(default = "default_admin_max_tails")]
    pub max_tails: Spanned<u32>,
}

impl Admin {
    /// Most admin connections open at once when no `[admin]` table says.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 32;
    /// Most live tails open at once when no `[admin]` table says.
    pub const DEFAULT_MAX_TAILS: u32 = 8;
}

/// Plugin signature policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Signing {
    /// Refuse every plugin that is not signed by a trusted key.
    #[serde(default)]
    pub require_signed: bool,
    /// Public keys whose signatures are trusted.
    #[serde(default)]
    pub trusted_keys: Vec<TrustedKey>,
}

/// A trusted ed25519 public key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrustedKey {
    /// The key's name, as written in signature files.
    pub name: String,
    /// The 32-byte public key, base64.
    pub public_key: String,
}

/// An echo WebSocket server run inside the gateway process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EchoServer {
    /// Address to listen on.
    pub listen: SocketAddr,
}

/// A plugin component and its sandbox budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginDecl {
    /// Plugin name, referenced by chain entries as `name@version`.
    pub name: Spanned<String>,
    /// Plugin version, referenced by chain entries as `name@version`.
    pub version: Spanned<String>,
    /// Path of the component (`.wasm`), relative to the configuration file.
    /// Absent: the component comes from the gateway's `plugin-store`, by
    /// `digest`, and the store's index must list `name@version` with it.
    #[serde(default)]
    pub path: PathBuf,
    /// Where the component is published: `oci://HOST[:PORT]/REPOSITORY:TAG`
    /// (or `@sha256:…` for a manifest digest). It is pulled into the
    /// `plugin-store` once, when the store does not hold `digest` yet.
    #[serde(default)]
    pub source: Option<Spanned<String>>,
    /// The plugin store's index entry for `name@version`, when the component
    /// comes from the store (set while loading the configuration).
    #[serde(skip)]
    pub store_entry: Option<PathBuf>,
    /// Expected content digest, `sha256:<64 hex digits>`; loading fails on mismatch.
    #[serde(default)]
    pub digest: Option<Spanned<String>>,
    /// Longest time one call into the plugin may take.
    #[serde(default = "default_deadline")]
    pub deadline: HumanDuration,
    /// Largest linear memory an instance may grow to.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// Detached signature file (default: the component's path plus `.sig`, if present).
    #[serde(default)]
    pub signature: Option<PathBuf>,
    /// Host capabilities the plugin may import; nothing is granted by default.
    #[serde(default)]
    pub grants: Vec<Capability>,
    /// Largest output of one call (the messages, headers and body of its verdict).
    #[serde(default = "default_max_output")]
    pub max_output: ByteSize,
    /// Log lines per second the plugin may write (all its instances together);
    /// lines over the rate are dropped and counted.
    #[serde(default = "default_log_rate")]
    pub log_rate: u32,
    /// Log bytes per second the plugin may write (all its instances
    /// together, after truncation); lines over the rate are dropped and counted.
    #[serde(default = "default_log_bytes_rate")]
    pub log_bytes_rate: ByteSize,
    /// Longest log line; longer lines are cut there and marked.
    #[serde(default = "default_max_log_line")]
    pub max_log_line: ByteSize,
    /// Most state one connection may hold for the plugin (keys and values).
    #[serde(default = "default_max_state")]
    pub max_state: ByteSize,
    /// Most state keys one connection may hold for the plugin.
    #[serde(default = "default_max_state_keys")]
    pub max_state_keys: u32,
    /// Most state all connections together may hold for the plugin. Unset:
    /// an equal share of `[gateway] plugin-host-memory` among the plugins
    /// granted `state` (filled in when the configuration is loaded).
    #[serde(default)]
    pub max_state_total: Option<ByteSize>,
    /// Most attributes a connection may carry when this plugin publishes one.
    #[serde(default = "default_max_attributes")]
    pub max_attributes: u32,
    /// Most bytes (names and values) of a connection's attributes when this
    /// plugin publishes one.
    #[serde(default = "default_max_attribute_bytes")]
    pub max_attribute_bytes: ByteSize,
    /// Longest attribute value this plugin may publish.
    #[serde(default = "default_max_attribute_value")]
    pub max_attribute_value: ByteSize,
    /// Most messages one verdict may carry (`replace`, `reply`).
    #[serde(default = "default_max_messages")]
    pub max_messages: u32,
    /// Longest quota bucket key (`quota.take`).
    #[serde(default = "default_max_quota_key")]
    pub max_quota_key: ByteSize,
    /// Most quota buckets the plugin may hold at once (all connections).
    #[serde(default = "default_max_quota_keys")]
    pub max_quota_keys: u32,
    /// While the plugin's recent calls (a moving average) take longer
    /// than this, its calls run on its offload threads instead of the I/O
    /// workers. At or above `deadline`: never.
    #[serde(default = "default_offload_above")]
    pub offload_above: HumanDuration,
    /// Threads that run the plugin's calls while they are offloaded (its
    /// concurrency off the I/O workers), started on the first offloaded call.
    #[serde(default = "default_offload_threads")]
    pub offload_threads: u32,
    /// Offloaded calls that may wait for a thread; one more is shed (fault
    /// kind `shed`, the chain entry's fail policy applies).
    #[serde(default = "default_offload_queue")]
    pub offload_queue: u32,
}

/// What the replicas of a gateway share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cluster {
    /// Redis that holds the quotas (`redis://[user:password@]host:port/db`,
    /// `rediss://` for TLS, `redis+unix:///path`). None: quotas count in
    /// this process only.
    #[serde(default)]
    pub redis: Option<Spanned<String>>,
    /// How often local quota counts are reconciled with Redis.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: HumanDuration,
    /// Longest a reconciliation may wait for Redis before it counts as
    /// unreachable (quotas fall back to local counts until it answers).
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout: HumanDuration,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            redis: None,
            sync_interval: default_sync_interval(),
            redis_timeout: default_redis_timeout(),
        }
    }
}

/// A host capability a plugin must be granted before it may import it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `wsgate:plugin/log`: write to the gateway's log.
    Log,
    /// `wsgate:plugin/state`: per-connection state and connection attributes.
    State,
    /// `wsgate:plugin/clocks` and `wasi:clocks`: wall-clock and monotonic time.
    Clocks,
    /// `wsgate:plugin/context`: the connection context and the plugin's config.
    Context,
    /// `wasi:random/random`: cryptographic randomness.
    Random,
    /// `wsgate:plugin/quota` (0.2.0): count against quotas shared by every
    /// connection and, with `[cluster] redis`, every replica.
    Quota,
}

impl Capability {
    /// The name written in `grants`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::State => "state",
            Self::Clocks => "clocks",
            Self::Context => "context",
            Self::Random => "random",
            Self::Quota => "quota",
        }
    }

    /// The capability an import needs, if any. Imports that reach nothing
    /// (WASI streams and CLI functions with an empty context, hash seeds) need none.
    pub fn of_import(name: &str) -> Option<Self> {
        let interface = name.split('@').next().unwrap_or(name);
        match interface {
            "wsgate:plugin/log" => Some(Self::Log),
            "wsgate:plugin/state" => Some(Self::State),
            "wsgate:plugin/clocks" => Some(Self::Clocks),
            "wsgate:plugin/context" => Some(Self::Context),
            "wasi:random/random" => Some(Self::Random),
            "wsgate:plugin/quota" => Some(Self::Quota),
            _ if interface.starts_with("wasi:clocks/") => Some(Self::Clocks),
            _ => None,
        }
    }
}

impl PluginDecl {
    /// `name@version`, as chain entries and errors write it.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name.get_ref(), self.version.get_ref())
    }
}

/// Limits and timeouts for connections to one upstream `host:port`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RemoteHost {
    /// `host:port` of the upstream, as in the route URL (default ports 80/443 spelled out).
    pub address: Spanned<String>,
    /// Most connections open to it at once; -1 means unlimited.
    #[serde(default = "unlimited")]
    pub max_connections: i64,
    /// Longest time to establish the connection and its WebSocket handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// For `wss://`: trust these CA certificates (PEM) instead of the
    /// built-in web roots.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// For `wss://`: present this client certificate chain (PEM)…
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// …with this private key (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl RemoteHost {
    /// The connection limit, or `None` when unlimited.
    pub fn connection_limit(&self) -> Option<usize> {
        usize::try_from(self.max_connections).ok()
    }
}

/// How to reach one OCI registry (`[[registry]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Registry {
    /// `host[:port]`, as written in `oci://` sources.
    pub host: Spanned<String>,
    /// User name for the registry's basic or token authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (or token), relative to the configuration
    /// file; surrounding whitespace is ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password (or token).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Trust these CA certificates (PEM) for the registry, besides the
    /// system's roots.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Speak plain HTTP to the registry (for a registry on the same host or
    /// network only).
    #[serde(default)]
    pub plain_http: bool,
    /// Longest time to connect, and to wait for each response.
    #[serde(default = "default_registry_timeout")]
    pub timeout: HumanDuration,
}

fn default_registry_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// With which peers an endpoint negotiates permessage-deflate. Either way,
/// plugins see messages uncompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// Neither: offers from clients are declined, upstreams are offered nothing.
    Off,
    /// Accepted when the client offers it (browsers do); upstreams are offered nothing.
    #[default]
    Client,
    /// Offered to the upstream; declined with clients.
    Upstream,
    /// Both.
    Both,
}

impl Compression {
    /// Accept clients' offers.
    pub fn with_client(self) -> bool {
        matches!(self, Self::Client | Self::Both)
    }

    /// Offer it to upstreams.
    pub fn with_upstream(self) -> bool {
        matches!(self, Self::Upstream | Self::Both)
    }
}

/// What the traffic monitor records of an endpoint's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorLevel {
    /// Nothing.
    Off,
    /// The upgrade request and response, and how the connection ended.
    #[default]
    Headers,
    /// Also every frame's metadata: origin, opcode, flags, length, masking
    /// key, time, time in filters, verdict.
    Metadata,
    /// Also every frame's payload, up to the endpoint's `monitor-capture`.
    Full,
    /// Also each message as it entered its message chain and what left it
    /// (forwarded, replies, close), whole and masked by `[monitor] mask`:
    /// what `wsgate replay` runs a candidate configuration on.
    Replay,
}

impl MonitorLevel {
    /// The name written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Headers => "headers",
            Self::Metadata => "metadata",
            Self::Full => "full",
            Self::Replay => "replay",
        }
    }
}

/// The traffic monitor's storage (`[monitor]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MonitorSettings {
    /// SQLite database keeping the history across restarts, relative to the
    /// configuration file; none: recent traffic in memory only.
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// Records older than this are deleted from the database; `0` keeps them.
    #[serde(default = "default_retention")]
    pub retention: HumanDuration,
    /// The database is trimmed, oldest connections first, above this size.
    #[serde(default = "default_database_size")]
    pub max_database_size: ByteSize,
    /// Connections kept in memory for the live views.
    #[serde(default = "default_memory_connections")]
    pub memory_connections: usize,
    /// Frames kept in memory per connection for the live views.
    #[serde(default = "default_memory_frames")]
    pub memory_frames: usize,
    /// Records waiting to be stored; when full, new records are dropped and
    /// counted rather than slowing the traffic down.
    #[serde(default = "default_monitor_queue")]
    pub queue: usize,
    /// Payload and header bytes the records waiting in the queue may hold
    /// together; past it, new records are dropped and counted as when the
    /// queue is full (a burst of large messages at level `replay` or `full`
    /// cannot make the host hold more).
    #[serde(default = "default_monitor_queue_bytes")]
    pub queue_bytes: ByteSize,
    /// JSON pointers (`/password`, `/card/number`) whose values are replaced
    /// by `"***"` in JSON text messages recorded for replay (level `replay`)
    /// and in the shadow's examples, before they are stored or shown.
    #[serde(default)]
    pub mask: Vec<Spanned<String>>,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            database: None,
            retention: default_retention(),
            max_database_size: default_database_size(),
            memory_connections: default_memory_connections(),
            memory_frames: default_memory_frames(),
            queue: default_monitor_queue(),
            queue_bytes: default_monitor_queue_bytes(),
            mask: Vec::new(),
        }
    }
}

fn default_send_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_header_bytes() -> Spanned<ByteSize> {
    Spanned::new(0..0, ByteSize(16 << 10))
}
fn default_max_headers() -> Spanned<u32> {
    Spanned::new(0..0, 100)
}
fn default_workers() -> Spanned<u32> {
    Spanned::new(0..0, 0)
}
fn default_max_pending_upgrades() -> Spanned<u32> {
    Spanned::new(0..0, 4096)
}
fn default_max_pending_upgrades_per_ip() -> Spanned<u32> {
    Spanned::new(0..0, 256)
}
fn default_admin_max_connections() -> Spanned<u32> {
    Spanned::new(0..0, Admin::DEFAULT_MAX_CONNECTIONS)
}
fn default_admin_max_tails() -> Spanned<u32> {
    Spanned::new(0..0, Admin::DEFAULT_MAX_TAILS)
}
fn default_capture() -> ByteSize {
    ByteSize(4096)
}
fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 24 * 3600))
}
fn default_database_size() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_memory_connections() -> usize {
    1000
}
fn default_memory_frames() -> usize {
    500
}
/// OpenTelemetry traces (`[tracing]`): a span per connection with its
/// upgrade, and spans for a sample of the messages, sent to an OTLP
/// collector over HTTP/protobuf, off the relay's path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TracingSettings {
    /// The collector's OTLP/HTTP traces URL
    /// (`http://collector:4318/v1/traces`); none: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<Spanned<String>>,
    /// The `service.name` the spans are exported under.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The fraction of messages traced (0 to 1) on endpoints that do not
    /// set `trace-sample`.
    #[serde(default = "default_trace_sample")]
    pub sample: Spanned<f64>,
    /// Finished spans waiting for export; when full, new spans are dropped
    /// and counted rather than slowing the traffic down.
    #[serde(default = "default_trace_queue")]
    pub queue: Spanned<usize>,
    /// Most spans sent in one export request.
    #[serde(default = "default_trace_batch")]
    pub batch: Spanned<usize>,
    /// How long spans may wait before they are sent (sooner when a batch
    /// is full).
    #[serde(default = "default_trace_interval")]
    pub export_interval: Spanned<HumanDuration>,
    /// How long one export request may take.
    #[serde(default = "default_trace_timeout")]
    pub export_timeout: Spanned<HumanDuration>,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample: default_trace_sample(),
            queue: default_trace_queue(),
            batch: default_trace_batch(),
            export_interval: default_trace_interval(),
            export_timeout: default_trace_timeout(),
        }
    }
}

fn default_service_name() -> String {
    "wsgate".to_string()
}
fn default_trace_sample() -> Spanned<f64> {
    Spanned::new(0..0, 0.01)
}
fn default_trace_queue() -> Spanned<usize> {
    Spanned::new(0..0, 8192)
}
fn default_trace_batch() -> Spanned<usize> {
    Spanned::new(0..0, 512)
}
fn default_trace_interval() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration(Duration::from_secs(1)))
}
fn default_trace_timeout() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration(Duration::from_secs(10)))
}

fn default_monitor_queue() -> usize {
    65536
}
fn default_monitor_queue_bytes() -> ByteSize {
    ByteSize(64 << 20)
}

/// How an endpoint's path matches request paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathMatch {
    /// The request path equals the endpoint path.
    #[default]
    Exact,
    /// The request path starts with the endpoint path at a segment boundary.
    Prefix,
}

/// A WebSocket endpoint: a path and its three plugin chains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Endpoint {
    /// The path, starting with `/`.
    pub path: Spanned<String>,
    /// Exact or prefix match.
    #[serde(default, rename = "match")]
    pub path_match: PathMatch,
    /// Disabled endpoints answer 404, as if absent.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Refuse plugins on this endpoint's chains that are not signed by a trusted key.
    #[serde(default)]
    pub require_signed: bool,
    /// The default MIME type of message bodies, handed to plugins.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Absolute lifetime of a connection; `0` means unlimited.
    #[serde(default)]
    pub expire: HumanDuration,
    /// Largest message (after reassembly) accepted from either side; larger ones close with 1009.
    #[serde(default = "default_max_message")]
    pub max_message_size: ByteSize,
    /// URL prefixes routes may point at (`ws://host:port` or longer); routes elsewhere are refused.
    #[serde(default)]
    pub allowed_upstreams: Vec<Spanned<String>>,
    /// `Origin` values allowed to open connections (browsers always send
    /// one: this stops cross-site WebSocket hijacking); others get 403.
    /// Empty: any origin, and requests without one.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Close both sides with 1001 after this long without a message either
    /// way (pings count); `0` means never.
    #[serde(default)]
    pub idle_timeout: HumanDuration,
    /// A peer that takes longer than this to accept what is sent to it (it
    /// stopped reading) is dropped, and the other side closed with 1001;
    /// the gateway never buffers more than a socket's worth for it.
    /// `0` means wait forever.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: HumanDuration,
    /// Most connections open on this endpoint at once; over it: 503.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most connections open on this endpoint from one client address;
    /// over it: 429.
    #[serde(default)]
    pub max_connections_per_ip: Option<u32>,
    /// With which peers permessage-deflate (RFC 7692) is negotiated.
    #[serde(default)]
    pub permessage_deflate: Compression,
    /// What the traffic monitor records of this endpoint's connections.
    #[serde(default)]
    pub monitor: MonitorLevel,
    /// Most payload bytes the monitor keeps of one frame (level `full`).
    #[serde(default = "default_capture")]
    pub monitor_capture: ByteSize,
    /// The fraction of this endpoint's messages traced (0 to 1), when
    /// `[tracing]` exports; none: `[tracing] sample`.
    #[serde(default)]
    pub trace_sample: Option<Spanned<f64>>,
    /// Plugins run on the upgrade request, in order; the chain must route.
    #[serde(default)]
    pub upgrade: Vec<ChainEntry>,
    /// Plugins run on messages from the client, in order.
    #[serde(default)]
    pub client_messages: Vec<ChainEntry>,
    /// Plugins run on messages from the upstream, in order
    /// (`upstream-messages`; the deprecated name `server-messages` is
    /// accepted with a warning).
    #[serde(default, alias = "server-messages")]
    pub upstream_messages: Vec<ChainEntry>,
}

impl Endpoint {
    /// The connection lifetime, or `None` when unlimited.
    pub fn lifetime(&self) -> Option<Duration> {
        (!self.expire.0.is_zero()).then_some(self.expire.0)
    }

    /// The send timeout, or `None` to wait forever for a peer to read.
    pub fn send_limit(&self) -> Option<Duration> {
        (!self.send_timeout.0.is_zero()).then_some(self.send_timeout.0)
    }

    /// The idle timeout, or `None` when connections may stay idle.
    pub fn idle_limit(&self) -> Option<Duration> {
        (!self.idle_timeout.0.is_zero()).then_some(self.idle_timeout.0)
    }

    /// Whether a request with this `Origin` header (if any) may connect.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        self.allowed_origins.is_empty()
            || origin.is_some_and(|origin| {
                self.allowed_origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            })
    }

    /// Whether `request_path` belongs to this endpoint.
    pub fn matches(&self, request_path: &str) -> bool {
        let path = self.path.get_ref().as_str();
        match self.path_match {
            PathMatch::Exact => request_path == path,
            PathMatch::Prefix => {
                path.ends_with('/') && request_path.starts_with(path)
                    || request_path
                        .strip_prefix(path)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

/// What a chain does when a plugin call fails (trap, deadline, memory limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailPolicy {
    /// Refuse: the upgrade gets 500, a message closes the connection with 1011.
    #[default]
    Closed,
    /// Skip the failing plugin and go on as if it had said "continue"/"forward".
    Open,
}

/// One plugin in a chain, with its configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChainEntry {
    /// The plugin, as `name@version`.
    pub plugin: Spanned<String>,
    /// What happens when the plugin fails.
    #[serde(default)]
    pub fail: FailPolicy,
    /// The plugin's own configuration, passed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

impl ChainEntry {
    /// The plugin reference, split into name and version.
    pub fn plugin_ref(&self) -> Option<PluginRef<'_>> {
        let (name, version) = self.plugin.get_ref().split_once('@')?;
        (!name.is_empty() && !version.is_empty()).then_some(PluginRef { name, version })
    }

    /// The plugin's configuration as JSON text.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".to_string())
    }
}

/// A `name@version` reference to a declared plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginRef<'a> {
    /// The plugin's name.
    pub name: &'a str,
    /// The plugin's version.
    pub version: &'a str,
}

fn yes() -> bool {
    true
}
fn unlimited() -> i64 {
    -1
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_watch_config() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
fn default_drain_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_drain_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}
fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
fn default_read_buffer() -> ByteSize {
    ByteSize(1024)
}
fn default_memory_limit() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_max_output() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_log_rate() -> u32 {
    100
}
fn default_log_bytes_rate() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_max_log_line() -> ByteSize {
    ByteSize(4 << 10)
}
fn default_max_state() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_max_state_keys() -> u32 {
    1024
}
fn default_plugin_host_memory() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_max_attributes() -> u32 {
    64
}
fn default_max_attribute_bytes() -> ByteSize {
    ByteSize(16 << 10)
}
fn default_max_attribute_value() -> ByteSize {
    ByteSize(4 << 10)
}
fn default_max_messages() -> u32 {
    64
}
fn default_max_quota_key() -> ByteSize {
    ByteSize(256)
}
fn default_max_quota_keys() -> u32 {
    100_000
}
fn default_sync_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(10))
}
fn default_redis_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(250))
}
fn default_offload_above() -> HumanDuration {
    HumanDuration(Duration::from_millis(1))
}
fn default_offload_threads() -> u32 {
    2
}
fn default_offload_queue() -> u32 {
    64
}
fn default_max_message() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_content_type() -> String {
    "application/json".to_string()
}
