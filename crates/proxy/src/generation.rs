//! A configuration made live: every plugin compiled, every chain entry backed
//! by a configured instance pool, every remote host's connection limit.
//!
//! Building a generation is the whole validation `wsgate check` performs, and
//! its errors point at the configuration's file, line and field.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wsgate_config::{ChainEntry, Config, ConfigError, ConfigErrors, Endpoint, FailPolicy};
use wsgate_runtime::{Plugin, PluginPool, Runtime, RuntimeError};

use crate::upgrade::AdmittedRoutes;
use crate::upstream::AllowedUpstream;

/// Connect timeout for upstreams without a `[[remote-host]]` entry.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One plugin in a live chain.
#[derive(Debug)]
pub struct ChainStep {
    /// The configured instances.
    pub pool: Arc<PluginPool>,
    /// What to do when the plugin fails.
    pub fail: FailPolicy,
    /// Index of this plugin's per-connection state among the endpoint's plugins.
    pub slot: usize,
}

/// An endpoint with its live chains.
#[derive(Debug)]
pub struct LiveEndpoint {
    /// The endpoint's configuration.
    pub config: Endpoint,
    /// The upgrade chain.
    pub upgrade: Vec<ChainStep>,
    /// The chain for messages from the client.
    pub client_messages: Vec<ChainStep>,
    /// The chain for messages from the upstream.
    pub upstream_messages: Vec<ChainStep>,
    /// How many distinct plugins the endpoint uses (per-connection state slots).
    pub slots: usize,
    /// The endpoint's `allowed-upstreams`, parsed.
    pub allowed_upstreams: Vec<AllowedUpstream>,
    /// The routes its upgrade chain chose lately, parsed and admitted.
    pub(crate) admitted_routes: AdmittedRoutes,
    /// Connections open on this endpoint.
    pub active: AtomicU64,
}

impl LiveEndpoint {
    /// Connections open on this endpoint right now.
    pub fn active_connections(&self) -> u64 {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// WebSocket settings for either side of a connection on this endpoint.
    pub fn ws_config(&self, generation: &Generation) -> WebSocketConfig {
        let read_buffer =
            usize::try_from(generation.config.gateway.read_buffer_size.0).unwrap_or(4096);
        let max_message = usize::try_from(self.config.max_message_size.0).ok();
        WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(0)
            .max_message_size(max_message)
            .max_frame_size(max_message)
    }
}

/// Connection limit and timeout of one upstream `host:port`.
#[derive(Debug)]
pub struct RemoteLimit {
    /// Permits for open connections; `None` when unlimited.
    pub permits: Option<Arc<Semaphore>>,
    /// The configured limit the permits were made for.
    pub max_connections: Option<usize>,
    /// Longest time to connect and finish the upstream handshake.
    pub connect_timeout: Duration,
    /// TLS settings for `wss://` (its CA bundle, client certificate);
    /// `None`: the web roots, no client certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A validated configuration with its plugins loaded.
///
/// New connections use the newest generation; each connection keeps the
/// generation it started with (plugin versions, configurations, limits) until
/// it ends, and a generation is freed when its last connection ends.
#[derive(Debug)]
pub struct Generation {
    /// Deploy number: 1 at start, then one more per successful deploy (0 for `wsgate check`).
    pub id: u64,
    /// When it was built.
    pub created: std::time::SystemTime,
    /// Connections open on it.
    pub active: AtomicU64,
    /// The configuration it was built from.
    pub config: Config,
    /// Endpoints, in configuration order.
    pub endpoints: Vec<Arc<LiveEndpoint>>,
    /// Remote-host limits by lower-case `host:port`.
    pub remote_hosts: HashMap<String, Arc<RemoteLimit>>,
    /// Every plugin pool, for statistics.
    pub pools: Vec<Arc<PluginPool>>,
    /// Every declared plugin, loaded, in configuration order.
    pub plugins: Vec<Arc<Plugin>>,
    /// The listener's TLS settings (`[gateway] tls`); `None`: plain `ws://`.
    pub listener_tls: Option<Arc<rustls::ServerConfig>>,
}

impl Generation {
    /// Load every plugin of `config`, configure a pool per chain entry and
    /// check each entry's plugin has the hook its chain needs. All problems
    /// are reported, each with its position in the configuration file.
    pub fn build(id: u64, config: Config, runtime: &Runtime) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut chains = ChainBuilder {
            source: &config.source,
            plugins: load_plugins(&config, runtime, &mut errors),
            pools: HashMap::new(),
        };
        let endpoints = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| Arc::new(chains.endpoint(i, endpoint, &mut errors)))
            .collect();
        let listener_tls = listener_tls(&config, &mut errors);
        let remote_hosts = remote_hosts(&config, &mut errors);
        if let Some(url) = &config.cluster.redis
            && let Err(error) = wsgate_quota::sync::check_url(url.get_ref())
        {
            errors.push(
                config
                    .source
                    .error(url.span(), "cluster.redis", error.to_string()),
            );
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(ConfigErrors(errors));
        }
        let ChainBuilder { plugins, pools, .. } = chains;
        let mut pools: Vec<_> = pools.into_values().collect();
        pools.sort_by(|a, b| a.plugin().id().cmp(b.plugin().id()));
        let plugins = config
            .plugins
            .iter()
            .filter_map(|decl| plugins.get(&decl.id()).cloned())
            .collect();
        Ok(Self {
            id,
            created: std::time::SystemTime::now(),
            active: AtomicU64::new(0),
            config,
            endpoints,
            remote_hosts,
            pools,
            plugins,
            listener_tls,
        })
    }

