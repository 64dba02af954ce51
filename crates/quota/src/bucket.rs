//! One bucket: a sliding-window count over fixed windows, split into what
//! the fleet had taken at the last reconciliation and what this process
//! has taken since.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The answer to a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Whether the units were taken.
    pub allowed: bool,
    /// Units left after this take (0 when refused).
    pub remaining: u64,
    /// When refused: milliseconds until the units could be taken if nothing
    /// else takes any. 0 when allowed.
    pub retry_after_ms: u64,
}

/// Units of one window being pushed to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Units {
    /// The window's index (Unix ms / window length).
    pub window: u64,
    /// Units taken here in it.
    pub units: u64,
}

/// What one reconciliation pushes for a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    /// The window length, in ms.
    pub window_ms: u64,
    /// The current window and the units taken here since the last push (may be 0: then
    /// the push only reads the fleet's totals).
    pub current: Units,
    /// Units taken here in the previous window and not pushed yet.
    pub carry: Option<Units>,
}

/// The fleet's totals, as Redis answered a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// The pushed window's total, ours included.
    pub current: u64,
    /// The window before it.
    pub previous: u64,
}

/// The `retry-after` of a take refused because this replica's share is
/// spent: about one reconciliation.
pub(crate) const SHARE_RETRY_MS: u64 = 10;

/// One bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    window_ms: u64,
    /// Index of the current window.
    window: u64,
    /// The previous window's total (the fleet's, as last known).
    previous: u64,
    /// The current window's total as Redis last answered (ours pushed included).
    current: u64,
    /// Taken here in the current window since the last push.
    pending: u64,
    /// Being pushed now.
    in_flight: Option<Units>,
    /// Taken here in the previous window, not pushed yet.
    carry: Option<Units>,
    /// When it was last taken from, Unix ms.
    last_take_ms: u64,
    /// The limit of its last take.
    limit: u64,
    /// With other replicas counting too: what this replica may still take
    /// before the next reconciliation, its share of what the fleet left at
    /// the last one. None: no share (one replica, or Redis unreachable).
    allowance: Option<u64>,
    /// The owning plugin's bucket count, given back on drop.
    held: Arc<AtomicUsize>,
}

impl Drop for Bucket {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Bucket {
    /// An empty bucket of `window_ms` windows, counted in `held`.
    pub(crate) fn new(window_ms: u32, now_ms: u64, held: Arc<AtomicUsize>) -> Self {
        let window_ms = u64::from(window_ms.max(1));
        Self {
            window_ms,
            window: now_ms / window_ms,
            previous: 0,
            current: 0,
            pending: 0,
            in_flight: None,
            carry: None,
            last_take_ms: now_ms,
            limit: 0,
            allowance: None,
            held,
        }
    }

    /// Move to the window `now_ms` is in.
    fn roll(&mut self, now_ms: u64) {
        let window = now_ms / self.window_ms;
        if window <= self.window {
            return;
        }
        let in_flight_here = self
            .in_flight
            .filter(|u| u.window == self.window)
            .map_or(0, |u| u.units);
        if window == self.window + 1 {
            self.previous = self.current + self.pending + in_flight_here;
            self.carry = (self.pending > 0).then_some(Units {
                window: self.window,
                units: self.pending,
            });
        } else {
            self.previous = 0;
            self.carry = None;
        }
        self.window = window;
        self.current = 0;
        self.pending = 0;
    }

    /// Units counted in the current window: the fleet's as last known, plus ours since.
    fn counted(&self) -> u64 {
        let in_flight = self
            .in_flight
            .filter(|u| u.window == self.window)
            .map_or(0, |u| u.units);
        self.current + self.pending + in_flight
    }

    /// The sliding-window estimate at `now_ms`: the previous window's count
    /// weighted by how much of it the sliding window still covers, plus
    /// this window's.
    fn estimate(&self, now_ms: u64) -> f64 {
        let into = (now_ms % self.window_ms) as f64 / self.window_ms as f64;
        self.previous as f64 * (1.0 - into) + self.counted() as f64
    }

