//! One connection's spans, built as the connection goes:
//!
//! ```text
//! websocket /chat                      (server; parent: the request's traceparent)
//! ├── upgrade                          (the upgrade chain, to the answer)
//! │   └── plugin auth@1.0.0            (one per upgrade plugin: verdict, time)
//! ├── process /chat                    (a sampled message through its chain)
//! │   ├── plugin redact@1.0.0          (one per plugin call: verdict, time)
//! │   └── plugin tagger@1.0.0
//! └── …
//! ```
//!
//! Message spans follow OpenTelemetry's messaging conventions
//! (`messaging.system = "websocket"`, the endpoint as the destination, the
//! body's size), with the direction and the opcode as attributes.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};

use crate::Tracer;
use crate::context::format_traceparent;

/// What a traced connection is, for its span's attributes.
pub struct ConnectionFacts<'a> {
    /// The connection's id in this gateway.
    pub id: u64,
    /// The generation that serves it.
    pub generation: u64,
    /// The endpoint's path.
    pub endpoint: &'a str,
    /// The request's path.
    pub path: &'a str,
    /// The client's address.
    pub client: SocketAddr,
    /// The fraction of its messages traced.
    pub sample: f64,
}

/// How one plugin call ended, for its span.
pub enum CallOutcome {
    /// The plugin gave this verdict (`forward`, `reject`, `route`, …).
    Verdict(&'static str),
    /// The call failed (`trap`, `deadline`, …); the span's status is an error.
    Fault(&'static str),
}

/// A span begun and not yet ended.
struct OpenSpan {
    id: SpanId,
    start: Instant,
    attributes: Vec<KeyValue>,
}

/// One connection's trace (see the module's note).
pub struct ConnectionTrace {
    tracer: Arc<Tracer>,
    /// The connection span's context: its trace and its id.
    context: SpanContext,
    /// The request's traceparent span, when it had one.
    parent: SpanId,
    name: String,
    /// The name of its message spans (`process {endpoint}`).
    message_name: String,
    endpoint: Arc<str>,
    /// The instant the connection began, and the wall time then.
    began: (Instant, SystemTime),
    attributes: Vec<KeyValue>,
    upgrade: Option<OpenSpan>,
    message: Option<OpenSpan>,
    /// Messages traced when a draw from `sampling_state` falls under it.
    threshold: u64,
    sampling_state: u64,
    /// The upgrade was answered 5xx: the connection's span is an error.
    upgrade_failed: bool,
    /// The connection's span was sent (by [`ConnectionTrace::end`], or on drop).
    ended: bool,
}

impl Tracer {
    /// Begin the trace of a connection whose upgrade request carried
    /// `traceparent` (its parent, if valid); `None` when the parent said
    /// not to sample it.
    pub fn connection(
        self: &Arc<Self>,
        traceparent: Option<&[u8]>,
        facts: &ConnectionFacts<'_>,
    ) -> Option<ConnectionTrace> {
        let parent = traceparent.and_then(crate::parse_traceparent);
        if parent.as_ref().is_some_and(|p| !p.is_sampled()) {
            return None;
        }
        let ids = RandomIdGenerator::default();
        let trace_id = parent
            .as_ref()
            .map_or_else(|| ids.new_trace_id(), SpanContext::trace_id);
        let span_id = ids.new_span_id();
        let context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let attributes = vec![
            KeyValue::new("wsgate.endpoint", facts.endpoint.to_string()),
            KeyValue::new("url.path", facts.path.to_string()),
            KeyValue::new("client.address", facts.client.ip().to_string()),
            KeyValue::new("client.port", i64::from(facts.client.port())),
            KeyValue::new(
                "wsgate.connection.id",
                i64::try_from(facts.id).unwrap_or(i64::MAX),
            ),
            KeyValue::new(
                "wsgate.generation",
                i64::try_from(facts.generation).unwrap_or(i64::MAX),
            ),
        ];
        Some(ConnectionTrace {
            tracer: self.clone(),
            parent: parent.map_or(SpanId::INVALID, |p| p.span_id()),
            name: format!("websocket {}", facts.endpoint),
            message_name: format!("process {}", facts.endpoint),
            endpoint: Arc::from(facts.endpoint),
            context,
            began: (Instant::now(), SystemTime::now()),
            attributes,
            upgrade: Some(OpenSpan {
                id: ids.new_span_id(),
                start: Instant::now(),
                attributes: Vec::new(),
            }),
            message: None,
            threshold: threshold(facts.sample),
            // Seeded from the span id, itself random.
            sampling_state: u64::from_be_bytes(span_id.to_bytes()) | 1,
            upgrade_failed: false,
            ended: false,
        })
    }
}

/// The draw under which a message is traced at rate `sample`.
fn threshold(sample: f64) -> u64 {
    if sample >= 1.0 {
        u64::MAX
    } else if sample <= 0.0 {
        0
    } else {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a fraction of u64::MAX, in range by the checks above"
        )]
        let draw = (sample * u64::MAX as f64) as u64;
        draw
    }
}