    /// Share `previous`'s connection permits for every remote host whose
    /// limit is unchanged, so a deploy does not reset the count: connections
    /// open on the old generation still hold their permits.
    pub fn carry_limits_from(&mut self, previous: &Generation) {
        for (address, limit) in &mut self.remote_hosts {
            if let Some(old) = previous.remote_hosts.get(address)
                && old.max_connections == limit.max_connections
            {
                *limit = Arc::new(RemoteLimit {
                    permits: old.permits.clone(),
                    max_connections: limit.max_connections,
                    connect_timeout: limit.connect_timeout,
                    tls: limit.tls.clone(),
                });
            }
        }
    }

    /// The enabled endpoint serving `path`.
    pub fn endpoint_for(&self, path: &str) -> Option<&Arc<LiveEndpoint>> {
        let (index, _) = self.config.endpoint_for(path)?;
        self.endpoints.get(index)
    }
}

/// Load and verify every declared plugin, by `name@version`.
fn load_plugins(
    config: &Config,
    runtime: &Runtime,
    errors: &mut Vec<ConfigError>,
) -> HashMap<String, Arc<Plugin>> {
    let mut plugins = HashMap::new();
    for (i, decl) in config.plugins.iter().enumerate() {
        match runtime.load_signed(decl, &config.signing) {
            Ok(plugin) => {
                plugins.insert(decl.id(), plugin);
            }
            Err(error) => {
                let field = match error {
                    RuntimeError::Digest { .. } => format!("plugin[{i}].digest"),
                    RuntimeError::Signature { .. } => format!("plugin[{i}].signature"),
                    _ => format!("plugin[{i}].path"),
                };
                errors.push(
                    config
                        .source
                        .error(decl.name.span(), field, error.to_string()),
                );
            }
        }
    }
    plugins
}

/// Which chain an entry sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainKind {
    Upgrade,
    ClientMessages,
    UpstreamMessages,
}

impl ChainKind {
    /// The chain's configuration key.
    fn key(self) -> &'static str {
        match self {
            Self::Upgrade => "upgrade",
            Self::ClientMessages => "client-messages",
            Self::UpstreamMessages => "upstream-messages",
        }
    }

    /// The hook a plugin needs to sit in it.
    fn hook(self) -> &'static str {
        match self {
            Self::Upgrade => "upgrade",
            Self::ClientMessages | Self::UpstreamMessages => "message",
        }
    }
}

/// Builds every endpoint's chains from the loaded plugins, one pool per
/// distinct (plugin, configuration).
struct ChainBuilder<'a> {
    source: &'a wsgate_config::SourceMap,
    plugins: HashMap<String, Arc<Plugin>>,
    pools: HashMap<(String, String), Arc<PluginPool>>,
}

