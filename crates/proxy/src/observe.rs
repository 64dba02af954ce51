//! One observer per connection: everything the counters and the traffic
//! monitor learn of a connection goes through it, so the upgrade and the
//! relay forward traffic and report what happened, and nothing else.
//!
//! At monitor level `headers` it records the upgrade (request, each upgrade
//! plugin's verdict, route, answer) and how the connection ended; from
//! `metadata` on, the client's frames too, through a [`SharedFrameLog`] it
//! shares with the tap in the client's stream stack, and each message's
//! plugin verdicts with them.
//!
//! When `[tracing]` exports, it also builds the connection's trace: the
//! connection's span, its upgrade with each plugin's call, and the sampled
//! messages with theirs (`wsgate_trace`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsgate_config::{FailPolicy, MonitorLevel};
use wsgate_monitor::mask::Mask;
use wsgate_monitor::{
    EndRecord, MessageRecord, Monitor, PluginVerdict, Record, UpgradeRecord, now_us,
};
use wsgate_runtime::{MessageVerdict, PluginFault, UpgradeVerdict};
use wsgate_trace::{CallOutcome, ConnectionTrace};
use wsgate_wire::{FrameLog, SharedFrameLog};

use crate::convert::{payloads, to_payload};
use crate::counters::{
    EndpointTraffic, ExpiredBy, MessageVerdictKind, TrafficCounters, UpgradeVerdictKind,
};
use crate::peer::Peer;
use crate::relay::ChainResult;
use crate::shadow::{ChainRun, Fed, Made, ShadowFeed, ShadowItem};

/// Who started closing a connection, as the monitor records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// One of the peers sent a close frame or went away.
    Peer(Peer),
    /// The gateway closed it (a plugin, a limit, expiry, shutdown).
    Gateway,
}

impl ClosedBy {
    fn name(self) -> &'static str {
        match self {
            ClosedBy::Peer(peer) => peer.name(),
            ClosedBy::Gateway => "gateway",
        }
    }
}

/// The upgrade request as the monitor records it.
pub struct RequestSummary<'a> {
    /// Request method.
    pub method: &'a str,
    /// Request path.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// A connection's observer (see the module's note).
pub struct Observer {
    counters: Arc<TrafficCounters>,
    /// The endpoint's message counters.
    traffic: Arc<EndpointTraffic>,
    /// The endpoint's path, the upgrade counter's label.
    endpoint: String,
    /// The monitor and this connection's key there, when it records anything.
    monitor: Option<(Monitor, String)>,
    /// The upgrade being recorded, and when it started.
    upgrade: Option<(Instant, UpgradeRecord)>,
    /// The client's frames (monitor level `metadata` and above).
    frames: Option<SharedFrameLog>,
    /// Messages are recorded through their chains (level `replay`).
    records_replay: bool,
    /// The shadow generation this connection is sampled into, if any.
    shadow: Option<ShadowFeed>,
    /// Messages recorded through their chains so far.
    chain_seq: u64,
    /// The wall clock at the upgrade, in microseconds since the epoch, and
    /// the monotonic clock then, when anything is recorded: a message's
    /// time is the wall clock at the upgrade plus the monotonic time since,
    /// from the read's own clock reading (no second one per message).
    recorded_since: Option<(u64, Instant)>,
    /// The plugin verdicts on the message in the chains now.
    verdicts: RepeatedText,
    /// The note on the frames written to the client last.
    write_note: Option<WriteNote>,
    /// Who started closing first, with the code and reason.
    first_close: Option<(ClosedBy, Option<u16>, String)>,
    expired: bool,
    /// The connection's trace, when it is traced (boxed: an untraced
    /// connection carries a pointer, not the trace's room).
    trace: Option<Box<ConnectionTrace>>,
    /// Where the upgrade chain routed (for the upgrade's span).
    route: Option<String>,
}

