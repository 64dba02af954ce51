//! Plugins from an OCI registry: Debian's `docker-registry` (the CNCF
//! distribution registry), started by each test. `wsgate plugin push` and
//! `pull` through it, in the Wasm artifact layout other OCI tools read;
//! `[[plugin]] source = "oci://…"` pulled once into the plugin store,
//! checked against its digest and signature; a registry that is down or
//! wrong refuses a deploy (the running generation keeps serving), and a
//! restart with the registry down is served from the store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Output;

use wsgate_tests::{Authority, next_text, send_text, start_echo, upgrade_as};

mod common;
use common::registry::{DockerRegistry, Options, PASSWORD};
use common::{GatewayProcess, TempDir, keygen_and_sign, run_with_path, stderr, wsgate};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A copy of plugin crate `name`'s component in `dir`, and its manifest.
fn component(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let copy = dir.join(format!("{name}.wasm"));
    std::fs::copy(wsgate_tests::plugin_path(name), &copy).unwrap();
    let manifest = wsgate_tests::repo_root().join(format!("plugins/{name}/wsgate-plugin.toml"));
    (copy, manifest)
}

/// `wsgate plugin push COMPONENT REFERENCE --manifest … <extra>`.
fn push(component: &(PathBuf, PathBuf), reference: &str, extra: &[&str]) -> Output {
    wsgate()
        .args(["plugin", "push"])
        .arg(&component.0)
        .arg(reference)
        .arg("--manifest")
        .arg(&component.1)
        .args(extra)
        .env("WSGATE_REGISTRY_PASSWORD", PASSWORD)
        .output()
        .unwrap()
}

