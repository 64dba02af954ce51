//! The precompiled-plugin cache: keyed by content digest and engine, reused
//! across runtimes (restarts), and a damaged entry is recompiled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use wsgate_runtime::{PluginPool, Runtime};
use wsgate_tests::*;

fn json_transform() -> wsgate_config::PluginDecl {
    let text = config_text(&named_plugin_block(
        "json-transform",
        "1.0.0",
        "json-transform",
    ));
    wsgate_config::parse(&text, Path::new("cache.toml"))
        .unwrap()
        .plugins[0]
        .clone()
}

#[test]
fn precompiled_plugins_are_reused_across_runtimes_and_damaged_ones_rebuilt() {
    let dir = std::env::temp_dir().join(format!("wsgate-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let decl = json_transform();

    let first = Runtime::with_cache(Some(dir.clone())).unwrap();
    let plugin = first.load(&decl).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    let artifact = &entries[0];
    let name = artifact.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with(plugin.digest().trim_start_matches("sha256:")),
        "{name}"
    );
    assert!(name.ends_with(".cwasm"));

    // A new runtime (a restart) loads the artifact and the plugin works.
    let second = Runtime::with_cache(Some(dir.clone())).unwrap();
    let reloaded = second.load(&decl).unwrap();
    assert!(PluginPool::new(reloaded, r#"{"set": {"/a": 1}}"#).is_ok());

    // A damaged entry is rejected by wasmtime's checks and rebuilt.
    std::fs::write(artifact, b"not a precompiled component").unwrap();
    let third = Runtime::with_cache(Some(dir.clone())).unwrap();
    let rebuilt = third.load(&decl).unwrap();
    assert!(PluginPool::new(rebuilt, "{}").is_ok());
    assert!(std::fs::metadata(artifact).unwrap().len() > 1000);
    let _ = std::fs::remove_dir_all(&dir);
}
