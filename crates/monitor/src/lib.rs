//! The traffic monitor.
//!
//! The proxy hands it [`Record`]s — each connection's upgrade, every frame
//! on the client's connection, how the connection ended — through
//! [`Monitor::record`], which never blocks and, for a frame at level
//! `metadata`, allocates only the queue's room (a block per 31 records):
//! records go by value into a queue bounded by count and by the bytes
//! they hold, and when it is full they are dropped and counted
//! ([`Monitor::dropped`]). One writer thread takes them from the queue in
//! batches, keeps the recent ones in memory for the live views, publishes
//! them to live subscribers ([`Monitor::subscribe`]) and, with a database
//! configured, stores them in SQLite (WAL, one transaction per batch,
//! retention by age and size).

#![deny(clippy::indexing_slicing)]

pub mod mask;
mod memory;
pub mod query;
pub mod record;
mod sqlite;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};
use wsgate_config::MonitorSettings;

pub use query::{Connection, ConnectionFilter, FrameFilter};
pub use record::{
    EndRecord, FrameRecord, MaskingKey, MessageRecord, Origin, Payload, PluginVerdict, Record,
    UpgradeRecord, now_us, opcode_name,
};

use memory::Memory;

/// Records handled by the writer thread in one batch at most.
const BATCH: usize = 1024;
/// How long the writer thread rests when the queue is empty while records
/// keep coming: the most a record waits before live views and the
/// database see it. (An idle writer waits on the queue instead.)
const POLL: Duration = Duration::from_millis(10);
/// How often the database is trimmed to its retention and size.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// A connection recorded at level `replay`: its upgrade and every message
/// through its chains, in order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    /// The upgrade request as the upgrade chain saw it, and its answer.
    pub upgrade: UpgradeRecord,
    /// Its messages, both directions, in the order they were read.
    pub messages: Vec<MessageRecord>,
}

