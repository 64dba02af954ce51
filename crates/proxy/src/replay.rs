//! Replay: connections recorded at monitor level `replay`, run through a
//! candidate generation's chains in process. No client and no upstream:
//! the recorded upgrade request goes through the upgrade chain, then each
//! recorded message, in the order it was read, through its direction's
//! chain (the recorded upstream messages stand in for the upstream). What
//! the candidate makes of each is set beside what was recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_tungstenite::tungstenite::Message as WsMessage;

use http::{HeaderMap, HeaderName, HeaderValue};
use wsgate_config::MonitorLevel;
use wsgate_monitor::mask::Mask;
use wsgate_monitor::{MessageRecord, Monitor, Payload, Recorded, UpgradeRecord};
use wsgate_runtime::{CallContext, ConnectionInfo, Header, UpgradeRequest};

use crate::convert::{from_payload, payloads};
use crate::counters::TrafficCounters;
use crate::generation::{Generation, LiveEndpoint};
use crate::observe::{Observer, RequestSummary};
use crate::peer::Peer;
use crate::relay::{ChainResult, run_chain, spent, spent_since};
use crate::shadow::ShadowFeed;
use crate::upgrade::{chain::run_upgrade_chain, plugin_contexts};

/// What a chain made of one message: sent on, sent back, or a close.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Output {
    /// Messages sent on to the other side.
    pub forward: Vec<Payload>,
    /// Messages sent back to the sender.
    pub replies: Vec<Payload>,
    /// The close (code, reason) that ended the connection.
    pub close: Option<(u16, String)>,
}

impl Output {
    fn of_record(record: &MessageRecord) -> Self {
        Self {
            forward: record.forward.clone(),
            replies: record.replies.clone(),
            close: record.close.clone(),
        }
    }

    pub(crate) fn of_result(result: &ChainResult, mask: &Mask) -> Self {
        Self {
            forward: payloads(&result.forward, mask),
            replies: payloads(&result.replies, mask),
            close: result.close.clone(),
        }
    }

    /// This output with its text messages masked by `mask`.
    pub fn masked(&self, mask: &Mask) -> Self {
        Self {
            forward: self.forward.iter().map(|p| mask_payload(p, mask)).collect(),
            replies: self.replies.iter().map(|p| mask_payload(p, mask)).collect(),
            close: self.close.clone(),
        }
    }
}

/// How the candidate's output compares with the recorded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Difference {
    /// Byte for byte the same.
    Same,
    /// Other messages sent on or back.
    Changed,
    /// The recorded chain sent something on; the candidate sends nothing.
    Dropped,
    /// The candidate closes the connection; the recorded chain did not.
    Closed,
}

/// What a comparison needs to know of one side's output besides whether
/// the two are the same.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// It closes the connection.
    pub closes: bool,
    /// It sends something on.
    pub forwards: bool,
    /// It sends something back.
    pub replies: bool,
}

impl Difference {
    fn of(recorded: &Output, candidate: &Output) -> Self {
        let shape = |output: &Output| Shape {
            closes: output.close.is_some(),
            forwards: !output.forward.is_empty(),
            replies: !output.replies.is_empty(),
        };
        Self::between(recorded == candidate, shape(recorded), shape(candidate))
    }

    /// The difference between two outputs that are `same` or not.
    pub(crate) fn between(same: bool, recorded: Shape, candidate: Shape) -> Self {
        if same {
            Self::Same
        } else if candidate.closes && !recorded.closes {
            Self::Closed
        } else if !candidate.forwards && !candidate.replies && recorded.forwards {
            Self::Dropped
        } else {
            Self::Changed
        }
    }
}

/// One recorded message, replayed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayedMessage {
    /// Its position among the connection's recorded messages.
    pub seq: u64,
    /// Who sent it: `client` or `upstream`.
    pub from: String,
    /// The message as it entered the chain.
    pub input: Payload,
    /// What the recorded chain made of it.
    pub recorded: Output,
    /// What the candidate's chain makes of it.
    pub candidate: Output,
    /// How they compare.
    pub difference: Difference,
    /// Time in the recorded chain's plugin calls, microseconds (in
    /// recordings made before 2026-12-03, the chain's wall time); a
    /// shadow's example has it only for the messages it timed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_us: Option<u64>,
    /// Time in the candidate's chain's plugin calls, microseconds (when
    /// the recorded one is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_us: Option<u64>,
}

