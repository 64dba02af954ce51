//! `wsgate replay`: what a candidate configuration would have done to the
//! traffic recorded at monitor level `replay`. The report goes to stdout
//! (text, or JSON with `--format json`); the exit status follows
//! `--fail-on`.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use wsgate_monitor::{ConnectionFilter, Payload, Recorded};
use wsgate_proxy::Generation;
use wsgate_proxy::replay::{Difference, Output, Replayed, ReplayedMessage, Replayer};
use wsgate_runtime::{FaultKind, LATENCY_BUCKETS_US, Runtime};

/// Examples of differences kept per endpoint.
const EXAMPLES: usize = 3;

/// The report's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a person.
    Text,
    /// One JSON object, for a pipeline.
    Json,
}

/// What makes `wsgate replay` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Any difference: a message changed, dropped or closed, or an upgrade
    /// answered otherwise (faults too).
    Changed,
    /// Any plugin fault in the candidate.
    Faults,
    /// Never: the report only.
    None,
}

/// What to replay and how to report it.
pub struct Options<'a> {
    /// The candidate configuration.
    pub config: &'a Path,
    /// The monitor database recorded at level `replay`.
    pub from: &'a Path,
    /// Only this endpoint's connections.
    pub endpoint: Option<String>,
    /// Only connections upgraded within this long before now.
    pub since: Option<std::time::Duration>,
    /// The last this many connections.
    pub connections: usize,
    /// Text or JSON.
    pub format: Format,
    /// When to exit non-zero.
    pub fail_on: FailOn,
}

/// Message counts by how the candidate's output compares.
#[derive(Debug, Default, Serialize)]
struct Counts {
    same: u64,
    changed: u64,
    dropped: u64,
    closed: u64,
    not_replayed: u64,
}

/// p50 and p99 of chain times, microseconds.
#[derive(Debug, Serialize)]
struct Times {
    p50_us: u64,
    p99_us: u64,
}

/// One difference, shown.
#[derive(Debug, Serialize)]
struct Example {
    connection: String,
    seq: u64,
    from: String,
    difference: Difference,
    input: Payload,
    recorded: Output,
    candidate: Output,
    /// Readable lines: JSON fields that differ, or both texts.
    diff: Vec<String>,
}

/// The report for one endpoint.
#[derive(Debug, Default, Serialize)]
struct EndpointReport {
    endpoint: String,
    connections: u64,
    upgrades_changed: u64,
    messages: Counts,
    #[serde(skip)]
    recorded_us: Vec<u64>,
    #[serde(skip)]
    candidate_us: Vec<u64>,
    recorded_time: Option<Times>,
    candidate_time: Option<Times>,
    examples: Vec<Example>,
}

/// One candidate plugin's calls during the replay.
#[derive(Debug, Serialize)]
struct PluginReport {
    plugin: String,
    calls: u64,
    faults: BTreeMap<&'static str, u64>,
    p50_us: u64,
    p99_us: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    candidate: String,
    from: String,
    connections: u64,
    messages: u64,
    endpoints: Vec<EndpointReport>,
    plugins: Vec<PluginReport>,
}

impl EndpointReport {
    /// Whether the candidate answers any upgrade or message otherwise.
    fn differs(&self) -> bool {
        self.upgrades_changed > 0
            || self.messages.changed + self.messages.dropped + self.messages.closed > 0
    }
}

impl Report {
    fn differs(&self) -> bool {
        self.endpoints.iter().any(EndpointReport::differs)
    }

    fn faults(&self) -> u64 {
        self.plugins.iter().flat_map(|p| p.faults.values()).sum()
    }
}

/// Run `wsgate replay`.
pub async fn run(options: Options<'_>) -> anyhow::Result<()> {
    let filter = ConnectionFilter {
        endpoint: options.endpoint.clone(),
        since_us: since_us(options.since),
        limit: options.connections,
        ..ConnectionFilter::default()
    };
    let recorded = wsgate_monitor::read_recorded(options.from, &filter)?;
    if recorded.is_empty() {
        anyhow::bail!(
            "{} holds no connection recorded at monitor level `replay`{}",
            options.from.display(),
            options
                .endpoint
                .as_ref()
                .map(|e| format!(" on {e}"))
                .unwrap_or_default()
        );
    }
    let report = replay(options.config, options.from, &recorded).await?;
    print(&report, options.format)?;
    let failed = match options.fail_on {
        FailOn::Changed => report.differs() || report.faults() > 0,
        FailOn::Faults => report.faults() > 0,
        FailOn::None => false,
    };
    if failed {
        anyhow::bail!(
            "the candidate {} (--fail-on {})",
            if report.faults() > 0 {
                "faults"
            } else {
                "changes what the recorded traffic got"
            },
            match options.fail_on {
                FailOn::Changed => "changed",
                FailOn::Faults => "faults",
                FailOn::None => "none",
            }
        );
    }
    Ok(())
}

