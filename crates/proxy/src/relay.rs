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
//! * gateway shutdown: 1001 to the client, 1000 to the upstream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use smallvec::SmallVec;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use wsgate_config::{FailPolicy, MonitorLevel};
use wsgate_monitor::{EndRecord, Monitor, Record, now_us};
use wsgate_runtime::{CallContext, Direction, Message, MessageVerdict};

use crate::Shared;
use crate::convert::{close_frame, from_plugin, to_plugin};
use crate::generation::{ChainStep, Generation, LiveEndpoint};
use crate::upstream::WsStream;

/// How long the close handshake may take once a close has started.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One proxied connection's state, owned by its relay task.
pub struct Session {
    id: u64,
    /// Keeps the connection's generation (and its plugin pools) alive.
    generation: Arc<Generation>,
    endpoint: Arc<LiveEndpoint>,
    contexts: Vec<CallContext>,
    shared: Arc<Shared>,
    /// Places the connection holds until it ends (given back in `drop`).
    held: Option<Held>,
    watch: Option<Watch>,
}

/// What a connection holds while open: its remote host's permit and its
/// place under the connection limits.
#[allow(dead_code, reason = "never read: dropping them gives the places back")]
pub struct Held {
    /// The remote host's `max-connections` permit, if it has a limit.
    pub permit: Option<OwnedSemaphorePermit>,
    /// The connection's place under the gateway, endpoint and client limits.
    pub admission: crate::admission::Admission,
}

/// What the monitor learns of a connection after its upgrade: how it ends,
/// and (at frame level) each message's verdict.
pub struct Watch {
    monitor: Monitor,
    key: String,
    /// Frames are recorded: describe each message's verdict for them.
    frames: bool,
    /// Who started closing first, with the code and reason.
    first_close: Option<(&'static str, Option<u16>, String)>,
    expired: bool,
}

impl Watch {
    /// Watch connection `id`, recorded at `level`.
    pub fn new(monitor: Monitor, id: u64, level: MonitorLevel) -> Self {
        Self {
            key: monitor.key(id),
            monitor,
            frames: level >= MonitorLevel::Metadata,
            first_close: None,
            expired: false,
        }
    }

    /// Note who started the close, unless someone already did.
    fn closing(&mut self, by: &'static str, code: Option<u16>, reason: &str) {
        if self.first_close.is_none() {
            self.first_close = Some((by, code, reason.to_string()));
        }
    }

    /// Record how the connection ended.
    fn finish(self) {
        let (closed_by, code, reason) =
            self.first_close
                .unwrap_or(("gateway", None, String::from("closed")));
        self.monitor.record(Record::End(EndRecord {
            connection: self.key,
            time_us: now_us(),
            closed_by: closed_by.to_string(),
            code,
            reason,
            expired: self.expired,
        }));
    }
}

impl Session {
    fn closing(&mut self, by: &'static str, code: Option<u16>, reason: &str) {
        if let Some(watch) = self.watch.as_mut() {
            watch.closing(by, code, reason);
        }
    }

    fn describes_verdicts(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.frames)
    }

    /// A session for connection `id`; counts it as active until dropped.
    pub fn new(
        id: u64,
        generation: Arc<Generation>,
        endpoint: Arc<LiveEndpoint>,
        contexts: Vec<CallContext>,
        shared: Arc<Shared>,
        held: Held,
        watch: Option<Watch>,
    ) -> Self {
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        generation.active.fetch_add(1, Ordering::Relaxed);
        shared.active.fetch_add(1, Ordering::Relaxed);
        Self {
            id,
            generation,
            endpoint,
            contexts,
            shared,
            held: Some(held),
            watch,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Give the places back before anyone waiting for this connection
        // to end is told it has.
        drop(self.held.take());
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
        self.generation.active.fetch_sub(1, Ordering::Relaxed);
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        self.shared.connection_closed.notify_waiters();
    }
}

/// Which peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Client,
    Upstream,
}

impl Peer {
    fn direction_from(self) -> Direction {
        match self {
            Peer::Client => Direction::ClientToServer,
            Peer::Upstream => Direction::ServerToClient,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Peer::Client => "client",
            Peer::Upstream => "upstream",
        }
    }
}

