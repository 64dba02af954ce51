//! Embeds the WIT contract's text in a macro, so each plugin crate can
//! generate export glue for exactly the world it implements. The contract
//! is `wsgate:plugin@0.2.0`, or the frozen 0.1.0 with feature `contract-0-1`.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let (wit_file, version) = if env::var_os("CARGO_FEATURE_CONTRACT_0_1").is_some() {
        ("../../wit/plugin.wit", "0.1.0")
    } else {
        ("../../wit/0.2.0/plugin.wit", "0.2.0")
    };
    let wit_path = manifest_dir.join(wit_file);
    println!("cargo:rerun-if-changed={}", wit_path.display());
    let wit = fs::read_to_string(&wit_path)?;
    if wit.contains("\"###") {
        return Err("the WIT text contains the raw-string delimiter \"###".into());
    }
    // The export glue reuses the SDK's types and host imports.
    let mut with = String::new();
    for interface in ["types", "log", "state", "clocks", "context"] {
        with.push_str(&format!(
            "\"wsgate:plugin/{interface}@{version}\": ::wsgate_plugin_sdk::bindings::wsgate::plugin::{interface},\n"
        ));
    }
    if version != "0.1.0" {
        for interface in ["session", "quota"] {
            with.push_str(&format!(
                "\"wsgate:plugin/{interface}@{version}\": ::wsgate_plugin_sdk::bindings::wsgate::plugin::{interface},\n"
            ));
        }
    }
    let source = format!(
        "#[doc(hidden)]\n#[macro_export]\nmacro_rules! __wsgate_generate {{\n    (world: $world:literal) => {{\n        $crate::__wit_bindgen::generate!({{\n            inline: r###\"{wit}\"###,\n            world: $world,\n            runtime_path: \"::wsgate_plugin_sdk::__wit_bindgen::rt\",\n            with: {{\n{with}            }},\n        }});\n    }};\n}}\n"
    );
    fs::write(
        PathBuf::from(env::var("OUT_DIR")?).join("generate_macro.rs"),
        source,
    )?;
    Ok(())
}
