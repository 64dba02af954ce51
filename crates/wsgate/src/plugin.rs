//! `wsgate plugin …`: the plugin store and signing. Results are the
//! commands' output, on stdout; problems go to stderr with a non-zero exit.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use wsgate_runtime::{Runtime, signing};
use wsgate_store::{Entry, Manifest, Role, Store};

/// The store used when `--store` is not given.
const DEFAULT_STORE: &str = ".wsgate/store";

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Add a component to the plugin store under its manifest: checks that
    /// the component fits the contract, that its role is the manifest's and
    /// that its imports need no capability the manifest does not request;
    /// prints the `[[plugin]]` entry that pins it.
    Add {
        /// The component (`.wasm`). Its signature (`<component>.sig`) is
        /// stored with it when present.
        component: PathBuf,
        /// The plugin's manifest.
        #[arg(long, default_value = "wsgate-plugin.toml")]
        manifest: PathBuf,
        /// The plugin store.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
    },
    /// List the plugins in the store.
    List {
        /// The plugin store.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
    },
    /// Describe a stored plugin (`name@version`) or a component file:
    /// manifest, digest, role, imports with the capabilities they need,
    /// exports, signature and configuration schema.
    Inspect {
        /// `name@version` in the store, or a `.wasm` file.
        plugin: String,
        /// The plugin store.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
    },
    /// Check stored plugins: each component still has its digest and, with
    /// `--config`, each signature verifies with the configuration's trusted
    /// keys (and is present if `require-signed` is set). Exits non-zero on
    /// any failure.
    Verify {
        /// `name@version` to check (default: every stored plugin).
        plugins: Vec<String>,
        /// The plugin store.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
        /// A gateway configuration whose `[signing]` table to apply.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create an ed25519 key pair: the secret key goes to `--out` (mode 0600),
    /// the `trusted-keys` entry for the gateway's configuration is printed.
    Keygen {
        /// The key's name, as signatures and `trusted-keys` will name it.
        #[arg(long)]
        name: String,
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a component: writes `<component>.sig` next to it.
    Sign {
        /// The secret key file (from `wsgate plugin keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The key's name.
        #[arg(long)]
        name: String,
        /// The component (`.wasm`) to sign.
        component: PathBuf,
    },
}

/// Run one `wsgate plugin` command.
pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Add {
            component,
            manifest,
            store,
        } => add(&component, &manifest, &Store::open(store)),
        PluginCommand::List { store } => list(&Store::open(store)),
        PluginCommand::Inspect { plugin, store } => inspect(&plugin, &Store::open(store)),
        PluginCommand::Verify {
            plugins,
            store,
            config,
        } => verify(&plugins, &Store::open(store), config.as_deref()),
        PluginCommand::Keygen { name, out } => keygen(&name, &out),
        PluginCommand::Sign {
            key,
            name,
            component,
        } => sign(&key, &name, &component),
    }
}

