//! The message pumps: one task per connection moves messages both ways,
//! each through its direction's chain, and carries the close handshake.
//!
//! Pings are answered by the gateway and passed on through the chain; pongs
//! stop at the gateway (each peer's own pings are answered once, by us).
//!
//! Closes, by cause (client side / upstream side):
//! * a peer's close frame: forwarded to the other side with its code and reason;
//! * a peer that vanishes without a close: 1001 to the other side;
//! * a message over the endpoint's max size: 1009 to its sender, 1001 to the other;
//! * a protocol error: 1002 (1007 for invalid UTF-8) to its sender, 1001 to the other;
//! * a plugin's `close` verdict: its code and reason to both sides;
//! * a plugin fault under fail-closed: 1011 to both sides;
//! * the endpoint's expire time or idle timeout: 1001 to both sides;
//! * a plugin's expiry (`session.expire-at`, credentials expired): 1008 to
//!   the client, 1001 to the upstream;
//! * a drain (SIGTERM, `POST /api/drain`), at the connection's instant in
//!   the drain window: 1012 (Service Restart) to the client, 1001 to the
//!   upstream;
//! * gateway shutdown: 1001 to the client, 1000 to the upstream.

mod chain;
mod expiry;
mod side;

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use wsgate_runtime::{CallContext, ConnectionInfo};
use wsgate_wire::ReadFailure;

use crate::counters::ExpiredBy;
use crate::drain::Drain;
use crate::generation::{ChainStep, Generation, LiveEndpoint};
use crate::ledger::Place;
use crate::observe::{ClosedBy, Observer};
use crate::peer::Peer;
use crate::signal::Signal;
use crate::upstream::WsStream;
pub(crate) use chain::run_chain;
pub use chain::{ChainResult, log_fault};
use expiry::CredentialsExpiry;
use side::Side;
pub(crate) use side::payload;

/// How long the close handshake may take once a close has started.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One proxied connection's state, owned by its relay task.
pub struct Session {
    /// The connection's id.
    pub id: u64,
    /// Keeps the connection's generation (and its plugin pools) alive.
    #[allow(dead_code, reason = "held, never read: it keeps the generation alive")]
    pub generation: Arc<Generation>,
    /// The endpoint it was accepted on.
    pub endpoint: Arc<LiveEndpoint>,
    /// The connection's facts its plugins share (attributes, expiry).
    pub connection: Arc<ConnectionInfo>,
    /// Each plugin's per-connection state, by slot (with the quota places
    /// its plugins hold: dropped before `place` below, as fields drop in
    /// order, so a connection's quota places are free when its limits are).
    pub contexts: Vec<CallContext>,
    /// Its place under every connection limit, given back when it ends.
    #[allow(
        dead_code,
        reason = "held, never read: dropping it gives the places back"
    )]
    pub place: Place,
    /// What the counters and the monitor learn of it.
    pub observer: Observer,
    /// Fired when the gateway shuts down.
    pub shutdown: Arc<Signal>,
    /// The gateway's drain: the connection closes at its instant in the window.
    pub drain: Arc<Drain>,
}

impl Session {
    /// The connection ended: the observer records how, then every place
    /// the connection held is given back.
    fn finish(self) {
        self.observer.finish();
    }
}

/// A connection whose upstream is connected, waiting for the client's
/// side of the upgrade to complete.
///
/// It is boxed, as is [`Relay`]: a future keeps a copy of every value it
/// was given, even after moving it on, so a connection's state handed from
/// the upgrade to the relay by value would be held two or three times over
/// for the connection's life (docs/performance.md, "Memory per connection").
pub struct Waiting {
    /// The upstream's stream.
    pub upstream: WsStream,
    /// The connection's session (dropped last: fields drop in order, and
    /// its places under the limits are given back after the sockets close).
    pub session: Session,
}

impl Waiting {
    /// The client's side is upgraded: the relay's state, with both sides.
    pub fn with_client(self: Box<Self>, client: WsStream) -> Box<Relay> {
        let Self { session, upstream } = *self;
        let send_timeout = session.endpoint.config.send_limit();
        Box::new(Relay {
            client: Side::new(client, Peer::Client, send_timeout),
            upstream: Side::new(upstream, Peer::Upstream, send_timeout),
            session,
        })
    }
}

