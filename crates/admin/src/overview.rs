//! The console's Overview: the gateway's counters sampled every second and
//! kept at three resolutions (a second for 5 minutes, ten seconds for an
//! hour, a minute for a day), the minute samples also in the monitor's
//! database so a restart keeps the day. `GET /api/overview?range=5m|1h|24h`
//! turns consecutive samples into rates, plugin call time quantiles and
//! counts per interval, with the deploys of the range to mark on the time
//! axis.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wsgate_proxy::{Gateway, Peer};
use wsgate_runtime::{FaultKind, LATENCY_BUCKETS_US, PluginStats};

/// How often the counters are sampled.
const EVERY: Duration = Duration::from_secs(1);

/// One resolution: its step and how many samples it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    /// The last 5 minutes, a sample a second.
    FiveMinutes,
    /// The last hour, a sample every 10 seconds.
    Hour,
    /// The last day, a sample a minute (also stored).
    Day,
}

impl Range {
    const ALL: [Self; 3] = [Self::FiveMinutes, Self::Hour, Self::Day];

    /// The `range` parameter's value.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|range| range.name() == text)
    }

    fn name(self) -> &'static str {
        match self {
            Self::FiveMinutes => "5m",
            Self::Hour => "1h",
            Self::Day => "24h",
        }
    }

    fn step_ms(self) -> u64 {
        match self {
            Self::FiveMinutes => 1_000,
            Self::Hour => 10_000,
            Self::Day => 60_000,
        }
    }

    fn span_ms(self) -> u64 {
        match self {
            Self::FiveMinutes => 5 * 60_000,
            Self::Hour => 3_600_000,
            Self::Day => 24 * 3_600_000,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A plugin's running totals, summed over its pools in every live
/// generation (a pool that goes away keeps what it added).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct PluginTotals {
    calls: u64,
    /// Calls per bucket of [`LATENCY_BUCKETS_US`], plus one for slower calls.
    buckets: Vec<u64>,
    /// Faults by kind.
    faults: BTreeMap<String, u64>,
}

/// The counters at one instant (totals since start, and the open connections).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Sample {
    at_ms: u64,
    /// When the sampling process started (milliseconds since the epoch):
    /// samples of another run count from zero.
    #[serde(default)]
    run: u64,
    connections: u64,
    generation: u64,
    /// Upgrades answered, by status.
    upgrades: BTreeMap<String, u64>,
    /// Messages read, from clients then from upstreams.
    messages: [u64; 2],
    /// Payload bytes read, from clients then from upstreams.
    bytes: [u64; 2],
    /// Connections ended, by close code label.
    closes: BTreeMap<String, u64>,
    /// By plugin `name@version`.
    plugins: BTreeMap<String, PluginTotals>,
    monitor_dropped: u64,
}

/// What one pool had counted when last sampled.
#[derive(Debug, Default)]
struct PoolSeen {
    calls: u64,
    buckets: Vec<u64>,
    faults: Vec<u64>,
}

/// The samples at each resolution, and the sampler's running totals.
#[derive(Debug, Default)]
struct Rings {
    rings: [VecDeque<Sample>; 3],
    plugins: BTreeMap<String, PluginTotals>,
    /// By (generation, pool index).
    seen: HashMap<(u64, usize), PoolSeen>,
}

/// The sampled counters, shared by the sampler task and the admin API.
#[derive(Debug)]
pub(crate) struct Overview {
    rings: Mutex<Rings>,
    /// When this process started sampling (see [`Sample::run`]).
    run: u64,
}

