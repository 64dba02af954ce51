//! The plugin store through the gateway: plugins pinned as `name@version`
//! with a digest and loaded from the store, two versions of one plugin side
//! by side, and every way a pin can be wrong refused with a clear error.
//! Also: every plugin in the repository has a manifest that tells the truth.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use wsgate_store::{Entry, Manifest, Role, Store};
use wsgate_tests::*;

/// Add the plugin crate `krate` to `store` under its own manifest.
fn add(store: &Store, krate: &str) -> Entry {
    let (manifest, schema) = Manifest::read(
        &repo_root()
            .join("plugins")
            .join(krate)
            .join("wsgate-plugin.toml"),
    )
    .unwrap();
    let bytes = std::fs::read(plugin_path(krate)).unwrap();
    store.add(&bytes, manifest, schema, None).unwrap()
}

/// A `[[plugin]]` entry pinning `name@version` from the store by `digest`.
fn pinned(name: &str, version: &str, digest: &str) -> String {
    format!("[[plugin]]\nname = \"{name}\"\nversion = \"{version}\"\ndigest = \"{digest}\"\n\n")
}

/// The whole configuration: the store, the pins, and two endpoints, `/v1`
/// and `/v2`, with `tagger@1.0.0` and `tagger@2.0.0` on client messages.
fn config(store: &Path, pins: &str, echo: std::net::SocketAddr) -> String {
    let router = named_plugin_block("static-router", "1.0.0", "static-router");
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nplugin-store = \"{}\"\n\n{router}{pins}{}{}",
        store.display(),
        endpoint(
            "/v1",
            echo,
            "client-messages = [{ plugin = \"tagger@1.0.0\" }]"
        ),
        endpoint(
            "/v2",
            echo,
            "client-messages = [{ plugin = \"tagger@2.0.0\" }]"
        ),
    )
}

async fn try_start(text: &str) -> Result<wsgate_proxy::Gateway, String> {
    init_logging();
    let config = wsgate_config::parse(text, Path::new("store.toml")).map_err(|e| e.to_string())?;
    wsgate_proxy::Gateway::start(config, runtime())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn two_versions_pinned_from_the_store_serve_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let v1 = add(&store, "tagger-v1");
    let v2 = add(&store, "tagger-v2");
    assert_ne!(v1.digest, v2.digest);
    let echo = start_echo().await;
    let pins = pinned("tagger", "1.0.0", &v1.digest) + &pinned("tagger", "2.0.0", &v2.digest);
    let gateway = try_start(&config(dir.path(), &pins, echo)).await.unwrap();

    let mut one = connect(&gateway, "/v1").await;
    let mut two = connect(&gateway, "/v2").await;
    for n in 0..3 {
        send_text(&mut one, &format!("{{\"n\":{n}}}")).await;
        send_text(&mut two, &format!("{{\"n\":{n}}}")).await;
        assert_eq!(
            next_text(&mut one).await,
            format!("{{\"n\":{n},\"tagged-by\":\"tagger@1.0.0\"}}")
        );
        assert_eq!(
            next_text(&mut two).await,
            format!("{{\"n\":{n},\"tagged-by\":\"tagger@2.0.0\"}}")
        );
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_wrong_pin_or_a_damaged_store_is_refused_naming_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let v1 = add(&store, "tagger-v1");
    let v2 = add(&store, "tagger-v2");
    let echo = start_echo().await;
    let refused = |pins: String| {
        let text = config(dir.path(), &pins, echo);
        async move {
            try_start(&text)
                .await
                .err()
                .expect("the configuration was accepted")
        }
    };

    // tagger@1.0.0 pinned with 2.0.0's digest: the bytes exist, but the
    // store's index says 1.0.0 is something else.
    let error =
        refused(pinned("tagger", "1.0.0", &v2.digest) + &pinned("tagger", "2.0.0", &v2.digest))
            .await;
    assert!(
        error.contains("tagger@1.0.0")
            && error.contains(&format!("the plugin store has it as {}", v1.digest)),
        "{error}"
    );

    // No path and no digest: the configuration itself says what is missing.
    let error = refused(
        "[[plugin]]\nname = \"tagger\"\nversion = \"1.0.0\"\n\n".to_string()
            + &pinned("tagger", "2.0.0", &v2.digest),
    )
    .await;
    assert!(
        error.contains("plugin[1].path") && error.contains("pinned by its `digest`"),
        "{error}"
    );

    // A version the store does not list (its index entry is gone).
    std::fs::remove_file(store.entry_path("tagger", "2.0.0")).unwrap();
    let error =
        refused(pinned("tagger", "1.0.0", &v1.digest) + &pinned("tagger", "2.0.0", &v2.digest))
            .await;
    assert!(
        error.contains("tagger@2.0.0") && error.contains("not in the plugin store"),
        "{error}"
    );

    // A blob changed on disk after it was added.
    std::fs::write(store.blob_path(&v1.digest), b"not the component").unwrap();
    let error =
        refused(pinned("tagger", "1.0.0", &v1.digest) + &pinned("tagger", "2.0.0", &v2.digest))
            .await;
    assert!(
        error.contains("tagger@1.0.0") && error.contains("digest mismatch"),
        "{error}"
    );
}

#[test]
fn every_plugin_in_the_repository_has_a_truthful_manifest() {
    let mut checked = 0;
    let mut components = Vec::new();
    for dir in std::fs::read_dir(repo_root().join("plugins")).unwrap() {
        let dir = dir.unwrap().path();
        if dir.join("Cargo.toml").exists() {
            let krate = dir.file_name().unwrap().to_str().unwrap().to_string();
            components.push((dir.join("wsgate-plugin.toml"), plugin_path(&krate)));
        }
    }
    for language in ["javascript", "python", "c"] {
        let root = repo_root().join("plugins/languages").join(language);
        for dir in std::fs::read_dir(root).unwrap() {
            let manifest = dir.unwrap().path().join("wsgate-plugin.toml");
            if manifest.exists() {
                let (parsed, _) = Manifest::read(&manifest).unwrap();
                components.push((manifest, language_plugin_path(&parsed.name)));
            }
        }
    }
    for (manifest_path, component) in components {
        let (manifest, schema) = Manifest::read(&manifest_path)
            .unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
        assert!(
            schema.is_some() || manifest.name.starts_with("test-"),
            "{}: no config-schema",
            manifest_path.display()
        );
        let info = cached_runtime()
            .inspect(&std::fs::read(&component).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", component.display()));
        manifest
            .check_component(
                Role::of_exports(info.roles.upgrade, info.roles.message),
                &info.imports,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} manifests found");
}
