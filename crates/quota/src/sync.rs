//! Reconciliation of the local buckets with Redis, in the background.
//!
//! Every `interval`, one pipeline for all buckets used in their last
//! window: for each, `INCRBY` the current window's key by the units taken
//! here since the last round (0 just reads the fleet's total), `PEXPIRE`
//! it, and `GET` the previous window's total; and count the replicas that
//! reconciled lately (a sorted set). The answers replace the buckets' view
//! of the fleet, and each replica may take its share (1/replicas) of what
//! the fleet left before the next round. A round that fails or outlasts `timeout`
//! changes nothing but puts the units back to be pushed next round, so a
//! Redis outage only means local counting until Redis answers again.
//!
//! Places held per key (`quota.hold`) reconcile in a second pipeline of
//! the same round, when any changed or is asked for: each replica keeps its
//! places in a hash of its own (`HSET`/`HDEL` of what changed, all of them
//! once a second, `PEXPIRE` so a replica that dies takes its places with
//! it), and reads the other live replicas' hashes (`HMGET`) for the keys
//! asked for lately.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::bucket::{Push, Totals};
use crate::{HoldRound, Quotas, now_ms};

/// How often a failing Redis is logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often an idle replica (no bucket used lately) still reconciles.
const IDLE_ROUND: Duration = Duration::from_secs(1);

/// How often buckets are swept when no Redis is set.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Where and how often to reconcile.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The Redis URL (`redis://`, `rediss://`, `redis+unix://`).
    pub url: String,
    /// Time between rounds.
    pub interval: Duration,
    /// Longest a round (or a reconnect) may take.
    pub timeout: Duration,
}

/// The Redis URL does not parse.
#[derive(Debug, thiserror::Error)]
#[error("cluster.redis: {0}")]
pub struct BadUrl(String);

/// Check `url` without connecting (a configuration error names it).
pub fn check_url(url: &str) -> Result<(), BadUrl> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| BadUrl(e.to_string()))
}

/// Reconcile `quotas` with Redis (or, without `settings`, only sweep
/// spent buckets) until `shutdown`.
pub async fn run(
    quotas: Arc<Quotas>,
    settings: Option<RedisSettings>,
    shutdown: CancellationToken,
) {
    let Some(settings) = settings else {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => quotas.sweep(now_ms()),
            }
        }
    };
    let client = match redis::Client::open(settings.url.as_str()) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cluster.redis: bad URL; quotas count locally");
            quotas.stats.redis_up.store(false, Ordering::Relaxed);
            return;
        }
    };
    let mut sync = Sync {
        replica: replica_id(),
        quotas,
        client,
        settings,
        connection: None,
        last_logged: None,
        last_sweep: Instant::now(),
        others: Vec::new(),
        last_full_hold: Instant::now(),
        // The first round runs at once: this replica's presence counts
        // before any bucket is used.
        last_round: Instant::now()
            .checked_sub(IDLE_ROUND)
            .unwrap_or_else(Instant::now),
    };
    let mut tick = tokio::time::interval(sync.settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => sync.round().await,
        }
    }
    sync.leave().await;
}

/// This replica's name in Redis: unique even for replicas started in the
/// same millisecond with the same pid (containers: pid 1).
fn replica_id() -> String {
    use std::hash::BuildHasher;
    let random = foldhash::fast::RandomState::default().hash_one(now_ms());
    format!("{}-{}-{random:016x}", std::process::id(), now_ms())
}

/// The reconciliation's state between rounds.
struct Sync {
    /// This replica's name in the replica set.
    replica: String,
    quotas: Arc<Quotas>,
    client: redis::Client,
    settings: RedisSettings,
    connection: Option<MultiplexedConnection>,
    last_logged: Option<Instant>,
    last_sweep: Instant,
    /// When the last round went to Redis.
    last_round: Instant,
    /// The other live replicas, as of the last place round.
    others: Vec<String>,
    /// When this replica last wrote all its places.
    last_full_hold: Instant,
}

impl Sync {
    async fn round(&mut self) {
        if self.last_sweep.elapsed() >= SWEEP_INTERVAL {
            self.quotas.sweep(now_ms());
            self.last_sweep = Instant::now();
        }
        let pushes = self.quotas.start_pushes(now_ms());
        // Idle: only keep this replica's presence and the health gauge
        // fresh, once per IDLE_ROUND.
        let healthy = self.quotas.stats.redis_up.load(Ordering::Relaxed);
        if pushes.is_empty() && healthy && self.last_round.elapsed() < IDLE_ROUND {
            if self.connection.is_some() && self.quotas.has_gauges() {
                self.hold_round().await;
            }
            return;
        }
        self.last_round = Instant::now();
        let totals = match self.exchange(&pushes).await {
            Ok(totals) => {
                self.healthy();
                Some(totals)
            }
            Err(error) => {
                self.failed(&error);
                None
            }
        };
        let reached = totals.is_some();
        self.quotas.finish_pushes(pushes, totals);
        if reached && self.quotas.has_gauges() {
            self.hold_round().await;
        }
    }

