//! Quotas shared by every connection of a gateway and, with Redis, by every
//! replica: the `quota` host interface of contract 0.2.0.
//!
//! * [`Quotas`] holds sliding-window buckets in memory. [`Quotas::take`]
//!   answers from them at once, under one shard lock: a plugin call never
//!   waits on the network.
//! * [`sync::run`] reconciles them with Redis every `sync-interval`: each
//!   active bucket pushes the units taken here since the last round
//!   (`INCRBY` on the window's key) and reads the fleet's totals back, in
//!   one pipeline. Redis unreachable or slow: buckets keep counting locally
//!   (what this replica took, over the last totals it saw), a gauge and a
//!   log line say so, and the units taken meanwhile are pushed once Redis
//!   answers again.

#![deny(clippy::indexing_slicing)]

mod bucket;
mod hold;
pub mod sync;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::fast::RandomState;

pub use bucket::Grant;
use bucket::{Bucket, Push, Totals};
use hold::Gauge;
pub use hold::Hold;

/// Shards of the bucket map: takes on different buckets rarely share a lock.
const SHARDS: usize = 16;

/// Buckets or gauges by name, hashed with a fast seeded hash (the names
/// carry client-chosen values, so the seed is random).
type NameMap<T> = HashMap<String, T, RandomState>;

thread_local! {
    /// The name being looked up (`<plugin>/<key>`), built here so that a
    /// take of a known bucket allocates nothing.
    static NAME: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Why a take was refused before counting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TakeError {
    /// The key is longer than the plugin's `max-quota-key`.
    #[error("quota key longer than max-quota-key ({limit} bytes)")]
    KeyTooLong {
        /// The budget, in bytes.
        limit: usize,
    },
    /// The plugin holds `max-quota-keys` buckets (and gauges) already.
    #[error("max-quota-keys ({limit} keys) reached")]
    TooManyKeys {
        /// The budget.
        limit: usize,
    },
    /// `limit` or `window-ms` is 0.
    #[error("a quota needs a limit and a window above 0")]
    Invalid,
}

/// The keys a round of place reconciliation writes and reads.
#[derive(Debug, Default)]
pub(crate) struct HoldRound {
    /// Gauges whose places here changed (or all held ones, on a full
    /// round), with the places held here.
    pub writes: Vec<(String, u64)>,
    /// Gauges whose fleet view is read.
    pub reads: Vec<String>,
}

/// One plugin's share of the quotas: the scope of its bucket names and its
/// budget.
#[derive(Debug)]
pub struct QuotaScope {
    /// The plugin's name; bucket names are `<name>/<key>`.
    name: String,
    /// Longest key, in bytes.
    max_key: usize,
    /// Most buckets at once.
    max_keys: usize,
    /// Buckets and gauges it holds now.
    held: Arc<AtomicUsize>,
}

impl QuotaScope {
    /// The scope of plugin `name` with its budget.
    pub fn new(name: &str, max_key: usize, max_keys: usize) -> Self {
        Self {
            name: name.to_string(),
            max_key,
            max_keys,
            held: Arc::default(),
        }
    }

    /// Buckets and gauges the plugin holds now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Check `key`, then call `f` with its name, `<plugin>/<key>`.
    fn with_name<R>(&self, key: &str, f: impl FnOnce(&str) -> R) -> Result<R, TakeError> {
        if key.len() > self.max_key {
            return Err(TakeError::KeyTooLong {
                limit: self.max_key,
            });
        }
        Ok(NAME.with_borrow_mut(|name| {
            name.clear();
            name.push_str(&self.name);
            name.push('/');
            name.push_str(key);
            f(name)
        }))
    }

    /// Count one more key, within `max-quota-keys`.
    fn count_key(&self) -> Result<Arc<AtomicUsize>, TakeError> {
        if self.held.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Err(TakeError::TooManyKeys {
                limit: self.max_keys,
            });
        }
        Ok(self.held.clone())
    }
}

/// Health and work of the Redis reconciliation, for metrics.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Whether the last round reached Redis (true when no Redis is set).
    pub redis_up: AtomicBool,
    /// Rounds that failed or timed out.
    pub errors: AtomicU64,
    /// Rounds that reached Redis.
    pub rounds: AtomicU64,
    /// Redis commands sent.
    pub commands: AtomicU64,
    /// Replicas reconciling through the same Redis, this one included (as
    /// of the last round; 1 without Redis).
    pub replicas: AtomicU64,
}

