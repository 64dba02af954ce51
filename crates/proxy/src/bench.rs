//! Timing hooks for the criterion benchmarks (`wsgate-tests`, feature
//! `bench`): the serving path's chain step, with and without a shadow
//! following the connection, in process: the shadow's work on the same
//! thread, or on a thread of its own as the gateway runs it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsgate_monitor::UpgradeRecord;
use wsgate_monitor::mask::Mask;

use crate::generation::Generation;
use crate::peer::Peer;
use crate::relay::run_observed_chain;
use crate::replay::{ReplaySession, Replayer};
use crate::shadow::{Followers, QUEUE, ShadowFeed, ShadowItem, ShadowStats, run};

/// A clock the benchmark reads: a monotonic wall clock, or the calling
/// thread's CPU time.
pub type Clock = fn() -> Duration;

/// A recorded upgrade of connection `key` to `path`, answered 101.
fn upgrade(key: &str, path: &str) -> UpgradeRecord {
    UpgradeRecord {
        connection: key.to_string(),
        id: 1,
        generation: 0,
        time_us: 1,
        endpoint: path.to_string(),
        client: "127.0.0.1:1".to_string(),
        method: "GET".to_string(),
        path: path.to_string(),
        query: String::new(),
        request_headers: Vec::new(),
        status: 101,
        response_headers: Vec::new(),
        duration_us: 0,
        route: None,
        verdicts: Vec::new(),
        level: "off".to_string(),
    }
}

/// The time `runs` client messages, each made by `message`, take through
/// the chain of `generation`'s endpoint on `path`, as the serving path runs
/// them (`relay::run_observed_chain`), the connection not followed by a
/// shadow: the chain's own cost, read on `clock`. `None` when the upgrade
/// does not route.
pub async fn time_chain_runs(
    generation: Arc<Generation>,
    path: &str,
    message: &dyn Fn() -> WsMessage,
    runs: u64,
    clock: Clock,
) -> Option<Duration> {
    let replayer = Replayer::new(generation, Mask::default()).ok()?;
    let (_, session) = replayer.open(1, &upgrade("c1", path)).await;
    let mut session = session?;
    // An unfollowed connection without a monitor times its calls by
    // sample; a replayed one times them all.
    for context in &mut session.contexts {
        context.timed = false;
    }
    let started = clock();
    run_serving_chain(&mut session, message, runs).await;
    let took = clock().saturating_sub(started);
    session.finish();
    Some(took)
}

/// Run `runs` client messages, each made by `message`, through
/// `session`'s chain, as the serving path does
/// (`relay::run_observed_chain`).
async fn run_serving_chain(
    session: &mut ReplaySession,
    message: &dyn Fn() -> WsMessage,
    runs: u64,
) {
    let endpoint = session.endpoint.clone();
    for _ in 0..runs {
        // The serving path reads the clock once per wake-up (`pump`); here
        // a wake-up reads one message.
        let read_at = Instant::now();
        let ran = run_observed_chain(
            &endpoint.client_messages,
            &mut session.contexts,
            Peer::Client,
            read_at,
            message(),
            &mut session.observer,
        )
        .await;
        std::hint::black_box(ran);
    }
}

/// The same runs through `serving`'s chain with a shadow running
/// `candidate` (built apart from it: its own pools and instances, as a
/// deployed shadow's) following the connection, all on this thread: the
/// serving path's chain step feeding the shadow, and the shadow's work on
/// what it was fed (replaying each message through the candidate's chain,
/// comparing, counting), in batches of 64, read on `clock`. `None` when
/// the upgrade does not route or a message did not compare as the same.
pub async fn time_shadowed_runs(
    serving: Arc<Generation>,
    candidate: Arc<Generation>,
    path: &str,
    message: &dyn Fn() -> WsMessage,
    runs: u64,
    clock: Clock,
) -> Option<Duration> {
    const BATCH: u64 = 64;
    let Shadowed {
        serving,
        candidate,
        stats,
        sender,
        items,
        record,
    } = Shadowed::new(serving, candidate, path)?;
    let mask = Mask::default();
    let mut shadow = Followers::new(&candidate, &stats, &mask);
    shadow
        .replay(
            ShadowItem::Open(1, Box::new(record.clone())),
            Instant::now(),
        )
        .await;
    let mut session = open_followed(&serving, sender, &stats, &record).await?;
    let started = clock();
    let mut left = runs;
    while left > 0 {
        let batch = left.min(BATCH);
        run_serving_chain(&mut session, message, batch).await;
        left -= batch;
        let now = Instant::now();
        for item in items.try_iter() {
            shadow.replay(item, now).await;
        }
    }
    let took = clock().saturating_sub(started);
    session.finish();
    // The connection's end: the shadow lets go of its session.
    for item in items.try_iter() {
        shadow.replay(item, Instant::now()).await;
    }
    (compared(&stats) == (runs, runs)).then_some(took)
}

