//! `host-config.toml`: the gateway's configuration.
//!
//! [`load`] reads and validates a configuration file; every error names the
//! file, the line and column, and the field (as a dotted path such as
//! `endpoint[0].upgrade[1].plugin`). Unknown keys are errors, so a misspelt
//! key never silently falls back to a default. Renamed keys are still
//! accepted under their old names; [`Config::warnings`] lists each use.

#![deny(clippy::indexing_slicing)]

mod deprecated;
mod error;
mod model;
mod units;
mod validate;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors, SourceMap};
pub use model::{
    Admin, Capability, ChainEntry, Cluster, Compression, Config, EchoServer, Endpoint, FailPolicy,
    Gateway, ListenerTls, MonitorLevel, MonitorSettings, PathMatch, PluginDecl, PluginRef,
    Registry, RemoteHost, Signing, TracingSettings, TrustedKey,
};
pub use units::{ByteSize, HumanDuration, parse_duration, parse_size};

/// Read, parse and validate the configuration at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors::from(ConfigError::whole_file(
            path,
            format!("cannot read configuration: {error}"),
        ))
    })?;
    parse(&text, path)
}

/// Parse and validate configuration `text` that was read from `path`.
///
/// Relative plugin paths are resolved against the directory of `path`.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let source = SourceMap::new(path, text);
    let document = toml::de::DeTable::parse(text)
        .map_err(|error| ConfigErrors::from(source.toml_error(&error, "")))?;
    let renamed = deprecated::check(document.get_ref(), &source);
    if !renamed.errors.is_empty() {
        return Err(ConfigErrors(renamed.errors));
    }
    let mut config: Config = {
        let deserializer = toml::Deserializer::from(document);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let field = error.path().to_string();
            ConfigErrors::from(source.toml_error(error.inner(), &field))
        })?
    };
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if let Some(store) = config.gateway.plugin_store.as_mut()
        && store.is_relative()
    {
        *store = base_dir.join(&*store);
    }
    for plugin in &mut config.plugins {
        if plugin.path.as_os_str().is_empty() {
            // From the plugin store, by digest; checked in `validate`.
            if let (Some(store), Some(digest)) = (&config.gateway.plugin_store, &plugin.digest) {
                let hex = digest
                    .get_ref()
                    .trim_start_matches("sha256:")
                    .to_ascii_lowercase();
                plugin.path = store.join("blobs").join("sha256").join(hex);
                plugin.store_entry = Some(
                    store
                        .join("index")
                        .join(plugin.name.get_ref())
                        .join(format!("{}.toml", plugin.version.get_ref())),
                );
            }
        } else if plugin.path.is_relative() {
            plugin.path = base_dir.join(&plugin.path);
        }
        if let Some(signature) = plugin.signature.as_mut()
            && signature.is_relative()
        {
            *signature = base_dir.join(&*signature);
        }
    }
    let resolve = |path: &mut PathBuf| {
        if path.is_relative() {
            *path = base_dir.join(&*path);
        }
    };
    if let Some(tls) = config.gateway.tls.as_mut() {
        resolve(&mut tls.certificate);
        resolve(&mut tls.key);
    }
    for registry in &mut config.registries {
        for path in [registry.ca_bundle.as_mut(), registry.password_file.as_mut()]
            .into_iter()
            .flatten()
        {
            resolve(path);
        }
    }
    for host in &mut config.remote_hosts {
        for path in [
            host.ca_bundle.as_mut(),
            host.client_certificate.as_mut(),
            host.client_key.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            resolve(path);
        }
    }
    if let Some(database) = config.monitor.database.as_mut()
        && database.is_relative()
    {
        *database = base_dir.join(&*database);
    }
    if let Some(cache) = config.gateway.plugin_cache_dir.as_mut()
        && cache.is_relative()
    {
        *cache = base_dir.join(&*cache);
    }
    config.source = source;
    validate::validate(&config, &renamed)?;
    share_plugin_host_memory(&mut config);
    config.warnings = renamed.warnings;
    config.warnings.sort_by_key(|w| (w.line, w.column));
    Ok(config)
}

/// Give each plugin without a `max-state-total` an equal share of what
/// `[gateway] plugin-host-memory` leaves after the plugins that set one.
fn share_plugin_host_memory(config: &mut Config) {
    let ceiling = config.gateway.plugin_host_memory.0;
    let set: u64 = config
        .plugins
        .iter()
        .filter_map(|p| p.max_state_total)
        .map(|size| size.0)
        .sum();
    let unset = config
        .plugins
        .iter()
        .filter(|p| p.max_state_total.is_none())
        .count();
    let share = ceiling.saturating_sub(set) / (unset.max(1) as u64);
    for plugin in &mut config.plugins {
        plugin.max_state_total.get_or_insert(ByteSize(share));
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests;
