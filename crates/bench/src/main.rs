//! `wsgate-bench`: the load generator of the benchmark harness
//! (`scripts/bench`). Each command drives real WebSocket connections to a
//! URL (the echo server directly, or a proxy in front of it) and prints one
//! JSON object with what it measured.
//!
//! * `load`: N connections send messages of a given size to an echo server;
//!   open loop at a fixed total rate (latency measured from each message's
//!   scheduled send time, so a stall is not hidden) or closed loop with K
//!   messages in flight per connection. Messages carry their send time.
//! * `quiet`: N quiet connections (W7), one message each per period, spread
//!   (each phased by its share of the period) or in aligned bursts (every
//!   timer fires at the same instant), with the lean client of `raw`.
//! * `listen`: N connections receive what the server broadcasts (`wsgate
//!   echo --broadcast-every-ms`); latency from each message's stamp.
//! * `idle`: open N connections and hold them until stdin closes.
//! * `upgrades`: C workers open and close connections as fast as they can.
//! * `repeat`: N connections each send one text and wait for its echo, over
//!   and over (a plugin's command, such as `test-faults`' `slow`), until
//!   stdin closes: load beside a measurement, not a measurement.

// The reports are the commands' output, on stdout.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod raw;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Parser)]
#[command(name = "wsgate-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send messages over N connections to an echo server; report rate and latency.
    Load {
        /// The WebSocket URL (an echo server, or a proxy in front of one).
        #[arg(long)]
        url: String,
        /// Connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Message size in bytes (at least 16: each carries its send time).
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Open loop: messages per second, all connections together.
        #[arg(long)]
        rate: Option<f64>,
        /// Closed loop: messages in flight per connection (when no rate).
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of load before measuring.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    /// Hold N connections and receive what the server broadcasts; report
    /// the rate and latency from each message's send-time stamp.
    Listen(#[command(flatten)] QuietArgs),
    /// N quiet connections, each sending one message per period (spread
    /// or in aligned bursts) and counting its echoes, with the lean client
    /// (one task per connection, frames by hand): many connections (W7).
    Quiet {
        #[command(flatten)]
        common: QuietArgs,
        /// Message size in bytes (at least 8: each carries its send time).
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Seconds between two messages of one connection.
        #[arg(long, default_value_t = 1.0)]
        period: f64,
        #[arg(long, value_enum, default_value_t = Pattern::Spread)]
        pattern: Pattern,
    },
    /// Open N connections, print when they are open, hold them until stdin closes.
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long)]
        connections: usize,
        /// Send one 32-byte message on each connection and wait for its
        /// echo before holding it (idle after activity).
        #[arg(long)]
        echo_first: bool,
    },
    /// Open and close connections with C workers; report upgrades per second.
    Upgrades {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// N connections send TEXT and await its echo, again and again, until
    /// stdin closes; report round trips.
    Repeat {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long)]
        text: String,
    },
}

/// What `quiet` and `listen` share: the lean client's connections, the
/// measured window and the report.
#[derive(clap::Args)]
struct QuietArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    connections: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic (or of connections open) before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// As for `load`.
    #[arg(long)]
    marks: bool,
    /// Offer permessage-deflate (what arrives compressed is counted, not
    /// timed).
    #[arg(long)]
    deflate: bool,
}

/// When each connection of an open-loop `load` sends within its period.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Pattern {
    /// Connections phased evenly over the period: a steady stream.
    Spread,
    /// Every connection at the same instant: a burst each period.
    Burst,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(async {
        match cli.command {
            Command::Load {
                url,
                connections,
                size,
                rate,
                in_flight,
                duration,
                warmup,
            } => {
                let plan = Plan {
                    size: size.max(16),
                    rate,
                    in_flight: in_flight.max(1),
                    warmup: Duration::from_secs_f64(warmup),
                    duration: Duration::from_secs_f64(duration),
                };
                load(&url, connections, plan).await
            }
            Command::Quiet {
                common,
                size,
                period,
                pattern,
            } => {
                let period = Duration::from_secs_f64(period).max(Duration::from_millis(1));
                let connections = common.connections;
                quiet(&common, |index| raw::Stamps::Echo {
                    period,
                    first: match pattern {
                        Pattern::Spread => period.mul_f64(index as f64 / connections as f64),
                        Pattern::Burst => Duration::ZERO,
                    },
                    size,
                })
                .await
            }
            Command::Listen(common) => quiet(&common, |_| raw::Stamps::Broadcast).await,
            Command::Idle {
                url,
                connections,
                echo_first,
            } => idle(&url, connections, echo_first).await,
            Command::Upgrades {
                url,
                concurrency,
                duration,
            } => upgrades(&url, concurrency, Duration::from_secs_f64(duration)).await,
            Command::Repeat {
                url,
                connections,
                text,
            } => repeat(&url, connections, &text).await,
        }
    })?;
    println!("{report}");
    Ok(())
}

