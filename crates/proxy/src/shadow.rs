//! Shadow generations: a candidate configuration runs beside the serving
//! one on live traffic, its verdicts compared and never applied.
//!
//! A sampled connection's observer feeds its upgrade (once answered 101),
//! each message as it entered its chain with what the serving chain made
//! of it, and its end into the shadow's bounded queue; feeding never waits
//! (a full queue drops the connection from the shadow, counted). One
//! thread of the shadow's own, at low priority, replays what it is fed
//! through the candidate's chains ([`crate::replay::ReplaySession`]) and
//! counts the differences. The candidate's plugin state, attributes and
//! quota counts are its own: it is built with quotas apart from the
//! serving generation's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wsgate_monitor::mask::Mask;
use wsgate_monitor::{MessageRecord, UpgradeRecord};

use crate::generation::Generation;
use crate::replay::{Difference, ReplaySession, ReplayedMessage, Replayer, mask_payload};

/// Items waiting for the shadow's thread; more are dropped (counted).
const QUEUE: usize = 16_384;
/// Connections the shadow follows at once; past it, new ones are skipped.
const MAX_SESSIONS: usize = 10_000;
/// Differences kept as examples (the latest).
const EXAMPLES: usize = 20;

/// What a sampled connection feeds its shadow (each names the connection
/// by its key).
pub(crate) enum ShadowItem {
    /// The connection was upgraded: its request as the upgrade chain saw
    /// it (`connection` is the key).
    Open(Box<UpgradeRecord>),
    /// One message through the serving chain, unmasked.
    Message(Box<MessageRecord>),
    /// The connection ended.
    End(String),
}

/// A sampled connection's end of the shadow's queue.
pub(crate) struct ShadowFeed {
    /// The connection's key in the shadow.
    pub key: String,
    sender: SyncSender<ShadowItem>,
    stats: Arc<ShadowStats>,
    /// Once one item could not be queued, the rest are not sent: the
    /// shadow would compare a conversation with a gap.
    broken: bool,
}

impl ShadowFeed {
    /// Queue `item` without waiting; a full queue breaks the feed.
    pub fn send(&mut self, item: ShadowItem) {
        if self.broken {
            return;
        }
        match self.sender.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.broken = true;
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                // The session, if opened, ends now; if this too finds the
                // queue full, the thread evicts it once idle.
                let _ = self.sender.try_send(ShadowItem::End(self.key.clone()));
            }
        }
    }
}

impl Drop for ShadowFeed {
    /// The connection ended (or its task did): the shadow lets go of it.
    fn drop(&mut self) {
        if !self.broken {
            let _ = self.sender.try_send(ShadowItem::End(self.key.clone()));
        }
    }
}

/// Message counts by how the candidate compares, per endpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShadowCounts {
    /// Byte for byte the same.
    pub same: u64,
    /// Other messages sent on or back.
    pub changed: u64,
    /// The serving chain sent something on; the candidate nothing.
    pub dropped: u64,
    /// The candidate closes the connection.
    pub closed: u64,
    /// Upgrades the candidate answers otherwise than 101.
    pub upgrades_changed: u64,
}

/// One difference the shadow saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShadowExample {
    /// The endpoint.
    pub endpoint: String,
    /// The connection's key in the shadow.
    pub connection: String,
    /// The message, compared.
    pub message: ReplayedMessage,
}

/// What the shadow has seen.
#[derive(Debug, Default)]
pub struct ShadowStats {
    /// Connections sampled into the shadow.
    pub connections: AtomicU64,
    /// Connections dropped from the shadow because its queue was full.
    pub dropped: AtomicU64,
    /// Sampled connections not followed: the shadow followed
    /// the most it follows at once (10,000) already.
    pub skipped: AtomicU64,
    counts: Mutex<BTreeMap<String, ShadowCounts>>,
    examples: Mutex<VecDeque<ShadowExample>>,
}

impl ShadowStats {
    /// Counts per endpoint.
    pub fn counts(&self) -> BTreeMap<String, ShadowCounts> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The latest differences, oldest first.
    pub fn examples(&self) -> Vec<ShadowExample> {
        self.examples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    fn count(&self, endpoint: &str, update: impl FnOnce(&mut ShadowCounts)) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        update(counts.entry(endpoint.to_string()).or_default());
    }
}

/// A candidate generation running in the shadow of the serving one.
pub struct Shadow {
    /// The candidate generation (its pools hold its calls' statistics).
    pub generation: Arc<Generation>,
    /// Where its configuration came from.
    pub source: String,
    /// Its configuration's text and path, for a promotion.
    pub(crate) text: String,
    pub(crate) path: std::path::PathBuf,
    /// The share of connections sampled, 0 to 1.
    pub sample: f64,
    /// What it has seen.
    pub stats: Arc<ShadowStats>,
    sampled: AtomicU64,
    sender: SyncSender<ShadowItem>,
    stopped: Arc<AtomicBool>,
}