/// Everything one connection's relay owns: both sides and its session
/// (dropped last, as in [`Waiting`]).
pub struct Relay {
    client: Side,
    upstream: Side,
    session: Session,
}

/// Relay between the client and the upstream until both are closed.
pub async fn run(mut relay: Box<Relay>) {
    let Relay {
        session,
        client,
        upstream,
    } = &mut *relay;
    let shutdown = session.shutdown.clone();
    let shutting_down = shutdown.fired();
    tokio::pin!(shutting_down);
    let drain = session.drain.clone();
    let drain_begins = drain.closing().fired();
    tokio::pin!(drain_begins);
    // Armed once the drain's closing begins, at this connection's instant.
    let mut draining = false;
    let drain_at = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(drain_at);
    let expiry = session.endpoint.config.lifetime();
    let endpoint = session.endpoint.clone();
    let expires_at = tokio::time::sleep(expiry.unwrap_or(Duration::ZERO));
    tokio::pin!(expires_at);
    let mut credentials = CredentialsExpiry::of(&session.connection);
    let credentials_expire =
        tokio::time::sleep_until(credentials.deadline().unwrap_or_else(Instant::now));
    tokio::pin!(credentials_expire);
    let idle_limit = session.endpoint.config.idle_limit();
    let idle_at = tokio::time::sleep(idle_limit.unwrap_or(Duration::ZERO));
    tokio::pin!(idle_at);
    // Armed once either side starts closing, goes away, or breaks.
    let mut closing = false;
    let close_timeout = tokio::time::sleep(CLOSE_TIMEOUT);
    tokio::pin!(close_timeout);

    tracing::debug!(connection = session.id, "relay started");
    loop {
        tokio::select! {
            () = &mut shutting_down, if !closing => {
                session.observer.closing(ClosedBy::Gateway, Some(1001), "gateway shutting down");
                client.close(1001, "gateway shutting down", &session.observer).await;
                upstream.close(1000, "gateway shutting down", &session.observer).await;
            }
            () = &mut drain_begins, if !draining && !closing => {
                draining = true;
                if let Some(at) = drain.close_at(session.id) {
                    drain_at.as_mut().reset(at);
                }
            }
            () = &mut drain_at, if draining && !closing => {
                tracing::debug!(connection = session.id, "drained");
                drain.count_close();
                session.observer.closing(ClosedBy::Gateway, Some(1012), "service restart");
                client.close(1012, "service restart", &session.observer).await;
                upstream.close(1001, "service restart", &session.observer).await;
            }
            () = &mut expires_at, if expiry.is_some() && !closing => {
                tracing::info!(connection = session.id, "connection expired");
                session.observer.closing(ClosedBy::Gateway, Some(1001), "connection expired");
                session.observer.expired(ExpiredBy::Endpoint);
                client.close(1001, "connection expired", &session.observer).await;
                upstream.close(1001, "connection expired", &session.observer).await;
            }
            () = &mut credentials_expire, if credentials.deadline().is_some() && !closing => {
                tracing::info!(connection = session.id, plugin = credentials.plugin(), "credentials expired");
                session.observer.closing(ClosedBy::Gateway, Some(1008), "credentials expired");
                session.observer.expired(ExpiredBy::Credentials);
                client.close(1008, "credentials expired", &session.observer).await;
                upstream.close(1001, "credentials expired", &session.observer).await;
            }
            () = &mut idle_at, if idle_limit.is_some() && !closing => {
                tracing::info!(connection = session.id, "connection idle");
                session.observer.closing(ClosedBy::Gateway, Some(1001), "idle timeout");
                client.close(1001, "idle timeout", &session.observer).await;
                upstream.close(1001, "idle timeout", &session.observer).await;
            }
            () = &mut close_timeout, if closing => {
                tracing::debug!(connection = session.id, "close handshake timed out");
                break;
            }
            read = client.stream.next(), if client.readable => {
                pump(&endpoint, session, read, client, upstream).await;
                close_stalled(session, client, upstream).await;
                if let Some(idle) = idle_limit {
                    idle_at.as_mut().reset(Instant::now() + idle);
                }
            }
            read = upstream.stream.next(), if upstream.readable => {
                pump(&endpoint, session, read, upstream, client).await;
                close_stalled(session, client, upstream).await;
                if let Some(idle) = idle_limit {
                    idle_at.as_mut().reset(Instant::now() + idle);
                }
            }
        }
        if credentials.refresh(&session.connection)
            && let Some(deadline) = credentials.deadline()
        {
            credentials_expire.as_mut().reset(deadline);
        }
        if !client.readable && !upstream.readable {
            break;
        }
        let started_closing = client.close_sent
            || client.close_received
            || upstream.close_sent
            || upstream.close_received
            || !client.readable
            || !upstream.readable;
        if started_closing && !closing {
            closing = true;
            close_timeout.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
        }
    }
    tracing::info!(connection = session.id, "connection closed");
    let Relay {
        session,
        client,
        upstream,
    } = *relay;
    drop(client);
    drop(upstream);
    session.finish();
}

