//! `wsgate`: a WebSocket gateway whose policies are WebAssembly components.

#![deny(clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod deploy;
mod log;
mod plugin;
mod replay;
mod traffic;
mod watch;

use log::report;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signals::{ShutdownSignals, Signal};
use wsgate_proxy::{Gateway, Generation};
use wsgate_runtime::Runtime;

/// A WebSocket gateway whose policies are sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "wsgate", version, about)]
struct Cli {
    /// How log lines are written on stderr.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: log::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The configuration file.
        #[arg(long, default_value = "host-config.toml")]
        config: PathBuf,
    },
    /// Deploy a configuration to a running gateway through its admin API:
    /// everything is validated and loaded first; on any problem the running
    /// configuration keeps serving and every problem is printed.
    Deploy {
        /// The configuration file to deploy.
        #[arg(long, default_value = "host-config.toml")]
        config: PathBuf,
        /// The admin listener (default: `[admin] listen` of the deployed file).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Admin bearer token (default: `WSGATE_ADMIN_TOKEN`, then `[admin] token`).
        #[arg(long)]
        token: Option<String>,
        /// First replay the last this many recorded connections of each of
        /// the file's endpoints against it (`wsgate replay`); refuse the
        /// deploy, sending nothing, when a plugin faults or a
        /// `--must-not-change` endpoint would get anything else.
        #[arg(long)]
        require_replay: Option<usize>,
        /// Where the traffic was recorded, for `--require-replay` (default:
        /// the file's `[monitor] database`).
        #[arg(long)]
        replay_from: Option<PathBuf>,
        /// An endpoint (its path) on which the replayed candidate may change
        /// nothing (repeatable).
        #[arg(long)]
        must_not_change: Vec<String>,
        /// Run the file in the shadow of the serving generation instead:
        /// its verdicts are compared on live traffic, never applied
        /// (`GET /api/shadow`, the console, `/metrics`).
        #[arg(long, conflicts_with = "promote")]
        shadow: bool,
        /// The share of connections the shadow sees (0 to 1; by connection).
        #[arg(long, default_value_t = 1.0, requires = "shadow")]
        sample: f64,
        /// Make the running shadow the serving generation.
        #[arg(long)]
        promote: bool,
    },
    /// Validate a configuration and load every plugin, without serving.
    Check {
        /// The configuration file.
        #[arg(long, default_value = "host-config.toml")]
        config: PathBuf,
    },
    /// Run a candidate configuration on traffic recorded at monitor level
    /// `replay`, in process (no client, no upstream), and report, message
    /// by message, what it would have done differently.
    Replay {
        /// The candidate configuration.
        #[arg(long)]
        config: PathBuf,
        /// The monitor database the traffic was recorded in, or a traffic
        /// file (`wsgate traffic export`).
        #[arg(long)]
        from: PathBuf,
        /// Only connections on this endpoint (its configured path).
        #[arg(long)]
        endpoint: Option<String>,
        /// Only connections upgraded within this long before now (`1h`, `30min`).
        #[arg(long, value_parser = parse_duration_arg)]
        since: Option<Duration>,
        /// The last this many recorded connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// The report's form.
        #[arg(long, value_enum, default_value = "text")]
        format: replay::Format,
        /// What makes the command exit non-zero.
        #[arg(long, value_enum, default_value = "none")]
        fail_on: replay::FailOn,
    },
    /// Recorded traffic: export connections recorded for replay to a file.
    #[command(subcommand)]
    Traffic(traffic::TrafficCommand),
    /// Plugins: the content-addressed store (add, list, inspect, verify),
    /// OCI registries (push, pull) and signing (keygen, sign).
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Run a WebSocket echo server.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Also send one binary message to every connection at once, every
        /// this many milliseconds (stamped with its send time).
        #[arg(long)]
        broadcast_every_ms: Option<u64>,
        /// The size in bytes of each broadcast message.
        #[arg(long, default_value_t = 256)]
        broadcast_size: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A replay runs every recorded upgrade and message through plugins:
    // their routine lines would bury the report.
    let default_level = match cli.command {
        Command::Replay { .. } => "warn",
        _ => "info",
    };
    log::init(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(&config).await,
            Command::Check { config } => check(&config).await,
            Command::Deploy {
                config,
                admin,
                token,
                require_replay,
                replay_from,
                must_not_change,
                shadow,
                sample,
                promote,
            } => {
                let gate = require_replay
                    .map(|n| replay::Gate::new(&config, n, replay_from, must_not_change))
                    .transpose()?;
                let target = if promote {
                    deploy::Target::Promote
                } else if shadow {
                    deploy::Target::Shadow(sample)
                } else {
                    deploy::Target::Serve
                };
                deploy::run(&config, admin, token, gate, target).await
            }
            Command::Echo {
                listen,
                broadcast_every_ms,
                broadcast_size,
            } => {
                let ticker = broadcast_every_ms.map(|ms| wsgate_proxy::echo::Ticker {
                    every: Duration::from_millis(ms.max(1)),
                    size: broadcast_size,
                });
                echo(listen, ticker).await
            }
            Command::Plugin(command) => plugin::run(command).await,
            Command::Traffic(command) => traffic::run(command),
            Command::Replay {
                config,
                from,
                endpoint,
                since,
                connections,
                format,
                fail_on,
            } => {
                replay::run(replay::Options {
                    config: &config,
                    from: &from,
                    endpoint,
                    since,
                    connections,
                    format,
                    fail_on,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::fail(&error);
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &Path) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install().context("cannot listen for signals")?;
    let config = wsgate_config::load(path).map_err(anyhow::Error::msg)?;
    // What the files looked like when read: a change from here on is a
    // change to follow (`watch-config`).
    let loaded = watch::fingerprint(path, &config);
    print_warnings(&config);
    let runtime = Runtime::with_cache(config.gateway.plugin_cache_dir.clone())?;
    let gateway = Gateway::start(config, &runtime).await?;
    let generation = gateway.generation();
    report!("wsgate listening on {}", gateway.local_addr());
    for endpoint in &generation.endpoints {
        if endpoint.config.enabled {
            report!(
                "  endpoint ws://{}{}",
                gateway.local_addr(),
                endpoint.config.path.get_ref()
            );
        }
    }
    for address in gateway.echo_addrs() {
        report!("  embedded echo server ws://{address}/");
    }
    let admin_stop = tokio_util::sync::CancellationToken::new();
    if let Some(admin) = &generation.config.admin {
        let listen = *admin.listen.get_ref();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} (admin)"))?;
        let admin_address = listener.local_addr()?;
        report!("admin listening on http://{admin_address}");
        report!("  console http://{admin_address}/console/");
        tokio::spawn(wsgate_admin::serve(
            listener,
            gateway.clone(),
            admin.token.clone(),
            admin_stop.clone(),
        ));
    }
    let watch = generation.config.gateway.watch_config.0;
    if !watch.is_zero() {
        report!("following {} (every {watch:?})", path.display());
        tokio::spawn(watch::follow(
            gateway.clone(),
            path.to_path_buf(),
            watch,
            loaded,
        ));
    }
    drop(generation);
    serve_until_stopped(&gateway, path, &mut signals).await;
    gateway.shutdown().await;
    admin_stop.cancel();
    Ok(())
}

/// Serve until a stop: SIGINT stops at once; SIGTERM (or `POST /api/drain`)
/// drains and stops when the drain is done, or at once on a second signal.
/// SIGHUP redeploys the configuration file.
async fn serve_until_stopped(gateway: &Gateway, path: &Path, signals: &mut ShutdownSignals) {
    let drained = gateway.drain_state().done();
    tokio::pin!(drained);
    // SIGTERMs seen: the first drains (or lets a drain begun through the
    // admin API go on), the second stops at once.
    let mut terminations = 0;
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Reload => reload(gateway, path).await,
                Signal::Drain if terminations == 0 => {
                    terminations += 1;
                    gateway.drain();
                    report!("draining: /readyz is 503; a second signal stops at once");
                }
                Signal::Drain | Signal::Stop => return,
            },
            () = &mut drained => return,
        }
    }
}