/// The same runs as the gateway spends them with a shadow running
/// `candidate` following the connection: the serving path's chain step
/// feeding the shadow on this thread, the shadow's own thread (as
/// [`crate::shadow::Shadow`] runs it: batches taken while it sleeps, at low
/// priority) replaying, comparing and counting. The sum of both threads'
/// CPU time, each read on `thread_cpu` (the calling thread's CPU clock).
/// The serving side waits, off the CPU, whenever it is half a queue ahead,
/// so that no message is dropped from the shadow. `None` when the upgrade
/// does not route, a message did not compare as the same, or the shadow
/// stopped comparing.
pub async fn time_runs_beside_the_shadow_thread(
    serving: Arc<Generation>,
    candidate: Arc<Generation>,
    path: &str,
    message: &dyn Fn() -> WsMessage,
    runs: u64,
    thread_cpu: Clock,
) -> Option<Duration> {
    const PACE: u64 = 1024;
    const STALLED: Duration = Duration::from_secs(10);
    let Shadowed {
        serving,
        candidate,
        stats,
        sender,
        items,
        record,
    } = Shadowed::new(serving, candidate, path)?;
    sender
        .try_send(ShadowItem::Open(1, Box::new(record.clone())))
        .ok()?;
    let thread_stats = stats.clone();
    let shadow = std::thread::Builder::new()
        .name("wsgate-shadow".to_string())
        .spawn(move || {
            let started = thread_cpu();
            // It returns once every sender is gone: the feed's, with the
            // connection's end.
            run(
                &candidate,
                &items,
                &thread_stats,
                &AtomicBool::new(false),
                &Mask::default(),
            );
            thread_cpu().saturating_sub(started)
        })
        .ok()?;
    let mut session = open_followed(&serving, sender, &stats, &record).await?;
    let mut serving_cpu = Duration::ZERO;
    let mut done = 0;
    while done < runs {
        let started = thread_cpu();
        let pace = (runs - done).min(PACE);
        run_serving_chain(&mut session, message, pace).await;
        serving_cpu += thread_cpu().saturating_sub(started);
        done += pace;
        // Waiting for the shadow to catch up; one that has stopped, dropped
        // the connection or compared nothing for a while ends the run.
        let mut progress = (compared(&stats).0, Instant::now());
        while done.saturating_sub(progress.0) > (QUEUE / 2) as u64 {
            let dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0;
            if dropped || shadow.is_finished() || progress.1.elapsed() > STALLED {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
            let now = compared(&stats).0;
            if now > progress.0 {
                progress = (now, Instant::now());
            }
        }
    }
    session.finish();
    let shadow_cpu = shadow.join().ok()?;
    (compared(&stats) == (runs, runs)).then_some(serving_cpu + shadow_cpu)
}

/// What both shadowed hooks start from: the serving and the candidate
/// generations' replayers, the shadow's counts and queue, and the followed
/// connection's upgrade.
struct Shadowed {
    serving: Replayer,
    candidate: Replayer,
    stats: Arc<ShadowStats>,
    sender: SyncSender<ShadowItem>,
    items: Receiver<ShadowItem>,
    record: UpgradeRecord,
}

impl Shadowed {
    /// `serving` followed on `path` by a shadow running `candidate`.
    fn new(serving: Arc<Generation>, candidate: Arc<Generation>, path: &str) -> Option<Self> {
        let (sender, items) = std::sync::mpsc::sync_channel(QUEUE);
        Some(Self {
            serving: Replayer::new(serving, Mask::default()).ok()?,
            candidate: Replayer::new(candidate, Mask::default()).ok()?,
            stats: Arc::new(ShadowStats::default()),
            sender,
            items,
            record: upgrade("c1", path),
        })
    }
}

/// Open connection 1 (`record`) on `serving`, feeding the shadow through
/// `sender`, counting in `stats`; `None` when the upgrade does not route.
async fn open_followed(
    serving: &Replayer,
    sender: SyncSender<ShadowItem>,
    stats: &Arc<ShadowStats>,
    record: &UpgradeRecord,
) -> Option<ReplaySession> {
    let feed = ShadowFeed::new(1, sender, stats.clone());
    serving.open_fed(1, record, Some(feed)).await.1
}

/// Messages the shadow has compared, and how many of them were the same.
fn compared(stats: &ShadowStats) -> (u64, u64) {
    stats.counts().values().fold((0, 0), |(all, same), counts| {
        (
            all + counts.same + counts.changed + counts.dropped + counts.closed,
            same + counts.same,
        )
    })
}
