//! Timing hooks for the criterion benchmarks (`wsgate-tests`, feature
//! `bench`): the serving path's chain step, with and without a shadow
//! following the connection, in process on one thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsgate_monitor::UpgradeRecord;
use wsgate_monitor::mask::Mask;

use crate::generation::Generation;
use crate::peer::Peer;
use crate::relay::run_observed_chain;
use crate::replay::Replayer;
use crate::shadow::{Followers, QUEUE, ShadowFeed, ShadowItem, ShadowStats};

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

/// The time `runs` client messages `input` take through the chain of
/// `generation`'s endpoint on `path`, as the serving path runs them
/// (`relay::run_observed_chain`), the connection not followed by a shadow: the
/// chain's own cost. `None` when the upgrade does not route.
pub async fn time_chain_runs(
    generation: Arc<Generation>,
    path: &str,
    input: &WsMessage,
    runs: u64,
) -> Option<Duration> {
    let replayer = Replayer::new(generation, Mask::default()).ok()?;
    let (_, session) = replayer.open(1, &upgrade("c1", path)).await;
    let mut session = session?;
    // An unfollowed connection without a monitor times its calls by
    // sample; a replayed one times them all.
    for context in &mut session.contexts {
        context.timed = false;
    }
    let endpoint = session.endpoint.clone();
    let started = Instant::now();
    for _ in 0..runs {
        // The serving path reads the clock once per wake-up (`pump`); here
        // a wake-up reads one message.
        let read_at = Instant::now();
        let ran = run_observed_chain(
            &endpoint.client_messages,
            &mut session.contexts,
            Peer::Client,
            read_at,
            input.clone(),
            &mut session.observer,
        )
        .await;
        std::hint::black_box(ran);
    }
    let took = started.elapsed();
    session.finish();
    Some(took)
}

/// The same runs with a shadow running `generation` too, following the
/// connection: the serving path's chain step feeding the shadow, and the
/// shadow's thread's work on what it was fed (replaying each message
/// through the candidate's chain, comparing, counting), in batches of 64 as
/// the thread takes them. `None` when the upgrade does not route or a
/// message did not compare as the same.
pub async fn time_shadowed_runs(
    generation: Arc<Generation>,
    path: &str,
    input: &WsMessage,
    runs: u64,
) -> Option<Duration> {
    const BATCH: u64 = 64;
    let serving = Replayer::new(generation.clone(), Mask::default()).ok()?;
    let candidate = Replayer::new(generation, Mask::default()).ok()?;
    let stats = Arc::new(ShadowStats::default());
    let mask = Mask::default();
    let (sender, items) = std::sync::mpsc::sync_channel(QUEUE);
    let mut shadow = Followers::new(&candidate, &stats, &mask);
    let record = upgrade("c1", path);
    shadow
        .replay(
            ShadowItem::Open(1, Box::new(record.clone())),
            Instant::now(),
        )
        .await;
    let feed = ShadowFeed::new(1, sender, stats.clone());
    let (_, session) = serving.open_fed(1, &record, Some(feed)).await;
    let mut session = session?;
    let endpoint = session.endpoint.clone();
    let started = Instant::now();
    for run in 1..=runs {
        // The serving path reads the clock once per wake-up (`pump`); here
        // a wake-up reads one message.
        let read_at = Instant::now();
        let ran = run_observed_chain(
            &endpoint.client_messages,
            &mut session.contexts,
            Peer::Client,
            read_at,
            input.clone(),
            &mut session.observer,
        )
        .await;
        std::hint::black_box(ran);
        if run % BATCH == 0 || run == runs {
            let now = Instant::now();
            for item in items.try_iter() {
                shadow.replay(item, now).await;
            }
        }
    }
    let took = started.elapsed();
    session.finish();
    // The connection's end: the shadow lets go of its session.
    for item in items.try_iter() {
        shadow.replay(item, Instant::now()).await;
    }
    let same: u64 = stats.counts().values().map(|c| c.same).sum();
    (same == runs).then_some(took)
}