fn add(component: &Path, manifest_path: &Path, store: &Store) -> anyhow::Result<()> {
    let (manifest, schema) = Manifest::read(manifest_path)?;
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let info = Runtime::new()?
        .inspect(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", component.display()))?;
    manifest
        .check_component(
            Role::of_exports(info.roles.upgrade, info.roles.message),
            &info.imports,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?;
    let signature = signature_path(component);
    let signature = std::fs::read_to_string(&signature).ok();
    let entry = store.add(&bytes, manifest, schema, signature.as_deref())?;
    println!(
        "added {} {} ({} bytes{}) to {}",
        entry.id(),
        entry.digest,
        entry.size,
        if signature.is_some() { ", signed" } else { "" },
        store.root().display()
    );
    println!("\npin it in the gateway's configuration (with [gateway] plugin-store):\n");
    println!("[[plugin]]");
    println!("name = \"{}\"", entry.manifest.name);
    println!("version = \"{}\"", entry.manifest.version);
    println!("digest = \"{}\"", entry.digest);
    println!("grants = [{}]", quoted_capabilities(&entry));
    Ok(())
}

fn quoted_capabilities(entry: &Entry) -> String {
    entry
        .manifest
        .capabilities
        .iter()
        .map(|c| format!("\"{}\"", c.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list(store: &Store) -> anyhow::Result<()> {
    let entries = store.list()?;
    if entries.is_empty() {
        println!("no plugins in {}", store.root().display());
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:<8} {:<10} {:<72} CAPABILITIES",
        "NAME", "VERSION", "ROLE", "SIGNED", "DIGEST"
    );
    for entry in entries {
        println!(
            "{:<24} {:<10} {:<8} {:<10} {:<72} {}",
            entry.manifest.name,
            entry.manifest.version,
            entry.manifest.role.as_str(),
            signer(store, &entry).unwrap_or_else(|| "no".to_string()),
            entry.digest,
            quoted_capabilities(&entry).replace('"', "")
        );
    }
    Ok(())
}

/// The name of the key that signed `entry`, as its signature file says.
fn signer(store: &Store, entry: &Entry) -> Option<String> {
    let signature = store.signature(&entry.digest)?;
    Some(signing::signer(&signature).unwrap_or_else(|| "malformed".to_string()))
}

fn inspect(plugin: &str, store: &Store) -> anyhow::Result<()> {
    let (bytes, entry) = match plugin.split_once('@') {
        Some((name, version)) if !plugin.ends_with(".wasm") => {
            let entry = store.get(name, version)?;
            (store.verify(&entry)?, Some(entry))
        }
        _ => (
            std::fs::read(plugin).with_context(|| format!("cannot read {plugin}"))?,
            None,
        ),
    };
    let info = Runtime::new()?
        .inspect(&bytes)
        .map_err(|e| anyhow::anyhow!("{plugin}: {e}"))?;
    match &entry {
        Some(entry) => {
            println!("plugin       {}", entry.id());
            println!("description  {}", entry.manifest.description);
            println!("role         {}", entry.manifest.role.as_str());
            println!("digest       {}", entry.digest);
            println!("size         {} bytes", entry.size);
            println!(
                "signed       {}",
                signer(store, entry).unwrap_or_else(|| "no".to_string())
            );
            println!(
                "requests     {}",
                quoted_capabilities(entry).replace('"', "")
            );
        }
        None => {
            println!("component    {plugin}");
            println!("digest       {}", wsgate_store::digest_of(&bytes));
            println!("size         {} bytes", bytes.len());
            let role = Role::of_exports(info.roles.upgrade, info.roles.message);
            println!("role         {}", role.map_or("none", Role::as_str));
        }
    }
    println!("contract     {}", info.contract);
    let needed: Vec<_> = info.capabilities().iter().map(|c| c.as_str()).collect();
    println!("needs        {}", needed.join(", "));
    println!("imports");
    for (import, capability) in &info.imports {
        match capability {
            Some(capability) => println!("  {import}  (capability `{}`)", capability.as_str()),
            None => println!("  {import}  (no capability: reaches nothing)"),
        }
    }
    println!("exports");
    for export in &info.exports {
        println!("  {export}");
    }
    if let Some(schema) = entry.as_ref().and_then(|e| e.config_schema_json.as_ref()) {
        println!("config schema\n{schema}");
    }
    Ok(())
}

fn verify(plugins: &[String], store: &Store, config: Option<&Path>) -> anyhow::Result<()> {
    let signing = match config {
        Some(path) => Some(
            wsgate_config::load(path)
                .map_err(anyhow::Error::msg)?
                .signing,
        ),
        None => None,
    };
    let entries = if plugins.is_empty() {
        store.list()?
    } else {
        plugins
            .iter()
            .map(|plugin| {
                let (name, version) = plugin
                    .split_once('@')
                    .with_context(|| format!("`{plugin}` is not name@version"))?;
                Ok(store.get(name, version)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let mut failures = 0;
    for entry in &entries {
        match verify_entry(store, entry, signing.as_ref()) {
            Ok(status) => println!("ok      {} {} {status}", entry.id(), entry.digest),
            Err(error) => {
                failures += 1;
                println!("FAILED  {} {error:#}", entry.id());
            }
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} plugins failed verification",
            entries.len()
        );
    }
    println!("{} plugins verified", entries.len());
    Ok(())
}

/// Check one entry's digest and, given a signing policy, its signature.
fn verify_entry(
    store: &Store,
    entry: &Entry,
    signing: Option<&wsgate_config::Signing>,
) -> anyhow::Result<String> {
    let bytes = store.verify(entry)?;
    let signature = store.signature(&entry.digest);
    match (signing, signature) {
        (Some(policy), Some(signature)) => {
            let trusted = policy
                .trusted_keys
                .iter()
                .map(|k| (k.name.as_str(), k.public_key.as_str()));
            let key = signing::verify(&signature, &bytes, trusted)?;
            Ok(format!("signed by {key} (trusted)"))
        }
        (Some(policy), None) if policy.require_signed => {
            bail!("unsigned, and the configuration's [signing] require-signed is set")
        }
        (_, None) => Ok("unsigned".to_string()),
        (None, Some(signature)) => Ok(format!(
            "signed by {} (not checked: pass --config for trusted keys)",
            signing::signer(&signature).unwrap_or_else(|| "malformed".to_string())
        )),
    }
}

fn keygen(name: &str, out: &Path) -> anyhow::Result<()> {
    let pair = signing::generate_key()?;
    write_secret(out, &pair.secret).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "secret key written to {} (keep it off the gateway)",
        out.display()
    );
    println!("add to the gateway's configuration:\n");
    println!("[signing]");
    println!(
        "trusted-keys = [{{ name = \"{name}\", public-key = \"{}\" }}]",
        pair.public
    );
    Ok(())
}

fn sign(key: &Path, name: &str, component: &Path) -> anyhow::Result<()> {
    let secret =
        std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let signature = signing::sign(name, &secret, &bytes)?;
    let out = signature_path(component);
    std::fs::write(&out, signature).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "signed {} as {name}: {}",
        component.display(),
        out.display()
    );
    Ok(())
}

fn signature_path(component: &Path) -> PathBuf {
    let mut path = component.as_os_str().to_owned();
    path.push(".sig");
    path.into()
}

/// Write a secret readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())
}
