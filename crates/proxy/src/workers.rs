//! The threads that serve connections: each runs a single-threaded tokio
//! scheduler of its own and an accept loop on a listening socket of its own
//! (`SO_REUSEPORT`: the kernel deals connections out among them), and
//! serves what it accepted for its whole life, from its first byte to its
//! close: no connection moves between threads.
//!
//! Why not one work-stealing runtime: when thousands of connections speak
//! in the same instant, its bounded per-worker queues overflow into a
//! shared one that is polled only now and then, so some connections wait
//! for many rounds of others (a p99 four times the p50 with 8,000 aligned
//! connections, `docs/performance.md`). A single-threaded scheduler runs
//! what became ready in the order it did; one per core keeps every core
//! busy without tasks moving between them.
//!
//! The workers end with the runtime that started them (the gateway's), so
//! connections never outlive it.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The connection threads (see the module's note).
pub(crate) struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
}

impl Workers {
    /// Start `count` worker threads (`0`: one per core the process may run
    /// on; the configuration bounds it). Must be called within a tokio
    /// runtime: the workers stop when it does.
    pub fn start(count: u32) -> std::io::Result<Self> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => usize::try_from(n).unwrap_or(1),
        };

        let stop = CancellationToken::new();
        // Cancelled when the starting runtime drops this task (its end);
        // the task ends by itself once the workers are stopped.
        let starter_gone = stop.clone().drop_guard();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _starter_gone = starter_gone;
            stopped.cancelled().await;
        });
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("wsgate-worker-{index}"))
                .spawn(move || {
                    // Worker n counts in stripe n of every shared counter.
                    wsgate_runtime::striped::claim_stripe(index);
                    // Dropping the runtime at the end cancels what still runs.
                    runtime.block_on(stop.cancelled());
                })?;
        }
        tracing::info!(workers = count, "connection workers started");
        Ok(Self { handles, stop })
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Run `task` on worker `index` (modulo their count).
    pub fn spawn_on<F>(&self, index: usize, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.handles.get(index % self.handles.len().max(1)) {
            Some(worker) => worker.spawn(task),
            // `start` always makes at least one worker.
            None => tokio::spawn(task),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
