//! Traffic counters for `/metrics`: upgrades by endpoint and status,
//! messages and bytes per direction, plugin verdicts by kind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wsgate_runtime::striped::Striped;
use wsgate_runtime::{MessageVerdict, PluginFault, UpgradeVerdict};

use crate::peer::Peer;

/// What a message plugin's call decided, counted by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageVerdictKind {
    /// Passed the message on unchanged.
    Forward,
    /// Replaced it with messages of its own.
    Replace,
    /// Dropped it.
    Drop,
    /// Closed both sides.
    Close,
    /// Answered the sender.
    Reply,
    /// The call failed.
    Fault,
}

impl MessageVerdictKind {
    /// Every kind, in counter order.
    pub const ALL: [Self; 6] = [
        Self::Forward,
        Self::Replace,
        Self::Drop,
        Self::Close,
        Self::Reply,
        Self::Fault,
    ];

    /// The kind of a call's outcome.
    pub fn of(verdict: &Result<MessageVerdict, PluginFault>) -> Self {
        match verdict {
            Ok(MessageVerdict::Forward) => Self::Forward,
            Ok(MessageVerdict::Replace(_)) => Self::Replace,
            Ok(MessageVerdict::Drop) => Self::Drop,
            Ok(MessageVerdict::Close(_)) => Self::Close,
            Ok(MessageVerdict::Reply(_)) => Self::Reply,
            Err(_) => Self::Fault,
        }
    }

    /// The metric label and the monitor's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Replace => "replace",
            Self::Drop => "drop",
            Self::Close => "close",
            Self::Reply => "reply",
            Self::Fault => "fault",
        }
    }
}

/// What an upgrade plugin's call decided, counted by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeVerdictKind {
    /// Let the next plugin decide.
    Continue,
    /// Changed the upstream request's headers.
    Modify,
    /// Refused the upgrade with a status.
    Reject,
    /// Chose the upstream.
    Route,
    /// The call failed.
    Fault,
}

impl UpgradeVerdictKind {
    /// Every kind, in counter order.
    pub const ALL: [Self; 5] = [
        Self::Continue,
        Self::Modify,
        Self::Reject,
        Self::Route,
        Self::Fault,
    ];

    /// The kind of a call's outcome.
    pub fn of(verdict: &Result<UpgradeVerdict, PluginFault>) -> Self {
        match verdict {
            Ok(UpgradeVerdict::Continue) => Self::Continue,
            Ok(UpgradeVerdict::Modify(_)) => Self::Modify,
            Ok(UpgradeVerdict::Reject(_)) => Self::Reject,
            Ok(UpgradeVerdict::Route(_)) => Self::Route,
            Err(_) => Self::Fault,
        }
    }

    /// The metric label and the monitor's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Modify => "modify",
            Self::Reject => "reject",
            Self::Route => "route",
            Self::Fault => "fault",
        }
    }
}

/// Why the gateway closed a connection at its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredBy {
    /// The endpoint's `expire` (close 1001 "connection expired").
    Endpoint,
    /// A plugin's `session.expire-at`: the credentials the connection was
    /// opened with expired (close 1008 "credentials expired").
    Credentials,
}

impl ExpiredBy {
    /// Every cause, in the order metrics list them.
    pub const ALL: [Self; 2] = [Self::Endpoint, Self::Credentials];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::Credentials => "credentials",
        }
    }
}

/// Most endpoint paths counted apart in the message counters (each is a
/// label value in `/metrics`); more share [`OTHER_ENDPOINTS`].
pub const MAX_ENDPOINT_LABELS: usize = 256;
/// The endpoint label of the paths past [`MAX_ENDPOINT_LABELS`].
pub const OTHER_ENDPOINTS: &str = "(other)";

/// Most close codes counted apart in `wsgate_connections_closed_total`;
/// more share the label [`OTHER_CLOSE_CODES`].
pub const MAX_CLOSE_CODES: usize = 64;
/// The close code label of the codes past [`MAX_CLOSE_CODES`].
pub const OTHER_CLOSE_CODES: &str = "other";
/// The close code label of connections that ended without a close frame.
pub const NO_CLOSE_CODE: &str = "none";