/// SIGHUP: deploy the configuration file the gateway was started with.
async fn reload(gateway: &Gateway, path: &Path) {
    let source = format!("SIGHUP {}", path.display());
    match gateway.deploy_file(path, &source).await {
        Ok(generation) => {
            report!("deployed {} as generation {generation}", path.display());
            let deployed = gateway.generation();
            if deployed.id == generation {
                print_warnings(&deployed.config);
            }
        }
        Err(errors) => {
            report!("deploy refused; still serving the previous configuration:\n{errors}")
        }
    }
}

/// Print a loaded configuration's warnings (deprecated keys) to stderr, one
/// A `--since` duration (`1h`, `30min`).
fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    wsgate_config::parse_duration(text)
}

/// `warning: file:line:column: …` line each.
fn print_warnings(config: &wsgate_config::Config) {
    for warning in &config.warnings {
        report!("warning: {warning}");
    }
}

/// `wsgate check`: its report is the command's output, on stdout.
#[allow(clippy::print_stdout)]
async fn check(path: &Path) -> anyhow::Result<()> {
    let config = wsgate_config::load(path).map_err(anyhow::Error::msg)?;
    print_warnings(&config);
    wsgate_registry::fetch_plugins(&config)
        .await
        .map_err(anyhow::Error::msg)?;
    let runtime = Runtime::with_cache(config.gateway.plugin_cache_dir.clone())?;
    let generation = Generation::build(0, config, &runtime).map_err(anyhow::Error::msg)?;
    println!(
        "{}: ok ({} endpoints, {} plugins, {} configured plugin pools)",
        path.display(),
        generation.endpoints.len(),
        generation.plugins.len(),
        generation.pools.len()
    );
    for plugin in &generation.plugins {
        println!(
            "  plugin {} {} {}",
            plugin.id(),
            plugin.digest(),
            plugin
                .signed_by()
                .map_or_else(|| "unsigned".to_string(), |key| format!("signed by {key}")),
        );
    }
    for pool in &generation.pools {
        println!(
            "  pool {} config {}",
            pool.plugin().id(),
            pool.config_json()
        );
    }
    Ok(())
}