/// Read the connections recorded for replay (see [`Recorded`]), oldest
/// first, from `path`: a monitor database, or a traffic file written by
/// [`write_traffic`]. `filter`'s endpoint, time range and limit apply.
pub fn read_recorded(
    path: &std::path::Path,
    filter: &ConnectionFilter,
) -> Result<Vec<Recorded>, MonitorError> {
    let error = |message: String| MonitorError::Database {
        path: path.display().to_string(),
        message,
    };
    if !path.exists() {
        return Err(error("no such file".to_string()));
    }
    let mut head = [0u8; 16];
    let is_database = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut head))
        .map(|()| &head == b"SQLite format 3\0")
        .unwrap_or(false);
    if is_database {
        let db = sqlite::open(path).map_err(|e| error(e.to_string()))?;
        return sqlite::recorded(&db, filter).map_err(|e| error(e.to_string()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let mut recorded = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let connection: Recorded = serde_json::from_str(line).map_err(|e| {
            error(format!(
                "line {}: not a recorded connection (a traffic file has one JSON object per line): {e}",
                number + 1
            ))
        })?;
        let upgrade = &connection.upgrade;
        let wanted = filter
            .endpoint
            .as_ref()
            .is_none_or(|e| *e == upgrade.endpoint)
            && filter.since_us.is_none_or(|t| upgrade.time_us >= t)
            && filter.until_us.is_none_or(|t| upgrade.time_us <= t);
        if wanted {
            recorded.push(connection);
        }
    }
    let skip = recorded.len().saturating_sub(filter.limit);
    recorded.drain(..skip);
    Ok(recorded)
}

/// Write `connections` to a traffic file at `path`: one JSON object per
/// line, for a repository to keep and `wsgate replay --from` to read.
pub fn write_traffic(path: &std::path::Path, connections: &[Recorded]) -> std::io::Result<()> {
    let mut text = String::new();
    for connection in connections {
        text.push_str(&serde_json::to_string(connection).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    std::fs::write(path, text)
}

/// Why the monitor could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The database could not be opened or queried.
    #[error("monitor database {path}: {message}")]
    Database {
        /// The database file.
        path: String,
        /// SQLite's message.
        message: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the monitor's writer thread: {0}")]
    Thread(String),
}

enum Item {
    Record(Record),
    Flush(oneshot::Sender<()>),
    /// A sample of the gateway's counters for the console's charts: its
    /// time (milliseconds since the epoch) and its JSON.
    Sample(u64, String),
}

/// How long the database keeps the console's samples.
pub const SAMPLE_RETENTION: Duration = Duration::from_secs(25 * 3600);

struct Shared {
    mask: mask::Mask,
    memory: Mutex<Memory>,
    live: broadcast::Sender<Arc<Record>>,
    dropped: AtomicU64,
    stored: AtomicU64,
    /// Records in the queue.
    queued: AtomicU64,
    /// At most this many (`[monitor] queue`).
    max_queued: u64,
    /// Bytes held by the records in the queue ([`Record::held_bytes`]).
    queued_bytes: AtomicU64,
    /// At most this many (`[monitor] queue-bytes`).
    max_queued_bytes: u64,
    database: Option<PathBuf>,
    reader: Option<Mutex<rusqlite::Connection>>,
}

/// The traffic monitor: cheap to clone, shared by the proxy and the admin API.
#[derive(Clone)]
pub struct Monitor {
    /// Unbounded as a channel (it takes a block of records at a time, not
    /// a slot per record up front); [`Shared::queued`] bounds it.
    queue: Sender<Item>,
    shared: Arc<Shared>,
    run: Arc<str>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("run", &self.run)
            .field("database", &self.shared.database)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// Start the monitor: open the database (if configured) and the writer thread.
    pub fn start(settings: &MonitorSettings) -> Result<Self, MonitorError> {
        let database_error =
            |path: &std::path::Path, error: rusqlite::Error| MonitorError::Database {
                path: path.display().to_string(),
                message: error.to_string(),
            };
        let (writer, reader) = match &settings.database {
            Some(path) => (
                Some(sqlite::open(path).map_err(|e| database_error(path, e))?),
                Some(Mutex::new(
                    sqlite::open(path).map_err(|e| database_error(path, e))?,
                )),
            ),
            None => (None, None),
        };
        let (queue, items) = std::sync::mpsc::channel();
        let (live, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            mask: mask::Mask::new(settings.mask.iter().map(|p| p.get_ref().clone())),
            memory: Mutex::new(Memory::new(
                settings.memory_connections,
                settings.memory_frames,
            )),
            live,
            dropped: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            max_queued: settings.queue.max(1) as u64,
            queued_bytes: AtomicU64::new(0),
            max_queued_bytes: settings.queue_bytes.0,
            database: settings.database.clone(),
            reader,
        });
        let retention = (!settings.retention.0.is_zero()).then_some(settings.retention.0);
        let max_bytes = settings.max_database_size.0;
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("wsgate-monitor".to_string())
            .spawn(move || write_loop(&items, &thread_shared, writer, retention, max_bytes))
            .map_err(|e| MonitorError::Thread(e.to_string()))?;
        // Connection keys stay unique across restarts: this run's start time
        // (milliseconds, hex) before each connection id.
        let run = format!("{:x}", now_us() / 1000);
        Ok(Self {
            queue,
            shared,
            run: run.into(),
        })
    }

    /// The key of connection `id` in this run.
    pub fn key(&self, id: u64) -> String {
        format!("{}-{id}", self.run)
    }

    /// Record `record` without waiting: a full queue, by count or by bytes
    /// (`[monitor] queue`, `queue-bytes`), drops it (counted).
    pub fn record(&self, record: Record) {
        let shared = &*self.shared;
        let bytes = record.held_bytes() as u64;
        let records = shared.queued.fetch_add(1, Ordering::Relaxed);
        let held = shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let sent = records < shared.max_queued
            && held + bytes <= shared.max_queued_bytes
            && self.queue.send(Item::Record(record)).is_ok();
        if !sent {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait until everything recorded so far is in memory and stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Item::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Store a sample of the gateway's counters taken at `at_ms`
    /// (milliseconds since the epoch), kept [`SAMPLE_RETENTION`]; without
    /// a database it is not kept.
    pub fn store_sample(&self, at_ms: u64, sample: String) {
        if self.shared.database.is_some() {
            let _ = self.queue.send(Item::Sample(at_ms, sample));
        }
    }

    /// The stored samples taken at or after `since_ms`, oldest first
    /// (none without a database). Blocking.
    pub fn samples(&self, since_ms: u64) -> Result<Vec<(u64, String)>, MonitorError> {
        self.read(|db| sqlite::samples(db, since_ms), |_| Vec::new())
    }

    /// What replay records mask before they are stored (`[monitor] mask`).
    pub fn mask(&self) -> &mask::Mask {
        &self.shared.mask
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records written to the database.
    pub fn stored(&self) -> u64 {
        self.shared.stored.load(Ordering::Relaxed)
    }

    /// The database file, if any.
    pub fn database(&self) -> Option<&std::path::Path> {
        self.shared.database.as_deref()
    }

    /// Every record from now on, as the writer thread handles it.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.shared.live.subscribe()
    }

    fn read<T>(
        &self,
        from_db: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
        from_memory: impl FnOnce(&Memory) -> T,
    ) -> Result<T, MonitorError> {
        match &self.shared.reader {
            Some(reader) => {
                let db = reader.lock().map_err(|_| MonitorError::Database {
                    path: self.path_text(),
                    message: "reader lock poisoned".to_string(),
                })?;
                from_db(&db).map_err(|e| MonitorError::Database {
                    path: self.path_text(),
                    message: e.to_string(),
                })
            }
            None => {
                let memory = self
                    .shared
                    .memory
                    .lock()
                    .map_err(|_| MonitorError::Database {
                        path: "memory".to_string(),
                        message: "lock poisoned".to_string(),
                    })?;
                Ok(from_memory(&memory))
            }
        }
    }

    fn path_text(&self) -> String {
        self.shared
            .database
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string())
    }

    /// Connections matching `filter`, newest first (from the database when
    /// there is one: history across restarts; otherwise from memory).
    /// Blocking: call from a blocking-capable thread.
    pub fn connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, MonitorError> {
        self.read(
            |db| sqlite::connections(db, filter),
            |m| m.connections(filter),
        )
    }

    /// One connection.
    pub fn connection(&self, key: &str) -> Result<Option<Connection>, MonitorError> {
        self.read(|db| sqlite::connection(db, key), |m| m.connection(key))
    }

    /// Frames matching `filter`.
    pub fn frames(&self, filter: &FrameFilter) -> Result<Vec<FrameRecord>, MonitorError> {
        self.read(|db| sqlite::frames(db, filter), |m| m.frames(filter))
    }
}

/// The writer thread: batches from the queue into memory, live subscribers
/// and the database, until every sender is gone.
fn write_loop(
    items: &Receiver<Item>,
    shared: &Shared,
    mut db: Option<rusqlite::Connection>,
    retention: Option<Duration>,
    max_bytes: u64,
) {
    let mut next_trim = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    let mut samples = Vec::new();
    // The last round found nothing.
    let mut idle = false;
    loop {
        if idle {
            // Wait on the queue: an idle monitor sleeps (it woke 100 times
            // a second for nothing), and the first item wakes it, once;
            // the rounds after it poll again. With a database, no longer
            // than its next trim.
            let waited = if db.is_some() {
                items.recv_timeout(next_trim.saturating_duration_since(Instant::now()))
            } else {
                items.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            match waited {
                Ok(item) => take(item, &mut batch, &mut flushes, &mut samples),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            // Poll rather than block while items keep coming: a receiver
            // that is not parked costs the proxy's threads no wake-up per
            // record (measured: blocking here took a third of the
            // throughput at frame level on two cores).
            match items.try_recv() {
                Ok(item) => take(item, &mut batch, &mut flushes, &mut samples),
                Err(TryRecvError::Empty) => std::thread::sleep(POLL),
                Err(TryRecvError::Disconnected) => return,
            }
        }
        while batch.len() < BATCH {
            match items.try_recv() {
                Ok(item) => take(item, &mut batch, &mut flushes, &mut samples),
                Err(_) => break,
            }
        }
        idle = batch.is_empty() && flushes.is_empty() && samples.is_empty();
        if !batch.is_empty() {
            if let Some(db) = db.as_mut() {
                match sqlite::write(db, &batch) {
                    Ok(()) => {
                        shared
                            .stored
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tracing::error!(%error, records = batch.len(), "monitor: cannot store records; dropped");
                        shared
                            .dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            let held: u64 = batch.iter().map(|r| r.held_bytes() as u64).sum();
            shared.queued_bytes.fetch_sub(held, Ordering::Relaxed);
            shared
                .queued
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            keep(shared, &mut batch);
        }
        if let Some(db) = db.as_mut() {
            for (at_ms, sample) in samples.drain(..) {
                let cutoff = at_ms.saturating_sub(SAMPLE_RETENTION.as_millis() as u64);
                if let Err(error) = sqlite::write_sample(db, at_ms, &sample, cutoff) {
                    tracing::warn!(%error, "monitor: cannot store a sample of the counters");
                }
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if let Some(db) = db.as_mut()
            && Instant::now() >= next_trim
        {
            next_trim = Instant::now() + TRIM_EVERY;
            let cutoff = retention.map(|r| now_us().saturating_sub(r.as_micros() as u64));
            match sqlite::trim(db, cutoff, max_bytes) {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "monitor: old connections deleted"),
                Err(error) => tracing::warn!(%error, "monitor: cannot trim the database"),
            }
        }
    }
}

/// Move a batch into the in-memory history; a record is shared with the
/// live subscribers only while there are some (a copy of what the history
/// keeps, then).
fn keep(shared: &Shared, batch: &mut Vec<Record>) {
    let mut memory = shared
        .memory
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tailed = shared.live.receiver_count() > 0;
    for record in batch.drain(..) {
        if tailed {
            // The history keeps no message records (replay reads them
            // from the database): no copy for it.
            if !matches!(record, Record::Message(_)) {
                memory.apply(record.clone());
            }
            let _ = shared.live.send(Arc::new(record));
        } else {
            memory.apply(record);
        }
    }
}

fn take(
    item: Item,
    batch: &mut Vec<Record>,
    flushes: &mut Vec<oneshot::Sender<()>>,
    samples: &mut Vec<(u64, String)>,
) {
    match item {
        Item::Record(record) => batch.push(record),
        Item::Flush(done) => flushes.push(done),
        Item::Sample(at_ms, sample) => samples.push((at_ms, sample)),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests;
