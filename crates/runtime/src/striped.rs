//! Values that every I/O worker updates for every message (counters, the
//! pools' idle instances), kept in one copy per worker thread, each on a
//! cache line of its own: two workers on two cores never write to the same
//! line, and readers (`/metrics`, the console) combine the copies.
//!
//! A thread's stripe is its worker index, claimed when the worker starts
//! ([`claim_stripe`]); every other thread (offload threads, the main
//! runtime, tests' threads) uses one last stripe of their own, so they
//! never write to a worker's. With more workers than stripes, workers share
//! a stripe (still correct, as every update is atomic; only slower).

use std::cell::Cell;

/// Most stripes a value gives the workers (one more is for other threads).
pub const MAX_WORKER_STRIPES: usize = 16;

thread_local! {
    /// The worker index this thread claimed, if it is a worker.
    static CLAIMED: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The number of stripes a value has on this machine: one per core (at
/// most [`MAX_WORKER_STRIPES`]) for the workers, and one for every other
/// thread.
pub fn stripe_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_WORKER_STRIPES)
        + 1
}

/// Make worker `index`'s stripe this thread's, so that workers 0..n update
/// stripes 0..n and never one another's.
pub fn claim_stripe(index: usize) {
    CLAIMED.with(|claimed| claimed.set(Some(index)));
}

/// One copy, alone on its cache line (128 bytes: adjacent-line prefetch
/// pulls pairs of 64-byte lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A value kept in one copy per worker thread.
#[derive(Debug)]
pub struct Striped<T> {
    /// Stripe 0 (there is always one).
    first: Padded<T>,
    /// Stripes 1 and up.
    rest: Box<[Padded<T>]>,
}

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Self {
            first: Padded::default(),
            rest: (1..stripe_count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> Striped<T> {
    /// How many copies there are (at least one).
    pub fn len(&self) -> usize {
        self.rest.len() + 1
    }

    /// Always false: there is at least one copy.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The index of this thread's copy: a worker's own, or the last one
    /// for every thread that is not a worker.
    pub fn own_index(&self) -> usize {
        let others = self.rest.len();
        match CLAIMED.with(Cell::get) {
            Some(worker) if others > 0 => worker % others,
            _ => others,
        }
    }

    /// This thread's copy.
    pub fn own(&self) -> &T {
        self.get(self.own_index()).unwrap_or(&self.first.0)
    }

    /// The copy at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&T> {
        match index.checked_sub(1) {
            None => Some(&self.first.0),
            Some(rest) => self.rest.get(rest).map(|padded| &padded.0),
        }
    }

    /// Every copy, in stripe order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.first.0).chain(self.rest.iter().map(|padded| &padded.0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn workers_update_their_own_copy_and_other_threads_the_last() {
        let striped: Striped<AtomicU64> = Default::default();
        let workers = striped.len() - 1;
        std::thread::scope(|scope| {
            for worker in 0..workers {
                let striped = &striped;
                scope.spawn(move || {
                    claim_stripe(worker);
                    for _ in 0..=worker {
                        striped.own().fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            for _ in 0..2 {
                scope.spawn(|| striped.own().fetch_add(100, Ordering::Relaxed));
            }
        });
        let counts: Vec<u64> = striped
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        let mut expected: Vec<u64> = (1..=workers as u64).collect();
        expected.push(200);
        assert_eq!(counts, expected);
    }

    #[test]
    fn a_copy_is_alone_on_its_cache_line() {
        let striped: Striped<AtomicU64> = Default::default();
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 128);
        let addresses: Vec<usize> = striped.iter().map(|c| c as *const _ as usize).collect();
        for (i, a) in addresses.iter().enumerate() {
            assert_eq!(a % 128, 0, "copy {i} starts a 128-byte line");
            for b in addresses.iter().skip(i + 1) {
                assert!(
                    a.abs_diff(*b) >= 128,
                    "copies {a:#x} and {b:#x} share a line"
                );
            }
        }
    }
}
