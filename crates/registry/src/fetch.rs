//! Pull what a configuration's `[[plugin]] source` entries name into the
//! plugin store, before the plugins are loaded from it.

use wsgate_config::{Capability, Config, ConfigErrors, PluginDecl};
use wsgate_store::{Manifest, Role, Store};

use crate::{Connection, Pulled, Registry, RegistryError, parse_reference};

/// Pull every `[[plugin]]` with a `source` whose digest the plugin store does
/// not hold yet; a plugin the store holds needs no registry. Problems are
/// reported like the configuration's own, at the plugin's `source` (or
/// `digest`, for a component that is not the pinned one).
pub async fn fetch_plugins(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    for (i, decl) in config.plugins.iter().enumerate() {
        let (Some(source), Some(digest), Some(store)) =
            (&decl.source, &decl.digest, &config.gateway.plugin_store)
        else {
            continue;
        };
        let store = Store::open(store);
        let digest = digest.get_ref();
        // Held: listed under name@version with the pinned digest, and the
        // component still hashes to it (a damaged blob is pulled again).
        let held = store
            .get(decl.name.get_ref(), decl.version.get_ref())
            .ok()
            .filter(|entry| entry.digest.eq_ignore_ascii_case(digest))
            .is_some_and(|entry| store.verify(&entry).is_ok());
        if held {
            tracing::debug!(plugin = %decl.id(), digest, "in the plugin store");
            continue;
        }
        if let Err((field, message)) = fetch(config, decl, source.get_ref(), digest, &store).await {
            errors.push(config.source.error(
                source.span(),
                format!("plugin[{i}].{field}"),
                format!("plugin {}: {message}", decl.id()),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Pull one plugin into `store`; on failure, the field to blame and why.
async fn fetch(
    config: &Config,
    decl: &PluginDecl,
    source: &str,
    digest: &str,
    store: &Store,
) -> Result<(), (&'static str, String)> {
    let blame_source = |e: RegistryError| ("source", e.to_string());
    let reference = parse_reference(source).map_err(blame_source)?;
    let connection = connection_for(config, reference.registry()).map_err(|e| ("source", e))?;
    let registry = Registry::connect(&reference, &connection).map_err(blame_source)?;
    let pulled = registry
        .pull(&reference, Some(digest))
        .await
        .map_err(|error| match error {
            RegistryError::Digest { .. } => ("digest", error.to_string()),
            error => blame_source(error),
        })?;
    let (manifest, schema) = stored_manifest(decl, source, &pulled).map_err(|e| ("source", e))?;
    store
        .add(
            &pulled.component,
            manifest,
            schema,
            pulled.signature.as_deref(),
        )
        .map_err(|e| ("source", e.to_string()))?;
    tracing::info!(
        plugin = %decl.id(),
        source,
        digest,
        signed = pulled.signature.is_some(),
        store = %store.root().display(),
        "pulled into the plugin store"
    );
    Ok(())
}

/// The manifest to store a pulled plugin under: the one published with it
/// (which must name the declared `name@version`), or, for a component
/// published by another tool, one made from the declaration and the
/// component's published imports and exports.
fn stored_manifest(
    decl: &PluginDecl,
    source: &str,
    pulled: &Pulled,
) -> Result<(Manifest, Option<String>), String> {
    if let Some(entry) = &pulled.entry {
        if entry.id() != decl.id() {
            return Err(format!(
                "{source} is published as {}, but is declared as {}",
                entry.id(),
                decl.id()
            ));
        }
        return Ok((entry.manifest.clone(), entry.config_schema_json.clone()));
    }
    let shape = pulled.shape.clone().unwrap_or_default();
    let exports = |interface: &str| {
        shape
            .exports
            .iter()
            .any(|e| e.starts_with(&format!("wsgate:plugin/{interface}@")))
    };
    let role = Role::of_exports(exports("upgrade"), exports("message")).ok_or_else(|| {
        format!(
            "{source} is not a wsgate plugin: it exports neither the upgrade nor the message hook"
        )
    })?;
    let mut capabilities: Vec<Capability> = shape
        .imports
        .iter()
        .filter_map(|import| Capability::of_import(import))
        .collect();
    capabilities.sort_by_key(|c| c.as_str());
    capabilities.dedup();
    let description = pulled
        .annotations
        .get(crate::artifact::DESCRIPTION_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| format!("pulled from {source}"));
    Ok((
        Manifest {
            name: decl.name.get_ref().clone(),
            version: decl.version.get_ref().clone(),
            description,
            role,
            capabilities,
            config_schema: None,
        },
        None,
    ))
}

/// How to reach the registry `host`: its `[[registry]]` table, or HTTPS
/// with the system's roots and no credentials.
pub fn connection_for(config: &Config, host: &str) -> Result<Connection, String> {
    match config
        .registries
        .iter()
        .find(|r| r.host.get_ref().eq_ignore_ascii_case(host))
    {
        Some(registry) => {
            Connection::from_config(registry).map_err(|e| format!("[[registry]] {host}: {e}"))
        }
        None => Ok(Connection {
            timeout: Some(std::time::Duration::from_secs(10)),
            ..Connection::default()
        }),
    }
}
