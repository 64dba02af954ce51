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
pub mod sync;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

pub use bucket::Grant;
use bucket::{Bucket, Push, Totals};

/// Shards of the bucket map: takes on different buckets rarely share a lock.
const SHARDS: usize = 16;

/// Why a take was refused before counting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TakeError {
    /// The key is longer than the plugin's `max-quota-key`.
    #[error("quota key longer than max-quota-key ({limit} bytes)")]
    KeyTooLong {
        /// The budget, in bytes.
        limit: usize,
    },
    /// The plugin holds `max-quota-keys` buckets already.
    #[error("max-quota-keys ({limit} buckets) reached")]
    TooManyKeys {
        /// The budget.
        limit: usize,
    },
    /// `limit` or `window-ms` is 0.
    #[error("a quota needs a limit and a window above 0")]
    Invalid,
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
    /// Buckets it holds now.
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

    /// Buckets the plugin holds now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
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
    shards: [Mutex<HashMap<String, Bucket>>; SHARDS],
    hasher: RandomState,
    /// Health of the Redis reconciliation.
    pub stats: SyncStats,
    /// Takes answered, allowed or not.
    pub takes: AtomicU64,
    /// Takes refused.
    pub refused: AtomicU64,
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
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: RandomState::new(),
            stats,
            takes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
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
        if key.len() > scope.max_key {
            return Err(TakeError::KeyTooLong {
                limit: scope.max_key,
            });
        }
        let name = format!("{}/{key}", scope.name);
        let mut shard = self.shard(&name);
        let bucket = match shard.get_mut(&name) {
            Some(bucket) => bucket,
            None => {
                if scope.held.fetch_add(1, Ordering::Relaxed) >= scope.max_keys {
                    scope.held.fetch_sub(1, Ordering::Relaxed);
                    return Err(TakeError::TooManyKeys {
                        limit: scope.max_keys,
                    });
                }
                let bucket = Bucket::new(window_ms, now_ms, scope.held.clone());
                shard.entry(name).or_insert(bucket)
            }
        };
        let replicas = if self.stats.redis_up.load(Ordering::Relaxed) {
            self.stats.replicas.load(Ordering::Relaxed)
        } else {
            1
        };
        let grant = bucket.take(
            u64::from(units),
            u64::from(limit),
            window_ms,
            now_ms,
            replicas,
        );
        self.takes.fetch_add(1, Ordering::Relaxed);
        if !grant.allowed {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(grant)
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
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
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
            let mut shard = self.shard(&name);
            if let Some(bucket) = shard.get_mut(&name) {
                bucket.finish_push(push, answer, replicas, now_ms);
            }
        }
    }

    /// Drop the buckets whose windows are over and that have nothing left
    /// to push.
    pub fn sweep(&self, now_ms: u64) {
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, bucket| !bucket.is_spent(now_ms));
        }
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "the index is taken modulo SHARDS, the array's length"
    )]
    fn shard(&self, name: &str) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        let index = (self.hasher.hash_one(name) % SHARDS as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