async fn open(url: &str) -> anyhow::Result<Ws> {
    // Messages up to 64 MiB; the default 128 KiB read buffer per connection
    // would dominate the generator's own memory with thousands idle.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// One `load` run's parameters.
#[derive(Clone, Copy)]
struct Plan {
    size: usize,
    rate: Option<f64>,
    in_flight: usize,
    warmup: Duration,
    duration: Duration,
}

/// The measured window of a run, from `measure_from` to `stop_at`.
#[derive(Clone, Copy)]
struct Window {
    epoch: Instant,
    measure_from: Instant,
    stop_at: Instant,
}

impl Window {
    /// A window that opens `warmup` from now and lasts `duration`.
    fn after(warmup: Duration, duration: Duration) -> Self {
        let epoch = Instant::now();
        let measure_from = epoch + warmup;
        Self {
            epoch,
            measure_from,
            stop_at: measure_from + duration,
        }
    }

    /// Print a line when the window opens and when it closes; await the
    /// handle before the report, so that it follows both.
    fn print_marks(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            tokio::time::sleep_until(self.measure_from.into()).await;
            println!("{}", serde_json::json!({ "mark": "measure" }));
            tokio::time::sleep_until(self.stop_at.into()).await;
            println!("{}", serde_json::json!({ "mark": "stop" }));
        })
    }
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    messages: u64,
    latencies_us: Vec<u32>,
}

async fn load(url: &str, connections: usize, plan: Plan) -> anyhow::Result<serde_json::Value> {
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        sockets.push(open(url).await?);
    }
    let window = Window::after(plan.warmup, plan.duration);
    let mut tasks = Vec::with_capacity(connections);
    for (index, ws) in sockets.into_iter().enumerate() {
        let offset = index as f64 / connections as f64;
        tasks.push(tokio::spawn(drive(ws, plan, connections, offset, window)));
    }
    report(tasks, plan.duration, None).await
}

/// Gather the connections' tallies into one report.
async fn report(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Tally>>>,
    duration: Duration,
    marks: Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<serde_json::Value> {
    let mut total = Tally::default();
    let mut errors = 0u64;
    for task in tasks {
        match task.await {
            Ok(Ok(tally)) => {
                total.messages += tally.messages;
                total.latencies_us.extend(tally.latencies_us);
            }
            _ => errors += 1,
        }
    }
    if let Some(marks) = marks {
        marks.await.context("printing the marks")?;
    }
    total.latencies_us.sort_unstable();
    let seconds = duration.as_secs_f64();
    Ok(serde_json::json!({
        "messages": total.messages,
        "seconds": seconds,
        "rate": total.messages as f64 / seconds,
        "p50_us": percentile(&total.latencies_us, 0.50),
        "p99_us": percentile(&total.latencies_us, 0.99),
        "p999_us": percentile(&total.latencies_us, 0.999),
        "max_us": total.latencies_us.last().copied().unwrap_or(0),
        "failed_connections": errors,
    }))
}

/// Open `args.connections` lean connections, then run each (the `stamps`
/// of connection i) for the window `args` asks for.
async fn quiet(
    args: &QuietArgs,
    stamps: impl Fn(usize) -> raw::Stamps,
) -> anyhow::Result<serde_json::Value> {
    let mut opened = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        opened.push(raw::connect(&args.url, args.deflate).await?);
    }
    // The window starts once every connection is open.
    let window = Window::after(
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.duration),
    );
    let marks = args.marks.then(|| window.print_marks());
    let tasks = opened
        .into_iter()
        .enumerate()
        .map(|(index, connection)| tokio::spawn(connection.run(window, stamps(index))))
        .collect();
    report(tasks, window.stop_at - window.measure_from, marks).await
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// A message of `size` bytes stamped with `sent` (nanoseconds since `epoch`).
fn stamped(size: usize, sent: Duration) -> Message {
    let mut payload = vec![b'x'; size];
    let nanos = u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX);
    payload[..8].copy_from_slice(&nanos.to_le_bytes());
    Message::binary(payload)
}

fn stamp_of(message: &Message) -> Option<Duration> {
    let data = match message {
        Message::Binary(data) => data,
        _ => return None,
    };
    let nanos: [u8; 8] = data.get(..8)?.try_into().ok()?;
    Some(Duration::from_nanos(u64::from_le_bytes(nanos)))
}