/// One recorded connection, replayed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    /// The recorded connection's key.
    pub connection: String,
    /// The endpoint path it was recorded on.
    pub endpoint: String,
    /// The status the client got.
    pub recorded_status: u16,
    /// The status the candidate's upgrade chain would give (101 when it
    /// routes; the upstream is not asked); `None`: no candidate endpoint
    /// serves the path.
    pub candidate_status: Option<u16>,
    /// Its messages, replayed while the candidate kept the connection
    /// (after an upgrade the candidate refuses or a close, none).
    pub messages: Vec<ReplayedMessage>,
    /// Recorded messages not replayed (the candidate refused the upgrade
    /// or closed the connection before them, or binary data that was not
    /// base64).
    pub not_replayed: usize,
}

/// Replays into one candidate generation.
pub struct Replayer {
    generation: Arc<Generation>,
    monitor: Monitor,
    counters: Arc<TrafficCounters>,
    mask: Mask,
}

impl Replayer {
    /// Replay into `generation` (built from the candidate configuration);
    /// candidate outputs are masked with `mask`, like the recorded ones.
    pub fn new(
        generation: Arc<Generation>,
        mask: Mask,
    ) -> Result<Self, wsgate_monitor::MonitorError> {
        Ok(Self {
            generation,
            // Nothing is recorded; observers need a monitor to not record to.
            monitor: Monitor::start(&wsgate_config::MonitorSettings::default())?,
            counters: Arc::default(),
            mask,
        })
    }

    /// The candidate generation (its pools hold the calls' statistics).
    pub fn generation(&self) -> &Arc<Generation> {
        &self.generation
    }

    /// Replay one recorded connection: its plugin state and attributes are
    /// its own, made new as for a live connection.
    pub async fn replay(&self, id: u64, recorded: &Recorded) -> Replayed {
        let upgrade = &recorded.upgrade;
        let mut replayed = Replayed {
            connection: upgrade.connection.clone(),
            endpoint: upgrade.endpoint.clone(),
            recorded_status: upgrade.status,
            candidate_status: None,
            messages: Vec::new(),
            not_replayed: recorded.messages.len(),
        };
        let (status, session) = self.open(id, upgrade).await;
        replayed.candidate_status = status;
        let Some(mut session) = session else {
            return replayed;
        };
        for record in &recorded.messages {
            let Some(message) = session.message(record).await else {
                continue;
            };
            replayed.not_replayed -= 1;
            let closed = message.candidate.close.is_some();
            replayed.messages.push(message);
            if closed {
                break;
            }
        }
        session.finish();
        replayed
    }

    /// Start replaying connection `id` from its recorded `upgrade`: the
    /// status the candidate's upgrade chain gives (`None`: no endpoint
    /// serves the path), and the session its messages go through when it
    /// routes.
    pub async fn open(
        &self,
        id: u64,
        upgrade: &UpgradeRecord,
    ) -> (Option<u16>, Option<ReplaySession>) {
        self.open_fed(id, upgrade, None).await
    }