impl ChainBuilder<'_> {
    /// Endpoint `i` with its three chains.
    fn endpoint(
        &mut self,
        i: usize,
        endpoint: &Endpoint,
        errors: &mut Vec<ConfigError>,
    ) -> LiveEndpoint {
        let mut slots: Vec<String> = Vec::new();
        let mut chain = |kind: ChainKind, entries: &[ChainEntry]| {
            entries
                .iter()
                .enumerate()
                .filter_map(|(j, entry)| {
                    let field = format!("endpoint[{i}].{}[{j}]", kind.key());
                    self.step(kind, &field, endpoint, entry, &mut slots)
                        .map_err(|error| errors.extend(error))
                        .ok()
                })
                .collect()
        };
        let upgrade = chain(ChainKind::Upgrade, &endpoint.upgrade);
        let client_messages = chain(ChainKind::ClientMessages, &endpoint.client_messages);
        let upstream_messages = chain(ChainKind::UpstreamMessages, &endpoint.upstream_messages);
        LiveEndpoint {
            config: endpoint.clone(),
            upgrade,
            client_messages,
            upstream_messages,
            slots: slots.len(),
            allowed_upstreams: endpoint
                .allowed_upstreams
                .iter()
                .filter_map(|entry| AllowedUpstream::parse(entry.get_ref()))
                .collect(),
            admitted_routes: AdmittedRoutes::default(),
            active: AtomicU64::new(0),
        }
    }

    /// One chain entry at `field`: its plugin loaded, allowed on the
    /// endpoint, with the hook the chain needs, and a configured pool.
    /// `Err(None)`: its plugin did not load (that error is reported already).
    fn step(
        &mut self,
        kind: ChainKind,
        field: &str,
        endpoint: &Endpoint,
        entry: &ChainEntry,
        slots: &mut Vec<String>,
    ) -> Result<ChainStep, Option<ConfigError>> {
        let id = entry.plugin.get_ref();
        let at = |field: String, message: String| {
            Some(self.source.error(entry.plugin.span(), field, message))
        };
        let plugin = self.plugins.get(id).cloned().ok_or(None)?;
        if endpoint.require_signed && plugin.signed_by().is_none() {
            return Err(at(
                format!("{field}.plugin"),
                format!(
                    "{id} is unsigned, and endpoint {} requires signed plugins",
                    endpoint.path.get_ref()
                ),
            ));
        }
        let fits = match kind {
            ChainKind::Upgrade => plugin.roles().upgrade,
            ChainKind::ClientMessages | ChainKind::UpstreamMessages => plugin.roles().message,
        };
        if !fits {
            return Err(at(
                format!("{field}.plugin"),
                format!(
                    "{id} has no {} hook, so it cannot sit in the {} chain (it implements: {})",
                    kind.hook(),
                    kind.key(),
                    describe_roles(&plugin)
                ),
            ));
        }
        let config_json = entry.config_json();
        let key = (id.to_string(), config_json.clone());
        let pool = match self.pools.get(&key) {
            Some(pool) => pool.clone(),
            None => match PluginPool::new(plugin, &config_json) {
                Ok(pool) => {
                    let pool = Arc::new(pool);
                    self.pools.insert(key, pool.clone());
                    pool
                }
                Err(RuntimeError::Config {
                    plugin,
                    field: pointer,
                    message,
                }) => {
                    return Err(at(
                        format!("{field}.config{}", pointer_to_path(&pointer)),
                        format!(
                            "plugin {plugin} on endpoint {} rejects its config: {message}",
                            endpoint.path.get_ref()
                        ),
                    ));
                }
                Err(error) => return Err(at(format!("{field}.plugin"), error.to_string())),
            },
        };
        let slot = match slots.iter().position(|s| s == id) {
            Some(slot) => slot,
            None => {
                slots.push(id.to_string());
                slots.len() - 1
            }
        };
        Ok(ChainStep {
            pool,
            fail: entry.fail,
            slot,
        })
    }
}

/// The listener's TLS identity (`[gateway] tls`), read now so a bad file
/// refuses the configuration instead of failing connections later.
fn listener_tls(
    config: &Config,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<rustls::ServerConfig>> {
    let tls = config.gateway.tls.as_ref()?;
    crate::tls::server_config(&tls.certificate, &tls.key)
        .map_err(|message| errors.push(config.source.error(0..0, "gateway.tls", message)))
        .ok()
}

/// Each `[[remote-host]]`'s limit, timeout and TLS trust, by lower-case `host:port`.
fn remote_hosts(
    config: &Config,
    errors: &mut Vec<ConfigError>,
) -> HashMap<String, Arc<RemoteLimit>> {
    let mut remote_hosts = HashMap::new();
    for (i, host) in config.remote_hosts.iter().enumerate() {
        let client = host
            .client_certificate
            .as_deref()
            .zip(host.client_key.as_deref());
        let tls = if host.ca_bundle.is_some() || client.is_some() {
            crate::tls::client_config(host.ca_bundle.as_deref(), client)
                .map_err(|message| {
                    errors.push(config.source.error(
                        host.address.span(),
                        format!("remote-host[{i}]"),
                        message,
                    ));
                })
                .ok()
        } else {
            None
        };
        let limit = RemoteLimit {
            permits: host.connection_limit().map(|n| Arc::new(Semaphore::new(n))),
            max_connections: host.connection_limit(),
            connect_timeout: host.connect_timeout.0,
            tls,
        };
        remote_hosts.insert(host.address.get_ref().to_ascii_lowercase(), Arc::new(limit));
    }
    remote_hosts
}

fn describe_roles(plugin: &Plugin) -> &'static str {
    match (plugin.roles().upgrade, plugin.roles().message) {
        (true, true) => "upgrade and message hooks",
        (true, false) => "the upgrade hook only",
        _ => "the message hook only",
    }
}

/// `/rules/0/url` -> `.rules[0].url`
fn pointer_to_path(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|part| {
            let part = part.replace("~1", "/").replace("~0", "~");
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                format!("[{part}]")
            } else {
                format!(".{part}")
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    #[test]
    fn json_pointers_become_dotted_paths() {
        assert_eq!(super::pointer_to_path("/rules/0/url"), ".rules[0].url");
        assert_eq!(super::pointer_to_path(""), "");
        assert_eq!(super::pointer_to_path("/a~1b"), ".a/b");
    }
}