/// The buckets of one gateway process.
#[derive(Debug)]
pub struct Quotas {
    shards: [Mutex<NameMap<Bucket>>; SHARDS],
    hasher: RandomState,
    /// Health of the Redis reconciliation.
    pub stats: SyncStats,
    /// Takes answered, allowed or not.
    pub takes: AtomicU64,
    /// Takes refused.
    pub refused: AtomicU64,
    /// Places held per key (`quota.hold`), by gauge name.
    gauges: [Mutex<NameMap<Gauge>>; SHARDS],
    /// Holds refused.
    pub holds_refused: AtomicU64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self::new()
    }
}

impl Quotas {
    /// No buckets yet.
    pub fn new() -> Self {
        let stats = SyncStats::default();
        stats.redis_up.store(true, Ordering::Relaxed);
        stats.replicas.store(1, Ordering::Relaxed);
        Self {
            shards: std::array::from_fn(|_| Mutex::new(NameMap::default())),
            hasher: RandomState::default(),
            stats,
            takes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            gauges: std::array::from_fn(|_| Mutex::new(NameMap::default())),
            holds_refused: AtomicU64::new(0),
        }
    }

    /// Take `units` from `scope`'s bucket `key` (`limit` per `window_ms`).
    pub fn take(
        &self,
        scope: &QuotaScope,
        key: &str,
        units: u32,
        limit: u32,
        window_ms: u32,
    ) -> Result<Grant, TakeError> {
        let now_ms = now_ms();
        if limit == 0 || window_ms == 0 {
            return Err(TakeError::Invalid);
        }
        let replicas = self.counting_replicas();
        let grant = scope.with_name(key, |name| {
            let mut shard = lock(self.shard_of(&self.shards, name));
            let bucket = match shard.get_mut(name) {
                Some(bucket) => bucket,
                None => {
                    let bucket = Bucket::new(window_ms, now_ms, scope.count_key()?);
                    shard.entry(name.to_string()).or_insert(bucket)
                }
            };
            Ok(bucket.take(
                u64::from(units),
                u64::from(limit),
                window_ms,
                now_ms,
                replicas,
            ))
        })??;
        self.takes.fetch_add(1, Ordering::Relaxed);
        if !grant.allowed {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(grant)
    }

    /// Hold one of `limit` places in `scope`'s gauge `key` until the
    /// returned [`Hold`] is dropped (its connection closes); refused,
    /// nothing is held.
    pub fn hold(
        self: &Arc<Self>,
        scope: &QuotaScope,
        key: &str,
        limit: u32,
    ) -> Result<(Grant, Option<Hold>), TakeError> {
        if limit == 0 {
            return Err(TakeError::Invalid);
        }
        let replicas = self.counting_replicas();
        let now_ms = now_ms();
        scope.with_name(key, |name| {
            let grant = {
                let mut shard = lock(self.shard_of(&self.gauges, name));
                let gauge = match shard.get_mut(name) {
                    Some(gauge) => gauge,
                    None => {
                        let gauge = Gauge::new(now_ms, scope.count_key()?);
                        shard.entry(name.to_string()).or_insert(gauge)
                    }
                };
                gauge.hold(u64::from(limit), replicas, now_ms)
            };
            if !grant.allowed {
                self.holds_refused.fetch_add(1, Ordering::Relaxed);
                return Ok((grant, None));
            }
            let hold = Hold {
                quotas: self.clone(),
                name: name.to_string(),
            };
            Ok((grant, Some(hold)))
        })?
    }

    /// Give back one place of gauge `name`.
    fn release(&self, name: &str) {
        if let Some(gauge) = lock(self.shard_of(&self.gauges, name)).get_mut(name) {
            gauge.release();
        }
    }

    /// Places held here now, all gauges together.
    pub fn places(&self) -> u64 {
        self.gauges
            .iter()
            .map(|shard| lock(shard).values().map(Gauge::local).sum::<u64>())
            .sum()
    }

    /// Replicas whose counts this one answers with: those reconciling
    /// through Redis, or 1 while Redis is unreachable.
    fn counting_replicas(&self) -> u64 {
        if self.stats.redis_up.load(Ordering::Relaxed) {
            self.stats.replicas.load(Ordering::Relaxed)
        } else {
            1
        }
    }

    /// Start a round of place reconciliation: the gauges whose places
    /// changed (every held one when `full`) and those to read.
    pub(crate) fn start_hold_round(&self, now_ms: u64, full: bool) -> HoldRound {
        let mut round = HoldRound::default();
        for shard in &self.gauges {
            let mut map = lock(shard);
            for (name, gauge) in map.iter_mut() {
                if gauge.changed || (full && gauge.local() > 0) {
                    gauge.changed = false;
                    round.writes.push((name.clone(), gauge.local()));
                }
                if gauge.is_read(now_ms) {
                    round.reads.push(name.clone());
                }
            }
        }
        round
    }

    /// Finish a round: each read gauge takes the other replicas' places
    /// (`None`: Redis failed; what was to be written is written next round).
    pub(crate) fn finish_hold_round(&self, round: HoldRound, others: Option<Vec<u64>>) {
        let replicas = self.stats.replicas.load(Ordering::Relaxed);
        let Some(others) = others else {
            for (name, _) in round.writes {
                if let Some(gauge) = lock(self.shard_of(&self.gauges, &name)).get_mut(&name) {
                    gauge.changed = true;
                }
            }
            return;
        };
        for (name, others) in round.reads.into_iter().zip(others) {
            if let Some(gauge) = lock(self.shard_of(&self.gauges, &name)).get_mut(&name) {
                gauge.reconcile(others, replicas);
            }
        }
    }

    /// Whether any gauge holds places or waits to be written or read.
    pub(crate) fn has_gauges(&self) -> bool {
        self.gauges.iter().any(|shard| !lock(shard).is_empty())
    }

    /// Buckets held now, all plugins together.
    pub fn buckets(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |map| map.len()))
            .sum()
    }

    /// Start a reconciliation round: for every bucket used in its last
    /// window, what to push.
    pub(crate) fn start_pushes(&self, now_ms: u64) -> Vec<(String, Push)> {
        let mut pushes = Vec::new();
        for shard in &self.shards {
            let mut map = lock(shard);
            for (name, bucket) in map.iter_mut() {
                if let Some(push) = bucket.start_push(now_ms) {
                    pushes.push((name.clone(), push));
                }
            }
        }
        pushes
    }

    /// Finish a round: each bucket takes the fleet's totals, or (`None`:
    /// Redis failed) keeps its units to push next round.
    pub(crate) fn finish_pushes(&self, pushes: Vec<(String, Push)>, totals: Option<Vec<Totals>>) {
        let replicas = self.stats.replicas.load(Ordering::Relaxed);
        let now_ms = now_ms();
        let mut totals = totals.map(Vec::into_iter);
        for (name, push) in pushes {
            let answer = totals.as_mut().and_then(Iterator::next);
            if let Some(bucket) = lock(self.shard_of(&self.shards, &name)).get_mut(&name) {
                bucket.finish_push(push, answer, replicas, now_ms);
            }
        }
    }

    /// Drop the buckets whose windows are over and that have nothing left
    /// to push.
    pub fn sweep(&self, now_ms: u64) {
        for shard in &self.shards {
            lock(shard).retain(|_, bucket| !bucket.is_spent(now_ms));
        }
        for shard in &self.gauges {
            lock(shard).retain(|_, gauge| !gauge.is_spent(now_ms));
        }
    }

    /// The shard of `shards` that holds `name`.
    #[allow(
        clippy::indexing_slicing,
        reason = "the index is taken modulo SHARDS, the array's length"
    )]
    fn shard_of<'a, T>(&self, shards: &'a [Mutex<T>; SHARDS], name: &str) -> &'a Mutex<T> {
        let index = (self.hasher.hash_one(name) % SHARDS as u64) as usize;
        &shards[index]
    }
}

/// Lock a shard; a poisoned one is used as it is (its counts stay valid).
fn lock<T>(shard: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Now, in Unix milliseconds, from the coarse real-time clock: a few
/// milliseconds of resolution (the kernel's tick), for a fraction of the
/// precise clock's cost on every take.
pub fn now_ms() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    seconds.saturating_mul(1000).saturating_add(millis)
}
