//! Checks across fields that the types alone cannot express.

use std::collections::HashSet;

use toml::Spanned;

use crate::deprecated::Renamed;
use crate::error::{ConfigError, ConfigErrors};
use crate::model::{ChainEntry, Config};

/// Most connection worker threads (`[gateway] workers`).
const MAX_WORKERS: u32 = 1024;

/// Most offload threads one plugin may have.
const MAX_OFFLOAD_THREADS: u32 = 64;

/// Collect every cross-field problem in `config`, in file order; `renamed`
/// says which keys were written under their old names.
pub(crate) fn validate(config: &Config, renamed: &Renamed) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let source = &config.source;
    let mut at = |span: std::ops::Range<usize>, field: String, message: String| {
        errors.push(source.error(span, field, message));
    };

    let ceiling = config.gateway.plugin_host_memory.0;
    let mut declared_total = 0u64;
    for (i, plugin) in config.plugins.iter().enumerate() {
        if let Some(total) = plugin.max_state_total {
            let before = declared_total;
            declared_total = declared_total.saturating_add(total.0);
            if declared_total > ceiling && before <= ceiling {
                at(
                    plugin.name.span(),
                    format!("plugin[{i}].max-state-total"),
                    format!(
                        "the plugins' max-state-total add up to more than [gateway] plugin-host-memory ({ceiling} bytes)"
                    ),
                );
            }
        }
    }

    let mut plugin_ids = HashSet::new();
    for (i, plugin) in config.plugins.iter().enumerate() {
        let name = plugin.name.get_ref();
        if name.is_empty() || name.contains(['@', ' ', '/']) {
            at(
                plugin.name.span(),
                format!("plugin[{i}].name"),
                format!("`{name}` is not a plugin name (letters, digits, `-` and `_`)"),
            );
        }
        if plugin.version.get_ref().is_empty()
            || plugin.version.get_ref().contains([' ', '@', '/', '\\'])
        {
            at(
                plugin.version.span(),
                format!("plugin[{i}].version"),
                format!("`{}` is not a version", plugin.version.get_ref()),
            );
        }
        if !plugin_ids.insert(plugin.id()) {
            at(
                plugin.name.span(),
                format!("plugin[{i}].name"),
                format!("plugin {} is declared twice", plugin.id()),
            );
        }
        if let Some(digest) = &plugin.digest {
            let valid = digest
                .get_ref()
                .strip_prefix("sha256:")
                .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
            if !valid {
                at(
                    digest.span(),
                    format!("plugin[{i}].digest"),
                    "a digest is written `sha256:` followed by 64 hex digits".to_string(),
                );
            }
        }
        if let Some(source) = &plugin.source {
            let problem = if plugin.store_entry.is_none() && !plugin.path.as_os_str().is_empty() {
                Some("a plugin comes from a `path` or from a `source`, not both")
            } else if plugin.digest.is_none() {
                Some(
                    "a plugin from a registry is pinned by the `digest` of its component (printed by `wsgate plugin push`)",
                )
            } else if config.gateway.plugin_store.is_none() {
                Some(
                    "a plugin from a registry is pulled into the gateway's `plugin-store`: set [gateway] plugin-store",
                )
            } else if !is_oci_reference(source.get_ref()) {
                Some("a source is written `oci://HOST[:PORT]/REPOSITORY:TAG` (or `@sha256:…`)")
            } else {
                None
            };
            if let Some(problem) = problem {
                at(
                    source.span(),
                    format!("plugin[{i}].source"),
                    problem.to_string(),
                );
            }
        } else if plugin.store_entry.is_none() && plugin.path.as_os_str().is_empty() {
            let missing = if config.gateway.plugin_store.is_none() {
                "a plugin needs a `path`, or a `digest` and the gateway's `plugin-store` to load it from"
            } else {
                "a plugin from the plugin store is pinned by its `digest` (see `wsgate plugin list`)"
            };
            at(
                plugin.name.span(),
                format!("plugin[{i}].path"),
                missing.to_string(),
            );
        }
        if plugin.deadline.0.is_zero() {
            at(
                plugin.name.span(),
                format!("plugin[{i}].deadline"),
                "the call deadline must be greater than zero".to_string(),
            );
        }
        if !(1..=MAX_OFFLOAD_THREADS).contains(&plugin.offload_threads) {
            at(
                plugin.name.span(),
                format!("plugin[{i}].offload-threads"),
                format!("offload-threads is 1 to {MAX_OFFLOAD_THREADS}"),
            );
        }
    }

    let max_header = &config.gateway.max_header_bytes;
    if max_header.get_ref().0 < 8192 {
        at(
            max_header.span(),
            "gateway.max-header-bytes".to_string(),
            "must be at least 8KiB".to_string(),
        );
    }

    let gateway = &config.gateway;
    if *gateway.workers.get_ref() > MAX_WORKERS {
        at(
            gateway.workers.span(),
            "gateway.workers".to_string(),
            format!("at most {MAX_WORKERS} (0: one per core)"),
        );
    }
    let counts = [
        (&gateway.max_headers, "gateway.max-headers"),
        (
            &gateway.max_pending_upgrades,
            "gateway.max-pending-upgrades",
        ),
        (
            &gateway.max_pending_upgrades_per_ip,
            "gateway.max-pending-upgrades-per-ip",
        ),
    ];
    let admin_counts = config.admin.iter().flat_map(|admin| {
        [
            (&admin.max_connections, "admin.max-connections"),
            (&admin.max_tails, "admin.max-tails"),
        ]
    });
    for (count, field) in counts.into_iter().chain(admin_counts) {
        if *count.get_ref() == 0 {
            at(
                count.span(),
                field.to_string(),
                "must be at least 1".to_string(),
            );
        }
    }

    for (i, pointer) in config.monitor.mask.iter().enumerate() {
        if !pointer.get_ref().starts_with('/') {
            at(
                pointer.span(),
                format!("monitor.mask[{i}]"),
                format!(
                    "`{}` is not a JSON pointer (`/field/nested`)",
                    pointer.get_ref()
                ),
            );
        }
    }

    let mut registries = HashSet::new();
    for (i, registry) in config.registries.iter().enumerate() {
        let host = registry.host.get_ref();
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            at(
                registry.host.span(),
                format!("registry[{i}].host"),
                format!("`{host}` is not `host[:port]`"),
            );
        }
        if !registries.insert(host.to_ascii_lowercase()) {
            at(
                registry.host.span(),
                format!("registry[{i}].host"),
                format!("registry `{host}` is listed twice"),
            );
        }
        if registry.password_file.is_some() && registry.password_env.is_some() {
            at(
                registry.host.span(),
                format!("registry[{i}].password-file"),
                "a registry's password comes from password-file or password-env, not both"
                    .to_string(),
            );
        }
        if registry.timeout.0.is_zero() {
            at(
                registry.host.span(),
                format!("registry[{i}].timeout"),
                "the timeout must be greater than zero".to_string(),
            );
        }
    }

    let mut remote_hosts = HashSet::new();
    for (i, host) in config.remote_hosts.iter().enumerate() {
        let address = host.address.get_ref();
        let valid = address
            .rsplit_once(':')
            .is_some_and(|(name, port)| !name.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            at(
                host.address.span(),
                format!("remote-host[{i}].address"),
                format!("`{address}` is not `host:port`"),
            );
        }
        if !remote_hosts.insert(address.to_ascii_lowercase()) {
            at(
                host.address.span(),
                format!("remote-host[{i}].address"),
                format!("remote host `{address}` is listed twice"),
            );
        }
        if host.client_certificate.is_some() != host.client_key.is_some() {
            at(
                host.address.span(),
                format!("remote-host[{i}].client-certificate"),
                "client-certificate and client-key go together".to_string(),
            );
        }
        if host.max_connections < -1 {
            at(
                host.address.span(),
                format!("remote-host[{i}].max-connections"),
                "max-connections is -1 (unlimited) or a count".to_string(),
            );
        }
    }

    let tracing = &config.tracing;
    if let Some(url) = &tracing.otlp_endpoint
        && !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://"))
    {
        at(
            url.span(),
            "tracing.otlp-endpoint".to_string(),
            "the OTLP endpoint is an http:// or https:// URL (`http://collector:4318/v1/traces`)"
                .to_string(),
        );
    }
    if !is_fraction(*tracing.sample.get_ref()) {
        at(
            tracing.sample.span(),
            "tracing.sample".to_string(),
            "a sampling rate is a fraction from 0 to 1".to_string(),
        );
    }
    for (field, count, most) in [
        ("queue", &tracing.queue, MAX_TRACE_QUEUE),
        ("batch", &tracing.batch, MAX_TRACE_BATCH),
    ] {
        if !(1..=most).contains(count.get_ref()) {
            at(
                count.span(),
                format!("tracing.{field}"),
                format!("[tracing] {field} is 1 to {most} spans"),
            );
        }
    }
    let durations = [
        (
            "export-interval",
            &tracing.export_interval,
            MIN_TRACE_INTERVAL,
        ),
        ("export-timeout", &tracing.export_timeout, MIN_TRACE_TIMEOUT),
    ];
    for (field, duration, least) in durations {
        if !(least..=MAX_TRACE_WAIT).contains(&duration.get_ref().0) {
            at(
                duration.span(),
                format!("tracing.{field}"),
                format!("[tracing] {field} is {least:?} to {MAX_TRACE_WAIT:?}"),
            );
        }
    }

    let mut endpoint_paths = HashSet::new();
    for (i, endpoint) in config.endpoints.iter().enumerate() {
        let path = endpoint.path.get_ref();
        if let Some(sample) = &endpoint.trace_sample
            && !is_fraction(*sample.get_ref())
        {
            at(
                sample.span(),
                format!("endpoint[{i}].trace-sample"),
                "a sampling rate is a fraction from 0 to 1".to_string(),
            );
        }
        if endpoint.monitor == crate::model::MonitorLevel::Replay
            && config.monitor.database.is_none()
        {
            at(
                endpoint.path.span(),
                format!("endpoint[{i}].monitor"),
                "monitor = \"replay\" records for `wsgate replay`, which reads the monitor's database: set [monitor] database".to_string(),
            );
        }
        if !path.starts_with('/') {
            at(
                endpoint.path.span(),
                format!("endpoint[{i}].path"),
                format!("`{path}` must start with `/`"),
            );
        }
        if !endpoint_paths.insert((path.clone(), endpoint.path_match)) {
            at(
                endpoint.path.span(),
                format!("endpoint[{i}].path"),
                format!("endpoint `{path}` is declared twice"),
            );
        }
        if endpoint.enabled && endpoint.upgrade.is_empty() {
            at(
                endpoint.path.span(),
                format!("endpoint[{i}].upgrade"),
                "an enabled endpoint needs an upgrade chain that routes (for example static-router)"
                    .to_string(),
            );
        }
        if endpoint.enabled && endpoint.allowed_upstreams.is_empty() {
            at(
                endpoint.path.span(),
                format!("endpoint[{i}].allowed-upstreams"),
                "an enabled endpoint must list the upstreams its routes may use \
                 (for example [\"ws://127.0.0.1:9001\"], or [\"wss://\"] for any wss host)"
                    .to_string(),
            );
        }
        if endpoint.max_message_size.0 == 0 {
            at(
                endpoint.path.span(),
                format!("endpoint[{i}].max-message-size"),
                "max-message-size must be greater than zero".to_string(),
            );
        }
        for (j, upstream) in endpoint.allowed_upstreams.iter().enumerate() {
            if !is_ws_url(upstream) {
                at(
                    upstream.span(),
                    format!("endpoint[{i}].allowed-upstreams[{j}]"),
                    format!("`{}` is not a ws:// or wss:// URL", upstream.get_ref()),
                );
            }
        }
        let chains: [(&str, &[ChainEntry]); 3] = [
            ("upgrade", &endpoint.upgrade),
            ("client-messages", &endpoint.client_messages),
            (
                renamed.endpoint_key(i, "upstream-messages"),
                &endpoint.upstream_messages,
            ),
        ];
        for (chain, entries) in chains {
            for (j, entry) in entries.iter().enumerate() {
                let field = format!("endpoint[{i}].{chain}[{j}].plugin");
                match entry.plugin_ref() {
                    None => at(
                        entry.plugin.span(),
                        field,
                        format!(
                            "`{}` is not a plugin reference `name@version`",
                            entry.plugin.get_ref()
                        ),
                    ),
                    Some(_) if !plugin_ids.contains(entry.plugin.get_ref()) => at(
                        entry.plugin.span(),
                        field,
                        format!(
                            "no [[plugin]] is declared as {} (declared: {})",
                            entry.plugin.get_ref(),
                            declared(config)
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    if let Some(admin) = &config.admin
        && !admin.listen.get_ref().ip().is_loopback()
        && admin.token.as_deref().is_none_or(str::is_empty)
    {
        at(
            admin.listen.span(),
            "admin.token".to_string(),
            "an admin listener on a non-loopback address needs a token".to_string(),
        );
    }

    errors.extend(config.gateway_errors());
    if errors.is_empty() {
        Ok(())
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }
}

/// A `ws://` or `wss://` URL, or the bare scheme (any host).
fn is_ws_url(url: &Spanned<String>) -> bool {
    let url = url.get_ref();
    url.starts_with("ws://") || url.starts_with("wss://")
}

fn declared(config: &Config) -> String {
    if config.plugins.is_empty() {
        return "none".to_string();
    }
    config
        .plugins
        .iter()
        .map(|p| p.id())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Config {
    fn gateway_errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.gateway.read_buffer_size.0 < 256 {
            errors.push(ConfigError {
                file: self.source.file().to_string(),
                line: 0,
                column: 0,
                field: "gateway.read-buffer-size".to_string(),
                message: "read-buffer-size must be at least 256 bytes".to_string(),
            });
        }
        errors
    }

    /// The declared plugin `name@version`.
    pub fn plugin(&self, id: &str) -> Option<&crate::PluginDecl> {
        self.plugins.iter().find(|p| p.id() == id)
    }

    /// The remote-host entry for `host:port`, if any.
    pub fn remote_host(&self, address: &str) -> Option<&crate::RemoteHost> {
        self.remote_hosts
            .iter()
            .find(|h| h.address.get_ref().eq_ignore_ascii_case(address))
    }

    /// The enabled endpoint serving `request_path`: exact matches first, then the longest prefix.
    pub fn endpoint_for(&self, request_path: &str) -> Option<(usize, &crate::Endpoint)> {
        let enabled = || self.endpoints.iter().enumerate().filter(|(_, e)| e.enabled);
        enabled()
            .find(|(_, e)| e.path_match == crate::PathMatch::Exact && e.matches(request_path))
            .or_else(|| {
                enabled()
                    .filter(|(_, e)| {
                        e.path_match == crate::PathMatch::Prefix && e.matches(request_path)
                    })
                    .max_by_key(|(_, e)| e.path.get_ref().len())
            })
    }
}

/// Whether `source` has the shape `oci://HOST/REPOSITORY[:TAG][@DIGEST]`
/// (the registry client checks the rest when it pulls).
pub(crate) fn is_oci_reference(source: &str) -> bool {
    source
        .strip_prefix("oci://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(host, repository)| {
            !host.is_empty() && !repository.is_empty() && !source.contains(char::is_whitespace)
        })
}

/// Most spans `[tracing] queue` may hold (each slot is taken up front).
const MAX_TRACE_QUEUE: usize = 1 << 20;
/// Most spans in one export request.
const MAX_TRACE_BATCH: usize = 1 << 16;
/// Shortest `[tracing] export-interval` (the export thread looks at its
/// queue at most this often).
const MIN_TRACE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);
/// Shortest `[tracing] export-timeout`.
const MIN_TRACE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(10);
/// Longest export interval or timeout.
const MAX_TRACE_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether `rate` is a sampling rate: a fraction from 0 to 1.
fn is_fraction(rate: f64) -> bool {
    (0.0..=1.0).contains(&rate)
}