/// The time `ago` before now, in microseconds since the epoch.
pub fn since_us(ago: Option<std::time::Duration>) -> Option<u64> {
    ago.map(|ago| {
        wsgate_monitor::now_us().saturating_sub(u64::try_from(ago.as_micros()).unwrap_or(0))
    })
}

/// What `wsgate deploy --require-replay` asks of a candidate before it is
/// deployed.
pub struct Gate {
    /// Recorded connections replayed per endpoint of the candidate.
    pub connections: usize,
    /// Where they were recorded (a monitor database or a traffic file).
    pub from: PathBuf,
    /// Endpoints on which the candidate may change nothing.
    pub must_not_change: Vec<String>,
}

impl Gate {
    /// Replay `connections` per endpoint from `from` (default: `config`'s
    /// `[monitor] database`).
    pub fn new(
        config: &Path,
        connections: usize,
        from: Option<PathBuf>,
        must_not_change: Vec<String>,
    ) -> anyhow::Result<Self> {
        let from = match from {
            Some(from) => from,
            None => wsgate_config::load(config)
                .map_err(anyhow::Error::msg)?
                .monitor
                .database
                .context(
                    "--require-replay: pass --replay-from, or set [monitor] database in the file",
                )?,
        };
        Ok(Self {
            connections,
            from,
            must_not_change,
        })
    }
}

/// Replay the last `gate.connections` recorded connections of each of the
/// candidate `config`'s endpoints against it; print the report; refuse (an
/// error saying why) when a plugin faults or a `must_not_change` endpoint
/// would get anything else.
pub async fn gate(config: &Path, gate: &Gate) -> anyhow::Result<()> {
    let candidate = wsgate_config::load(config).map_err(anyhow::Error::msg)?;
    if let Some(unknown) = gate.must_not_change.iter().find(|path| {
        !candidate
            .endpoints
            .iter()
            .any(|e| e.path.get_ref() == *path)
    }) {
        anyhow::bail!(
            "--must-not-change {unknown}: {} has no such endpoint",
            config.display()
        );
    }
    let mut recorded = Vec::new();
    for endpoint in &candidate.endpoints {
        let filter = ConnectionFilter {
            endpoint: Some(endpoint.path.get_ref().clone()),
            limit: gate.connections,
            ..ConnectionFilter::default()
        };
        recorded.extend(wsgate_monitor::read_recorded(&gate.from, &filter)?);
    }
    if recorded.is_empty() {
        anyhow::bail!(
            "--require-replay: {} holds no connection recorded at monitor level `replay` on the candidate's endpoints",
            gate.from.display()
        );
    }
    let report = replay(config, &gate.from, &recorded).await?;
    print(&report, Format::Text)?;
    if report.faults() > 0 {
        anyhow::bail!(
            "deploy refused by replay: the candidate's plugins fault {} times on recorded traffic",
            report.faults()
        );
    }
    let changed: Vec<&str> = report
        .endpoints
        .iter()
        .filter(|e| gate.must_not_change.contains(&e.endpoint) && e.differs())
        .map(|e| e.endpoint.as_str())
        .collect();
    if !changed.is_empty() {
        anyhow::bail!(
            "deploy refused by replay: the candidate changes what {} got, marked must-not-change",
            changed.join(", ")
        );
    }
    Ok(())
}