    /// Take `units` if the estimate leaves room under `limit`; `replicas`
    /// count through Redis (1: alone, or Redis unreachable).
    pub(crate) fn take(
        &mut self,
        units: u64,
        limit: u64,
        window_ms: u32,
        now_ms: u64,
        replicas: u64,
    ) -> Grant {
        if u64::from(window_ms) != self.window_ms {
            // The plugin changed the window: start over with the new one.
            *self = Self::new(window_ms, now_ms, self.held.clone());
            self.held.fetch_add(1, Ordering::Relaxed);
        }
        self.roll(now_ms);
        self.last_take_ms = now_ms;
        if self.limit == 0 && replicas > 1 {
            // A bucket new here: until the first reconciliation, take only
            // this replica's share of a whole limit.
            self.allowance = Some(limit / replicas);
        }
        self.limit = limit;
        let after = self.estimate(now_ms) + units as f64;
        if let Some(allowance) = self.allowance
            && units > allowance
            && after <= limit as f64
        {
            // This replica's share is spent until the next reconciliation.
            return Grant {
                allowed: false,
                remaining: 0,
                retry_after_ms: SHARE_RETRY_MS,
            };
        }
        if after <= limit as f64 {
            if let Some(allowance) = &mut self.allowance {
                *allowance -= units;
            }
            self.pending += units;
            return Grant {
                allowed: true,
                remaining: (limit as f64 - after).floor() as u64,
                retry_after_ms: 0,
            };
        }
        Grant {
            allowed: false,
            remaining: 0,
            retry_after_ms: self.retry_after(units, limit, now_ms),
        }
    }

    /// Milliseconds until `units` fit under `limit`, if nothing else is taken.
    fn retry_after(&self, units: u64, limit: u64, now_ms: u64) -> u64 {
        let window_start = self.window * self.window_ms;
        let counted = self.counted();
        let fraction_needed = |previous: u64, room: u64| {
            // previous × (1 − f) ≤ room  ⇔  f ≥ 1 − room / previous
            if previous == 0 {
                0.0
            } else {
                (1.0 - room as f64 / previous as f64).max(0.0)
            }
        };
        let at = if counted + units <= limit {
            let f = fraction_needed(self.previous, limit - counted - units);
            window_start + (f * self.window_ms as f64).ceil() as u64
        } else if units <= limit {
            let f = fraction_needed(counted, limit - units);
            window_start + self.window_ms + (f * self.window_ms as f64).ceil() as u64
        } else {
            // Never fits: say "a window from now" rather than forever.
            now_ms + self.window_ms
        };
        at.saturating_sub(now_ms).max(1)
    }

    /// Start a push: what was taken here since the last one, if the bucket
    /// was used in its last window (else nothing: it is left to expire).
    pub(crate) fn start_push(&mut self, now_ms: u64) -> Option<Push> {
        self.roll(now_ms);
        if self.in_flight.is_some() {
            return None;
        }
        let recently_used = self.last_take_ms + self.window_ms >= now_ms;
        if !recently_used && self.pending == 0 && self.carry.is_none() {
            return None;
        }
        let current = Units {
            window: self.window,
            units: std::mem::take(&mut self.pending),
        };
        self.in_flight = Some(current);
        Some(Push {
            window_ms: self.window_ms,
            current,
            carry: self.carry.take(),
        })
    }

    /// Finish `push` at `now_ms`: with the fleet's totals (and how many
    /// replicas count), or (Redis failed) put what it carried back to be
    /// pushed next time and count locally.
    pub(crate) fn finish_push(
        &mut self,
        push: Push,
        totals: Option<Totals>,
        replicas: u64,
        now_ms: u64,
    ) {
        self.in_flight = None;
        self.finish_totals(push, totals);
        self.roll(now_ms);
        // Split what the fleet left among the replicas: together they take
        // at most that much before they next hear from Redis.
        self.allowance = match totals {
            Some(_) if replicas > 1 => {
                let left = (self.limit as f64 - self.estimate(now_ms)).max(0.0);
                Some((left / replicas as f64).floor() as u64)
            }
            _ => None,
        };
    }

    fn finish_totals(&mut self, push: Push, totals: Option<Totals>) {
        match totals {
            Some(totals) if push.current.window == self.window => {
                self.current = totals.current;
                self.previous = totals.previous;
            }
            Some(totals) if push.current.window + 1 == self.window => {
                self.previous = totals.current;
            }
            Some(_) => {}
            None if push.current.window == self.window => {
                self.pending += push.current.units;
                self.carry = push.carry.or(self.carry);
            }
            None if push.current.window + 1 == self.window && push.current.units > 0 => {
                self.carry = Some(push.current);
            }
            None => {}
        }
    }