/// Messages and payload bytes read on one endpoint, from clients then from
/// upstreams (each worker thread counts in its own stripe).
#[derive(Debug, Default)]
pub struct EndpointTraffic {
    counts: Striped<SideCounts>,
}

/// Messages and payload bytes, from clients then from upstreams.
#[derive(Debug, Default)]
struct SideCounts {
    messages: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
}

impl EndpointTraffic {
    /// Count one message of `bytes` payload bytes read from `from`.
    pub fn message(&self, from: Peer, bytes: usize) {
        let side = usize::from(from == Peer::Upstream);
        let own = self.counts.own();
        if let (Some(messages), Some(total)) = (own.messages.get(side), own.bytes.get(side)) {
            messages.fetch_add(1, Ordering::Relaxed);
            total.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Messages and payload bytes read from `from`.
    pub fn from(&self, from: Peer) -> (u64, u64) {
        let side = usize::from(from == Peer::Upstream);
        let load = |counters: &[AtomicU64; 2]| {
            counters
                .get(side)
                .map_or(0, |counter| counter.load(Ordering::Relaxed))
        };
        self.counts
            .iter()
            .fold((0, 0), |(messages, bytes), counts| {
                (
                    messages + load(&counts.messages),
                    bytes + load(&counts.bytes),
                )
            })
    }
}

/// Counters shared by every connection of a gateway.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    /// Upgrade answers by endpoint, then status.
    upgrades: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    /// Messages and bytes read, by endpoint path (every path any
    /// generation has served, at most [`MAX_ENDPOINT_LABELS`]).
    endpoints: Mutex<BTreeMap<String, Arc<EndpointTraffic>>>,
    /// Message plugin verdicts, in [`MessageVerdictKind::ALL`] order (each
    /// worker thread counts in its own stripe).
    message_verdicts: Striped<[AtomicU64; 6]>,
    /// Upgrade plugin verdicts, in [`UpgradeVerdictKind::ALL`] order.
    upgrade_verdicts: [AtomicU64; 5],
    /// Connections closed at their expiry, in [`ExpiredBy::ALL`] order.
    expired: [AtomicU64; 2],
    /// Connections ended, by the close code sent or received first.
    closes: Mutex<BTreeMap<CloseKey, u64>>,
}

/// What a connection's close is counted under; its label is the number,
/// [`NO_CLOSE_CODE`] or [`OTHER_CLOSE_CODES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CloseKey {
    Code(u16),
    NoCode,
    Other,
}

impl CloseKey {
    fn label(self) -> String {
        match self {
            Self::Code(code) => code.to_string(),
            Self::NoCode => NO_CLOSE_CODE.to_string(),
            Self::Other => OTHER_CLOSE_CODES.to_string(),
        }
    }
}

impl TrafficCounters {
    /// Count an upgrade answered with `status` on `endpoint`.
    pub fn upgrade(&self, endpoint: &str, status: u16) {
        let Ok(mut upgrades) = self.upgrades.lock() else {
            return;
        };
        // The endpoint's path is copied only the first time it is seen.
        if let Some(statuses) = upgrades.get_mut(endpoint) {
            *statuses.entry(status).or_default() += 1;
        } else {
            upgrades.insert(endpoint.to_string(), BTreeMap::from([(status, 1)]));
        }
    }

    /// Upgrade answers by (endpoint, status).
    pub fn upgrades(&self) -> Vec<((String, u16), u64)> {
        let Ok(upgrades) = self.upgrades.lock() else {
            return Vec::new();
        };
        upgrades
            .iter()
            .flat_map(|(endpoint, statuses)| {
                statuses
                    .iter()
                    .map(|(status, count)| ((endpoint.clone(), *status), *count))
            })
            .collect()
    }