/// Replay `recorded` (read from `from`) against the candidate `config`.
async fn replay(config_path: &Path, from: &Path, recorded: &[Recorded]) -> anyhow::Result<Report> {
    let config = wsgate_config::load(config_path).map_err(anyhow::Error::msg)?;
    wsgate_registry::fetch_plugins(&config)
        .await
        .map_err(anyhow::Error::msg)?;
    let mask =
        wsgate_monitor::mask::Mask::new(config.monitor.mask.iter().map(|p| p.get_ref().clone()));
    let runtime = Runtime::with_cache(config.gateway.plugin_cache_dir.clone())?;
    let generation = Generation::build(0, config, &runtime).map_err(anyhow::Error::msg)?;
    let replayer = Replayer::new(Arc::new(generation), mask).context("cannot start replay")?;
    let mut endpoints: BTreeMap<String, EndpointReport> = BTreeMap::new();
    let mut messages = 0;
    for (id, connection) in (1..).zip(recorded) {
        let replayed = replayer.replay(id, connection).await;
        messages += connection.messages.len() as u64;
        let report = endpoints
            .entry(replayed.endpoint.clone())
            .or_insert_with(|| EndpointReport {
                endpoint: replayed.endpoint.clone(),
                ..EndpointReport::default()
            });
        add(report, &replayed);
    }
    let mut endpoints: Vec<EndpointReport> = endpoints.into_values().collect();
    for report in &mut endpoints {
        report.recorded_time = times(&mut report.recorded_us);
        report.candidate_time = times(&mut report.candidate_us);
    }
    Ok(Report {
        candidate: config_path.display().to_string(),
        from: from.display().to_string(),
        connections: recorded.len() as u64,
        messages,
        endpoints,
        plugins: plugin_reports(replayer.generation()),
    })
}

/// Print `report` on stdout as `format` says.
fn print(report: &Report, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(report)?),
        Format::Text => print_text(report),
    }
    Ok(())
}

/// Count one replayed connection into its endpoint's report.
fn add(report: &mut EndpointReport, replayed: &Replayed) {
    report.connections += 1;
    if replayed.candidate_status != Some(replayed.recorded_status) {
        report.upgrades_changed += 1;
    }
    report.messages.not_replayed += replayed.not_replayed as u64;
    for message in &replayed.messages {
        let counter = match message.difference {
            Difference::Same => &mut report.messages.same,
            Difference::Changed => &mut report.messages.changed,
            Difference::Dropped => &mut report.messages.dropped,
            Difference::Closed => &mut report.messages.closed,
        };
        *counter += 1;
        // A replayed message has both times (only a shadow's may not).
        report.recorded_us.extend(message.recorded_us);
        report.candidate_us.extend(message.candidate_us);
        if message.difference != Difference::Same && report.examples.len() < EXAMPLES {
            report.examples.push(example(&replayed.connection, message));
        }
    }
}

fn example(connection: &str, message: &ReplayedMessage) -> Example {
    Example {
        connection: connection.to_string(),
        seq: message.seq,
        from: message.from.clone(),
        difference: message.difference,
        input: message.input.clone(),
        recorded: message.recorded.clone(),
        candidate: message.candidate.clone(),
        diff: diff(&message.recorded, &message.candidate),
    }
}

/// Readable lines on what differs between two outputs: for one JSON text
/// message each, the fields that differ (`/path: before -> after`);
/// otherwise both outputs.
fn diff(recorded: &Output, candidate: &Output) -> Vec<String> {
    let json = |output: &Output| match output.forward.as_slice() {
        [Payload::Text { data }] if output.replies.is_empty() && output.close.is_none() => {
            serde_json::from_str::<Value>(data).ok()
        }
        _ => None,
    };
    if let (Some(before), Some(after)) = (json(recorded), json(candidate)) {
        let mut lines = Vec::new();
        json_diff("", &before, &after, &mut lines);
        return lines;
    }
    vec![
        format!("- {}", describe(recorded)),
        format!("+ {}", describe(candidate)),
    ]
}

fn json_diff(path: &str, before: &Value, after: &Value, lines: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let here = format!("{path}/{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => json_diff(&here, x, y, lines),
                    (Some(x), None) => lines.push(format!("{here}: {x} -> (removed)")),
                    (None, Some(y)) => lines.push(format!("{here}: (added) -> {y}")),
                    (None, None) => {}
                }
            }
        }
        _ if before != after => {
            let path = if path.is_empty() { "/" } else { path };
            lines.push(format!("{path}: {before} -> {after}"));
        }
        _ => {}
    }
}