/// A side that stopped reading what it was sent is dropped (its socket
/// closes with the relay) and the other side is closed with 1001.
async fn close_stalled(session: &mut Session, client: &mut Side, upstream: &mut Side) {
    if client.stalled {
        close_other(session, client.peer, upstream).await;
    }
    if upstream.stalled {
        close_other(session, upstream.peer, client).await;
    }
}

async fn close_other(session: &mut Session, stalled: Peer, other: &mut Side) {
    if !other.close_sent {
        let reason = format!("{} not reading", stalled.name());
        tracing::warn!(connection = session.id, %reason, "closing a peer that stopped reading");
        session
            .observer
            .closing(ClosedBy::Gateway, Some(1001), &reason);
        other.close(1001, &reason, &session.observer).await;
    }
}

/// The client's upgrade failed after the upstream connected: close the upstream.
pub async fn abandon(waiting: Box<Waiting>) {
    let Waiting {
        mut session,
        upstream,
    } = *waiting;
    let mut upstream = Side::new(
        upstream,
        Peer::Upstream,
        session.endpoint.config.send_limit(),
    );
    session.observer.closing(
        ClosedBy::Peer(Peer::Client),
        None,
        "client upgrade failed after 101",
    );
    upstream
        .close(1001, "client went away", &session.observer)
        .await;
    drop(upstream);
    session.finish();
}

/// Most messages one wake-up handles from one side before both sides are
/// flushed and the other side gets its turn.
const BATCH: usize = 32;

/// Handle a read from `from` and, in a burst, every further message it
/// has ready (up to [`BATCH`]); then flush both sides once: a burst costs
/// one write per side, not one per message. A lone message does not pay for
/// a second read attempt. When both sides read rarely, both then give their
/// WebSocket buffers and compressors back until the next message: thousands
/// of quiet connections hold none between messages.
async fn pump(
    endpoint: &LiveEndpoint,
    session: &mut Session,
    read: Option<Result<WsMessage, WsError>>,
    from: &mut Side,
    to: &mut Side,
) {
    // One clock reading per wake-up: when its messages were read. A
    // connection whose messages are recorded with their times reads the
    // clock again for each further message of a burst (the ones before
    // may have waited on a write or an offloaded call).
    let read_at = std::time::Instant::now();
    on_read(endpoint, session, read_at, read, from, to).await;
    for _ in 1..BATCH {
        if !from.readable || !from.stream.probably_more() {
            break;
        }
        let ready = std::future::poll_fn(|cx| Poll::Ready(from.stream.poll_next_unpin(cx))).await;
        let Poll::Ready(read) = ready else {
            break;
        };
        let read_at = if session.observer.records_chains() {
            std::time::Instant::now()
        } else {
            read_at
        };
        on_read(endpoint, session, read_at, read, from, to).await;
    }
    to.flush().await;
    from.flush().await;
    if from.note_read(read_at) && to.reads_rarely() {
        wsgate_wire::shed(&mut from.stream);
        wsgate_wire::shed(&mut to.stream);
    }
}

