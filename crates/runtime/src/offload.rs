//! Slow plugins off the I/O workers.
//!
//! Plugin calls are synchronous: inline, a call runs on the I/O worker
//! thread that read the message, and a plugin that legally spends most of
//! its deadline on every call would take those threads (and every other
//! endpoint's latency) with it. Each plugin therefore keeps a moving
//! average of its recent call times. Calls are timed by the wall clock, so
//! a call preempted on a busy host looks slow: the average that decides
//! counts each call at most [`SAMPLE_CAP`] times `offload-above`, so one
//! such call does not move a plugin, while a plugin slow on every call, or
//! on one call in three, does. While that average is above
//! the plugin's `offload-above`, its calls are handed to a few threads of its own
//! (`offload-threads`, started on first use, at a lower OS priority) and
//! the caller awaits the verdict. At most `offload-queue` calls wait for a
//! thread; one more is shed (refused at once, never queued).
//!
//! Fast plugins never leave the inline path: deciding costs one relaxed
//! load per call. While a plugin's average stays under a quarter of its
//! `offload-above`, the pool times about one call in
//! [`TIME_ONE_CALL_IN`](crate::pool::TIME_ONE_CALL_IN), drawn at random
//! (unless the connection's chain time is recorded), and the call after
//! an untimed one that ran across an epoch tick (every 5 ms: a call of
//! 20 ms always does, one of 1 ms one time in five). A timed call of more
//! than twice `offload-above` lifts the average past that quarter (a
//! slower one of under twice takes two), and from then on every call is
//! timed. A plugin slow from its first call is therefore seen by its
//! second or third; one of about `offload-above` within the calls it
//! takes to cross a tick or be sampled, each bounded by its deadline.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

/// The niceness of offload threads: when the machine is busy, the I/O
/// workers (niceness 0) win the CPU over slow plugins.
pub const OFFLOAD_NICE: i32 = 10;

/// Weight of the newest sample in the moving average: 1/8.
const EWMA_SHIFT: u32 = 3;

/// The most one call counts for in the average that decides, in multiples
/// of `offload-above`: from rest, three slow timed calls in a row move a
/// plugin (0.5, 0.94, 1.32 times `offload-above`), and so does one slow
/// call in three for as long as it lasts (1.5 times); one in ten does not
/// (0.68). Calls are timed by sample until the first slow one is seen
/// (the module's note).
pub const SAMPLE_CAP: u64 = 4;

/// How a plugin's calls leave the I/O workers, as configured.
#[derive(Debug, Clone, Copy)]
pub struct OffloadSettings {
    /// Calls go off the I/O workers while the recent average is above this.
    pub above: Duration,
    /// Threads that run offloaded calls.
    pub threads: usize,
    /// Offloaded calls that may wait for a thread.
    pub queue: usize,
}

type Job = Box<dyn FnOnce() + Send>;

/// One plugin's offload state: its recent call time, its threads and the
/// calls waiting for them.
pub(crate) struct Offload {
    plugin: Arc<str>,
    settings: OffloadSettings,
    above_ns: u64,
    /// Moving average of recent call times, in nanoseconds (what the
    /// metrics show).
    recent_ns: AtomicU64,
    /// The same with each call counted at most `cap_ns`: what decides.
    deciding_ns: AtomicU64,
    /// [`SAMPLE_CAP`] times `above_ns`.
    cap_ns: u64,
    /// An untimed call ran across an epoch tick: time the next one.
    suspected: AtomicBool,
    /// Offloaded calls queued or running.
    pending: Arc<AtomicUsize>,
    /// The threads' queue, made with the threads on the first offloaded call.
    queue: OnceLock<Option<Sender<Job>>>,
}

/// Why a call could not be offloaded.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Every offload thread is busy and `offload-queue` calls are waiting.
    QueueFull(OffloadSettings),
    /// No offload thread could be started.
    NoThreads,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueFull(settings) => write!(
                f,
                "shed: its {} offload threads are busy and {} calls (offload-queue) are waiting",
                settings.threads, settings.queue
            ),
            Self::NoThreads => write!(f, "shed: no offload thread could be started"),
        }
    }
}