    /// Write this replica's places that changed (all of them once per
    /// `IDLE_ROUND`) and read the other replicas' for the keys asked for
    /// lately.
    async fn hold_round(&mut self) {
        let full = self.last_full_hold.elapsed() >= IDLE_ROUND;
        let round = self.quotas.start_hold_round(now_ms(), full);
        if round.writes.is_empty() && round.reads.is_empty() && !full {
            return;
        }
        if full {
            self.last_full_hold = Instant::now();
        }
        match self.exchange_holds(&round).await {
            Ok(Some(others)) => self.quotas.finish_hold_round(round, Some(others)),
            // Written, but read from a stale replica list: nothing learnt.
            Ok(None) => self.quotas.finish_hold_round(round, None),
            Err(error) => {
                self.failed(&error);
                self.quotas.finish_hold_round(round, None);
            }
        }
    }

    /// One pipeline for `round`; answers, per read key, the places the
    /// other replicas hold (`None` when the live replicas changed since
    /// the last round: the reads went to the old list).
    async fn exchange_holds(&mut self, round: &HoldRound) -> Result<Option<Vec<u64>>, String> {
        let Some(mut connection) = self.connection.clone() else {
            return Err("no connection".to_string());
        };
        let presence = self.presence();
        let (pipe, commands) = hold_pipeline(&self.replica, &self.others, presence, round);
        let mut values: Vec<redis::Value> = self.query(&mut connection, &pipe, commands).await?;
        let live: Vec<String> = values
            .pop()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let mut others = vec![0; round.reads.len()];
        if !round.reads.is_empty() {
            for value in values {
                let places: Vec<Option<u64>> =
                    redis::from_redis_value(value).map_err(|e| e.to_string())?;
                for (sum, places) in others.iter_mut().zip(places) {
                    *sum += places.unwrap_or(0);
                }
            }
        }
        let live: Vec<String> = live.into_iter().filter(|r| *r != self.replica).collect();
        if live != self.others {
            // The reads went to the replicas of the last round, not to the
            // ones live now (one joined or left): read again next round.
            self.others = live;
            return Ok(None);
        }
        Ok(Some(others))
    }

    /// Leave the fleet at shutdown: this replica's places and presence go
    /// at once (its connections are closed), so the others need not wait
    /// for them to expire. Best effort, within the timeout.
    async fn leave(&mut self) {
        let Some(mut connection) = self.connection.clone() else {
            return;
        };
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(places_key(&self.replica)).ignore();
        pipe.cmd("ZREM")
            .arg(REPLICAS_KEY)
            .arg(&self.replica)
            .ignore();
        let left = tokio::time::timeout(
            self.settings.timeout,
            pipe.query_async::<()>(&mut connection),
        )
        .await;
        if !matches!(left, Ok(Ok(()))) {
            tracing::debug!("could not leave the quota fleet; its entries expire");
        }
    }

    /// Send `pipe` (`commands` long, counted) and read its answer within the
    /// timeout. On an error or a slow Redis the connection is dropped: the
    /// next round starts over with a fresh one.
    async fn query<T: redis::FromRedisValue>(
        &mut self,
        connection: &mut MultiplexedConnection,
        pipe: &redis::Pipeline,
        commands: u64,
    ) -> Result<T, String> {
        let timeout = self.settings.timeout;
        let answered = tokio::time::timeout(timeout, pipe.query_async(connection)).await;
        self.quotas
            .stats
            .commands
            .fetch_add(commands, Ordering::Relaxed);
        match answered {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(error)) => {
                self.connection = None;
                Err(error.to_string())
            }
            Err(_) => {
                self.connection = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    /// How long a replica counts as live after it last reconciled.
    fn presence(&self) -> Duration {
        self.settings.interval.max(Duration::from_millis(100)) * 10
    }

    /// Push and read back, within the timeout.
    async fn exchange(&mut self, pushes: &[(String, Push)]) -> Result<Vec<Totals>, String> {
        let timeout = self.settings.timeout;
        let connection = match self.connection.clone() {
            Some(connection) => connection,
            None => {
                let connecting = self.client.get_multiplexed_async_connection();
                let connection = tokio::time::timeout(timeout, connecting)
                    .await
                    .map_err(|_| format!("no connection within {timeout:?}"))?
                    .map_err(|e| e.to_string())?;
                self.connection = Some(connection.clone());
                connection
            }
        };
        let mut connection = connection;
        let presence = self.presence();
        let (pipe, commands) = pipeline(&self.replica, presence, pushes);
        let values: Vec<Option<u64>> = self.query(&mut connection, &pipe, commands).await?;
        let Some((replicas, values)) = values.split_first() else {
            return Err("Redis answered nothing".to_string());
        };
        self.quotas
            .stats
            .replicas
            .store(replicas.unwrap_or(1).max(1), Ordering::Relaxed);
        let totals: Vec<Totals> = values
            .chunks(2)
            .map(|pair| Totals {
                current: pair.first().copied().flatten().unwrap_or(0),
                previous: pair.get(1).copied().flatten().unwrap_or(0),
            })
            .collect();
        if totals.len() != pushes.len() {
            return Err(format!(
                "Redis answered {} values for {} buckets",
                values.len(),
                pushes.len()
            ));
        }
        Ok(totals)
    }

    fn healthy(&mut self) {
        self.quotas.stats.rounds.fetch_add(1, Ordering::Relaxed);
        if !self.quotas.stats.redis_up.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again: quotas reconciled across replicas");
            self.last_logged = None;
        }
    }

    fn failed(&mut self, error: &str) {
        self.quotas.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.quotas.stats.redis_up.store(false, Ordering::Relaxed);
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= LOG_INTERVAL)
        {
            tracing::warn!(
                error,
                "quota reconciliation with Redis failed; quotas count locally until it answers"
            );
            self.last_logged = Some(Instant::now());
        }
    }
}