    /// [`Replayer::open`], its observer feeding `shadow` what its chains
    /// run (as a sampled connection's does; for the shadow's benchmark).
    pub(crate) async fn open_fed(
        &self,
        id: u64,
        upgrade: &UpgradeRecord,
        shadow: Option<ShadowFeed>,
    ) -> (Option<u16>, Option<ReplaySession>) {
        let Some(endpoint) = self.generation.endpoint_for(&upgrade.path).cloned() else {
            return (None, None);
        };
        let client: SocketAddr = upgrade
            .client
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let headers: HeaderMap = upgrade
            .request_headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        let mut observer = Observer::new(
            self.counters.clone(),
            &self.monitor,
            MonitorLevel::Off,
            0,
            id,
            self.generation.id,
            endpoint.config.path.get_ref(),
            client,
            RequestSummary {
                method: &upgrade.method,
                path: &upgrade.path,
                query: &upgrade.query,
                headers: &headers,
            },
            shadow,
            None,
        );
        let view = UpgradeRequest {
            connection_id: id,
            method: upgrade.method.clone(),
            path: upgrade.path.clone(),
            query: upgrade.query.clone(),
            headers: upgrade
                .request_headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            client_addr: upgrade.client.clone(),
            tls: false,
        };
        // Every call is timed: the report and the shadow's examples give
        // the candidate's time.
        let (info, mut contexts) = plugin_contexts(&endpoint, id, view, true);
        // Plugins reading the clock see the recorded time.
        set_clock(&info, upgrade.time_us);
        match run_upgrade_chain(&endpoint, &mut contexts, &mut observer).await {
            Ok((route, _)) => {
                let _ = info.route_url.set(route.url);
                let session = ReplaySession {
                    endpoint,
                    info,
                    contexts,
                    observer,
                    mask: self.mask.clone(),
                };
                (Some(101), Some(session))
            }
            Err(refused) => {
                observer.finish();
                (Some(refused.response().status().as_u16()), None)
            }
        }
    }
}

/// Set what `clocks.now-ms` answers on `info`'s connection to `time_us`.
fn set_clock(info: &ConnectionInfo, time_us: u64) {
    info.replay_clock_ms
        .store((time_us / 1000).max(1), Ordering::Relaxed);
}

/// One connection being replayed: its candidate endpoint, plugin contexts
/// (state, attributes) and observer.
pub struct ReplaySession {
    pub(crate) endpoint: Arc<LiveEndpoint>,
    info: Arc<ConnectionInfo>,
    pub(crate) contexts: Vec<CallContext>,
    pub(crate) observer: Observer,
    mask: Mask,
}

impl ReplaySession {
    /// Run one recorded message through its direction's candidate chain;
    /// `None` for binary data that is not base64.
    pub async fn message(&mut self, record: &MessageRecord) -> Option<ReplayedMessage> {
        let input = from_payload(&record.input)?;
        let from = if record.from == Peer::Upstream.name() {
            Peer::Upstream
        } else {
            Peer::Client
        };
        let (result, candidate_us) = self.run(from, record.time_us, input, true).await;
        let recorded = Output::of_record(record);
        let candidate = Output::of_result(&result, &self.mask);
        Some(ReplayedMessage {
            seq: record.seq,
            from: record.from.clone(),
            input: record.input.clone(),
            difference: Difference::of(&recorded, &candidate),
            recorded,
            candidate,
            recorded_us: Some(record.filter_us),
            candidate_us,
        })
    }

    /// Run `input`, read from `from` at `time_us` (microseconds since the
    /// epoch, what `clocks.now-ms` answers), through the candidate's chain
    /// for its direction: what it made of it, and the microseconds its
    /// plugins' calls took when `timed`.
    pub(crate) async fn run(
        &mut self,
        from: Peer,
        time_us: u64,
        input: WsMessage,
        timed: bool,
    ) -> (ChainResult, Option<u64>) {
        let chain = match from {
            Peer::Client => &self.endpoint.client_messages,
            Peer::Upstream => &self.endpoint.upstream_messages,
        };
        set_clock(&self.info, time_us);
        for context in &mut self.contexts {
            context.timed = timed;
        }
        let before = timed.then(|| spent(&self.contexts));
        let result = if chain.is_empty() {
            ChainResult {
                forward: smallvec::smallvec![input],
                as_read: true,
                ..ChainResult::default()
            }
        } else {
            run_chain(
                chain,
                &mut self.contexts,
                from.direction_from(),
                input,
                &mut self.observer,
            )
            .await
        };
        (
            result,
            before.map(|before| spent_since(&self.contexts, before)),
        )
    }

    /// The connection ended: its places and holds are given back.
    pub fn finish(self) {
        self.observer.finish();
    }
}

/// `payload` with its text masked by `mask`.
pub fn mask_payload(payload: &Payload, mask: &Mask) -> Payload {
    match payload {
        Payload::Text { data } => Payload::Text {
            data: mask.apply(data),
        },
        other => other.clone(),
    }
}