    /// Whether it no longer matters: unused for two windows and nothing
    /// left to push.
    pub(crate) fn is_spent(&self, now_ms: u64) -> bool {
        self.last_take_ms + 2 * self.window_ms < now_ms
            && self.pending == 0
            && self.in_flight.is_none()
            && self.carry.is_none()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bucket(now: u64) -> Bucket {
        let held = Arc::new(AtomicUsize::new(1));
        Bucket::new(1000, now, held)
    }

    #[test]
    fn a_window_admits_its_limit_then_refuses_with_the_time_to_wait() {
        let mut b = bucket(10_000);
        for i in 0..10 {
            let grant = b.take(1, 10, 1000, 10_000 + i, 1);
            assert!(grant.allowed, "{i}");
            assert_eq!(grant.remaining, 9 - i);
        }
        let refused = b.take(1, 10, 1000, 10_100, 1);
        assert!(!refused.allowed);
        // Full this window: room once the sliding window has slid past
        // one tenth of it into the next (10 × (1 − f) ≤ 9 ⇒ f ≥ 0.1).
        assert_eq!(refused.retry_after_ms, 11_100 - 10_100);
        assert!(!b.take(1, 10, 1000, 11_050, 1).allowed);
        assert!(b.take(1, 10, 1000, 11_100, 1).allowed);
    }

    #[test]
    fn the_previous_window_weighs_less_as_the_window_slides() {
        let mut b = bucket(0);
        for _ in 0..10 {
            assert!(b.take(1, 10, 1000, 500, 1).allowed);
        }
        // Half-way into the next window, the previous one counts for 5.
        for _ in 0..5 {
            assert!(b.take(1, 10, 1000, 1500, 1).allowed);
        }
        assert!(!b.take(1, 10, 1000, 1500, 1).allowed);
        // Two windows on, nothing is left of either.
        for _ in 0..10 {
            assert!(b.take(1, 10, 1000, 3000, 1).allowed);
        }
    }

    #[test]
    fn pushes_carry_what_was_taken_and_totals_replace_the_local_view() {
        let mut b = bucket(0);
        assert!(b.take(3, 10, 1000, 100, 1).allowed);
        let push = b.start_push(200).unwrap();
        assert_eq!(
            push.current,
            Units {
                window: 0,
                units: 3
            }
        );
        // Taken while the push is in flight: still counted.
        assert!(b.take(2, 10, 1000, 210, 1).allowed);
        // Another replica took 4: the fleet's total is 7 (+ our 2 pending).
        b.finish_push(
            push,
            Some(Totals {
                current: 7,
                previous: 0,
            }),
            1,
            215,
        );
        assert_eq!(b.take(1, 10, 1000, 220, 1).remaining, 0);
        assert!(!b.take(1, 10, 1000, 230, 1).allowed);
        // A failed push puts its units back to be pushed next time.
        let push = b.start_push(240).unwrap();
        assert_eq!(push.current.units, 3);
        b.finish_push(push, None, 1, 245);
        assert_eq!(b.start_push(250).unwrap().current.units, 3);
    }

    #[test]
    fn replicas_split_what_the_fleet_left() {
        let mut b = bucket(0);
        assert!(b.take(1, 30, 1000, 100, 1).allowed);
        let push = b.start_push(110).unwrap();
        // The fleet took 6 (ours included); 24 left, three replicas: 8 each.
        b.finish_push(
            push,
            Some(Totals {
                current: 6,
                previous: 0,
            }),
            3,
            120,
        );
        for _ in 0..8 {
            assert!(b.take(1, 30, 1000, 130, 1).allowed);
        }
        let refused = b.take(1, 30, 1000, 130, 1);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ms, SHARE_RETRY_MS);
        // Redis unreachable: count locally, up to the whole limit.
        let push = b.start_push(140).unwrap();
        b.finish_push(push, None, 3, 150);
        assert!(b.take(1, 30, 1000, 160, 1).allowed);
    }
}