/// One side of the relay.
struct Side {
    stream: WsStream,
    peer: Peer,
    /// Still worth reading from.
    readable: bool,
    /// We sent this side a close frame.
    close_sent: bool,
    /// This side sent us a close frame (tungstenite has answered it).
    close_received: bool,
    /// A write failed: the connection is gone.
    broken: bool,
    /// Longest wait for this side to accept a write.
    send_timeout: Option<Duration>,
    /// A write waited longer than `send_timeout`: this side stopped reading.
    stalled: bool,
    /// Messages were fed since the last flush.
    unflushed: bool,
}

impl Side {
    /// Tell this side's monitor tap (the client's, when frames are
    /// recorded) what produced the frames written next.
    fn note_writes(&mut self, note: Option<(String, u64)>) {
        if let Some(recorder) = self.recorder() {
            recorder.note_writes(note);
        }
    }

    fn recorder(&mut self) -> Option<&mut crate::tap::Recorder> {
        self.stream.get_mut().get_mut().recorder()
    }

    /// Tell this side's monitor tap the verdict on the message just read.
    fn verdict_on_read(&mut self, verdict: Option<String>, filter_us: u64, message: &WsMessage) {
        if let Some(recorder) = self.recorder() {
            recorder.verdict_on_read(verdict, filter_us, payload(message));
        }
    }

    fn new(stream: WsStream, peer: Peer, send_timeout: Option<Duration>) -> Self {
        Self {
            stream,
            peer,
            readable: true,
            close_sent: false,
            close_received: false,
            broken: false,
            send_timeout,
            stalled: false,
            unflushed: false,
        }
    }

    /// Run a write, giving up after the send timeout: the peer stopped
    /// reading, so it is treated as gone rather than buffered for.
    async fn write(&mut self, message: Option<WsMessage>) -> Result<(), String> {
        if let Some(message) = &message
            && matches!(message, WsMessage::Text(_) | WsMessage::Binary(_))
            && self.stream.get_ref().compresses()
            && let Some(recorder) = self.recorder()
        {
            recorder.writing_compressed(payload(message));
        }
        let limit = self.send_timeout;
        let write = async {
            match message {
                Some(message) => self.stream.feed(message).await,
                None => self.stream.flush().await,
            }
        };
        let mut write = std::pin::pin!(write);
        // Most writes complete at once: the send timeout's timer is only
        // armed for one that has to wait.
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        let written = match (first, limit) {
            (Poll::Ready(result), _) => Ok(result),
            (Poll::Pending, Some(limit)) => tokio::time::timeout(limit, write).await,
            (Poll::Pending, None) => Ok(write.await),
        };
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => {
                self.stalled = true;
                Err("the peer stopped reading (send timeout)".to_string())
            }
        }
    }

    /// Queue messages (sent by the next [`Side::flush`]); nothing goes out
    /// after a close either way, and a failed write means this side is gone.
    async fn send_all(&mut self, messages: impl IntoIterator<Item = WsMessage>) {
        for message in messages {
            if self.close_sent || self.close_received || self.broken {
                break;
            }
            if matches!(message, WsMessage::Close(_)) {
                self.close_sent = true;
            }
            self.unflushed = true;
            if let Err(error) = self.write(Some(message)).await {
                tracing::info!(peer = self.peer.name(), %error, "write failed");
                self.broken = true;
                self.readable = false;
                return;
            }
        }
    }

    /// Send what was queued since the last flush.
    async fn flush(&mut self) {
        if !std::mem::take(&mut self.unflushed) || self.broken {
            return;
        }
        if let Err(error) = self.write(None).await {
            tracing::info!(peer = self.peer.name(), %error, "flush failed");
            self.broken = true;
            self.readable = false;
        }
    }

    /// This side's close handshake is over (it answered ours, or we answered
    /// its): flush our answer and stop reading. Dropping the stream then
    /// closes the TCP connection, as RFC 6455 7.1.1 asks of a server.
    async fn finish(&mut self) {
        self.unflushed = false;
        let _ = self.stream.flush().await;
        self.readable = false;
    }

    /// Start the close handshake with this side, unless one is under way.
    async fn close(&mut self, code: u16, reason: &str) {
        if !self.close_sent && !self.close_received {
            self.send_all([WsMessage::Close(Some(close_frame(code, reason)))])
                .await;
            self.flush().await;
        }
    }
}

/// A message's payload bytes (a close frame's: none).
fn payload(message: &WsMessage) -> &[u8] {
    match message {
        WsMessage::Text(text) => text.as_bytes(),
        WsMessage::Binary(data) | WsMessage::Ping(data) | WsMessage::Pong(data) => data,
        WsMessage::Close(_) | WsMessage::Frame(_) => &[],
    }
}