/// A place among an offload's pending calls, given back when dropped.
pub(crate) struct Ticket {
    pending: Arc<AtomicUsize>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Offload {
    /// An offload for plugin `plugin`; no thread starts until a call is offloaded.
    pub(crate) fn new(plugin: Arc<str>, settings: OffloadSettings) -> Self {
        let above_ns = u64::try_from(settings.above.as_nanos()).unwrap_or(u64::MAX);
        Self {
            plugin,
            settings,
            above_ns,
            recent_ns: AtomicU64::new(0),
            deciding_ns: AtomicU64::new(0),
            cap_ns: above_ns.saturating_mul(SAMPLE_CAP),
            suspected: AtomicBool::new(false),
            pending: Arc::default(),
            queue: OnceLock::new(),
        }
    }

    /// Fold one call's duration into the moving averages: as it is into
    /// the one the metrics show, at most [`SAMPLE_CAP`] times
    /// `offload-above` into the one that decides, so one call that the
    /// host preempted does not move a fast plugin. Concurrent updates may
    /// lose one another's sample: an estimate, not a count.
    pub(crate) fn record(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        fold(&self.recent_ns, sample);
        fold(&self.deciding_ns, sample.min(self.cap_ns));
    }

    /// The moving average of recent call times.
    pub(crate) fn recent(&self) -> Duration {
        Duration::from_nanos(self.recent_ns.load(Ordering::Relaxed))
    }

    /// Whether calls should leave the I/O workers now.
    pub(crate) fn is_slow(&self) -> bool {
        self.deciding_ns.load(Ordering::Relaxed) > self.above_ns
    }

    /// Whether the next call is timed whatever the sample: recent calls
    /// took more than a quarter of `offload-above` (then every call is, so
    /// the decision sees each one), or an untimed call ran across an epoch
    /// tick ([`Self::suspect`]; this call takes that).
    pub(crate) fn wants_every_call_timed(&self) -> bool {
        self.deciding_ns.load(Ordering::Relaxed) > self.above_ns / 4
            || (self.suspected.load(Ordering::Relaxed)
                && self.suspected.swap(false, Ordering::Relaxed))
    }

    /// An untimed call ran across an epoch tick: it may have been slow, so
    /// the next call is timed.
    pub(crate) fn suspect(&self) {
        self.suspected.store(true, Ordering::Relaxed);
    }

    /// Reserve a place for one offloaded call, or say why there is none.
    pub(crate) fn reserve(&self) -> Result<Ticket, Refusal> {
        if self.sender().is_none() {
            return Err(Refusal::NoThreads);
        }
        let capacity = self.settings.threads.saturating_add(self.settings.queue);
        let taken = self.pending.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket {
            pending: self.pending.clone(),
        };
        if taken >= capacity {
            return Err(Refusal::QueueFull(self.settings));
        }
        Ok(ticket)
    }

    /// Run `job` on an offload thread, holding `ticket` until it is done;
    /// `None` once the job is lost (no thread took it, or it panicked).
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        ticket: Ticket,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = job();
            // The place is free before the caller learns the result, so
            // its next call finds it free.
            drop(ticket);
            // The caller may be gone (its connection closed): nobody to tell.
            let _ = done.send(result);
        });
        self.sender()?.send(job).ok()?;
        result.await.ok()
    }

    /// The threads' queue, starting the threads on first use.
    fn sender(&self) -> Option<&Sender<Job>> {
        self.queue.get_or_init(|| self.start()).as_ref()
    }

    /// Start the offload threads; `None` if not one could be started.
    fn start(&self) -> Option<Sender<Job>> {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut started = 0;
        for n in 0..self.settings.threads {
            let receiver = receiver.clone();
            let plugin = self.plugin.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("wsgate-offload-{n}"))
                .spawn(move || work(&plugin, &receiver));
            match spawned {
                Ok(_) => started += 1,
                Err(error) => {
                    tracing::error!(plugin = %self.plugin, %error, "cannot start an offload thread");
                }
            }
        }
        tracing::info!(plugin = %self.plugin, threads = started, queue = self.settings.queue, nice = OFFLOAD_NICE, "plugin calls offloaded: offload threads started");
        (started > 0).then_some(sender)
    }
}

