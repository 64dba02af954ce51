//! OpenTelemetry traces of the gateway's connections, exported over OTLP.
//!
//! A [`Tracer`] is made once, at start, from `[tracing]`; it hands each
//! connection a [`ConnectionTrace`] that builds the connection's spans as
//! the connection goes (its upgrade with one span per upgrade plugin, and
//! the sampled messages with one span per plugin call). Finished spans go
//! into a bounded queue that a thread of their own sends to the collector
//! in batches: a slow or absent collector never holds the relay up, and
//! what the queue cannot take is dropped and counted.

mod connection;
mod context;
mod export;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::SpanData;
use wsgate_config::TracingSettings;

pub use connection::{CallOutcome, ConnectionFacts, ConnectionTrace};
pub use context::{format_traceparent, parse_traceparent};

/// Why tracing could not start. Each message includes its cause's, so the
/// cause is not also a `source` (a chain would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The OTLP exporter could not be built (a bad endpoint URL, no HTTP client).
    #[error("the OTLP exporter for {endpoint} could not be built: {error}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// What went wrong.
        error: opentelemetry_otlp::ExporterBuildError,
    },
    /// The export thread could not be started.
    #[error("the trace export thread could not start: {0}")]
    Thread(std::io::Error),
}

/// Spans since start, by what became of them (`wsgate_trace_spans_total`).
#[derive(Debug, Default)]
pub struct TraceCounts {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// A reading of [`TraceCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceTotals {
    /// Accepted by the collector.
    pub exported: u64,
    /// Dropped because the export queue was full.
    pub dropped: u64,
    /// Lost in a failed export (the collector refused them or could not be
    /// reached), or because the export thread had stopped.
    pub failed: u64,
}

impl TraceCounts {
    fn totals(&self) -> TraceTotals {
        TraceTotals {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The gateway's tracer: the queue of finished spans, and what every span
/// of this process shares.
#[derive(Debug)]
pub struct Tracer {
    queue: SyncSender<export::Queued>,
    counts: Arc<TraceCounts>,
    scope: InstrumentationScope,
    /// The fraction of messages traced where an endpoint does not say.
    sample: f64,
    /// How long one export may take (`[tracing] export-timeout`).
    export_timeout: Duration,
}

impl Tracer {
    /// Start exporting as `settings` say: `None` when no OTLP endpoint is
    /// set (tracing is off, and costs nothing).
    pub fn start(settings: &TracingSettings) -> Result<Option<Arc<Self>>, TraceError> {
        let Some(endpoint) = &settings.otlp_endpoint else {
            return Ok(None);
        };
        let counts = Arc::new(TraceCounts::default());
        let queue = export::spawn(settings, endpoint.get_ref(), counts.clone())?;
        tracing::info!(endpoint = %endpoint.get_ref(), "exporting traces over OTLP");
        Ok(Some(Arc::new(Self {
            queue,
            counts,
            scope: InstrumentationScope::builder("wsgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            sample: *settings.sample.get_ref(),
            export_timeout: settings.export_timeout.get_ref().0,
        })))
    }

    /// The fraction of messages traced on endpoints that do not set their own.
    pub fn default_sample(&self) -> f64 {
        self.sample
    }

    /// Spans since start, by what became of them.
    pub fn totals(&self) -> TraceTotals {
        self.counts.totals()
    }

    /// Send the spans waiting now, and wait for them to be sent: at most
    /// twice `export-timeout` in all (at shutdown, so the last
    /// connections' spans are not lost). Blocks: call it off the async
    /// workers.
    pub fn flush(&self) {
        let deadline = Instant::now() + self.export_timeout.saturating_mul(2);
        let (done, flushed) = std::sync::mpsc::sync_channel(1);
        let mut flush = export::Queued::Flush(done);
        // A full queue has room again once the export under way is done.
        loop {
            match self.queue.try_send(flush) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    flush = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Full(_)) => {
                    tracing::warn!("trace export queue still full at shutdown; its spans are lost");
                    return;
                }
            }
        }
        if flushed
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            tracing::warn!("trace export did not finish in time at shutdown; spans may be lost");
        }
    }

    /// Queue a finished span; when the queue is full it is dropped and counted.
    fn send(&self, span: SpanData) {
        match self.queue.try_send(export::Queued::Span(span)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The export thread stopped (it does not, short of a bug).
            Err(TrySendError::Disconnected(_)) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