/// The Redis key of one window of bucket `name`.
fn key(name: &str, window_ms: u64, window: u64) -> String {
    format!("wsgate:quota:{name}:{window_ms}:{window}")
}

/// The sorted set of live replicas, scored by when each last reconciled.
const REPLICAS_KEY: &str = "wsgate:quota:replicas";

/// The hash of the places replica `replica` holds, by gauge name.
fn places_key(replica: &str) -> String {
    format!("wsgate:hold:{replica}")
}

/// Unix ms `presence` ago: replicas that reconciled since are live.
fn live_since(presence: Duration) -> u64 {
    now_ms().saturating_sub(u64::try_from(presence.as_millis()).unwrap_or(u64::MAX))
}

/// One pipeline for a place round: write `round`'s changes to `replica`'s
/// hash (kept three presences), read each of `others`' hashes for the read
/// keys, and list the live replicas (the last answer); and how many
/// commands it sends.
fn hold_pipeline(
    replica: &str,
    others: &[String],
    presence: Duration,
    round: &HoldRound,
) -> (redis::Pipeline, u64) {
    let mut pipe = redis::pipe();
    let mut commands = 0;
    let mine = places_key(replica);
    let (held, released): (Vec<_>, Vec<_>) =
        round.writes.iter().partition(|(_, places)| *places > 0);
    if !held.is_empty() {
        let mut hset = redis::cmd("HSET");
        hset.arg(&mine);
        for (name, places) in held {
            hset.arg(name).arg(*places);
        }
        pipe.add_command(hset).ignore();
        commands += 1;
    }
    if !released.is_empty() {
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(&mine);
        for (name, _) in released {
            hdel.arg(name);
        }
        pipe.add_command(hdel).ignore();
        commands += 1;
    }
    let ttl = u64::try_from(presence.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(3);
    pipe.cmd("PEXPIRE").arg(&mine).arg(ttl).ignore();
    // A replica with places but no bucket in use reconciles only here: its
    // presence must stay fresh too.
    pipe.cmd("ZADD")
        .arg(REPLICAS_KEY)
        .arg(now_ms())
        .arg(replica)
        .ignore();
    commands += 2;
    if !round.reads.is_empty() {
        for other in others {
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(places_key(other));
            for name in &round.reads {
                hmget.arg(name);
            }
            pipe.add_command(hmget);
            commands += 1;
        }
    }
    pipe.cmd("ZRANGEBYSCORE")
        .arg(REPLICAS_KEY)
        .arg(live_since(presence))
        .arg("+inf");
    (pipe, commands + 1)
}

/// One pipeline for `pushes`: first this replica's presence (answering how
/// many replicas reconciled within `presence`), then two values per bucket
/// (the current window's total, the previous one's); and how many
/// commands it sends.
fn pipeline(
    replica: &str,
    presence: Duration,
    pushes: &[(String, Push)],
) -> (redis::Pipeline, u64) {
    let mut pipe = redis::pipe();
    let since = live_since(presence);
    pipe.cmd("ZADD")
        .arg(REPLICAS_KEY)
        .arg(now_ms())
        .arg(replica)
        .ignore();
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(REPLICAS_KEY)
        .arg("-inf")
        .arg(format!("({since}"))
        .ignore();
    pipe.cmd("ZCARD").arg(REPLICAS_KEY);
    let mut commands = 3;
    for (name, push) in pushes {
        let ttl = push.window_ms.saturating_mul(3);
        if let Some(carry) = push.carry {
            let carried = key(name, push.window_ms, carry.window);
            pipe.cmd("INCRBY").arg(&carried).arg(carry.units).ignore();
            pipe.cmd("PEXPIRE").arg(&carried).arg(ttl).ignore();
            commands += 2;
        }
        let current = key(name, push.window_ms, push.current.window);
        pipe.cmd("INCRBY").arg(&current).arg(push.current.units);
        pipe.cmd("PEXPIRE").arg(&current).arg(ttl).ignore();
        pipe.cmd("GET").arg(key(
            name,
            push.window_ms,
            push.current.window.saturating_sub(1),
        ));
        commands += 3;
    }
    (pipe, commands)
}
