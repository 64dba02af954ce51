//! `wsgate`: a WebSocket gateway whose policies are WebAssembly components.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signals::ShutdownSignals;
use wsgate_proxy::{Gateway, Generation};
use wsgate_runtime::Runtime;

/// A WebSocket gateway whose policies are sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "wsgate", version, about)]
struct Cli {
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
    /// Validate a configuration and load every plugin, without serving.
    Check {
        /// The configuration file.
        #[arg(long, default_value = "host-config.toml")]
        config: PathBuf,
    },
    /// Run a WebSocket echo server.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
            Command::Check { config } => check(&config),
            Command::Echo { listen } => echo(listen).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &Path) -> anyhow::Result<()> {
    let signals = ShutdownSignals::install().context("cannot listen for signals")?;
    let config = wsgate_config::load(path).map_err(anyhow::Error::msg)?;
    let runtime = Runtime::new()?;
    let gateway = Gateway::start(config, &runtime).await?;
    let generation = gateway.generation();
    eprintln!("wsgate listening on {}", gateway.local_addr());
    for endpoint in &generation.endpoints {
        if endpoint.config.enabled {
            eprintln!(
                "  endpoint ws://{}{}",
                gateway.local_addr(),
                endpoint.config.path.get_ref()
            );
        }
    }
    for address in gateway.echo_addrs() {
        eprintln!("  embedded echo server ws://{address}/");
    }
    signals.wait().await;
    gateway.shutdown().await;
    Ok(())
}

/// `wsgate check`: its report is the command's output, on stdout.
#[allow(clippy::print_stdout)]
fn check(path: &Path) -> anyhow::Result<()> {
    let config = wsgate_config::load(path).map_err(anyhow::Error::msg)?;
    let runtime = Runtime::new()?;
    let generation = Generation::build(config, &runtime).map_err(anyhow::Error::msg)?;
    println!(
        "{}: ok ({} endpoints, {} plugins, {} configured plugin pools)",
        path.display(),
        generation.endpoints.len(),
        generation.config.plugins.len(),
        generation.pools.len()
    );
    for pool in &generation.pools {
        println!(
            "  {} {} config {}",
            pool.plugin().id(),
            pool.plugin().digest(),
            pool.config_json()
        );
    }
    Ok(())
}

async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let signals = ShutdownSignals::install().context("cannot listen for signals")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("echo server listening on ws://{}/", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(wsgate_proxy::echo::serve(listener, shutdown.clone()));
    signals.wait().await;
    shutdown.cancel();
    server.await.context("echo server task failed")?;
    Ok(())
}

mod signals {
    //! Waiting for Ctrl-C or SIGTERM.

    use tokio::signal::unix::{Signal, SignalKind, signal};

    /// Handlers for SIGINT and SIGTERM, installed before the process
    /// announces it is ready so no early signal is missed.
    pub struct ShutdownSignals {
        interrupt: Signal,
        terminate: Signal,
    }

    impl ShutdownSignals {
        /// Install the handlers.
        pub fn install() -> std::io::Result<Self> {
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }

        /// Resolve on the first SIGINT or SIGTERM.
        pub async fn wait(mut self) {
            tokio::select! {
                _ = self.interrupt.recv() => tracing::info!("interrupted"),
                _ = self.terminate.recv() => tracing::info!("terminated"),
            }
        }
    }
}