async fn echo(
    listen: SocketAddr,
    ticker: Option<wsgate_proxy::echo::Ticker>,
) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install().context("cannot listen for signals")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("echo server listening on ws://{}/", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(wsgate_proxy::echo::serve(
        listener,
        shutdown.clone(),
        ticker,
    ));
    // The echo server has nothing to drain: any stop stops it.
    while signals.next().await == Signal::Reload {}
    shutdown.cancel();
    server.await.context("echo server task failed")?;
    Ok(())
}

mod signals {
    //! SIGINT stops, SIGTERM drains, SIGHUP reloads.

    use tokio::signal::unix::{SignalKind, signal};

    /// What a signal asks for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Signal {
        /// SIGINT: close every connection (1001) and exit.
        Stop,
        /// SIGTERM: drain (hand clients over with 1012), then exit.
        Drain,
        /// SIGHUP: deploy the configuration file again.
        Reload,
    }

    /// Handlers for SIGINT, SIGTERM and SIGHUP, installed before the process
    /// announces it is ready so no early signal is missed.
    pub struct ShutdownSignals {
        interrupt: tokio::signal::unix::Signal,
        terminate: tokio::signal::unix::Signal,
        hangup: tokio::signal::unix::Signal,
    }

    impl ShutdownSignals {
        /// Install the handlers.
        pub fn install() -> std::io::Result<Self> {
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                hangup: signal(SignalKind::hangup())?,
            })
        }

        /// The next signal.
        pub async fn next(&mut self) -> Signal {
            tokio::select! {
                _ = self.interrupt.recv() => {
                    tracing::info!("interrupted");
                    Signal::Stop
                }
                _ = self.terminate.recv() => {
                    tracing::info!("terminated: draining");
                    Signal::Drain
                }
                _ = self.hangup.recv() => {
                    tracing::info!("hangup: reloading the configuration");
                    Signal::Reload
                }
            }
        }
    }
}
