//! Drain: hand clients over to other replicas instead of dropping them.
//!
//! On SIGTERM or `POST /api/drain` the gateway stops being ready (`/readyz`
//! 503) at once but keeps accepting for `drain-grace`, while load balancers
//! notice; then it stops accepting and closes every connection with 1012
//! (Service Restart) to the client and 1001 to the upstream, each at its own
//! instant spread over `drain-window`, so that clients do not all reconnect
//! at once. It is done when the last connection is gone, or the window and
//! `shutdown-timeout` (for the close handshakes) are over.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::signal::Signal;

/// Where a drain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainPhase {
    /// No drain: serving.
    Serving = 0,
    /// Not ready, still accepting (`drain-grace`).
    Grace = 1,
    /// Not accepting; connections are closed over `drain-window`.
    Closing = 2,
    /// Every connection is gone, or the time for them is over.
    Done = 3,
}

impl DrainPhase {
    /// Its name, for logs and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Grace => "grace",
            Self::Closing => "closing",
            Self::Done => "done",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Grace,
            2 => Self::Closing,
            3 => Self::Done,
            _ => Self::Serving,
        }
    }
}

/// A gateway's drain, shared by the drain task and every relay.
#[derive(Debug, Default)]
pub struct Drain {
    phase: AtomicU8,
    /// When closing began, and the window the closes are spread over.
    closing_from: OnceLock<(Instant, Duration)>,
    /// Fired when closing begins: each relay then closes at its instant.
    closing: Signal,
    /// Cancelled when the drain is done.
    done: CancellationToken,
    /// Connections closed with 1012 by the drain.
    closed: AtomicU64,
}

impl Drain {
    /// The phase now.
    pub fn phase(&self) -> DrainPhase {
        DrainPhase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Begin: false when a drain had begun already.
    pub(crate) fn begin(&self) -> bool {
        self.phase
            .compare_exchange(
                DrainPhase::Serving as u8,
                DrainPhase::Grace as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The grace is over: connections close from now, over `window`.
    pub(crate) fn start_closing(&self, window: Duration) {
        let _ = self.closing_from.set((Instant::now(), window));
        self.phase
            .store(DrainPhase::Closing as u8, Ordering::Release);
        self.closing.fire();
    }

    /// Every connection is gone, or the time for them is over.
    pub(crate) fn finish(&self) {
        self.phase.store(DrainPhase::Done as u8, Ordering::Release);
        self.done.cancel();
    }

    /// Fired when closing begins.
    pub(crate) fn closing(&self) -> &Signal {
        &self.closing
    }

    /// When connection `id` closes: its place in the window, from a hash
    /// of its id (so closes are spread evenly and independently of when
    /// connections opened). `None` before closing begins.
    pub(crate) fn close_at(&self, id: u64) -> Option<Instant> {
        let (from, window) = self.closing_from.get()?;
        Some(*from + window.mul_f64(spread(id)))
    }

    /// Count a connection closed by the drain.
    pub(crate) fn count_close(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections closed with 1012 by the drain.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Wait until the drain is done.
    pub async fn done(&self) {
        self.done.cancelled().await;
    }
}

/// A fraction in [0, 1) from `id`, spread evenly over consecutive ids
/// (Fibonacci hashing).
fn spread(id: u64) -> f64 {
    let mixed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_spread_over_the_whole_window() {
        let mut buckets = [0u32; 10];
        for id in 1..=1000u64 {
            let fraction = spread(id);
            assert!((0.0..1.0).contains(&fraction));
            buckets[(fraction * 10.0) as usize] += 1;
        }
        // Every tenth of the window gets its share (100 ± 10).
        assert!(
            buckets.iter().all(|n| (90..=110).contains(n)),
            "{buckets:?}"
        );
    }

    #[tokio::test]
    async fn a_drain_begins_once_and_each_connection_gets_an_instant_in_the_window() {
        let drain = Drain::default();
        assert_eq!(drain.close_at(1), None);
        assert!(drain.begin());
        assert!(!drain.begin());
        assert_eq!(drain.phase(), DrainPhase::Grace);
        let before = Instant::now();
        drain.start_closing(Duration::from_secs(10));
        assert!(drain.closing().is_fired());
        let at = drain.close_at(7).unwrap_or(before);
        assert!(at >= before && at <= Instant::now() + Duration::from_secs(10));
        drain.finish();
        drain.done().await;
        assert_eq!(drain.phase(), DrainPhase::Done);
    }
}