impl Observer {
    /// Observe connection `id` on `endpoint` (recorded at `level`, frames
    /// keeping `capture` payload bytes), from its upgrade `request`.
    #[allow(
        clippy::too_many_arguments,
        reason = "each is one fact of the connection"
    )]
    pub fn new(
        counters: Arc<TrafficCounters>,
        monitor: &Monitor,
        level: MonitorLevel,
        capture: usize,
        id: u64,
        generation: u64,
        endpoint: &str,
        client: SocketAddr,
        request: RequestSummary<'_>,
        shadow: Option<ShadowFeed>,
        trace: Option<ConnectionTrace>,
    ) -> Self {
        let key = (level > MonitorLevel::Off).then(|| monitor.key(id));
        let record_key = key
            .clone()
            .or_else(|| shadow.as_ref().map(|f| format!("c{}", f.id)));
        let recorded_since = record_key.is_some().then(|| (now_us(), Instant::now()));
        let upgrade = record_key.zip(recorded_since).map(|(key, (time_us, at))| {
            let record = UpgradeRecord {
                connection: key,
                id,
                generation,
                time_us,
                endpoint: endpoint.to_string(),
                client: client.to_string(),
                method: request.method.to_string(),
                path: request.path.to_string(),
                query: request.query.to_string(),
                request_headers: header_pairs(request.headers),
                status: 0,
                response_headers: Vec::new(),
                duration_us: 0,
                route: None,
                verdicts: Vec::new(),
                level: level.as_str().to_string(),
            };
            (at, record)
        });
        let frames = key.as_ref().and_then(|key| {
            (level >= MonitorLevel::Metadata).then(|| {
                // At `replay`, the messages carry the payloads, masked;
                // frames keep their metadata only.
                let capture = if level == MonitorLevel::Full {
                    capture
                } else {
                    0
                };
                SharedFrameLog::new(FrameLog::new(monitor.clone(), key, capture))
            })
        });
        Self {
            records_replay: key.is_some() && level >= MonitorLevel::Replay,
            shadow,
            chain_seq: 0,
            recorded_since,
            traffic: counters.endpoint_traffic(endpoint),
            counters,
            endpoint: endpoint.to_string(),
            monitor: key.map(|key| (monitor.clone(), key)),
            upgrade,
            frames,
            verdicts: RepeatedText::default(),
            write_note: None,
            first_close: None,
            expired: false,
            trace: trace.map(Box::new),
            route: None,
        }
    }

    /// An upgrade plugin's verdict, `started` when its call did.
    pub fn upgrade_verdict(
        &mut self,
        plugin: &str,
        fail: FailPolicy,
        verdict: &Result<UpgradeVerdict, PluginFault>,
        started: Instant,
    ) {
        self.counters
            .upgrade_verdict(UpgradeVerdictKind::of(verdict));
        if let Some(trace) = &mut self.trace {
            let outcome = match verdict {
                Ok(UpgradeVerdict::Continue) => CallOutcome::Verdict("continue"),
                Ok(UpgradeVerdict::Modify(_)) => CallOutcome::Verdict("modify"),
                Ok(UpgradeVerdict::Reject(_)) => CallOutcome::Verdict("reject"),
                Ok(UpgradeVerdict::Route(_)) => CallOutcome::Verdict("route"),
                Err(fault) => CallOutcome::Fault(fault.kind.as_str()),
            };
            trace.upgrade_call(plugin, &outcome, started);
        }
        if let Some((_, record)) = self.upgrade.as_mut() {
            record.verdicts.push(PluginVerdict {
                plugin: plugin.to_string(),
                verdict: match verdict {
                    Ok(UpgradeVerdict::Continue) => "continue".to_string(),
                    Ok(UpgradeVerdict::Modify(ops)) => format!("modify ({} header ops)", ops.len()),
                    Ok(UpgradeVerdict::Reject(rejection)) => format!("reject {}", rejection.status),
                    Ok(UpgradeVerdict::Route(route)) => format!("route {}", route.url),
                    Err(fault) => format!("fault {} (fail {fail:?})", fault.kind.as_str()),
                },
                duration_us: micros_since(started),
            });
        }
    }

    /// The upgrade chain routed to `url`.
    pub fn routed(&mut self, url: &str) {
        if let Some((_, record)) = self.upgrade.as_mut() {
            record.route = Some(url.to_string());
        }
        if self.trace.is_some() {
            self.route = Some(url.to_string());
        }
    }

    /// The client got `status` with `headers`: count it, record the upgrade.
    pub fn answered(&mut self, status: u16, headers: &HeaderMap) {
        self.counters.upgrade(&self.endpoint, status);
        if let Some(trace) = &mut self.trace {
            trace.answered(status, self.route.as_deref());
        }
        if status != 101
            && let Some(trace) = self.trace.take()
        {
            // Refused: the connection ends with its answer.
            trace.end(None, ClosedBy::Gateway.name());
        }
        let Some((started, mut record)) = self.upgrade.take() else {
            return;
        };
        record.status = status;
        record.response_headers = header_pairs(headers);
        record.duration_us = micros_since(started);
        if status != 101 {
            // Nothing for the shadow to follow.
            self.shadow = None;
        } else if let Some(feed) = &mut self.shadow {
            feed.send(ShadowItem::Open(feed.id, Box::new(record.clone())));
        }
        if let Some((monitor, _)) = &self.monitor {
            monitor.record(Record::Upgrade(Box::new(record)));
        }
    }

    /// Where the tap in the client's stream stack records its frames.
    pub fn frame_log(&self) -> Option<SharedFrameLog> {
        self.frames.clone()
    }

    /// A message of `bytes` payload bytes was read from `from`.
    pub fn message(&self, from: Peer, bytes: usize) {
        self.traffic.message(from, bytes);
    }

    /// Whether message verdicts are described for the frame records (and
    /// so worth the time and the text).
    pub fn describes_verdicts(&self) -> bool {
        self.frames.is_some()
    }

    /// A message read from `from` enters its chain: the trace draws
    /// whether it is traced (when the connection is traced at all).
    pub fn chain_begins(&mut self, from: Peer, message: &WsMessage) {
        if let Some(trace) = &mut self.trace {
            let opcode = match message {
                WsMessage::Text(_) => "text",
                WsMessage::Binary(_) => "binary",
                WsMessage::Close(_) => "close",
                WsMessage::Ping(_) => "ping",
                WsMessage::Pong(_) => "pong",
                WsMessage::Frame(_) => "frame",
            };
            trace.message_begins(from.direction_name(), opcode, message.len());
        }
    }

    /// Whether the message in the chains now is traced, so its plugin
    /// calls are timed (the clock is read for traced messages only).
    pub fn times_calls(&self) -> bool {
        self.trace
            .as_ref()
            .is_some_and(|trace| trace.traces_message())
    }

    /// The message left its chain with `result`: its span, if traced, ends.
    pub fn chain_ends(&mut self, result: &ChainResult) {
        if let Some(trace) = &mut self.trace
            && trace.traces_message()
        {
            let outcome = if result.close.is_some() {
                "close"
            } else if result.forward.is_empty() && result.replies.is_empty() {
                "drop"
            } else if result.forward.is_empty() {
                "reply"
            } else {
                "forward"
            };
            trace.message_ends(outcome);
        }
    }

    /// A message plugin's verdict on the message in the chains now, its
    /// call `started` then when it is timed ([`Observer::times_calls`]).
    pub fn message_verdict(
        &mut self,
        plugin: &str,
        fail: FailPolicy,
        verdict: &Result<MessageVerdict, PluginFault>,
        started: Option<Instant>,
    ) {
        self.counters
            .message_verdict(MessageVerdictKind::of(verdict));
        if let (Some(trace), Some(started)) = (&mut self.trace, started) {
            let outcome = match verdict {
                Ok(MessageVerdict::Forward) => CallOutcome::Verdict("forward"),
                Ok(MessageVerdict::Replace(_)) => CallOutcome::Verdict("replace"),
                Ok(MessageVerdict::Drop) => CallOutcome::Verdict("drop"),
                Ok(MessageVerdict::Close(_)) => CallOutcome::Verdict("close"),
                Ok(MessageVerdict::Reply(_)) => CallOutcome::Verdict("reply"),
                Err(fault) => CallOutcome::Fault(fault.kind.as_str()),
            };
            trace.message_call(plugin, &outcome, started);
        }
        if !self.describes_verdicts() {
            return;
        }
        // Written straight into the message's text (a write to a
        // `String` cannot fail).
        let notes = &mut self.verdicts.buffer;
        if !notes.is_empty() {
            notes.push_str(", ");
        }
        // The common verdicts without the formatting machinery.
        let _ = match verdict {
            Ok(MessageVerdict::Forward) => {
                notes.push_str(plugin);
                notes.push_str(" forward");
                Ok(())
            }
            Ok(MessageVerdict::Replace(messages)) => {
                write!(notes, "{plugin} replace ({})", messages.len())
            }
            Ok(MessageVerdict::Drop) => {
                notes.push_str(plugin);
                notes.push_str(" drop");
                Ok(())
            }
            Ok(MessageVerdict::Close(frame)) => write!(notes, "{plugin} close {}", frame.code),
            Ok(MessageVerdict::Reply(messages)) => {
                write!(notes, "{plugin} reply ({})", messages.len())
            }
            Err(fault) => write!(
                notes,
                "{plugin} fault {} (fail {fail:?})",
                fault.kind.as_str()
            ),
        };
    }

    /// The verdicts on the message that just left the chains, as one text
    /// (shared with the previous message's when they are the same).
    pub fn take_verdicts(&mut self) -> Option<Arc<str>> {
        self.describes_verdicts().then(|| self.verdicts.take())
    }

    /// The message with `payload` read from `from` got `verdict` after
    /// `filter_us` in its chain (`None`: no chain ran).
    pub fn read(&self, from: Peer, verdict: Option<Arc<str>>, filter_us: u64, payload: &[u8]) {
        if from == Peer::Client
            && let Some(frames) = &self.frames
        {
            frames.lock().verdict_on_read(verdict, filter_us, payload);
        }
    }

    /// Whether every message's time in its chain is recorded (its frames
    /// are described, or messages are recorded for replay): then every
    /// plugin call on the connection is timed.
    pub fn records_chain_time(&self) -> bool {
        self.describes_verdicts() || self.records_replay
    }

    /// Whether messages' time in their chains is recorded for a sample
    /// of them (one in [`wsgate_runtime::TIME_ONE_CALL_IN`], drawn per
    /// message): on a connection only a shadow follows, whose examples
    /// show both chains' times where they were measured.
    pub fn samples_chain_time(&self) -> bool {
        self.shadow.is_some() && !self.records_chain_time()
    }

    /// Whether the next message's chain is timed: every message's when
    /// its time is recorded, one in [`wsgate_runtime::TIME_ONE_CALL_IN`]
    /// drawn at random when it is sampled.
    pub fn times_next_chain(&self) -> bool {
        if self.samples_chain_time() {
            wsgate_runtime::drawn_for_sample()
        } else {
            self.records_chain_time()
        }
    }

    /// Whether messages are recorded through their chains (level
    /// `replay`, or a shadow generation follows the connection).
    pub fn records_chains(&self) -> bool {
        self.records_replay || self.shadow.is_some()
    }

    /// Whether messages are recorded for replay (level `replay`): then
    /// [`Observer::chain_ran`] needs each message as it was read.
    pub fn records_replay(&self) -> bool {
        self.records_replay
    }

    /// What the shadow following the connection (if one does) is to be
    /// fed of `message`, taken before its chain has it.
    pub fn feed(&self, message: &WsMessage) -> Option<Fed> {
        self.shadow.as_ref().map(|_| Fed::of(message))
    }

    /// Record the message `read` from `from` at `read_at` (present when
    /// messages are recorded for replay) and what its chain made of it
    /// (masked by `[monitor] mask`), for replay; and feed the shadow
    /// `fed` (taken by [`Observer::feed`]) with it.
    pub fn chain_ran(
        &mut self,
        from: Peer,
        read_at: Instant,
        read: Option<&WsMessage>,
        fed: Option<Fed>,
        result: &ChainResult,
        filter_us: Option<u64>,
    ) {
        let Some((since_us, since)) = self.recorded_since.filter(|_| self.records_chains()) else {
            return;
        };
        self.chain_seq += 1;
        // The monotonic clock's time since the upgrade, on the wall clock
        // as it read then: a wall-clock step during the connection does not
        // show in its messages' times.
        let elapsed_us =
            u64::try_from(read_at.saturating_duration_since(since).as_micros()).unwrap_or(u64::MAX);
        let time_us = since_us.saturating_add(elapsed_us);
        let record = |connection: String, mask: &Mask| {
            Some(MessageRecord {
                connection,
                seq: self.chain_seq,
                time_us,
                from: from.name().to_string(),
                input: to_payload(read?, mask)?,
                forward: payloads(&result.forward, mask),
                replies: payloads(&result.replies, mask),
                close: result.close.clone(),
                // Recorded for replay: every message's chain is timed.
                filter_us: filter_us.unwrap_or_default(),
            })
        };
        let replayed = match (&self.monitor, self.records_replay) {
            (Some((monitor, key)), true) => record(key.clone(), monitor.mask()),
            _ => None,
        };
        // The shadow compares what the chains really saw and made; it
        // masks what it shows.
        if let (Some(feed), Some(input)) = (&mut self.shadow, fed) {
            let run = ChainRun {
                connection: feed.id,
                seq: self.chain_seq,
                time_us,
                from,
                made: Made::of(result),
                input,
                filter_us,
            };
            feed.send(ShadowItem::Message(run));
        }
        if let (Some((monitor, _)), Some(record)) = (&self.monitor, replayed) {
            monitor.record(Record::Message(Box::new(record)));
        }
    }

    /// What produced the frames written to `to` next: what the chain did
    /// (`forwarded`, `reply`, `closed`) with a message that got `verdict`
    /// after `filter_us` (`None`: the gateway on its own, such as pongs).
    pub fn writing(&mut self, to: Peer, note: Option<(&'static str, &Arc<str>, u64)>) {
        if to == Peer::Client
            && let Some(frames) = &self.frames
        {
            let note = note.map(|(what, verdict, filter_us)| {
                let text = match &self.write_note {
                    Some(last) if last.what == what && Arc::ptr_eq(&last.verdict, verdict) => {
                        last.text.clone()
                    }
                    _ => {
                        let text: Arc<str> = Arc::from(format!("{what}: {verdict}"));
                        self.write_note = Some(WriteNote {
                            what,
                            verdict: verdict.clone(),
                            text: text.clone(),
                        });
                        text
                    }
                };
                (text, filter_us)
            });
            frames.lock().note_writes(note);
        }
    }

    /// A message with `payload` is about to be written to `to` compressed.
    pub fn writing_compressed(&self, to: Peer, payload: &[u8]) {
        if to == Peer::Client
            && let Some(frames) = &self.frames
        {
            frames.lock().writing_compressed(payload);
        }
    }

    /// Note who started the close, unless someone already did.
    pub fn closing(&mut self, by: ClosedBy, code: Option<u16>, reason: &str) {
        if self.first_close.is_none() {
            self.first_close = Some((by, code, reason.to_string()));
        }
    }

    /// The connection reached its expiry (`by` the endpoint's `expire`
    /// or its credentials').
    pub fn expired(&mut self, by: ExpiredBy) {
        self.expired = true;
        self.counters.expired(by);
    }

    /// The connection ended: record the frames still waiting for a
    /// verdict, then how it ended.
    pub fn finish(mut self) {
        drop(self.frames.take());
        // The shadow's feed tells it the connection ended as it goes.
        drop(self.shadow.take());
        let (closed_by, code, reason) =
            self.first_close
                .take()
                .unwrap_or((ClosedBy::Gateway, None, String::from("closed")));
        self.counters.closed(code);
        if let Some(trace) = self.trace.take() {
            trace.end(code, closed_by.name());
        }
        let Some((monitor, connection)) = self.monitor.take() else {
            return;
        };
        monitor.record(Record::End(EndRecord {
            connection,
            time_us: now_us(),
            closed_by: closed_by.name().to_string(),
            code,
            reason,
            expired: self.expired,
        }));
    }
}

/// Microseconds since `started`.
pub fn micros_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Headers as (name, value) pairs, values lossily as text.
fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The note on frames written after a message: `"{what}: {verdict}"`,
/// made once for as long as both repeat.
struct WriteNote {
    what: &'static str,
    verdict: Arc<str>,
    text: Arc<str>,
}

/// A text made again for every message that is usually the same as the
/// last one (a message's verdicts): written into a reused buffer and
/// shared, without a copy, for as long as it repeats.
#[derive(Default)]
struct RepeatedText {
    /// The text being written.
    buffer: String,
    /// The last text taken.
    last: Option<Arc<str>>,
}

impl RepeatedText {
    /// The text written since the last take, shared; the buffer is emptied.
    fn take(&mut self) -> Arc<str> {
        let text = match &self.last {
            Some(last) if **last == *self.buffer => last.clone(),
            _ => {
                let text: Arc<str> = Arc::from(self.buffer.as_str());
                self.last = Some(text.clone());
                text
            }
        };
        self.buffer.clear();
        text
    }
}
