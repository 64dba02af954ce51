//! Places held per key for as long as a connection stays open
//! (`quota.hold`): the open connections of one user, across replicas.
//!
//! Each gauge counts the places held here and, as of the last
//! reconciliation, the places the other live replicas hold. A hold is
//! answered from those at once. With other replicas counting, a replica
//! admits at most its share of what the fleet left at the last
//! reconciliation, rounded up (so at least one place while any is left),
//! and a replica whose view of the key was not read lately (a key new
//! here, or unused for longer than the read span) admits one place before
//! its next reconciliation of it. So replicas racing for a key's last
//! places admit at most `replicas − 1` over the limit, within one
//! reconciliation interval. The price: past its share, a replica refuses
//! (with a `retry-after-ms` of one round) until it hears from the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::bucket::{Grant, SHARE_RETRY_MS};

/// How long a gauge nobody holds or asks for is kept (its fleet view with it).
pub(crate) const IDLE_KEEP_MS: u64 = 10_000;

/// How long after its last hold a gauge's fleet view is still read each round.
pub(crate) const READ_SPAN_MS: u64 = 1_000;

/// One key's places.
#[derive(Debug)]
pub(crate) struct Gauge {
    /// Places held here now.
    local: u64,
    /// Places the other replicas held at the last reconciliation.
    others: u64,
    /// With other replicas counting: what this replica may still admit
    /// before the next reconciliation. None: alone, or Redis unreachable.
    allowance: Option<u64>,
    /// The limit of the last hold.
    limit: u64,
    /// `local` changed since it was last written to Redis.
    pub(crate) changed: bool,
    /// When a hold was last asked for, Unix ms.
    last_used_ms: u64,
    /// The owning plugin's key count, given back on drop.
    keys: Arc<AtomicUsize>,
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.keys.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gauge {
    /// No place held yet, counted in `keys`.
    pub(crate) fn new(now_ms: u64, keys: Arc<AtomicUsize>) -> Self {
        Self {
            local: 0,
            others: 0,
            allowance: None,
            limit: 0,
            changed: false,
            last_used_ms: now_ms,
            keys,
        }
    }

    /// Hold one place of `limit` if one is free. `replicas` count through
    /// Redis (1: alone, or Redis unreachable: then only this replica's
    /// places count).
    pub(crate) fn hold(&mut self, limit: u64, replicas: u64, now_ms: u64) -> Grant {
        // A view not read lately (a key new here, or unused for longer than
        // the read span) may be stale: the other replicas may hold every
        // place already. Until the next reconciliation, admit one.
        let stale = self.limit == 0 || self.last_used_ms + READ_SPAN_MS < now_ms;
        if stale && replicas > 1 {
            self.allowance = Some(1);
        }
        self.last_used_ms = now_ms;
        self.limit = limit;
        let others = if replicas > 1 { self.others } else { 0 };
        let counted = self.local + others;
        if counted >= limit {
            return Grant {
                allowed: false,
                remaining: 0,
                retry_after_ms: 0,
            };
        }
        if replicas > 1 && self.allowance == Some(0) {
            // This replica's share is spent until the next reconciliation.
            return Grant {
                allowed: false,
                remaining: 0,
                retry_after_ms: SHARE_RETRY_MS,
            };
        }
        if replicas > 1
            && let Some(allowance) = &mut self.allowance
        {
            *allowance -= 1;
        }
        self.local += 1;
        self.changed = true;
        Grant {
            allowed: true,
            remaining: limit - counted - 1,
            retry_after_ms: 0,
        }
    }

    /// Give one place back.
    pub(crate) fn release(&mut self) {
        self.local = self.local.saturating_sub(1);
        self.changed = true;
    }

    /// Places held here now.
    pub(crate) fn local(&self) -> u64 {
        self.local
    }

    /// Whether its fleet view should be read this round: a hold was asked
    /// for lately (a key nobody asks for needs no fresh view).
    pub(crate) fn is_read(&self, now_ms: u64) -> bool {
        self.last_used_ms + READ_SPAN_MS >= now_ms
    }

    /// Whether it can go: nothing held, nothing to write, unused lately.
    pub(crate) fn is_spent(&self, now_ms: u64) -> bool {
        self.local == 0 && !self.changed && self.last_used_ms + IDLE_KEEP_MS < now_ms
    }

    /// The other replicas hold `others` places, as Redis answered, and
    /// `replicas` count: this replica's share of what is left.
    pub(crate) fn reconcile(&mut self, others: u64, replicas: u64) {
        self.others = others;
        self.allowance = (replicas > 1 && self.limit > 0).then(|| {
            // Shares rounded up: together at most `replicas − 1` over.
            let left = self.limit.saturating_sub(self.local + others);
            left.div_ceil(replicas)
        });
    }
}

/// A place held in a gauge; dropping it (when its connection closes) gives
/// the place back.
#[derive(Debug)]
pub struct Hold {
    pub(crate) quotas: Arc<crate::Quotas>,
    pub(crate) name: String,
}

impl Hold {
    /// The gauge's name: `<plugin>/<key>`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.quotas.release(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> Gauge {
        let keys = Arc::new(AtomicUsize::new(1));
        Gauge::new(0, keys)
    }

    #[test]
    fn alone_a_gauge_admits_up_to_its_limit_and_a_release_frees_a_place() {
        let mut gauge = gauge();
        assert_eq!(gauge.hold(2, 1, 0).remaining, 1);
        assert!(gauge.hold(2, 1, 0).allowed);
        assert!(!gauge.hold(2, 1, 0).allowed);
        gauge.release();
        assert!(gauge.hold(2, 1, 0).allowed);
        assert_eq!(gauge.local(), 2);
    }

    #[test]
    fn other_replicas_places_count_and_each_replica_takes_its_share() {
        let mut gauge = gauge();
        // New, three replicas: one place until the first reconciliation,
        // then a third of what the fleet left (5), rounded up.
        assert!(gauge.hold(6, 3, 0).allowed);
        let share_spent = gauge.hold(6, 3, 0);
        assert!(!share_spent.allowed && share_spent.retry_after_ms > 0);
        gauge.reconcile(0, 3);
        assert!(gauge.hold(6, 3, 0).allowed);
        assert!(gauge.hold(6, 3, 0).allowed);
        assert!(!gauge.hold(6, 3, 0).allowed);
        gauge.release();
        // The others hold 4: the fleet is full.
        gauge.reconcile(4, 3);
        assert!(!gauge.hold(6, 3, 0).allowed);
        // One place freed here: one left for the fleet, and this replica
        // may take it.
        gauge.release();
        gauge.reconcile(4, 3);
        assert!(gauge.hold(6, 3, 0).allowed);
        assert!(!gauge.hold(6, 3, 0).allowed);
        // Redis unreachable (counted as alone): only local places count.
        assert!(gauge.hold(6, 1, 0).allowed);
    }

    #[test]
    fn a_gauge_is_kept_while_held_changed_or_used_lately() {
        let mut gauge = gauge();
        assert!(gauge.hold(1, 1, 0).allowed);
        assert!(!gauge.is_spent(IDLE_KEEP_MS + 1));
        gauge.release();
        gauge.changed = false;
        assert!(gauge.is_read(READ_SPAN_MS));
        assert!(!gauge.is_read(READ_SPAN_MS + 1));
        assert!(gauge.is_spent(IDLE_KEEP_MS + 1));
    }
}
