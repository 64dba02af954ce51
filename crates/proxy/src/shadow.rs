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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsgate_monitor::UpgradeRecord;
use wsgate_monitor::mask::Mask;

use crate::convert::{payloads, to_payload};
use crate::generation::Generation;
use crate::peer::Peer;
use crate::relay::ChainResult;
use crate::replay::{Difference, Output, ReplaySession, ReplayedMessage, Replayer, Shape};

/// Items waiting for the shadow's thread; more are dropped (counted).
pub(crate) const QUEUE: usize = 16_384;
/// Connections the shadow follows at once; past it, new ones are skipped.
const MAX_SESSIONS: usize = 10_000;
/// Differences kept as examples (the latest).
const EXAMPLES: usize = 20;

/// What a sampled connection feeds its shadow (each names the connection
/// by its id). A message goes into the queue's slot by value: no
/// allocation on the serving path for a message sent on as read, no free
/// on the shadow's thread (the queue's 16,384 slots are allocated once per
/// shadow).
pub(crate) enum ShadowItem {
    /// Connection `id` was upgraded: its request as the upgrade chain saw
    /// it.
    Open(u64, Box<UpgradeRecord>),
    /// One message through the serving chain, as it was.
    Message(ChainRun),
    /// The connection ended.
    End(u64),
}

/// One message through the serving chain: what entered it (a small one
/// copied, any other sharing its bytes: see [`Fed`]) and what left it
/// (nothing is encoded on the serving path; only the shadow's examples
/// are converted, and masked).
pub(crate) struct ChainRun {
    /// The connection's id (a number, not its key: nothing to share
    /// between the serving thread and the shadow's).
    pub connection: u64,
    /// Its position among the connection's messages through chains, from 1.
    pub seq: u64,
    /// When it was read, microseconds since the epoch.
    pub time_us: u64,
    /// Who sent it.
    pub from: Peer,
    /// The message as read.
    pub input: Fed,
    /// What the serving chain made of it.
    pub made: Made,
    /// Time in the serving chain's plugin calls, microseconds, when it was
    /// timed (every message's when the connection is recorded for replay or
    /// its frames are described, else one in
    /// [`wsgate_runtime::TIME_ONE_CALL_IN`]); the candidate's is timed for
    /// the same messages.
    pub filter_us: Option<u64>,
}

impl ChainRun {
    /// What the serving chain sent on.
    fn forward(&self) -> Cow<'_, [WsMessage]> {
        match &self.made {
            Made::AsRead => Cow::Owned(vec![self.input.message()]),
            Made::Other(result) => Cow::Borrowed(&result.forward),
        }
    }

    /// What it sent back.
    fn replies(&self) -> &[WsMessage] {
        match &self.made {
            Made::AsRead => &[],
            Made::Other(result) => &result.replies,
        }
    }

    /// The close it ended the connection with.
    fn close(&self) -> Option<&(u16, String)> {
        match &self.made {
            Made::AsRead => None,
            Made::Other(result) => result.close.as_ref(),
        }
    }
}

/// The most bytes of a text or binary message a shadow is fed in its
/// queue's slot, copied.
const INLINE: usize = 64;

/// A message as a shadow is fed it.
pub(crate) enum Fed {
    /// A text or binary message of at most [`INLINE`] bytes, copied into
    /// the fed item: no allocation, no count on bytes both the serving
    /// thread and the shadow's would hold, and nothing keeps the buffer the
    /// message was read into. The most common message, fed cheapest.
    Copied {
        /// Text (it was valid UTF-8 when read), else binary.
        text: bool,
        /// How many of `bytes` are the message's.
        len: u8,
        bytes: [u8; INLINE],
    },
    /// Any other message, sharing its bytes.
    Shared(WsMessage),
}

impl Fed {
    /// What a shadow is fed of `message`.
    pub(crate) fn of(message: &WsMessage) -> Self {
        let (text, data) = match message {
            WsMessage::Text(text) => (true, text.as_bytes()),
            WsMessage::Binary(data) => (false, data.as_ref()),
            other => return Self::Shared(other.clone()),
        };
        let mut bytes = [0; INLINE];
        match (bytes.get_mut(..data.len()), u8::try_from(data.len())) {
            (Some(to), Ok(len)) => {
                to.copy_from_slice(data);
                Self::Copied { text, len, bytes }
            }
            _ => Self::Shared(message.clone()),
        }
    }

    /// The message again (a copied one in bytes of its own).
    pub(crate) fn message(&self) -> WsMessage {
        match self {
            Self::Copied { text, len, bytes } => {
                let data = bytes.get(..usize::from(*len)).unwrap_or_default();
                if *text && let Ok(text) = std::str::from_utf8(data) {
                    return WsMessage::text(text);
                }
                // Text is valid UTF-8 when read: only binary gets here.
                WsMessage::binary(data.to_vec())
            }
            Self::Shared(message) => message.clone(),
        }
    }
}