/// Messages on their way through a chain: almost always one, kept inline
/// so a message costs no allocation for the list that carries it.
type Messages<T> = SmallVec<[T; 1]>;

/// What the chain decided for one message.
#[derive(Default)]
struct ChainResult {
    /// Messages for the other side.
    forward: Messages<WsMessage>,
    /// Messages back to the sender.
    replies: Vec<WsMessage>,
    /// Close both sides with this code and reason.
    close: Option<(u16, String)>,
    /// Each plugin's verdict, for the monitor (when asked for).
    verdict: Option<String>,
}

/// Relay between `client` and `upstream` until both are closed.
pub async fn run(mut session: Session, client: WsStream, upstream: WsStream) {
    let send_timeout = session.endpoint.config.send_limit();
    let mut client = Side::new(client, Peer::Client, send_timeout);
    let mut upstream = Side::new(upstream, Peer::Upstream, send_timeout);
    let shutdown = session.shared.shutdown.clone();
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    let expiry = session.endpoint.config.lifetime();
    let endpoint = session.endpoint.clone();
    let expires_at = tokio::time::sleep(expiry.unwrap_or(Duration::ZERO));
    tokio::pin!(expires_at);
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
                session.closing("gateway", Some(1001), "gateway shutting down");
                client.close(1001, "gateway shutting down").await;
                upstream.close(1000, "gateway shutting down").await;
            }
            () = &mut expires_at, if expiry.is_some() && !closing => {
                tracing::info!(connection = session.id, "connection expired");
                session.closing("gateway", Some(1001), "connection expired");
                if let Some(watch) = session.watch.as_mut() {
                    watch.expired = true;
                }
                client.close(1001, "connection expired").await;
                upstream.close(1001, "connection expired").await;
            }
            () = &mut idle_at, if idle_limit.is_some() && !closing => {
                tracing::info!(connection = session.id, "connection idle");
                session.closing("gateway", Some(1001), "idle timeout");
                client.close(1001, "idle timeout").await;
                upstream.close(1001, "idle timeout").await;
            }
            () = &mut close_timeout, if closing => {
                tracing::debug!(connection = session.id, "close handshake timed out");
                break;
            }
            read = client.stream.next(), if client.readable => {
                pump(&endpoint, &mut session, read, &mut client, &mut upstream).await;
                close_stalled(&mut session, &mut client, &mut upstream).await;
                if let Some(idle) = idle_limit {
                    idle_at.as_mut().reset(Instant::now() + idle);
                }
            }
            read = upstream.stream.next(), if upstream.readable => {
                pump(&endpoint, &mut session, read, &mut upstream, &mut client).await;
                close_stalled(&mut session, &mut client, &mut upstream).await;
                if let Some(idle) = idle_limit {
                    idle_at.as_mut().reset(Instant::now() + idle);
                }
            }
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
    // The taps record frames still waiting for a verdict when dropped.
    drop(client);
    drop(upstream);
    if let Some(watch) = session.watch.take() {
        watch.finish();
    }
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
        session.closing("gateway", Some(1001), &reason);
        other.close(1001, &reason).await;
    }
}

/// The client's upgrade failed after the upstream connected: close the upstream.
pub async fn abandon(mut session: Session, upstream: WsStream) {
    let mut upstream = Side::new(
        upstream,
        Peer::Upstream,
        session.endpoint.config.send_limit(),
    );
    session.closing("client", None, "client upgrade failed after 101");
    upstream.close(1001, "client went away").await;
    if let Some(watch) = session.watch.take() {
        watch.finish();
    }
}

/// Most messages one wake-up handles from one side before both sides are
/// flushed and the other side gets its turn.
const BATCH: usize = 32;

/// Handle a read from `from` and, in a burst, every further message it
/// has ready (up to [`BATCH`]); then flush both sides once: a burst costs
/// one write per side, not one per message. A lone message does not pay for
/// a second read attempt.
async fn pump(
    endpoint: &LiveEndpoint,
    session: &mut Session,
    read: Option<Result<WsMessage, WsError>>,
    from: &mut Side,
    to: &mut Side,
) {
    on_read(endpoint, session, read, from, to).await;
    for _ in 1..BATCH {
        if !from.readable || !from.stream.probably_more() {
            break;
        }
        let ready = std::future::poll_fn(|cx| Poll::Ready(from.stream.poll_next_unpin(cx))).await;
        let Poll::Ready(read) = ready else {
            break;
        };
        on_read(endpoint, session, read, from, to).await;
    }
    to.flush().await;
    from.flush().await;
}