/// Handle one read from `from` at `read_at`; `to` is the other side.
async fn on_read(
    endpoint: &LiveEndpoint,
    session: &mut Session,
    read_at: std::time::Instant,
    read: Option<Result<WsMessage, WsError>>,
    from: &mut Side,
    to: &mut Side,
) {
    let observer = &mut session.observer;
    let message = match read {
        Some(Ok(message)) => message,
        None => {
            read_failed(session, ReadFailure::Vanished, None, from, to).await;
            return;
        }
        Some(Err(error)) => {
            read_failed(session, ReadFailure::of(&error), Some(error), from, to).await;
            return;
        }
    };

    observer.message(from.peer, message.len());
    if let WsMessage::Ping(_) = message {
        from.owes_pong();
    }
    if let WsMessage::Pong(_) = message {
        // Pings and pongs are answered hop by hop: tungstenite has already
        // answered the peer's pings, and each pong answers a ping of ours or
        // of the hop before; passing it on would answer a ping twice.
        observer.read(from.peer, None, 0, payload(&message));
        return;
    }
    let is_close = matches!(message, WsMessage::Close(_));
    if let WsMessage::Close(frame) = &message {
        from.close_received = true;
        let (code, reason) = frame
            .as_ref()
            .map_or((None, ""), |f| (Some(u16::from(f.code)), f.reason.as_str()));
        observer.closing(ClosedBy::Peer(from.peer), code, reason);
    }
    let chain = match from.peer {
        Peer::Client => &endpoint.client_messages,
        Peer::Upstream => &endpoint.upstream_messages,
    };
    observer.chain_begins(from.peer, &message);
    if chain.is_empty() {
        // The fast path: nothing to run, nothing to convert.
        observer.read(from.peer, None, 0, payload(&message));
        if observer.records_chains() || observer.times_calls() {
            let result = ChainResult {
                forward: smallvec::smallvec![message.clone()],
                as_read: true,
                ..ChainResult::default()
            };
            observer.chain_ends(&result);
            // No calls, so no time; "timed" as a chain would be, so a
            // shadow's candidate is timed on the same sample.
            let filter_us = observer.times_next_chain().then_some(0);
            let fed = observer.feed(&message);
            observer.chain_ran(from.peer, read_at, Some(&message), fed, &result, filter_us);
        }
        to.send_all([message], observer).await;
        if is_close {
            from.finish().await;
        }
        return;
    }
    let (mut result, verdict, filter_us) = run_observed_chain(
        chain,
        &mut session.contexts,
        from.peer,
        read_at,
        message,
        observer,
    )
    .await;
    // Notes for the monitor's record of what is written, made only for
    // the writes that happen (and only when frames are recorded).
    let note = |what: &'static str| {
        verdict
            .as_ref()
            .map(|v| (what, v, filter_us.unwrap_or_default()))
    };
    // A plugin that turns a data message into a close closes both sides.
    if !is_close
        && result.close.is_none()
        && let Some(at) = result
            .forward
            .iter()
            .position(|m| matches!(m, WsMessage::Close(_)))
    {
        if let Some(WsMessage::Close(frame)) = result.forward.drain(at..).next() {
            result.close = Some(frame.map_or((1000, String::new()), |f| {
                (u16::from(f.code), f.reason.as_str().to_owned())
            }));
        }
        observer.writing(to.peer, note("forwarded"));
        to.send_all(std::mem::take(&mut result.forward), observer)
            .await;
        observer.writing(to.peer, None);
    }

    // The message's span, if traced, ends with what the chain decided (a
    // data message turned into a close above counts as a close).
    observer.chain_ends(&result);
    if let Some((code, reason)) = result.close {
        tracing::info!(connection = session.id, code, %reason, "closing both sides");
        observer.closing(ClosedBy::Gateway, Some(code), &reason);
        observer.writing(from.peer, note("closed"));
        observer.writing(to.peer, note("closed"));
        from.close(code, &reason, observer).await;
        to.close(code, &reason, observer).await;
        observer.writing(from.peer, None);
        observer.writing(to.peer, None);
        if is_close {
            from.finish().await;
        }
        return;
    }
    if !result.replies.is_empty() {
        observer.writing(from.peer, note("reply"));
        from.send_all(result.replies, observer).await;
        observer.writing(from.peer, None);
    }
    observer.writing(to.peer, note("forwarded"));
    to.send_all(result.forward, observer).await;
    observer.writing(to.peer, None);
    if is_close {
        from.finish().await;
    }
}