/// What the serving chain made of a message, as the shadow keeps it.
pub(crate) enum Made {
    /// It sent the message on as read, and nothing else: the common case,
    /// fed without copying the result (half the item to move through the
    /// queue, no second hold on the bytes).
    AsRead,
    /// Anything else, as the chain made it.
    Other(Box<ChainResult>),
}

impl Made {
    /// What a chain made of its message (`result`).
    pub(crate) fn of(result: &ChainResult) -> Self {
        if result.as_read {
            Self::AsRead
        } else {
            Self::Other(Box::new(result.clone()))
        }
    }
}

/// A sampled connection's end of the shadow's queue.
pub(crate) struct ShadowFeed {
    /// The connection's id.
    pub id: u64,
    sender: SyncSender<ShadowItem>,
    stats: Arc<ShadowStats>,
    /// Once one item could not be queued, the rest are not sent: the
    /// shadow would compare a conversation with a gap.
    broken: bool,
}

impl ShadowFeed {
    /// Feed connection `id` into `sender`, counting drops in `stats`.
    pub(crate) fn new(id: u64, sender: SyncSender<ShadowItem>, stats: Arc<ShadowStats>) -> Self {
        Self {
            id,
            sender,
            stats,
            broken: false,
        }
    }

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
                let _ = self.sender.try_send(ShadowItem::End(self.id));
            }
        }
    }
}

