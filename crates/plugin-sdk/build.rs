//! Embeds the WIT contract's text in a macro, so each plugin crate can
//! generate export glue for exactly the world it implements.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let wit_path = manifest_dir.join("../../wit/plugin.wit");
    println!("cargo:rerun-if-changed={}", wit_path.display());
    let wit = fs::read_to_string(&wit_path)?;
    if wit.contains("\"###") {
        return Err("the WIT text contains the raw-string delimiter \"###".into());
    }
    let source = format!(
        "#[doc(hidden)]\n#[macro_export]\nmacro_rules! __wsgate_generate {{\n    ($($options:tt)*) => {{\n        $crate::__wit_bindgen::generate!({{\n            inline: r###\"{wit}\"###,\n            $($options)*\n        }});\n    }};\n}}\n"
    );
    fs::write(
        PathBuf::from(env::var("OUT_DIR")?).join("generate_macro.rs"),
        source,
    )?;
    Ok(())
}