/// Drive one connection until `stop_at`; count what is echoed after
/// `measure_from`.
async fn drive(
    ws: Ws,
    plan: Plan,
    connections: usize,
    offset: f64,
    window: Window,
) -> anyhow::Result<Tally> {
    let Window {
        epoch,
        measure_from,
        stop_at,
    } = window;
    let (mut sink, mut stream) = ws.split();
    let done = Arc::new(AtomicBool::new(false));
    let (credit_tx, mut credit_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let sender_done = done.clone();
    let sender = tokio::spawn(async move {
        match plan.rate {
            Some(rate) => {
                // Open loop: this connection's share of the rate, phased
                // by its offset (all at 0: in lockstep).
                let period = Duration::from_secs_f64(connections as f64 / rate);
                let mut next = epoch + period.mul_f64(offset);
                while next < stop_at {
                    tokio::time::sleep_until(next.into()).await;
                    sink.send(stamped(plan.size, next - epoch)).await?;
                    next += period;
                }
            }
            None => {
                for _ in 0..plan.in_flight {
                    sink.send(stamped(plan.size, epoch.elapsed())).await?;
                }
                while credit_rx.recv().await.is_some() {
                    if Instant::now() >= stop_at {
                        break;
                    }
                    sink.send(stamped(plan.size, epoch.elapsed())).await?;
                }
            }
        }
        sender_done.store(true, Ordering::Relaxed);
        let _ = sink.close().await;
        anyhow::Ok(())
    });
    let mut tally = Tally::default();
    let deadline = stop_at + Duration::from_secs(5);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        if matches!(message, Message::Close(_)) {
            break;
        }
        let now = Instant::now();
        if let Some(sent) = stamp_of(&message) {
            let sent_at = epoch + sent;
            if sent_at >= measure_from && sent_at < stop_at {
                tally.messages += 1;
                let latency = now.saturating_duration_since(sent_at);
                tally
                    .latencies_us
                    .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
            }
            if sent_at >= stop_at && done.load(Ordering::Relaxed) {
                break;
            }
        }
        let _ = credit_tx.send(());
    }
    sender.abort();
    Ok(tally)
}

async fn idle(
    url: &str,
    connections: usize,
    echo_first: bool,
) -> anyhow::Result<serde_json::Value> {
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut ws = open(url).await?;
        if echo_first {
            ws.send(Message::binary(vec![7u8; 32])).await?;
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => {}
                other => anyhow::bail!("no echo on an idle connection: {other:?}"),
            }
        }
        held.push(ws);
    }
    // Tell the harness they are open, then wait for it to close stdin.
    println!("{}", serde_json::json!({ "open": held.len() }));
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    Ok(serde_json::json!({ "closed": held.len() }))
}

async fn upgrades(
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<serde_json::Value> {
    let stop_at = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let url = url.to_string();
        workers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut failed = 0u64;
            while Instant::now() < stop_at {
                let started = Instant::now();
                match open(&url).await {
                    Ok(mut ws) => {
                        times
                            .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                        let _ = ws.close(None).await;
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                    Err(_) => failed += 1,
                }
            }
            (times, failed)
        }));
    }
    let mut times = Vec::new();
    let mut failed = 0;
    for worker in workers {
        if let Ok((t, f)) = worker.await {
            times.extend(t);
            failed += f;
        }
    }
    times.sort_unstable();
    let seconds = duration.as_secs_f64();
    Ok(serde_json::json!({
        "upgrades": times.len(),
        "seconds": seconds,
        "rate": times.len() as f64 / seconds,
        "p50_us": percentile(&times, 0.50),
        "p99_us": percentile(&times, 0.99),
        "failed": failed,
    }))
}

async fn repeat(url: &str, connections: usize, text: &str) -> anyhow::Result<serde_json::Value> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        sockets.push(open(url).await?);
    }
    let mut workers = Vec::new();
    for mut ws in sockets {
        let stop = stop.clone();
        let text = text.to_string();
        workers.push(tokio::spawn(async move {
            let mut round_trips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ws.send(Message::text(text.clone())).await?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(echo))) if echo.as_str() == text => break,
                        Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                        other => anyhow::bail!("no echo: {other:?}"),
                    }
                }
                round_trips += 1;
            }
            let _ = ws.close(None).await;
            anyhow::Ok(round_trips)
        }));
    }
    println!("{}", serde_json::json!({ "open": connections }));
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    stop.store(true, Ordering::Relaxed);
    let mut round_trips = 0;
    let mut failed = 0;
    for worker in workers {
        match worker.await {
            Ok(Ok(n)) => round_trips += n,
            _ => failed += 1,
        }
    }
    Ok(serde_json::json!({ "round_trips": round_trips, "failed_connections": failed }))
}
