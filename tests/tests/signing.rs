//! Signed plugins: verified at load against trusted keys; unsigned ones
//! refused where signatures are required, gateway-wide or per endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};

use wsgate_runtime::signing;
use wsgate_tests::*;

/// A private copy of a plugin component, so signature files stay out of the build.
fn copy_plugin(dir: &Path, krate: &str) -> PathBuf {
    let path = dir.join(format!("{krate}.wasm"));
    std::fs::copy(plugin_path(krate), &path).unwrap();
    path
}

fn block(name: &str, path: &Path) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\nversion = \"1.0.0\"\npath = \"{}\"\n\n",
        path.display()
    )
}

fn build(text: &str) -> Result<(), Vec<(String, String)>> {
    let config = wsgate_config::parse(text, Path::new("signed.toml")).unwrap();
    wsgate_proxy::Generation::build(0, config, runtime())
        .map(drop)
        .map_err(|errors| errors.0.into_iter().map(|e| (e.field, e.message)).collect())
}

#[test]
fn signatures_are_checked_against_trusted_keys_and_required_where_asked() {
    let dir = std::env::temp_dir().join(format!("wsgate-signing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let router = copy_plugin(&dir, "static-router");
    let tagger = copy_plugin(&dir, "tagger-v1");
    let acme = signing::generate_key().unwrap();
    let stranger = signing::generate_key().unwrap();
    let sign = |path: &Path, name: &str, secret: &str| {
        let signature = signing::sign(name, secret, &std::fs::read(path).unwrap()).unwrap();
        std::fs::write(format!("{}.sig", path.display()), signature).unwrap();
    };
    sign(&router, "acme", &acme.secret);
    let trusted = format!(
        "[signing]\ntrusted-keys = [{{ name = \"acme\", public-key = \"{}\" }}]\n",
        acme.public
    );
    let endpoint = |require: bool| {
        format!(
            "[[endpoint]]\npath = \"/s\"\nrequire-signed = {require}\nallowed-upstreams = [\"ws://127.0.0.1:1\"]\n\
             upgrade = [{{ plugin = \"static-router@1.0.0\", config = {{ url = \"ws://127.0.0.1:1/\" }} }}]\n\
             client-messages = [{{ plugin = \"tagger@1.0.0\" }}]\n"
        )
    };
    let config = |signing: &str, require_on_endpoint: bool| {
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n\n{signing}\n{}{}{}",
            block("static-router", &router),
            block("tagger", &tagger),
            endpoint(require_on_endpoint)
        )
    };

    // Signed by a trusted key, unsigned allowed: loads.
    assert_eq!(build(&config(&trusted, false)), Ok(()));

    // The endpoint requires signed plugins: the unsigned tagger is refused there.
    let errors = build(&config(&trusted, true)).err().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "endpoint[0].client-messages[0].plugin");
    assert!(
        errors[0]
            .1
            .contains("tagger@1.0.0 is unsigned, and endpoint /s requires signed plugins")
    );

    // Gateway-wide requirement: refused at load, naming the missing file.
    let required = trusted.replace("[signing]\n", "[signing]\nrequire-signed = true\n");
    let errors = build(&config(&required, false)).err().unwrap();
    assert_eq!(errors[0].0, "plugin[1].signature");
    assert!(errors[0].1.contains("tagger@1.0.0: unsigned"), "{errors:?}");

    // Signed by a key the gateway does not trust.
    sign(&tagger, "stranger", &stranger.secret);
    let errors = build(&config(&trusted, false)).err().unwrap();
    assert!(
        errors[0]
            .1
            .contains("signed by `stranger`, which is not among the trusted keys"),
        "{errors:?}"
    );

    // Signed by a trusted name, but the component changed after signing.
    sign(&tagger, "acme", &acme.secret);
    assert_eq!(build(&config(&required, true)), Ok(()));
    let mut bytes = std::fs::read(&tagger).unwrap();
    bytes.push(0);
    std::fs::write(&tagger, bytes).unwrap();
    let errors = build(&config(&trusted, false)).err().unwrap();
    assert!(errors[0].1.contains("does not verify"), "{errors:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