impl Drop for ShadowFeed {
    /// The connection ended (or its task did): the shadow lets go of it.
    fn drop(&mut self) {
        if !self.broken {
            let _ = self.sender.try_send(ShadowItem::End(self.id));
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
    /// The connection's key in the shadow: `c` and its id.
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
    counts: Mutex<BTreeMap<String, Arc<EndpointCounts>>>,
    examples: Mutex<VecDeque<ShadowExample>>,
}

/// One endpoint's counts, as the shadow's thread keeps them: counters it
/// adds to without a lock (each connection it follows holds its
/// endpoint's), read field by field by [`ShadowStats::counts`].
#[derive(Debug, Default)]
struct EndpointCounts {
    same: AtomicU64,
    changed: AtomicU64,
    dropped: AtomicU64,
    closed: AtomicU64,
    upgrades_changed: AtomicU64,
}

impl EndpointCounts {
    fn add(&self, difference: Difference) {
        let counter = match difference {
            Difference::Same => &self.same,
            Difference::Changed => &self.changed,
            Difference::Dropped => &self.dropped,
            Difference::Closed => &self.closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> ShadowCounts {
        ShadowCounts {
            same: self.same.load(Ordering::Relaxed),
            changed: self.changed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            upgrades_changed: self.upgrades_changed.load(Ordering::Relaxed),
        }
    }
}

impl ShadowStats {
    /// Counts per endpoint.
    pub fn counts(&self) -> BTreeMap<String, ShadowCounts> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(endpoint, counts)| (endpoint.clone(), counts.read()))
            .collect()
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

    /// `endpoint`'s counters (made on its first connection).
    fn endpoint(&self, endpoint: &str) -> Arc<EndpointCounts> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        // The endpoint's name is copied once, not per connection.
        if let Some(counts) = counts.get(endpoint) {
            return counts.clone();
        }
        counts.entry(endpoint.to_string()).or_default().clone()
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
        Some(ShadowFeed::new(id, self.sender.clone(), self.stats.clone()))
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
/// How often the thread lets go of idle connections (and, when nothing
/// arrives, looks whether it should stop).
const TICK: Duration = Duration::from_secs(1);
/// While items keep coming, the thread sleeps this long once the queue is
/// empty instead of waiting on it: a sampled connection's feed then never
/// has to wake it (a wake per message cost the serving path a system call
/// and the proxy's core a context switch), and each batch enters the
/// thread's runtime once. Differences show this much later.
const BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// Most items replayed in one batch.
const BATCH: usize = 4096;

/// One connection the shadow follows.
struct Followed {
    endpoint: String,
    /// Its endpoint's counters.
    counts: Arc<EndpointCounts>,
    session: ReplaySession,
    last: Instant,
}

/// The connections the shadow follows, by id (the gateway's own numbers,
/// so a fast hash).
type FollowedMap = HashMap<u64, Followed, foldhash::fast::RandomState>;

/// The shadow's thread: replay what the sampled connections feed, count
/// what differs (the examples masked with `mask`). Its calls run here,
/// never on the I/O workers.
pub(crate) fn run(
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
    let mut shadow = Followers::new(replayer, stats, mask);
    let mut last_tick = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    while !stopped.load(Ordering::Relaxed) {
        // Nothing waiting: wait on the queue, so an idle shadow sleeps.
        if batch.is_empty() {
            match items.recv_timeout(TICK) {
                Ok(item) => batch.push(item),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= TICK {
            shadow
                .followed
                .retain(|_, f| now.duration_since(f.last) < IDLE);
            last_tick = now;
        }
        if batch.is_empty() {
            continue;
        }
        batch.extend(items.try_iter().take(BATCH - batch.len()));
        runtime.block_on(async {
            for item in batch.drain(..) {
                // A stopped shadow replays nothing more (the rest of the
                // batch is dropped).
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                shadow.replay(item, now).await;
            }
        });
        // What came while it worked is the next batch, at once; if nothing
        // did, it sleeps, and takes what is fed meanwhile without a wake.
        batch.extend(items.try_iter().take(BATCH));
        if batch.is_empty() {
            std::thread::sleep(BATCH_INTERVAL);
            batch.extend(items.try_iter().take(BATCH));
        }
    }
}

/// The connections the shadow follows, and what it compares them with.
pub(crate) struct Followers<'a> {
    replayer: &'a Replayer,
    stats: &'a ShadowStats,
    mask: &'a Mask,
    followed: FollowedMap,
    next_id: u64,
}

impl<'a> Followers<'a> {
    /// Follow nothing yet; replay into `replayer`'s candidate, count into
    /// `stats`, mask examples with `mask`.
    pub(crate) fn new(replayer: &'a Replayer, stats: &'a ShadowStats, mask: &'a Mask) -> Self {
        Self {
            replayer,
            stats,
            mask,
            followed: FollowedMap::default(),
            next_id: 0,
        }
    }

    /// Replay one item of the batch taken at `now`.
    pub(crate) async fn replay(&mut self, item: ShadowItem, now: Instant) {
        let stats = self.stats;
        match item {
            ShadowItem::Open(id, upgrade) => {
                if self.followed.len() >= MAX_SESSIONS {
                    stats.skipped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.next_id += 1;
                // Boxed: an upgrade's future (its chain, its observer) is
                // large and runs once per connection; unboxed, every
                // message's replay would carry and move its size.
                let (status, session) = Box::pin(self.replayer.open(self.next_id, &upgrade)).await;
                let counts = stats.endpoint(&upgrade.endpoint);
                if status != Some(upgrade.status) {
                    counts.upgrades_changed.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(session) = session {
                    let endpoint = upgrade.endpoint.clone();
                    self.followed.insert(
                        id,
                        Followed {
                            endpoint,
                            counts,
                            session,
                            last: now,
                        },
                    );
                }
            }
            ShadowItem::Message(run) => {
                let Some(f) = self.followed.get_mut(&run.connection) else {
                    return;
                };
                f.last = now;
                // The candidate's chain is timed where the serving one was.
                let (result, candidate_us) = f
                    .session
                    .run(
                        run.from,
                        run.time_us,
                        run.input.message(),
                        run.filter_us.is_some(),
                    )
                    .await;
                let closed = result.close.is_some();
                let difference = difference(&run, &result);
                f.counts.add(difference);
                if difference != Difference::Same {
                    keep_example(
                        stats,
                        &f.endpoint,
                        &run,
                        &result,
                        difference,
                        candidate_us,
                        self.mask,
                    );
                }
                if closed {
                    // The candidate ended the connection: nothing after
                    // this compares.
                    if let Some(f) = self.followed.remove(&run.connection) {
                        f.session.finish();
                    }
                }
            }
            ShadowItem::End(id) => {
                if let Some(f) = self.followed.remove(&id) {
                    f.session.finish();
                }
            }
        }
    }
}

/// The messages a comparison looks at: data and closes, not pings and
/// pongs (which replay's records leave out too).
fn compared(messages: &[WsMessage]) -> impl Iterator<Item = &WsMessage> {
    messages.iter().filter(|message| {
        matches!(
            message,
            WsMessage::Text(_) | WsMessage::Binary(_) | WsMessage::Close(_)
        )
    })
}

/// How the candidate's `result` compares with the serving chain's `run`.
fn difference(run: &ChainRun, result: &ChainResult) -> Difference {
    // Both chains sent the message on as read: nothing to compare.
    if matches!(run.made, Made::AsRead) && result.as_read {
        return Difference::Same;
    }
    let forward = run.forward();
    let same = compared(&forward).eq(compared(&result.forward))
        && compared(run.replies()).eq(compared(&result.replies))
        && run.close() == result.close.as_ref();
    if same {
        return Difference::Same;
    }
    Difference::between(
        false,
        Shape {
            closes: run.close().is_some(),
            forwards: compared(&forward).next().is_some(),
            replies: compared(run.replies()).next().is_some(),
        },
        Shape {
            closes: result.close.is_some(),
            forwards: compared(&result.forward).next().is_some(),
            replies: compared(&result.replies).next().is_some(),
        },
    )
}

/// Keep a masked example of how the candidate's `result` differs
/// (`difference`) from the serving chain's `run`.
fn keep_example(
    stats: &ShadowStats,
    endpoint: &str,
    run: &ChainRun,
    result: &ChainResult,
    difference: Difference,
    candidate_us: Option<u64>,
    mask: &Mask,
) {
    let Some(input) = to_payload(&run.input.message(), mask) else {
        return;
    };
    let message = ReplayedMessage {
        seq: run.seq,
        from: run.from.name().to_string(),
        input,
        recorded: Output {
            forward: payloads(&run.forward(), mask),
            replies: payloads(run.replies(), mask),
            close: run.close().cloned(),
        },
        candidate: Output::of_result(result, mask),
        difference,
        recorded_us: run.filter_us,
        candidate_us,
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
        connection: format!("c{}", run.connection),
        message,
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn forwarding(message: WsMessage) -> ChainResult {
        ChainResult {
            forward: smallvec::smallvec![message],
            ..ChainResult::default()
        }
    }

    /// A chain that sent its message on as read feeds no result; any other
    /// outcome feeds the chain's result.
    #[test]
    fn only_a_message_sent_on_as_read_is_fed_without_its_result() {
        let input = WsMessage::text("{\"type\":\"chat\"}");
        let as_read = ChainResult {
            as_read: true,
            ..forwarding(input.clone())
        };
        assert!(matches!(Made::of(&as_read), Made::AsRead));
        let rewritten = forwarding(WsMessage::text("{\"type\":\"chat\"}".to_string()));
        assert!(matches!(Made::of(&rewritten), Made::Other(_)));
        assert!(matches!(Made::of(&ChainResult::default()), Made::Other(_)));
    }

    /// A text or binary message of at most 64 bytes is fed copied, in
    /// bytes the serving path does not hold; a larger one, or a control
    /// message, shares its bytes. Either gives the message back as read.
    #[test]
    fn a_small_message_is_fed_copied_and_a_larger_one_shared() {
        let small_text = WsMessage::text("é".repeat(32));
        let small_binary = WsMessage::binary(vec![7u8; INLINE]);
        let empty = WsMessage::binary(Vec::new());
        let large_text = WsMessage::text("x".repeat(INLINE + 1));
        let ping = WsMessage::Ping(bytes::Bytes::from_static(b"p"));
        for (message, copied) in [
            (&small_text, true),
            (&small_binary, true),
            (&empty, true),
            (&large_text, false),
            (&ping, false),
        ] {
            let fed = Fed::of(message);
            assert_eq!(matches!(fed, Fed::Copied { .. }), copied, "{message:?}");
            let again = fed.message();
            assert_eq!(&again, message);
            let shares = std::ptr::eq(
                crate::relay::payload(&again),
                crate::relay::payload(message),
            );
            if !message.is_empty() {
                assert_eq!(shares, !copied, "{message:?}");
            }
        }
    }

    /// The fed item stays small: it is moved into the queue's slot and
    /// out for every message (it was about 230 bytes with the chain's
    /// result in it, 120 with the connection's key as a shared string,
    /// and 112 before a message of up to 64 bytes was copied into it).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_fed_item_is_small() {
        let size = std::mem::size_of::<ShadowItem>();
        eprintln!("a fed item takes {size} bytes");
        assert!(size <= 128, "a fed item takes {size} bytes");
    }

    /// A run fed as read compares as the chain's whole result would.
    #[test]
    fn a_run_fed_as_read_compares_like_its_whole_result() {
        let input = WsMessage::text("hello");
        let run = |made| ChainRun {
            connection: 1,
            seq: 1,
            time_us: 0,
            from: Peer::Client,
            input: Fed::of(&input),
            made,
            filter_us: None,
        };
        let as_read = run(Made::AsRead);
        let whole = run(Made::Other(Box::new(forwarding(input.clone()))));
        let sent_on = ChainResult {
            as_read: true,
            ..forwarding(input.clone())
        };
        for candidate in [
            // The input sent on as read (compared without its bytes),
            // equal bytes in a buffer of their own, other bytes.
            sent_on.clone(),
            forwarding(WsMessage::text("hello".to_string())),
            forwarding(WsMessage::text("hello!")),
            ChainResult::default(),
        ] {
            assert!(
                difference(&as_read, &candidate) == difference(&whole, &candidate),
                "fed as read and whole compare differently"
            );
        }
        assert!(difference(&as_read, &sent_on) == Difference::Same);
        assert!(
            difference(&as_read, &forwarding(WsMessage::text("hello".to_string())))
                == Difference::Same
        );
        assert!(difference(&as_read, &ChainResult::default()) == Difference::Dropped);
    }
}