fn describe(output: &Output) -> String {
    let payloads = |payloads: &[Payload]| {
        payloads
            .iter()
            .map(describe_payload)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = vec![format!("forward [{}]", payloads(&output.forward))];
    if !output.replies.is_empty() {
        parts.push(format!("reply [{}]", payloads(&output.replies)));
    }
    if let Some((code, reason)) = &output.close {
        parts.push(format!("close {code} {reason:?}"));
    }
    parts.join("; ")
}

fn times(samples: &mut [u64]) -> Option<Times> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() - 1) as f64 * q).round() as usize;
        samples.get(index).copied().unwrap_or_default()
    };
    Some(Times {
        p50_us: at(0.5),
        p99_us: at(0.99),
    })
}

/// Each candidate plugin's calls, faults by kind and call time (from its
/// pools' statistics, bucket upper bounds).
fn plugin_reports(generation: &Generation) -> Vec<PluginReport> {
    let mut plugins: BTreeMap<String, PluginReport> = BTreeMap::new();
    let mut buckets: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for pool in &generation.pools {
        let id = pool.plugin().id().to_string();
        let stats = pool.stats();
        let report = plugins.entry(id.clone()).or_insert_with(|| PluginReport {
            plugin: id.clone(),
            calls: 0,
            faults: BTreeMap::new(),
            p50_us: 0,
            p99_us: 0,
        });
        report.calls += stats.calls();
        for kind in FaultKind::ALL {
            let count = stats.fault_count(kind);
            if count > 0 {
                *report.faults.entry(kind.as_str()).or_default() += count;
            }
        }
        let counts = buckets
            .entry(id)
            .or_insert_with(|| vec![0; LATENCY_BUCKETS_US.len() + 1]);
        for (total, bucket) in counts.iter_mut().zip(stats.latency.buckets()) {
            *total += bucket;
        }
    }
    for (id, counts) in buckets {
        if let Some(report) = plugins.get_mut(&id) {
            report.p50_us = quantile(&counts, 0.5);
            report.p99_us = quantile(&counts, 0.99);
        }
    }
    plugins.into_values().collect()
}

/// The upper bound of the bucket holding quantile `q` of `counts`.
fn quantile(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let wanted = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= wanted {
            return LATENCY_BUCKETS_US
                .get(i)
                .copied()
                .unwrap_or_else(|| LATENCY_BUCKETS_US.last().copied().unwrap_or(0) * 2);
        }
    }
    0
}

fn print_text(report: &Report) {
    println!(
        "replayed {} connections, {} messages from {} against {}",
        report.connections, report.messages, report.from, report.candidate
    );
    for endpoint in &report.endpoints {
        let m = &endpoint.messages;
        println!(
            "\nendpoint {}: {} connections, {} upgrades answered otherwise",
            endpoint.endpoint, endpoint.connections, endpoint.upgrades_changed
        );
        println!(
            "  messages: {} same, {} changed, {} dropped, {} closed, {} not replayed",
            m.same, m.changed, m.dropped, m.closed, m.not_replayed
        );
        if let (Some(before), Some(after)) = (&endpoint.recorded_time, &endpoint.candidate_time) {
            println!(
                "  chain time p50/p99: recorded {}/{} us, candidate {}/{} us",
                before.p50_us, before.p99_us, after.p50_us, after.p99_us
            );
        }
        for example in &endpoint.examples {
            println!(
                "  {} {} message {} ({}): {}",
                example.connection,
                example.from,
                example.seq,
                serde_json::to_string(&example.difference).unwrap_or_default(),
                describe_payload(&example.input)
            );
            for line in &example.diff {
                println!("      {line}");
            }
        }
    }
    println!("\nplugins:");
    for plugin in &report.plugins {
        let faults = if plugin.faults.is_empty() {
            "no faults".to_string()
        } else {
            plugin
                .faults
                .iter()
                .map(|(kind, count)| format!("{count} {kind}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  {} {} calls, {faults}, call time p50 <= {} us, p99 <= {} us",
            plugin.plugin, plugin.calls, plugin.p50_us, plugin.p99_us
        );
    }
}

fn describe_payload(payload: &Payload) -> String {
    match payload {
        Payload::Text { data } => format!("text {data:?}"),
        Payload::Binary { base64 } => format!("binary {base64}"),
        Payload::Close { code, reason } => format!("close {code:?} {reason:?}"),
    }
}