/// Run `message`, read from `from` at `read_at`, through its (non-empty)
/// `chain` and tell `observer` what it needs: the message as read with its
/// verdicts (when frames are described), and what the chain made of it
/// (when chains are recorded, for replay and the shadow). What the chain
/// made of it, the verdicts' text, and the microseconds its plugins' calls
/// took (`None` when not timed: a message's chain is timed when every
/// message's is recorded, and one in [`wsgate_runtime::TIME_ONE_CALL_IN`]
/// when only a shadow follows the connection).
pub(crate) async fn run_observed_chain(
    chain: &[ChainStep],
    contexts: &mut [CallContext],
    from: Peer,
    read_at: std::time::Instant,
    message: WsMessage,
    observer: &mut Observer,
) -> (ChainResult, Option<Arc<str>>, Option<u64>) {
    let replaying = observer.records_chains();
    let timed = observer.times_next_chain();
    if observer.samples_chain_time() {
        for context in contexts.iter_mut() {
            context.timed = timed;
        }
    }
    let spent_before = timed.then(|| spent(contexts));
    // The monitor records the message as read, after the chain has had it
    // (a clone shares the payload).
    let read =
        (observer.records_replay() || observer.describes_verdicts()).then(|| message.clone());
    // A shadow is fed its own copy of a small message: no count on the
    // bytes kept by both threads, no buffer held for it.
    let fed = observer.feed(&message);
    let result = run_chain(chain, contexts, from.direction_from(), message, observer).await;
    let filter_us = spent_before.map(|before| spent_since(contexts, before));
    let verdict = observer.take_verdicts();
    if let Some(read) = &read {
        observer.read(
            from,
            verdict.clone(),
            filter_us.unwrap_or_default(),
            payload(read),
        );
    }
    if replaying {
        observer.chain_ran(from, read_at, read.as_ref(), fed, &result, filter_us);
    }
    (result, verdict, filter_us)
}

/// What the plugins' calls on a connection (its `contexts`) have taken,
/// in all.
pub(crate) fn spent(contexts: &[CallContext]) -> Duration {
    contexts.iter().map(|context| context.spent).sum()
}

/// Microseconds the plugins' calls on a connection (its `contexts`) have
/// taken since they had taken `before`.
pub(crate) fn spent_since(contexts: &[CallContext], before: Duration) -> u64 {
    let took = spent(contexts).saturating_sub(before);
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
}

/// Reading from `from` ended with `failure`: close it with the code it is
/// owed (if any) and the other side with 1001.
async fn read_failed(
    session: &mut Session,
    failure: ReadFailure,
    error: Option<WsError>,
    from: &mut Side,
    to: &mut Side,
) {
    let observer = &mut session.observer;
    from.readable = false;
    if failure == ReadFailure::Vanished {
        if !from.close_received && !from.close_sent {
            tracing::info!(
                connection = session.id,
                peer = from.peer.name(),
                "peer vanished without a close frame"
            );
        }
        if !from.close_received {
            let reason = format!("{} went away", from.peer.name());
            observer.closing(ClosedBy::Peer(from.peer), None, &reason);
            to.close(1001, &reason, observer).await;
        }
        return;
    }
    let error = error.map(|e| e.to_string()).unwrap_or_default();
    match failure.close() {
        Some((code, reason)) => {
            tracing::info!(connection = session.id, peer = from.peer.name(), %error, code, "read failed");
            observer.closing(ClosedBy::Gateway, Some(code), reason);
            from.close(code, reason, observer).await;
        }
        None => {
            tracing::info!(connection = session.id, peer = from.peer.name(), %error, "read failed");
            observer.closing(ClosedBy::Peer(from.peer), None, "connection failed");
        }
    }
    let reason = format!("{} connection failed", from.peer.name());
    to.close(1001, &reason, observer).await;
}