    /// The message counters of `endpoint` (its path), shared by every
    /// generation that serves it; past [`MAX_ENDPOINT_LABELS`] paths, one
    /// shared entry, [`OTHER_ENDPOINTS`].
    pub fn endpoint_traffic(&self, endpoint: &str) -> Arc<EndpointTraffic> {
        let Ok(mut endpoints) = self.endpoints.lock() else {
            return Arc::default();
        };
        if let Some(traffic) = endpoints.get(endpoint) {
            return traffic.clone();
        }
        let key = if endpoints.len() < MAX_ENDPOINT_LABELS {
            endpoint
        } else {
            OTHER_ENDPOINTS
        };
        endpoints.entry(key.to_string()).or_default().clone()
    }

    /// Messages and payload bytes read from `from`, by endpoint path.
    pub fn messages_by_endpoint(&self, from: Peer) -> Vec<(String, (u64, u64))> {
        self.endpoints
            .lock()
            .map(|endpoints| {
                endpoints
                    .iter()
                    .map(|(path, traffic)| (path.clone(), traffic.from(from)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Count a message plugin's verdict.
    pub fn message_verdict(&self, kind: MessageVerdictKind) {
        if let Some(counter) = self.message_verdicts.own().get(kind as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count an upgrade plugin's verdict.
    pub fn upgrade_verdict(&self, kind: UpgradeVerdictKind) {
        if let Some(counter) = self.upgrade_verdicts.get(kind as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Message plugin verdicts by kind.
    pub fn message_verdicts(&self) -> impl Iterator<Item = (MessageVerdictKind, u64)> + '_ {
        MessageVerdictKind::ALL
            .into_iter()
            .enumerate()
            .map(|(index, kind)| {
                let count = self
                    .message_verdicts
                    .iter()
                    .filter_map(|counts| counts.get(index))
                    .map(|counter| counter.load(Ordering::Relaxed))
                    .sum();
                (kind, count)
            })
    }

    /// Upgrade plugin verdicts by kind.
    pub fn upgrade_verdicts(&self) -> impl Iterator<Item = (UpgradeVerdictKind, u64)> + '_ {
        UpgradeVerdictKind::ALL
            .into_iter()
            .zip(&self.upgrade_verdicts)
            .map(|(kind, counter)| (kind, counter.load(Ordering::Relaxed)))
    }

    /// Count a connection closed at its expiry.
    pub fn expired(&self, by: ExpiredBy) {
        if let Some(counter) = self.expired.get(by as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections closed at their expiry, by cause.
    pub fn expirations(&self) -> impl Iterator<Item = (ExpiredBy, u64)> + '_ {
        ExpiredBy::ALL
            .into_iter()
            .zip(&self.expired)
            .map(|(by, counter)| (by, counter.load(Ordering::Relaxed)))
    }

    /// Count a connection ended with the close `code` sent or received
    /// first (none: no close frame).
    pub fn closed(&self, code: Option<u16>) {
        let Ok(mut closes) = self.closes.lock() else {
            return;
        };
        let key = code.map_or(CloseKey::NoCode, CloseKey::Code);
        if let Some(count) = closes.get_mut(&key) {
            *count += 1;
        } else if closes.len() < MAX_CLOSE_CODES {
            closes.insert(key, 1);
        } else {
            *closes.entry(CloseKey::Other).or_default() += 1;
        }
    }

    /// Connections ended, by close code label, in the labels' order.
    pub fn closes(&self) -> Vec<(String, u64)> {
        let Ok(closes) = self.closes.lock() else {
            return Vec::new();
        };
        let labelled: BTreeMap<String, u64> = closes
            .iter()
            .map(|(key, count)| (key.label(), *count))
            .collect();
        labelled.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_CLOSE_CODES, TrafficCounters};

    #[test]
    fn close_codes_stay_bounded() {
        let counters = TrafficCounters::default();
        counters.closed(None);
        for code in 3000..3000 + MAX_CLOSE_CODES as u16 + 10 {
            counters.closed(Some(code));
        }
        let closes = counters.closes();
        assert_eq!(closes.len(), MAX_CLOSE_CODES + 1);
        assert!(closes.contains(&("none".to_string(), 1)));
        assert!(closes.contains(&("other".to_string(), 11)));
    }
}
