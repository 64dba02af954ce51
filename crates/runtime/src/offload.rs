//! Slow plugins off the I/O workers.
//!
//! Plugin calls are synchronous: inline, a call runs on the I/O worker
//! thread that read the message, and a plugin that legally spends most of
//! its deadline on every call would take those threads (and every other
//! endpoint's latency) with it. Each plugin therefore keeps a moving
//! average of its recent call times. Calls are timed by the wall clock, so
//! a call preempted on a busy host looks slow; the average takes the
//! fastest of each call and the two before it, so only a plugin slow
//! [`SLOW_CALLS_TO_MOVE`] calls running moves. While the average is above
//! the plugin's `offload-above`, its calls are handed to a few threads of its own
//! (`offload-threads`, started on first use, at a lower OS priority) and
//! the caller awaits the verdict. At most `offload-queue` calls wait for a
//! thread; one more is shed (refused at once, never queued).
//!
//! Fast plugins never leave the inline path: deciding costs one relaxed
//! load per call.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

/// The niceness of offload threads: when the machine is busy, the I/O
/// workers (niceness 0) win the CPU over slow plugins.
pub const OFFLOAD_NICE: i32 = 10;

/// Weight of the newest sample in the moving average: 1/8.
const EWMA_SHIFT: u32 = 3;

/// Calls in a row that must be slow before one counts as slow: the
/// average's sample is the fastest of the newest call and the ones just
/// before it.
pub const SLOW_CALLS_TO_MOVE: usize = 3;

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
    /// Moving average of recent call times, in nanoseconds.
    recent_ns: AtomicU64,
    /// The times of the calls just before the newest, newest first.
    previous_ns: [AtomicU64; SLOW_CALLS_TO_MOVE - 1],
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
        Self {
            plugin,
            settings,
            above_ns: u64::try_from(settings.above.as_nanos()).unwrap_or(u64::MAX),
            recent_ns: AtomicU64::new(0),
            previous_ns: Default::default(),
            pending: Arc::default(),
            queue: OnceLock::new(),
        }
    }

    /// Fold one call's duration into the moving average: the fastest of
    /// it and the calls just before it, so one call that the host
    /// preempted does not count as slow. Concurrent updates may lose one
    /// another's sample: an estimate, not a count.
    pub(crate) fn record(&self, elapsed: Duration) {
        let mut newer = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let mut sample = newer;
        for previous in &self.previous_ns {
            let older = previous.load(Ordering::Relaxed);
            previous.store(newer, Ordering::Relaxed);
            sample = sample.min(older);
            newer = older;
        }
        let old = self.recent_ns.load(Ordering::Relaxed);
        let new = old - (old >> EWMA_SHIFT) + (sample >> EWMA_SHIFT);
        self.recent_ns.store(new, Ordering::Relaxed);
    }

    /// The moving average of recent call times.
    pub(crate) fn recent(&self) -> Duration {
        Duration::from_nanos(self.recent_ns.load(Ordering::Relaxed))
    }

    /// Whether calls should leave the I/O workers now.
    pub(crate) fn is_slow(&self) -> bool {
        self.recent_ns.load(Ordering::Relaxed) > self.above_ns
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

    /// A fast plugin whose call is preempted for 100 ms now and then (a
    /// starved host) stays inline; it would have moved on the first with
    /// the plain average (100 ms / 8 is over 1 ms).
    #[test]
    fn one_slow_call_among_fast_ones_does_not_move_a_plugin() {
        let offload = offload();
        for round in 0..50 {
            for _ in 0..SLOW_CALLS_TO_MOVE - 1 {
                offload.record(Duration::from_micros(1));
            }
            offload.record(Duration::from_millis(100));
            assert!(
                !offload.is_slow(),
                "moved in round {round}: {:?}",
                offload.recent()
            );
        }
    }

    /// A plugin slow on every call moves once it has been slow
    /// [`SLOW_CALLS_TO_MOVE`] calls running, stays for the next fast call,
    /// and comes back as the average decays.
    #[test]
    fn a_plugin_slow_calls_running_moves_and_comes_back() {
        let offload = offload();
        offload.record(Duration::from_micros(1));
        for _ in 0..SLOW_CALLS_TO_MOVE - 1 {
            offload.record(Duration::from_millis(20));
            assert!(!offload.is_slow());
        }
        offload.record(Duration::from_millis(20));
        assert!(offload.is_slow(), "{:?}", offload.recent());
        let mut fast_calls = 0;
        while offload.is_slow() {
            offload.record(Duration::from_micros(1));
            fast_calls += 1;
            assert!(fast_calls < 64, "still slow: {:?}", offload.recent());
        }
        assert!(fast_calls > 1, "back after {fast_calls} fast call");
    }
}