impl Overview {
    /// Start sampling `gateway` every second until `stop`; the day's
    /// samples stored by an earlier run are read back first.
    pub(crate) fn start(gateway: Gateway, stop: CancellationToken) -> Arc<Self> {
        let overview = Arc::new(Self {
            rings: Mutex::default(),
            run: now_ms(),
        });
        let sampler = overview.clone();
        tokio::spawn(async move {
            let since = now_ms().saturating_sub(Range::Day.span_ms());
            let monitor = gateway.monitor().clone();
            if let Ok(Ok(stored)) =
                tokio::task::spawn_blocking(move || monitor.samples(since)).await
            {
                sampler.restore(&stored);
            }
            let mut ticks = tokio::time::interval(EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => sampler.sample(&gateway),
                }
            }
        });
        overview
    }

    /// Put the stored minute samples back in the day's ring.
    fn restore(&self, stored: &[(u64, String)]) {
        let mut rings = self.lock();
        let Some(day) = rings.rings.get_mut(Range::Day.index()) else {
            return;
        };
        day.extend(
            stored
                .iter()
                .filter_map(|(_, text)| serde_json::from_str::<Sample>(text).ok()),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take a sample now and keep it at each resolution it falls on.
    fn sample(&self, gateway: &Gateway) {
        let mut rings = self.lock();
        let sample = rings.take(gateway, now_ms(), self.run);
        for range in Range::ALL {
            let Some(ring) = rings.rings.get_mut(range.index()) else {
                continue;
            };
            // The wall clock stepped back: start the ring again.
            if ring.back().is_some_and(|last| sample.at_ms < last.at_ms) {
                ring.clear();
            }
            let due = ring
                .back()
                .is_none_or(|last| sample.at_ms / range.step_ms() > last.at_ms / range.step_ms());
            if !due {
                continue;
            }
            if range == Range::Day
                && let Ok(text) = serde_json::to_string(&sample)
            {
                gateway.monitor().store_sample(sample.at_ms, text);
            }
            ring.push_back(sample.clone());
            let oldest = sample
                .at_ms
                .saturating_sub(range.span_ms() + range.step_ms());
            while ring.front().is_some_and(|first| first.at_ms < oldest) {
                ring.pop_front();
            }
        }
    }

    /// `GET /api/overview?range=R`: the range's points and deploys.
    pub(crate) fn report(&self, gateway: &Gateway, range: Range) -> Value {
        let now = now_ms();
        let since = now.saturating_sub(range.span_ms());
        let points: Vec<Value> = {
            let rings = self.lock();
            let samples: Vec<&Sample> = rings
                .rings
                .get(range.index())
                .map(|ring| ring.iter().filter(|s| s.at_ms >= since).collect())
                .unwrap_or_default();
            samples
                .windows(2)
                .filter_map(|pair| match pair {
                    [before, after] => point(before, after, range),
                    _ => None,
                })
                .collect()
        };
        let deploys: Vec<Value> = gateway
            .deploys()
            .iter()
            .filter_map(|deploy| {
                let at_ms = millis(deploy.at);
                (at_ms >= since).then(|| {
                    json!({
                        "at_ms": at_ms,
                        "generation": deploy.generation,
                        "source": deploy.source,
                        "refused": deploy.generation.is_none(),
                    })
                })
            })
            .collect();
        json!({
            "range": range.name(),
            "step_ms": range.step_ms(),
            "now_ms": now,
            "since_ms": since,
            "generation": gateway.generation().id,
            "connections": gateway.active_connections(),
            "points": points,
            "deploys": deploys,
        })
    }
}

impl Rings {
    /// The counters now (taken by the sampling `run`), with every live
    /// pool's calls since the last sample added to its plugin's totals.
    fn take(&mut self, gateway: &Gateway, at_ms: u64, run: u64) -> Sample {
        let mut live = std::collections::HashSet::new();
        for generation in gateway.live_generations() {
            for (index, pool) in generation.pools.iter().enumerate() {
                let key = (generation.id, index);
                live.insert(key);
                let seen = self.seen.entry(key).or_default();
                let totals = self
                    .plugins
                    .entry(pool.plugin().id().to_string())
                    .or_default();
                add_since(totals, seen, pool.stats());
            }
        }
        self.seen.retain(|key, _| live.contains(key));
        let counters = gateway.counters();
        let mut upgrades = BTreeMap::new();
        for ((_, status), count) in counters.upgrades() {
            *upgrades.entry(status.to_string()).or_default() += count;
        }
        let mut messages = [0; 2];
        let mut bytes = [0; 2];
        for (side, from) in [Peer::Client, Peer::Upstream].into_iter().enumerate() {
            for (_, (count, size)) in counters.messages_by_endpoint(from) {
                if let (Some(m), Some(b)) = (messages.get_mut(side), bytes.get_mut(side)) {
                    *m += count;
                    *b += size;
                }
            }
        }
        Sample {
            at_ms,
            run,
            connections: gateway.active_connections(),
            generation: gateway.generation().id,
            upgrades,
            messages,
            bytes,
            closes: counters.closes().into_iter().collect(),
            plugins: self.plugins.clone(),
            monitor_dropped: gateway.monitor().dropped(),
        }
    }
}

/// Add what `stats` counted since `seen` to `totals`, and remember it.
fn add_since(totals: &mut PluginTotals, seen: &mut PoolSeen, stats: &PluginStats) {
    let calls = stats.calls();
    totals.calls += calls.saturating_sub(seen.calls);
    seen.calls = calls;
    totals.buckets.resize(LATENCY_BUCKETS_US.len() + 1, 0);
    seen.buckets.resize(LATENCY_BUCKETS_US.len() + 1, 0);
    for ((total, last), counter) in totals
        .buckets
        .iter_mut()
        .zip(seen.buckets.iter_mut())
        .zip(stats.latency.buckets())
    {
        let now = counter;
        *total += now.saturating_sub(*last);
        *last = now;
    }
    seen.faults.resize(FaultKind::ALL.len(), 0);
    for (kind, last) in FaultKind::ALL.iter().zip(seen.faults.iter_mut()) {
        let now = stats.fault_count(*kind);
        let added = now.saturating_sub(*last);
        *last = now;
        if added > 0 {
            *totals.faults.entry(kind.as_str().to_string()).or_default() += added;
        }
    }
}

/// What happened between two samples: rates per second, counts, plugin
/// call time quantiles. None across a gap (the gateway was not running).
fn point(before: &Sample, after: &Sample, range: Range) -> Option<Value> {
    let elapsed_ms = after.at_ms.checked_sub(before.at_ms)?;
    if elapsed_ms == 0 || elapsed_ms > 3 * range.step_ms() {
        return None;
    }
    let seconds = elapsed_ms as f64 / 1000.0;
    // Totals of another run (a restart) started from zero.
    let restarted = before.run != after.run;
    let grown = |before: u64, after: u64| {
        if restarted {
            after
        } else {
            increase(before, after)
        }
    };
    let rate = |before: u64, after: u64| round(grown(before, after) as f64 / seconds);
    let rates = |before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>| -> Value {
        after
            .iter()
            .map(|(key, now)| {
                let then = before.get(key).copied().unwrap_or(0);
                (key.clone(), json!(rate(then, *now)))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    // The counts that grew, by key.
    let added = |before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>| -> Value {
        after
            .iter()
            .filter_map(|(key, now)| {
                let count = grown(before.get(key).copied().unwrap_or(0), *now);
                (count > 0).then(|| (key.clone(), json!(count)))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let directions = |[client_before, upstream_before]: [u64; 2],
                      [client_after, upstream_after]: [u64; 2]| {
        json!({
            "client_to_server": rate(client_before, client_after),
            "server_to_client": rate(upstream_before, upstream_after),
        })
    };
    let plugins: serde_json::Map<String, Value> = after
        .plugins
        .iter()
        .map(|(plugin, now)| {
            let then = before.plugins.get(plugin).cloned().unwrap_or_default();
            let calls = grown(then.calls, now.calls);
            let buckets: Vec<u64> = now
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| grown(then.buckets.get(i).copied().unwrap_or(0), *n))
                .collect();
            let faults = added(&then.faults, &now.faults);
            (
                plugin.clone(),
                json!({
                    "calls_per_s": round(calls as f64 / seconds),
                    "p50_us": quantile_us(&buckets, 0.5),
                    "p99_us": quantile_us(&buckets, 0.99),
                    "faults": faults,
                }),
            )
        })
        .collect();
    let closes = added(&before.closes, &after.closes);
    Some(json!({
        "at_ms": after.at_ms,
        "connections": after.connections,
        "generation": after.generation,
        "upgrades_per_s": rates(&before.upgrades, &after.upgrades),
        "messages_per_s": directions(before.messages, after.messages),
        "bytes_per_s": directions(before.bytes, after.bytes),
        "closes": closes,
        "plugins": plugins,
        "monitor_dropped": grown(before.monitor_dropped, after.monitor_dropped),
    }))
}

/// How much a total grew; a total that fell was reset, so all of it is new.
fn increase(before: u64, after: u64) -> u64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// The `q` quantile of calls counted per bucket, in microseconds,
/// interpolated within its bucket; none without calls.
fn quantile_us(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let wanted = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        let Some(&upper) = LATENCY_BUCKETS_US.get(i) else {
            // Slower than the last bound: say the last bound.
            return Some(lower as f64);
        };
        if *count > 0 && (below + count) as f64 >= wanted {
            let share = (wanted - below as f64) / *count as f64;
            return Some(round(lower as f64 + share * (upper - lower) as f64));
        }
        below += count;
        lower = upper;
    }
    Some(lower as f64)
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    millis(SystemTime::now())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, messages: u64, calls: u64, fast: u64, slow: u64) -> Sample {
        let mut buckets = vec![0; LATENCY_BUCKETS_US.len() + 1];
        buckets[3] = fast; // 5-10 µs
        buckets[8] = slow; // 250-1000 µs
        Sample {
            at_ms,
            messages: [messages, messages / 2],
            upgrades: [("101".to_string(), messages / 10)].into(),
            plugins: [(
                "p@1.0.0".to_string(),
                PluginTotals {
                    calls,
                    buckets,
                    faults: BTreeMap::new(),
                },
            )]
            .into(),
            ..Sample::default()
        }
    }

    #[test]
    fn points_are_rates_and_quantiles_between_samples() {
        let point = point(
            &sample(10_000, 100, 100, 100, 0),
            &sample(12_000, 300, 300, 298, 2),
            Range::FiveMinutes,
        )
        .unwrap();
        assert_eq!(point["messages_per_s"]["client_to_server"], 100.0);
        assert_eq!(point["messages_per_s"]["server_to_client"], 50.0);
        assert_eq!(point["upgrades_per_s"]["101"], 10.0);
        let plugin = &point["plugins"]["p@1.0.0"];
        assert_eq!(plugin["calls_per_s"], 100.0);
        // 198 of 200 calls took 5-10 µs: the median is in that bucket,
        // the 99th percentile at its top.
        let median = plugin["p50_us"].as_f64().unwrap();
        assert!((7.5..7.55).contains(&median), "{median}");
        assert_eq!(plugin["p99_us"], 10.0);
    }

    #[test]
    fn a_restart_counts_from_zero_and_a_gap_has_no_point() {
        let point = point(
            &sample(10_000, 500, 0, 0, 0),
            &sample(11_000, 40, 0, 0, 0),
            Range::FiveMinutes,
        )
        .unwrap();
        assert_eq!(point["messages_per_s"]["client_to_server"], 40.0);
        assert!(
            super::point(
                &sample(10_000, 0, 0, 0, 0),
                &sample(20_000, 0, 0, 0, 0),
                Range::FiveMinutes
            )
            .is_none()
        );
    }

    #[test]
    fn another_runs_totals_count_from_zero_even_when_higher() {
        let before = Sample {
            run: 1,
            ..sample(10_000, 100, 0, 0, 0)
        };
        let after = Sample {
            run: 2,
            ..sample(11_000, 150, 0, 0, 0)
        };
        let point = point(&before, &after, Range::FiveMinutes).unwrap();
        assert_eq!(point["messages_per_s"]["client_to_server"], 150.0);
    }

    #[test]
    fn quantiles_of_slow_calls_say_the_last_bound() {
        let mut buckets = vec![0; LATENCY_BUCKETS_US.len() + 1];
        *buckets.last_mut().unwrap() = 5;
        assert_eq!(quantile_us(&buckets, 0.5), Some(100_000.0));
        assert_eq!(quantile_us(&[0; 13], 0.5), None);
    }
}
