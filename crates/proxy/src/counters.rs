//! Traffic counters for `/metrics`: upgrades by endpoint and status,
//! messages and bytes per direction, verdicts by kind.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Message verdict kinds, in the order of [`TrafficCounters::message_verdicts`].
pub const MESSAGE_VERDICTS: [&str; 6] = ["forward", "replace", "drop", "close", "reply", "fault"];
/// Upgrade verdict kinds, in the order of [`TrafficCounters::upgrade_verdicts`].
pub const UPGRADE_VERDICTS: [&str; 5] = ["continue", "modify", "reject", "route", "fault"];

/// Counters shared by every connection of a gateway.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    /// Upgrade answers by (endpoint, status).
    upgrades: Mutex<BTreeMap<(String, u16), u64>>,
    /// Messages read from clients, then from upstreams.
    pub messages: [AtomicU64; 2],
    /// Payload bytes read from clients, then from upstreams.
    pub bytes: [AtomicU64; 2],
    /// Message plugin verdicts by kind ([`MESSAGE_VERDICTS`]).
    pub message_verdicts: [AtomicU64; 6],
    /// Upgrade plugin verdicts by kind ([`UPGRADE_VERDICTS`]).
    pub upgrade_verdicts: [AtomicU64; 5],
}

impl TrafficCounters {
    /// Count an upgrade answered with `status` on `endpoint`.
    pub fn upgrade(&self, endpoint: &str, status: u16) {
        if let Ok(mut upgrades) = self.upgrades.lock() {
            *upgrades.entry((endpoint.to_string(), status)).or_default() += 1;
        }
    }

    /// Upgrade answers by (endpoint, status).
    pub fn upgrades(&self) -> Vec<((String, u16), u64)> {
        self.upgrades
            .lock()
            .map(|u| u.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Count one message of `bytes` payload bytes read from the client
    /// (`from_client`) or the upstream.
    pub fn message(&self, from_client: bool, bytes: usize) {
        let side = usize::from(!from_client);
        self.messages[side].fetch_add(1, Ordering::Relaxed);
        self.bytes[side].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn message_verdict(&self, kind: usize) {
        if let Some(counter) = self.message_verdicts.get(kind) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn upgrade_verdict(&self, kind: usize) {
        if let Some(counter) = self.upgrade_verdicts.get(kind) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}