/// Fold `sample` into the moving `average` (weight 1/8).
fn fold(average: &AtomicU64, sample: u64) {
    let old = average.load(Ordering::Relaxed);
    let new = old - (old >> EWMA_SHIFT) + (sample >> EWMA_SHIFT);
    average.store(new, Ordering::Relaxed);
}

/// An offload thread: lower its priority, then run jobs until the plugin
/// is gone (its queue's sender dropped).
fn work(plugin: &str, receiver: &Mutex<Receiver<Job>>) {
    lower_thread_priority(plugin);
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            tracing::debug!(plugin, "offload thread done");
            return;
        };
        // A panic loses this job's result (its caller sees a fault), not the thread.
        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!(plugin, "an offloaded plugin call panicked");
        }
    }
}

/// Give the calling thread (`thread` names it in the log: an offload
/// thread's plugin, the shadow) the niceness [`OFFLOAD_NICE`]. Linux keeps a
/// niceness per thread (`setpriority` on pid 0 sets the caller's); elsewhere
/// it would apply to the whole process, so the threads keep the default.
pub fn lower_thread_priority(thread: &str) {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(None, OFFLOAD_NICE) {
        tracing::warn!(thread, %error, "cannot lower a background thread's priority");
    }
    #[cfg(not(target_os = "linux"))]
    tracing::debug!(thread, "background threads keep the default priority here");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offload() -> Offload {
        let settings = OffloadSettings {
            above: Duration::from_millis(1),
            threads: 1,
            queue: 0,
        };
        Offload::new(Arc::from("test@1.0.0"), settings)
    }

    const FAST: Duration = Duration::from_micros(1);
    const SLOW: Duration = Duration::from_millis(100);

    /// A fast plugin whose call is preempted for 100 ms one call in ten
    /// (a starved host) stays inline; with every call counted in full it
    /// would move on the first (100 ms / 8 is over 1 ms). The metrics'
    /// average still shows the slow calls.
    #[test]
    fn a_slow_call_now_and_then_does_not_move_a_plugin() {
        let offload = offload();
        for round in 0..50 {
            for _ in 0..9 {
                offload.record(FAST);
            }
            offload.record(SLOW);
            assert!(!offload.is_slow(), "moved in round {round}");
        }
        assert!(
            offload.recent() > Duration::from_millis(1),
            "{:?}",
            offload.recent()
        );
    }

    /// A plugin slow on every call moves on its third, stays for the next
    /// fast call, and comes back as the average decays.
    #[test]
    fn a_plugin_slow_on_every_call_moves_on_the_third_and_comes_back() {
        let offload = offload();
        for _ in 0..2 {
            offload.record(SLOW);
            assert!(!offload.is_slow());
        }
        offload.record(SLOW);
        assert!(offload.is_slow());
        let mut fast_calls = 0;
        while offload.is_slow() {
            offload.record(FAST);
            fast_calls += 1;
            assert!(fast_calls < 64, "still slow");
        }
        assert!(fast_calls > 1, "back after {fast_calls} fast call");
    }

    /// A plugin slow on one call in three (one attacker's messages among
    /// other clients' fast ones) moves, and stays moved while it lasts.
    #[test]
    fn a_plugin_slow_on_one_call_in_three_moves() {
        let offload = offload();
        let mut moved_at = None;
        for call in 0..60 {
            offload.record(if call % 3 == 2 { SLOW } else { FAST });
            if call % 3 == 2 && offload.is_slow() {
                moved_at.get_or_insert(call);
            }
            if let Some(at) = moved_at
                && call % 3 == 2
            {
                assert!(
                    offload.is_slow(),
                    "back inline at call {call} (moved at {at})"
                );
            }
        }
        assert!(moved_at.is_some(), "never moved");
    }
}
