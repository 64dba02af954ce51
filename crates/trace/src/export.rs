//! The export thread: finished spans wait in a bounded queue and are sent
//! to the collector in batches (OTLP over HTTP/protobuf), off the relay's
//! path; an export that fails loses its batch, counted.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use wsgate_config::TracingSettings;

use crate::{TraceCounts, TraceError};

/// What the export thread's queue carries.
#[allow(
    clippy::large_enum_variant,
    reason = "spans are the queue's traffic; boxing them would cost an allocation each"
)]
pub(crate) enum Queued {
    /// A finished span.
    Span(SpanData),
    /// Send what waits now, then answer.
    Flush(SyncSender<()>),
}

/// How a batch is gathered and sent.
struct Batching {
    size: usize,
    interval: Duration,
}

/// Start the export thread for `endpoint`; the queue it reads.
pub(crate) fn spawn(
    settings: &TracingSettings,
    endpoint: &str,
    counts: Arc<TraceCounts>,
) -> Result<SyncSender<Queued>, TraceError> {
    // reqwest builds a rustls configuration even for plain HTTP; the
    // process's provider is ring, as for the registry client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(settings.export_timeout.get_ref().0)
        .build()
        .map_err(|error| TraceError::Exporter {
            endpoint: endpoint.to_string(),
            error,
        })?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let (queue, spans) = std::sync::mpsc::sync_channel(*settings.queue.get_ref());
    let batching = Batching {
        size: *settings.batch.get_ref(),
        interval: settings.export_interval.get_ref().0,
    };
    std::thread::Builder::new()
        .name("wsgate-trace-export".to_string())
        .spawn(move || run(&spans, &exporter, &batching, &counts))
        .map_err(TraceError::Thread)?;
    Ok(queue)
}

/// How often the thread looks at the queue while spans flow. It sleeps
/// between looks rather than waiting on the queue: a thread waiting on the
/// queue is woken by every span sent, which would cost the relay a system
/// call and a context switch per span.
const TICK: Duration = Duration::from_millis(10);

/// Gather spans into batches (full, the oldest waited `interval`, or a
/// flush asked) and send each, until every sender is gone and the queue
/// is empty. Idle, it waits on the queue (the first span wakes it); while
/// spans flow, it looks every [`TICK`].
fn run(
    queue: &Receiver<Queued>,
    exporter: &opentelemetry_otlp::SpanExporter,
    batching: &Batching,
    counts: &TraceCounts,
) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(batching.size);
    let mut send_batch = |batch: &mut Vec<SpanData>| {
        if !batch.is_empty() {
            let full = std::mem::replace(batch, Vec::with_capacity(batching.size));
            failing = export_batch(exporter, full, counts, failing);
        }
    };
    loop {
        let mut next = queue.recv().ok();
        let mut deadline = later(batching.interval);
        loop {
            let mut took = false;
            let mut closed = false;
            let mut flushed = None;
            loop {
                match next.take().map_or_else(|| queue.try_recv(), Ok) {
                    Ok(Queued::Span(span)) => {
                        took = true;
                        batch.push(span);
                        if batch.len() >= batching.size {
                            send_batch(&mut batch);
                            deadline = later(batching.interval);
                        }
                    }
                    Ok(Queued::Flush(done)) => {
                        flushed = Some(done);
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if flushed.is_some() || closed || Instant::now() >= deadline {
                send_batch(&mut batch);
                deadline = later(batching.interval);
            }
            if let Some(done) = flushed {
                let _ = done.try_send(());
            }
            if closed {
                return;
            }
            if !took && batch.is_empty() {
                // Idle again: wait on the queue.
                break;
            }
            std::thread::sleep(TICK.min(batching.interval));
        }
    }
}

/// Send `batch`, counted; whether exports are failing now (`failing`:
/// they were before).
fn export_batch(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    counts: &TraceCounts,
    failing: bool,
) -> bool {
    let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
    match block_on(exporter.export(batch)) {
        Ok(()) => {
            counts.exported.fetch_add(count, Ordering::Relaxed);
            if failing {
                tracing::info!("trace export works again");
            }
            false
        }
        Err(error) => {
            counts.failed.fetch_add(count, Ordering::Relaxed);
            // One warning per outage, not one per batch.
            if !failing {
                tracing::warn!(%error, spans = count, "trace export failed; spans are lost until it works again");
            }
            true
        }
    }
}

/// The instant `after` from now (far ahead when that cannot be written).
fn later(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(3600))
}

/// Run `future` to its end on this thread (the exporter's blocking HTTP
/// client finishes its work within the poll; this only has to wait).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}