impl ConnectionTrace {
    /// The `traceparent` that names this connection's span as the parent,
    /// for the upgrade plugins and the upstream.
    pub fn traceparent(&self) -> String {
        format_traceparent(&self.context)
    }

    /// The trace's id, in hex (for the logs).
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.context.trace_id())
    }

    /// An upgrade plugin's call, `started` then and ended now.
    pub fn upgrade_call(&mut self, plugin: &str, outcome: &CallOutcome, started: Instant) {
        if let Some(parent) = self.upgrade.as_ref().map(|u| u.id) {
            self.call(parent, plugin, outcome, started);
        }
    }

    /// The upgrade was answered `status` (routed to `route`, if it was):
    /// its span ends.
    pub fn answered(&mut self, status: u16, route: Option<&str>) {
        self.end_upgrade(Some(status), route);
    }

    /// The upgrade's span ends: answered `status`, or (`None`) abandoned
    /// before an answer.
    fn end_upgrade(&mut self, status: Option<u16>, route: Option<&str>) {
        let Some(mut upgrade) = self.upgrade.take() else {
            return;
        };
        if let Some(route) = route {
            upgrade
                .attributes
                .push(KeyValue::new("wsgate.route", route.to_string()));
        }
        let span_status = match status {
            Some(status) => {
                let code = KeyValue::new("http.response.status_code", i64::from(status));
                upgrade.attributes.push(code.clone());
                self.attributes.push(code);
                // As for HTTP servers: a 5xx answer is the gateway's failure.
                self.upgrade_failed |= status >= 500;
                if status >= 500 {
                    Status::error(format!("upgrade answered {status}"))
                } else {
                    Status::Unset
                }
            }
            None => {
                upgrade
                    .attributes
                    .push(KeyValue::new("wsgate.outcome", "abandoned"));
                Status::Unset
            }
        };
        let span = self.span(
            upgrade.id,
            self.context.span_id(),
            Cow::Borrowed("upgrade"),
            SpanKind::Internal,
            upgrade.start,
            upgrade.attributes,
            span_status,
        );
        self.tracer.send(span);
    }

    /// A message of `size` bytes (`opcode`) read from `from` enters its
    /// chain: it is traced when drawn at the connection's rate
    /// ([`ConnectionTrace::traces_message`] then says so).
    pub fn message_begins(&mut self, from: &'static str, opcode: &'static str, size: usize) {
        // A span its chain never ended (it cannot happen today) is sent as
        // it is rather than left to take this message's calls.
        self.message_ends("unfinished");
        if self.threshold == 0 {
            return;
        }
        // xorshift64: a draw per message, no lock, no system call.
        self.sampling_state ^= self.sampling_state << 13;
        self.sampling_state ^= self.sampling_state >> 7;
        self.sampling_state ^= self.sampling_state << 17;
        if self.threshold != u64::MAX && self.sampling_state > self.threshold {
            return;
        }
        let id = RandomIdGenerator::default().new_span_id();
        self.message = Some(OpenSpan {
            id,
            start: Instant::now(),
            attributes: vec![
                KeyValue::new("messaging.system", "websocket"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.operation.name", "process"),
                KeyValue::new(
                    "messaging.destination.name",
                    Value::String(self.endpoint.clone().into()),
                ),
                KeyValue::new(
                    "messaging.message.body.size",
                    i64::try_from(size).unwrap_or(i64::MAX),
                ),
                KeyValue::new("websocket.opcode", opcode),
                KeyValue::new("wsgate.direction", from),
            ],
        });
    }

    /// Whether a message is being traced (its plugin calls are timed).
    pub fn traces_message(&self) -> bool {
        self.message.is_some()
    }

    /// A message plugin's call on the traced message, `started` then.
    pub fn message_call(&mut self, plugin: &str, outcome: &CallOutcome, started: Instant) {
        if let Some(parent) = self.message.as_ref().map(|m| m.id) {
            self.call(parent, plugin, outcome, started);
        }
    }

    /// The traced message left its chain as `outcome` (`forward`, `drop`,
    /// `close`, …): its span ends.
    pub fn message_ends(&mut self, outcome: &'static str) {
        let Some(mut message) = self.message.take() else {
            return;
        };
        message
            .attributes
            .push(KeyValue::new("wsgate.outcome", outcome));
        let span = self.span(
            message.id,
            self.context.span_id(),
            Cow::Owned(self.message_name.clone()),
            SpanKind::Consumer,
            message.start,
            message.attributes,
            Status::Unset,
        );
        self.tracer.send(span);
    }

    /// The connection ended (closed with `code`, started by `closed_by`):
    /// its span ends and is sent.
    pub fn end(mut self, code: Option<u16>, closed_by: &'static str) {
        self.send_connection(code, closed_by);
    }

    /// End what is still open, then the connection's span, and send them.
    fn send_connection(&mut self, code: Option<u16>, closed_by: &'static str) {
        if self.ended {
            return;
        }
        self.ended = true;
        // An upgrade that never got its answer (the client went away).
        self.end_upgrade(None, None);
        self.message_ends("unfinished");
        if let Some(code) = code {
            self.attributes
                .push(KeyValue::new("websocket.close.code", i64::from(code)));
        }
        self.attributes
            .push(KeyValue::new("wsgate.closed_by", closed_by));
        let status = if self.upgrade_failed {
            Status::error("the upgrade failed")
        } else {
            Status::Unset
        };
        let attributes = std::mem::take(&mut self.attributes);
        let name = Cow::Owned(std::mem::take(&mut self.name));
        let span = SpanData {
            parent_span_is_remote: self.parent != SpanId::INVALID,
            ..self.span(
                self.context.span_id(),
                self.parent,
                name,
                SpanKind::Server,
                self.began.0,
                attributes,
                status,
            )
        };
        self.tracer.send(span);
    }

    /// A plugin call's span under `parent`.
    fn call(&self, parent: SpanId, plugin: &str, outcome: &CallOutcome, started: Instant) {
        let mut attributes = vec![KeyValue::new("wsgate.plugin", plugin.to_string())];
        let status = match outcome {
            CallOutcome::Verdict(verdict) => {
                attributes.push(KeyValue::new("wsgate.verdict", *verdict));
                Status::Unset
            }
            CallOutcome::Fault(kind) => {
                attributes.push(KeyValue::new("wsgate.verdict", "fault"));
                attributes.push(KeyValue::new("error.type", *kind));
                Status::error(format!("plugin fault: {kind}"))
            }
        };
        let span = self.span(
            RandomIdGenerator::default().new_span_id(),
            parent,
            Cow::Owned(format!("plugin {plugin}")),
            SpanKind::Internal,
            started,
            attributes,
            status,
        );
        self.tracer.send(span);
    }

    /// A finished span of this trace, from `start` to now.
    #[allow(clippy::too_many_arguments, reason = "each is one field of the span")]
    fn span(
        &self,
        id: SpanId,
        parent: SpanId,
        name: Cow<'static, str>,
        kind: SpanKind,
        start: Instant,
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        let (began, wall) = self.began;
        let now = Instant::now();
        SpanData {
            span_context: SpanContext::new(
                self.context.trace_id(),
                id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name,
            start_time: wall + start.saturating_duration_since(began),
            end_time: wall + now.saturating_duration_since(began),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.tracer.scope.clone(),
        }
    }
}

impl Drop for ConnectionTrace {
    /// A connection dropped before it ended (its upgrade abandoned by the
    /// client, or still open when the gateway stopped waiting at shutdown)
    /// still sends its spans, so its children are not orphans.
    fn drop(&mut self) {
        self.send_connection(None, "abandoned");
    }
}

#[cfg(test)]
mod tests {
    use super::threshold;

    #[test]
    fn sampling_rates_map_onto_the_draw() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), u64::MAX);
        let half = threshold(0.5);
        assert!(half > u64::MAX / 2 - 1024 && half < u64::MAX / 2 + 1024);
    }
}
