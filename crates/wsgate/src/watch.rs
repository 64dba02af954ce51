//! Configuration that follows a mounted file: `[gateway] watch-config`.
//!
//! Every interval the configuration file and the files it names (plugin
//! components, the listener's certificate and key) are looked at: the file's
//! content, the others' size and modification time, through symlinks (a
//! Kubernetes ConfigMap is swapped by moving a symlink). A change is
//! deployed once it looks the same at the next look (an editor's or a
//! ConfigMap's several writes deploy once), with the checks of `wsgate
//! deploy`; a refused one is logged with file, line and field and changes
//! nothing until the files change again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use wsgate_proxy::Gateway;

/// What the files looked like: one entry per file, `None` when unreadable.
type Fingerprint = Vec<(PathBuf, Option<(u64, Option<SystemTime>)>)>;

/// Follow `path` every `every`, deploying what changed, for as long as the
/// gateway runs.
pub async fn follow(gateway: Gateway, path: PathBuf, every: Duration) {
    let mut deployed = fingerprint(&path, &gateway);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut pending: Option<Fingerprint> = None;
    loop {
        tick.tick().await;
        let now = fingerprint(&path, &gateway);
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
        let source = format!("watch {}", path.display());
        match gateway.deploy_file(&path, &source).await {
            Ok(generation) => {
                eprintln!(
                    "{} changed: deployed as generation {generation}",
                    path.display()
                );
            }
            Err(errors) => eprintln!(
                "{} changed: deploy refused; still serving the previous configuration:\n{errors}",
                path.display()
            ),
        }
        // Either way, wait for the next change (the deployed files are now
        // the ones the running configuration names).
        deployed = fingerprint(&path, &gateway);
    }
}

/// The configuration file's content and the named files' size and time.
fn fingerprint(path: &Path, gateway: &Gateway) -> Fingerprint {
    let content = std::fs::read(path).ok().map(|bytes| {
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        (hasher.finish(), None)
    });
    let mut files = vec![(path.to_path_buf(), content)];
    for named in named_files(path, gateway) {
        let seen = std::fs::metadata(&named)
            .ok()
            .map(|meta| (meta.len(), meta.modified().ok()));
        files.push((named, seen));
    }
    files
}

/// The files the running configuration names, relative ones resolved
/// against the configuration file's directory.
fn named_files(path: &Path, gateway: &Gateway) -> Vec<PathBuf> {
    let base = path.parent().unwrap_or(Path::new("."));
    let generation = gateway.generation();
    let config = &generation.config;
    let plugins = config
        .plugins
        .iter()
        .map(|plugin| plugin.path.clone())
        .filter(|p| !p.as_os_str().is_empty());
    let tls = config
        .gateway
        .tls
        .iter()
        .flat_map(|tls| [tls.certificate.clone(), tls.key.clone()]);
    plugins.chain(tls).map(|p| base.join(p)).collect()
}