/// Handle one read from `from`; `to` is the other side.
async fn on_read(
    endpoint: &LiveEndpoint,
    session: &mut Session,
    read: Option<Result<WsMessage, WsError>>,
    from: &mut Side,
    to: &mut Side,
) {
    let message = match read {
        Some(Ok(message)) => message,
        None
        | Some(Err(
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
        )) => {
            from.readable = false;
            if !from.close_received && !from.close_sent {
                tracing::info!(
                    connection = session.id,
                    peer = from.peer.name(),
                    "peer vanished without a close frame"
                );
            }
            if !from.close_received {
                let reason = format!("{} went away", from.peer.name());
                session.closing(from.peer.name(), None, &reason);
                to.close(1001, &reason).await;
            }
            return;
        }
        Some(Err(error)) => {
            from.readable = false;
            let (code, reason) = match &error {
                WsError::Io(io)
                    if io
                        .get_ref()
                        .is_some_and(|e| e.is::<crate::deflate::InflateError>()) =>
                {
                    (1007, "invalid compressed data")
                }
                WsError::Capacity(_) => (1009, "message too big"),
                WsError::Utf8(_) => (1007, "invalid utf-8 in a text message"),
                WsError::Protocol(_) => (1002, "websocket protocol error"),
                _ => (0, ""),
            };
            tracing::info!(connection = session.id, peer = from.peer.name(), %error, code, "read failed");
            if code != 0 {
                session.closing("gateway", Some(code), reason);
                from.close(code, reason).await;
            } else {
                session.closing(from.peer.name(), None, "connection failed");
            }
            let reason = format!("{} connection failed", from.peer.name());
            to.close(1001, &reason).await;
            return;
        }
    };

    session
        .shared
        .counters
        .message(from.peer == Peer::Client, message.len());
    if let WsMessage::Pong(_) = message {
        // Pings and pongs are answered hop by hop: tungstenite has already
        // answered the peer's pings, and each pong answers a ping of ours or
        // of the hop before; passing it on would answer a ping twice.
        from.verdict_on_read(None, 0, &message);
        return;
    }
    let is_close = matches!(message, WsMessage::Close(_));
    if let WsMessage::Close(frame) = &message {
        from.close_received = true;
        let (code, reason) = frame
            .as_ref()
            .map_or((None, ""), |f| (Some(u16::from(f.code)), f.reason.as_str()));
        session.closing(from.peer.name(), code, reason);
    }
    let chain = match from.peer {
        Peer::Client => &endpoint.client_messages,
        Peer::Upstream => &endpoint.upstream_messages,
    };
    if chain.is_empty() {
        // The fast path: nothing to run, nothing to convert.
        from.verdict_on_read(None, 0, &message);
        to.send_all([message]).await;
        if is_close {
            from.finish().await;
        }
        return;
    }
    let describe = session.describes_verdicts();
    let started = describe.then(std::time::Instant::now);
    // The tap records the message as read, after the chain has had it (a
    // clone shares the payload).
    let read = describe.then(|| message.clone());
    let mut result = run_chain(
        chain,
        &mut session.contexts,
        from.peer.direction_from(),
        message,
        describe,
        &session.shared.counters,
    );
    let filter_us = started.map_or(0, |s| {
        u64::try_from(s.elapsed().as_micros()).unwrap_or(u64::MAX)
    });
    if let Some(read) = &read {
        from.verdict_on_read(result.verdict.clone(), filter_us, read);
    }
    // Notes for the monitor's record of what is written, made only for
    // the writes that happen (and only when frames are recorded).
    let verdict = result.verdict.take();
    let note = |what: &str| {
        verdict
            .as_ref()
            .map(|v| (format!("{what}: {v}"), filter_us))
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
        to.note_writes(note("forwarded"));
        to.send_all(std::mem::take(&mut result.forward)).await;
        to.note_writes(None);
    }

    if let Some((code, reason)) = result.close {
        tracing::info!(connection = session.id, code, %reason, "closing both sides");
        session.closing("gateway", Some(code), &reason);
        from.note_writes(note("closed"));
        to.note_writes(note("closed"));
        from.close(code, &reason).await;
        to.close(code, &reason).await;
        from.note_writes(None);
        to.note_writes(None);
        if is_close {
            from.finish().await;
        }
        return;
    }
    if !result.replies.is_empty() {
        from.note_writes(note("reply"));
        from.send_all(result.replies).await;
        from.note_writes(None);
    }
    to.note_writes(note("forwarded"));
    to.send_all(result.forward).await;
    to.note_writes(None);
    if is_close {
        from.finish().await;
    }
}

