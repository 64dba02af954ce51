//! Configuration schemas (feature `schema`): each plugin's
//! `config.schema.json`, generated from its `Config` type, named by its
//! manifest (`wsgate-plugin.toml`) and shown by `wsgate plugin inspect`.
//!
//! A plugin keeps its schema current with a host-target test:
//!
//! ```ignore
//! #[test]
//! fn the_config_schema_is_current() {
//!     wsgate_plugin_sdk::schema::check::<Config>(env!("CARGO_MANIFEST_DIR")).unwrap();
//! }
//! ```
//!
//! with `#[cfg_attr(test, derive(schemars::JsonSchema))]` on `Config` and
//! the types it contains. Run the tests with `WSGATE_BLESS_SCHEMAS=1` to
//! (re)write the files after changing a configuration type.

use std::path::Path;

/// The schema of `T` as the text of `config.schema.json`.
pub fn render<T: schemars::JsonSchema>() -> String {
    let schema = schemars::schema_for!(T);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Compare `<crate_dir>/config.schema.json` with the schema of `T`; with
/// `WSGATE_BLESS_SCHEMAS=1` in the environment, write it instead.
pub fn check<T: schemars::JsonSchema>(crate_dir: &str) -> Result<(), String> {
    let path = Path::new(crate_dir).join("config.schema.json");
    let expected = render::<T>();
    if std::env::var_os("WSGATE_BLESS_SCHEMAS").is_some() {
        return std::fs::write(&path, &expected).map_err(|e| format!("{}: {e}", path.display()));
    }
    let found = std::fs::read_to_string(&path).unwrap_or_default();
    if found == expected {
        Ok(())
    } else {
        Err(format!(
            "{} is not the schema of the configuration type; run the plugin's tests with WSGATE_BLESS_SCHEMAS=1 to rewrite it",
            path.display()
        ))
    }
}
