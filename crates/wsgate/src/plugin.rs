//! `wsgate plugin …`: the plugin store and signing. Results are the
//! commands' output, on stdout; problems go to stderr with a non-zero exit.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use wsgate_registry::{Connection, Registry, artifact};
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
    /// Publish a component in an OCI registry (the CNCF Wasm artifact
    /// layout), with its manifest and, when `<component>.sig` exists, its
    /// signature (tagged `sha256-<manifest hex>.sig`); prints the
    /// `[[plugin]]` entry that pulls it.
    Push {
        /// The component (`.wasm`).
        component: PathBuf,
        /// Where to publish it: `oci://HOST[:PORT]/REPOSITORY:TAG`.
        reference: String,
        /// The plugin's manifest.
        #[arg(long, default_value = "wsgate-plugin.toml")]
        manifest: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Fetch a plugin from an OCI registry into the plugin store (checking
    /// its digest and, with `--config`, its signature); prints the
    /// `[[plugin]]` entry that pins it.
    Pull {
        /// `oci://HOST[:PORT]/REPOSITORY:TAG` or `…@sha256:<manifest digest>`.
        reference: String,
        /// The component digest to insist on (`sha256:…`).
        #[arg(long)]
        digest: Option<String>,
        /// The name to store it under, for a component published without a
        /// wsgate manifest (default: the last part of the repository).
        #[arg(long)]
        name: Option<String>,
        /// The version to store it under, for a component published without
        /// a wsgate manifest (default: the tag).
        #[arg(long)]
        version: Option<String>,
        /// The plugin store.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
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

/// How to reach the registry, for `push` and `pull`.
#[derive(clap::Args)]
pub struct RegistryArgs {
    /// A gateway configuration whose `[[registry]]` entry for the host to use
    /// (and, for `pull`, whose `[signing]` to check the signature with).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Speak plain HTTP to the registry.
    #[arg(long)]
    plain_http: bool,
    /// Trust these CA certificates (PEM) for the registry.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// User name; the password (or token) is read from `WSGATE_REGISTRY_PASSWORD`.
    #[arg(long)]
    username: Option<String>,
}

impl RegistryArgs {
    /// The configuration named by `--config`, if any.
    fn config(&self) -> anyhow::Result<Option<wsgate_config::Config>> {
        self.config
            .as_deref()
            .map(|path| wsgate_config::load(path).map_err(anyhow::Error::msg))
            .transpose()
    }

    /// The connection to `host`: the configuration's `[[registry]]` entry,
    /// with what the flags add.
    fn connection(
        &self,
        config: Option<&wsgate_config::Config>,
        host: &str,
    ) -> anyhow::Result<Connection> {
        let mut connection = match config {
            Some(config) => {
                wsgate_registry::connection_for(config, host).map_err(anyhow::Error::msg)?
            }
            None => Connection::default(),
        };
        connection.plain_http |= self.plain_http;
        if let Some(path) = &self.ca_bundle {
            connection.ca_bundle = Some(
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            );
        }
        if self.username.is_some() {
            connection.username.clone_from(&self.username);
        }
        if let Ok(password) = std::env::var("WSGATE_REGISTRY_PASSWORD") {
            connection.password = Some(password);
        }
        Ok(connection)
    }
}

/// Run one `wsgate plugin` command.
pub async fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Push {
            component,
            reference,
            manifest,
            registry,
        } => push(&component, &reference, &manifest, &registry).await,
        PluginCommand::Pull {
            reference,
            digest,
            name,
            version,
            store,
            registry,
        } => {
            let wanted = Wanted {
                digest,
                name,
                version,
            };
            pull(&reference, &wanted, &Store::open(store), &registry).await
        }
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

/// A component checked against its manifest: what `add` stores and `push`
/// publishes.
struct Checked {
    bytes: Vec<u8>,
    manifest: Manifest,
    schema: Option<String>,
    info: wsgate_runtime::ComponentInfo,
    signature: Option<String>,
}

/// Read `component` and its manifest; check that the component fits the
/// contract, has the manifest's role and needs no capability it does not
/// request; read its signature file, if present.
fn checked(component: &Path, manifest_path: &Path) -> anyhow::Result<Checked> {
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
    let signature = std::fs::read_to_string(signature_path(component)).ok();
    Ok(Checked {
        bytes,
        manifest,
        schema,
        info,
        signature,
    })
}

fn add(component: &Path, manifest_path: &Path, store: &Store) -> anyhow::Result<()> {
    let Checked {
        bytes,
        manifest,
        schema,
        signature,
        ..
    } = checked(component, manifest_path)?;
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
    print_pin(&entry, None);
    Ok(())
}

/// Print the `[[plugin]]` entry that pins `entry` (pulled from `source`).
fn print_pin(entry: &Entry, source: Option<&str>) {
    println!("[[plugin]]");
    println!("name = \"{}\"", entry.manifest.name);
    println!("version = \"{}\"", entry.manifest.version);
    if let Some(source) = source {
        println!("source = \"{source}\"");
    }
    println!("digest = \"{}\"", entry.digest);
    println!("grants = [{}]", quoted_capabilities(entry));
}

async fn push(
    component: &Path,
    reference: &str,
    manifest_path: &Path,
    args: &RegistryArgs,
) -> anyhow::Result<()> {
    let checked = checked(component, manifest_path)?;
    let parsed = wsgate_registry::parse_reference(reference)?;
    let connection = args.connection(args.config()?.as_ref(), parsed.registry())?;
    let registry = Registry::connect(&parsed, &connection)?;
    let entry = Entry {
        digest: wsgate_store::digest_of(&checked.bytes),
        size: checked.bytes.len() as u64,
        manifest: checked.manifest,
        config_schema_json: checked.schema,
    };
    let description = artifact::Description {
        shape: artifact::ComponentShape {
            imports: checked
                .info
                .imports
                .iter()
                .map(|(i, _)| i.clone())
                .collect(),
            exports: checked.info.exports.clone(),
            target: Some(format!(
                "wsgate:plugin/{}@{}",
                entry.manifest.role.world(),
                checked.info.contract.as_str()
            )),
        },
        created: None,
        entry: Some(entry.clone()),
    };
    let upload = artifact::plugin_upload(checked.bytes, &description)?;
    let pushed = registry
        .push(&parsed, &upload, checked.signature.as_deref())
        .await?;
    println!(
        "pushed {} to {reference}\n  manifest  {}\n  component {}{}",
        entry.id(),
        pushed.manifest_digest,
        pushed.component_digest,
        pushed
            .signature_tag
            .map(|tag| format!("\n  signature :{tag}"))
            .unwrap_or_default()
    );
    println!("\npull it in the gateway's configuration (with [gateway] plugin-store):\n");
    print_pin(&entry, Some(reference));
    Ok(())
}

/// What `pull` insists on or names the plugin by.
struct Wanted {
    digest: Option<String>,
    name: Option<String>,
    version: Option<String>,
}

async fn pull(
    reference: &str,
    wanted: &Wanted,
    store: &Store,
    args: &RegistryArgs,
) -> anyhow::Result<()> {
    let parsed = wsgate_registry::parse_reference(reference)?;
    let config = args.config()?;
    let connection = args.connection(config.as_ref(), parsed.registry())?;
    let registry = Registry::connect(&parsed, &connection)?;
    let pulled = registry.pull(&parsed, wanted.digest.as_deref()).await?;
    let info = Runtime::new()?
        .inspect(&pulled.component)
        .map_err(|e| anyhow::anyhow!("{reference}: {e}"))?;
    let role = Role::of_exports(info.roles.upgrade, info.roles.message)
        .context("the component exports no plugin hook")?;
    let (manifest, schema) = match &pulled.entry {
        Some(entry) => (entry.manifest.clone(), entry.config_schema_json.clone()),
        None => {
            let repository_name = parsed.repository().rsplit('/').next().unwrap_or_default();
            let name = wanted
                .name
                .clone()
                .unwrap_or_else(|| repository_name.to_string());
            let version = wanted
                .version
                .clone()
                .or_else(|| parsed.tag().map(str::to_string))
                .context(
                    "the artifact has no wsgate manifest and the reference no tag: pass --version",
                )?;
            let manifest = Manifest {
                name,
                version,
                description: format!("pulled from {reference}"),
                role,
                capabilities: info.capabilities(),
                config_schema: None,
            };
            (manifest, None)
        }
    };
    manifest
        .check_component(Some(role), &info.imports)
        .map_err(|e| anyhow::anyhow!("{reference}: {e}"))?;
    if let (Some(signature), Some(config)) = (pulled.signature.as_ref(), config.as_ref()) {
        let trusted = config
            .signing
            .trusted_keys
            .iter()
            .map(|k| (k.name.as_str(), k.public_key.as_str()));
        signing::verify(signature, &pulled.component, trusted)
            .with_context(|| format!("{reference}: its signature"))?;
    } else if pulled.signature.is_none()
        && config.as_ref().is_some_and(|c| c.signing.require_signed)
    {
        bail!("{reference} is unsigned, and the configuration's [signing] require-signed is set");
    }
    let entry = store.add(
        &pulled.component,
        manifest,
        schema,
        pulled.signature.as_deref(),
    )?;
    println!(
        "pulled {} {} ({} bytes{}) from {reference} (manifest {}) to {}",
        entry.id(),
        entry.digest,
        entry.size,
        if pulled.signature.is_some() {
            ", signed"
        } else {
            ""
        },
        pulled.manifest_digest,
        store.root().display()
    );
    println!("\npin it in the gateway's configuration (with [gateway] plugin-store):\n");
    print_pin(&entry, Some(reference));
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