/// A message on its way through a chain: still in wire form, or already
/// converted for plugins (converted once, then passed along).
enum Item {
    Wire(WsMessage),
    Plugin(Message),
}

/// Run `message` through `chain`. Close frames always go through: plugins
/// see them and may only change their code and reason.
fn run_chain(
    chain: &[ChainStep],
    contexts: &mut [CallContext],
    direction: Direction,
    message: WsMessage,
    describe: bool,
    counters: &crate::counters::TrafficCounters,
) -> ChainResult {
    let mut result = ChainResult::default();
    let mut notes: Vec<String> = Vec::new();
    let mut note = |step: &ChainStep, what: std::fmt::Arguments<'_>| {
        if describe {
            notes.push(format!("{} {what}", step.pool.plugin().id()));
        }
    };
    let mut items: Messages<Item> = smallvec::smallvec![Item::Wire(message)];
    for step in chain {
        let Some(context) = contexts.get_mut(step.slot) else {
            continue;
        };
        let mut next = Messages::with_capacity(items.len());
        for item in items {
            let message = match item {
                Item::Plugin(message) => message,
                Item::Wire(wire) => match to_plugin(&wire) {
                    Some(message) => message,
                    None => {
                        next.push(Item::Wire(wire));
                        continue;
                    }
                },
            };
            let is_close = matches!(message, Message::Close(_));
            let verdict = match step.pool.on_message(context, direction, &message) {
                Ok(verdict) => verdict,
                Err(fault) => {
                    counters.message_verdict(5);
                    note(
                        step,
                        format_args!("fault {} (fail {:?})", fault.kind.as_str(), step.fail),
                    );
                    tracing::error!(plugin = %fault.plugin, kind = fault.kind.as_str(), error = %fault.message, fail = ?step.fail, "message plugin failed");
                    match step.fail {
                        FailPolicy::Open => MessageVerdict::Forward,
                        FailPolicy::Closed => {
                            result.close = Some((1011, format!("filter {} failed", fault.plugin)));
                            result.verdict = describe.then(|| notes.join(", "));
                            return result;
                        }
                    }
                }
            };
            counters.message_verdict(match &verdict {
                MessageVerdict::Forward => 0,
                MessageVerdict::Replace(_) => 1,
                MessageVerdict::Drop => 2,
                MessageVerdict::Close(_) => 3,
                MessageVerdict::Reply(_) => 4,
            });
            if describe {
                match &verdict {
                    MessageVerdict::Forward => note(step, format_args!("forward")),
                    MessageVerdict::Replace(m) => note(step, format_args!("replace ({})", m.len())),
                    MessageVerdict::Drop => note(step, format_args!("drop")),
                    MessageVerdict::Close(f) => note(step, format_args!("close {}", f.code)),
                    MessageVerdict::Reply(m) => note(step, format_args!("reply ({})", m.len())),
                }
            }
            match verdict {
                MessageVerdict::Close(frame) if is_close => {
                    next.push(Item::Plugin(Message::Close(Some(frame))));
                }
                _ if is_close => next.push(Item::Plugin(message)),
                MessageVerdict::Forward => next.push(Item::Plugin(message)),
                MessageVerdict::Replace(messages) => {
                    next.extend(messages.into_iter().map(Item::Plugin));
                }
                MessageVerdict::Drop => {
                    tracing::debug!(
                        plugin = step.pool.plugin().id(),
                        "message dropped by plugin"
                    );
                }
                MessageVerdict::Close(frame) => {
                    result.close = Some((frame.code, frame.reason));
                    result.verdict = describe.then(|| notes.join(", "));
                    return result;
                }
                MessageVerdict::Reply(messages) => {
                    result.replies.extend(messages.into_iter().map(from_plugin));
                }
            }
        }
        items = next;
    }
    result.verdict = describe.then(|| notes.join(", "));
    result.forward = items
        .into_iter()
        .map(|item| match item {
            Item::Wire(wire) => wire,
            Item::Plugin(message) => from_plugin(message),
        })
        .collect();
    result
}