impl Shadow {
    /// Start `generation` in the shadow, sampling `sample` of the
    /// connections on its endpoints; its thread runs until the shadow is
    /// dropped.
    /// The examples it keeps are masked with `mask` (the serving
    /// monitor's).
    pub(crate) fn start(
        generation: Arc<Generation>,
        source: String,
        text: String,
        path: std::path::PathBuf,
        sample: f64,
        mask: Mask,
    ) -> std::io::Result<Self> {
        let (sender, items) = std::sync::mpsc::sync_channel(QUEUE);
        let stats = Arc::new(ShadowStats::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let replayer =
            Replayer::new(generation.clone(), Mask::default()).map_err(std::io::Error::other)?;
        let thread_stats = stats.clone();
        let thread_stopped = stopped.clone();
        std::thread::Builder::new()
            .name("wsgate-shadow".to_string())
            .spawn(move || run(&replayer, &items, &thread_stats, &thread_stopped, &mask))?;
        let sample = sample.clamp(0.0, 1.0);
        Ok(Self {
            generation,
            source,
            text,
            path,
            sample,
            stats,
            sampled: AtomicU64::new(0),
            sender,
            stopped,
        })
    }

    /// A feed for a new connection on `endpoint` (its configured path) if
    /// the candidate serves that path and the connection is sampled.
    pub(crate) fn sample(&self, path: &str, id: u64) -> Option<ShadowFeed> {
        self.generation.endpoint_for(path)?;
        // Sampling by connection, so stateful plugins see whole
        // conversations: connection n (from 0) is sampled when
        // ceil((n + 1) × sample) > ceil(n × sample), which takes exactly
        // that share, the first connection first.
        let n = self.sampled.fetch_add(1, Ordering::Relaxed) as f64;
        if ((n + 1.0) * self.sample).ceil() <= (n * self.sample).ceil() {
            return None;
        }
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        Some(ShadowFeed {
            key: format!("c{id}"),
            sender: self.sender.clone(),
            stats: self.stats.clone(),
            broken: false,
        })
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        // Its thread sees it within a tick, and lets go of the candidate.
        self.stopped.store(true, Ordering::Relaxed);
    }
}

/// How long the shadow follows a connection that feeds it nothing (one
/// whose end was lost to a full queue); then it lets go of it.
const IDLE: Duration = Duration::from_secs(600);
/// How often the thread looks whether it should stop or let go of idle
/// connections, when nothing arrives.
const TICK: Duration = Duration::from_secs(1);

/// One connection the shadow follows.
struct Followed {
    endpoint: String,
    session: ReplaySession,
    last: Instant,
}

/// The shadow's thread: replay what the sampled connections feed, count
/// what differs (the examples masked with `mask`). Its calls run here,
/// never on the I/O workers.
fn run(
    replayer: &Replayer,
    items: &Receiver<ShadowItem>,
    stats: &ShadowStats,
    stopped: &AtomicBool,
    mask: &Mask,
) {
    // The shadow yields to the I/O workers, as offload threads do.
    wsgate_runtime::lower_thread_priority("shadow");
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!("the shadow cannot start its runtime; it compares nothing");
        return;
    };
    let mut followed: HashMap<String, Followed> = HashMap::new();
    let mut next_id = 0u64;
    while !stopped.load(Ordering::Relaxed) {
        let item = match items.recv_timeout(TICK) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                followed.retain(|_, f| f.last.elapsed() < IDLE);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        runtime.block_on(async {
            match item {
                ShadowItem::Open(upgrade) => {
                    if followed.len() >= MAX_SESSIONS {
                        stats.skipped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    next_id += 1;
                    let (status, session) = replayer.open(next_id, &upgrade).await;
                    if status != Some(upgrade.status) {
                        stats.count(&upgrade.endpoint, |c| c.upgrades_changed += 1);
                    }
                    if let Some(session) = session {
                        let endpoint = upgrade.endpoint.clone();
                        let last = Instant::now();
                        followed.insert(
                            upgrade.connection,
                            Followed {
                                endpoint,
                                session,
                                last,
                            },
                        );
                    }
                }
                ShadowItem::Message(record) => {
                    let Some(f) = followed.get_mut(&record.connection) else {
                        return;
                    };
                    f.last = Instant::now();
                    let Some(message) = f.session.message(&record).await else {
                        return;
                    };
                    let closed = message.difference == Difference::Closed
                        || message.candidate.close.is_some();
                    count(stats, &f.endpoint, &record.connection, message, mask);
                    if closed {
                        // The candidate ended the connection: nothing after
                        // this compares.
                        if let Some(f) = followed.remove(&record.connection) {
                            f.session.finish();
                        }
                    }
                }
                ShadowItem::End(key) => {
                    if let Some(f) = followed.remove(&key) {
                        f.session.finish();
                    }
                }
            }
        });
    }
}

fn count(stats: &ShadowStats, endpoint: &str, key: &str, message: ReplayedMessage, mask: &Mask) {
    stats.count(endpoint, |c| match message.difference {
        Difference::Same => c.same += 1,
        Difference::Changed => c.changed += 1,
        Difference::Dropped => c.dropped += 1,
        Difference::Closed => c.closed += 1,
    });
    if message.difference != Difference::Same {
        let message = ReplayedMessage {
            input: mask_payload(&message.input, mask),
            recorded: message.recorded.masked(mask),
            candidate: message.candidate.masked(mask),
            ..message
        };
        let mut examples = stats
            .examples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if examples.len() == EXAMPLES {
            examples.pop_front();
        }
        examples.push_back(ShadowExample {
            endpoint: endpoint.to_string(),
            connection: key.to_string(),
            message,
        });
    }
}