/// The value of `key  value` (or `key = "value"`) in a command's output.
fn field(output: &str, key: &str) -> String {
    output
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(key))
        .map(|rest| {
            rest.trim()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_else(|| panic!("no {key} in: {output}"))
}

#[test]
fn push_then_pull_by_digest_in_the_wasm_artifact_layout_with_its_signature() {
    let dir = TempDir::new("registry-push-pull");
    let registry = DockerRegistry::start(&dir.0.join("registry"), &Options::default());
    let plugin = component(&dir.0, "static-router");
    let trusted = keygen_and_sign(&dir.0, &plugin.0);
    let reference = format!("oci://{}/wsgate/static-router:1.0.0", registry.address);

    let output = push(&plugin, &reference, &["--plain-http"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let pushed = stdout(&output);
    let manifest_digest = field(&pushed, "manifest");
    let component_digest = field(&pushed, "component");
    assert_eq!(
        component_digest,
        wsgate_store::digest_of(&std::fs::read(&plugin.0).unwrap())
    );
    assert!(
        pushed.contains(&format!("source = \"{reference}\"")),
        "{pushed}"
    );

    // What the registry holds, read over plain HTTP as any OCI tool would:
    // the Wasm artifact layout, and the signature beside it.
    let (status, body) = registry.get(&format!(
        "/v2/wsgate/static-router/manifests/{manifest_digest}"
    ));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["layers"][0]["digest"], component_digest.as_str());
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let (_, config) = registry.get(&format!("/v2/wsgate/static-router/blobs/{config_digest}"));
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    assert!(
        config["component"]["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("wsgate:plugin/upgrade@")),
        "{config}"
    );
    let (_, tags) = registry.get("/v2/wsgate/static-router/tags/list");
    let signature_tag = format!("{}.sig", manifest_digest.replace(':', "-"));
    assert!(
        String::from_utf8_lossy(&tags).contains(&signature_tag),
        "{}",
        String::from_utf8_lossy(&tags)
    );

    // Pull by manifest digest into an empty store, checking the signature
    // against a configuration's trusted keys.
    let store = dir.0.join("store");
    let config = dir.0.join("signing.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[signing]\nrequire-signed = true\n{trusted}\n"
        ),
    )
    .unwrap();
    let by_digest = format!(
        "oci://{}/wsgate/static-router@{manifest_digest}",
        registry.address
    );
    let pull = |reference: &str, extra: &[&str]| {
        wsgate()
            .args(["plugin", "pull", reference, "--plain-http", "--store"])
            .arg(&store)
            .args(extra)
            .output()
            .unwrap()
    };
    let output = pull(&by_digest, &["--config", config.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("signed"), "{}", stdout(&output));
    let stored = wsgate_store::Store::open(&store);
    let entry = stored.get("static-router", "1.0.0").unwrap();
    assert_eq!(entry.digest, component_digest);
    assert_eq!(
        stored.verify(&entry).unwrap(),
        std::fs::read(&plugin.0).unwrap()
    );
    assert!(
        stored
            .signature(&entry.digest)
            .unwrap()
            .starts_with("ed25519 acme ")
    );

    // A pin the registry's component does not have is refused, naming both.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let output = pull(&reference, &["--digest", &wrong]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains(&wrong) && error.contains(&component_digest),
        "{error}"
    );

    // A tag the registry does not have.
    let output = pull(&reference.replace(":1.0.0", ":9.9.9"), &[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is not in the registry"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_component_pushed_by_another_tool_in_the_cncf_layout_is_pulled() {
    let dir = TempDir::new("registry-interop");
    let registry = DockerRegistry::start(&dir.0.join("registry"), &Options::default());
    // The layout `wkg oci push` writes: no wsgate annotations.
    let bytes = std::fs::read(wsgate_tests::plugin_path("passthrough")).unwrap();
    let layer = registry.push_blob("others/passthrough", &bytes);
    let config = format!(
        "{{\"architecture\":\"wasm\",\"os\":\"wasip2\",\"layerDigests\":[\"{layer}\"],\
         \"component\":{{\"exports\":[\"wsgate:plugin/lifecycle@0.2.0\",\"wsgate:plugin/message@0.2.0\"],\"imports\":[]}}}}"
    );
    let config_digest = registry.push_blob("others/passthrough", config.as_bytes());
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.wasm.config.v0+json\",\"digest\":\"{config_digest}\",\"size\":{}}},\
         \"layers\":[{{\"mediaType\":\"application/wasm\",\"digest\":\"{layer}\",\"size\":{}}}]}}",
        config.len(),
        bytes.len()
    );
    let (status, _, body) = registry.request(
        "PUT",
        "/v2/others/passthrough/manifests/2.0.0",
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));

    let store = dir.0.join("store");
    let reference = format!("oci://{}/others/passthrough:2.0.0", registry.address);
    let output = wsgate()
        .args(["plugin", "pull", &reference, "--plain-http", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    // Named after the repository and tag, its role from its exports.
    let entry = wsgate_store::Store::open(&store)
        .get("passthrough", "2.0.0")
        .unwrap();
    assert_eq!(entry.digest, layer);
    assert_eq!(entry.manifest.role, wsgate_store::Role::Message);

    // Something that is not a Wasm component is refused as such.
    let (status, _, _) = registry.request(
        "PUT",
        "/v2/others/passthrough/manifests/image",
        "application/vnd.oci.image.manifest.v1+json",
        manifest
            .replace(
                "application/vnd.wasm.config.v0+json",
                "application/vnd.oci.image.config.v1+json",
            )
            .as_bytes(),
    );
    assert_eq!(status, 201);
    let output = wsgate()
        .args([
            "plugin",
            "pull",
            &reference.replace(":2.0.0", ":image"),
            "--plain-http",
            "--store",
        ])
        .arg(&store)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not a WebAssembly component artifact"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_registry_with_its_own_ca_is_trusted_only_with_that_ca() {
    let dir = TempDir::new("registry-tls");
    let authority = Authority::new("wsgate test registry CA");
    let certificate = authority.issue(&dir.0, "registry", &["127.0.0.1"], false);
    let ca = authority.write(&dir.0, "ca.pem");
    let registry = DockerRegistry::start(
        &dir.0.join("registry"),
        &Options {
            htpasswd: true,
            tls: Some((&certificate.0, &certificate.1)),
        },
    );
    let plugin = component(&dir.0, "static-router");
    let reference = format!("oci://{}/wsgate/static-router:1.0.0", registry.address);

    let output = push(&plugin, &reference, &["--username", "alice"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("certificate"),
        "{}",
        stderr(&output)
    );

    let with_ca = ["--username", "alice", "--ca-bundle", ca.to_str().unwrap()];
    let output = push(&plugin, &reference, &with_ca);
    assert!(output.status.success(), "{}", stderr(&output));

    // The right CA and the wrong password: the registry refuses.
    let output = wsgate()
        .args(["plugin", "pull", &reference, "--store"])
        .arg(dir.0.join("store"))
        .args(with_ca)
        .env("WSGATE_REGISTRY_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("refused"), "{}", stderr(&output));
}

/// Where a gateway finds its plugins: the registry, the store, `alice`'s
/// password file and the `trusted-keys` line its signatures need.
struct Sources<'a> {
    registry: &'a str,
    store: &'a Path,
    password_file: &'a Path,
    trusted: &'a str,
}

/// A gateway configuration pulling `plugins` (name, digest) as `sources`
/// say, signatures required, routing `/echo` to `echo`.
fn pulling_config(
    sources: &Sources<'_>,
    echo: std::net::SocketAddr,
    plugins: &[(&str, &str)],
    message_chain: &str,
) -> String {
    let Sources {
        registry,
        store,
        password_file,
        trusted,
    } = sources;
    let mut text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nplugin-store = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [signing]\nrequire-signed = true\n{trusted}\n\n\
         [[registry]]\nhost = \"{registry}\"\nplain-http = true\nusername = \"alice\"\n\
         password-file = \"{}\"\ntimeout = \"5s\"\n\n",
        store.display(),
        password_file.display()
    );
    for (name, digest) in plugins {
        text.push_str(&format!(
            "[[plugin]]\nname = \"{name}\"\nversion = \"1.0.0\"\n\
             source = \"oci://{registry}/wsgate/{name}:1.0.0\"\ndigest = \"{digest}\"\n\n"
        ));
    }
    text.push_str(&format!(
        "[[endpoint]]\npath = \"/echo\"\nallowed-upstreams = [\"ws://{echo}\"]\n{message_chain}\n\
         [[endpoint.upgrade]]\nplugin = \"static-router@1.0.0\"\nconfig = {{ url = \"ws://{echo}/\" }}\n"
    ));
    text
}

#[test]
fn a_gateway_pulls_its_plugins_once_and_serves_from_its_store_when_the_registry_is_down() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(start_echo());
    let dir = TempDir::new("registry-gateway");
    let storage = dir.0.join("registry");
    let registry = DockerRegistry::start(
        &storage,
        &Options {
            htpasswd: true,
            tls: None,
        },
    );
    let address = registry.address.clone();
    let mut digests = Vec::new();
    let mut trusted = String::new();
    for name in ["static-router", "passthrough"] {
        let plugin = component(&dir.0, name);
        if trusted.is_empty() {
            trusted = keygen_and_sign(&dir.0, &plugin.0);
        } else {
            let output = wsgate()
                .args(["plugin", "sign", "--name", "acme", "--key"])
                .arg(dir.0.join("acme.key"))
                .arg(&plugin.0)
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", stderr(&output));
        }
        let reference = format!("oci://{address}/wsgate/{name}:1.0.0");
        let output = push(
            &plugin,
            &reference,
            &["--plain-http", "--username", "alice"],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        digests.push(field(&stdout(&output), "component"));
    }
    let password = dir.0.join("registry-password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let store = dir.0.join("store");
    let write = |name: &str, text: String| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let router = [("static-router", digests[0].as_str())];
    let sources = Sources {
        registry: &address,
        store: &store,
        password_file: &password,
        trusted: &trusted,
    };
    let first = write("first.toml", pulling_config(&sources, echo, &router, ""));

    // The first start pulls the router into the empty store and serves.
    let gateway = GatewayProcess::start(&first, &dir.0.join("first.log"));
    let pulled = gateway.wait_for("pulled into the plugin store");
    assert!(pulled.contains("signed=true"), "{pulled}");
    let listen = gateway.listen_address();
    let admin = gateway.admin_address().to_string();
    let echoes = |text: &str| {
        runtime.block_on(async {
            let mut client = upgrade_as(&listen, "/echo", "").await.unwrap();
            send_text(&mut client, text).await;
            next_text(&mut client).await
        })
    };
    assert_eq!(echoes("one"), "one");
    let deploy = |config: &Path| run_with_path(&["deploy", "--admin", &admin, "--config"], config);

    // A pin that is not what the registry holds: refused, naming the
    // plugin's digest field; the running generation keeps serving.
    let chain = "client-messages = [{ plugin = \"passthrough@1.0.0\" }]";
    let wrong = write(
        "wrong.toml",
        pulling_config(
            &sources,
            echo,
            &[router[0], ("passthrough", digests[0].as_str())],
            chain,
        ),
    );
    let output = deploy(&wrong);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("plugin[1].digest")
            && error.contains("passthrough@1.0.0")
            && error.contains(&digests[1]),
        "{error}"
    );
    assert_eq!(echoes("two"), "two");

    // The registry goes down: a deploy that needs a plugin the store lacks
    // is refused with the registry named; the running generation serves.
    registry.stop();
    let both = [router[0], ("passthrough", digests[1].as_str())];
    let second = write("second.toml", pulling_config(&sources, echo, &both, chain));
    let output = deploy(&second);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("plugin[1].source")
            && error.contains(&format!("registry {address} is unreachable")),
        "{error}"
    );
    assert_eq!(echoes("three"), "three");

    // Back up (same storage, a new port): the deploy pulls the missing plugin.
    let registry = DockerRegistry::start(
        &storage,
        &Options {
            htpasswd: true,
            tls: None,
        },
    );
    let second = write(
        "second.toml",
        pulling_config(
            &Sources {
                registry: &registry.address,
                ..sources
            },
            echo,
            &both,
            chain,
        ),
    );
    let output = deploy(&second);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(echoes("four"), "four");
    gateway.stop();

    // A restart with the registry down needs nothing from it.
    registry.stop();
    let gateway = GatewayProcess::start(&second, &dir.0.join("restart.log"));
    let listen_again = gateway.listen_address();
    let echoed = runtime.block_on(async {
        let mut client = upgrade_as(&listen_again, "/echo", "").await.unwrap();
        send_text(&mut client, "five").await;
        next_text(&mut client).await
    });
    assert_eq!(echoed, "five");
    gateway.stop();
}
