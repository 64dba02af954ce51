//! Configuration that follows a mounted file: `[gateway] watch-config`.
//!
//! Every interval the configuration file and the files the running
//! configuration names (plugin components, the listener's certificate and
//! key) are looked at: the file's content, the others' size and
//! modification time, through symlinks (a Kubernetes ConfigMap is swapped by
//! moving a symlink). A change is deployed once it looks the same at the
//! next look (an editor's or a ConfigMap's several writes deploy once):
//! the very bytes looked at, with the checks of `wsgate deploy`. A refused
//! one is logged with file, line and field and changes nothing until the
//! files change again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use wsgate_config::Config;
use wsgate_proxy::Gateway;

/// What the files looked like: one entry per file, `None` when unreadable.
pub type Fingerprint = Vec<(PathBuf, Option<(u64, Option<SystemTime>)>)>;

/// Follow `path` every `every`, deploying what changed, for as long as the
/// gateway runs. `loaded` is what the files looked like when the running
/// configuration was read from them.
pub async fn follow(gateway: Gateway, path: PathBuf, every: Duration, loaded: Fingerprint) {
    let mut deployed = loaded;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut pending: Option<Fingerprint> = None;
    loop {
        tick.tick().await;
        let (now, text) = look(&path, &gateway.generation().config);
        if now == deployed {
            pending = None;
            continue;
        }
        // Changed: deploy once it holds still for one look.
        if pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue;
        }
        pending = None;
        // Whatever the outcome, this is the state deployed (or refused):
        // the next change from it is the next deploy.
        deployed = now;
        let Some(text) = text else {
            crate::log::report!(
                "{} changed: unreadable; still serving the previous configuration",
                path.display()
            );
            continue;
        };
        let source = format!("watch {}", path.display());
        match gateway.deploy_source(&text, &path, &source).await {
            Ok(generation) => {
                crate::log::report!(
                    "{} changed: deployed as generation {generation}",
                    path.display()
                );
            }
            Err(errors) => crate::log::report!(
                "{} changed: deploy refused; still serving the previous configuration:\n{errors}",
                path.display()
            ),
        }
    }
}

/// What the files look like now for a gateway running `config` read from
/// `path`.
pub fn fingerprint(path: &Path, config: &Config) -> Fingerprint {
    look(path, config).0
}

/// The configuration file's content hash and the named files' size and
/// time; and the file's text, when it is readable UTF-8.
fn look(path: &Path, config: &Config) -> (Fingerprint, Option<String>) {
    let text = std::fs::read(path)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let content = text.as_ref().map(|text| {
        let mut hasher = DefaultHasher::new();
        text.hash(&mut hasher);
        (hasher.finish(), None)
    });
    let mut files = vec![(path.to_path_buf(), content)];
    for named in named_files(path, config) {
        let seen = std::fs::metadata(&named)
            .ok()
            .map(|meta| (meta.len(), meta.modified().ok()));
        files.push((named, seen));
    }
    (files, text)
}

/// The files `config` names, relative ones resolved against the
/// configuration file's directory.
fn named_files(path: &Path, config: &Config) -> Vec<PathBuf> {
    let base = path.parent().unwrap_or(Path::new("."));
    // Plugins from the store (pulled from a registry or added) are pinned
    // by digest: their files never change, they only appear when pulled.
    let plugins = config
        .plugins
        .iter()
        .filter(|plugin| plugin.store_entry.is_none())
        .map(|plugin| plugin.path.clone())
        .filter(|p| !p.as_os_str().is_empty());
    let tls = config
        .gateway
        .tls
        .iter()
        .flat_map(|tls| [tls.certificate.clone(), tls.key.clone()]);
    plugins.chain(tls).map(|p| base.join(p)).collect()
}
