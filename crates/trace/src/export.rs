//! The export thread: finished spans wait in a bounded queue and are sent
//! to the collector in batches (OTLP over HTTP/protobuf), off the relay's
//! path; an export that fails loses its batch, counted.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use wsgate_config::TracingSettings;

use crate::{TraceCounts, TraceError};

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
) -> Result<SyncSender<SpanData>, TraceError> {
    // reqwest builds a rustls configuration even for plain HTTP; the
    // process's provider is ring, as for the registry client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(settings.export_timeout.0)
        .build()
        .map_err(|error| TraceError::Exporter {
            endpoint: endpoint.to_string(),
            message: error.to_string(),
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
        interval: settings.export_interval.0,
    };
    std::thread::Builder::new()
        .name("wsgate-trace-export".to_string())
        .spawn(move || run(&spans, &exporter, &batching, &counts))?;
    Ok(queue)
}

/// Gather spans into batches (full, or the first span waited `interval`)
/// and send each, until every sender is gone and the queue is empty.
fn run(
    spans: &Receiver<SpanData>,
    exporter: &opentelemetry_otlp::SpanExporter,
    batching: &Batching,
    counts: &TraceCounts,
) {
    let mut failing = false;
    loop {
        let Ok(first) = spans.recv() else {
            return;
        };
        let deadline = Instant::now() + batching.interval;
        let mut batch = Vec::with_capacity(batching.size);
        batch.push(first);
        let mut closed = false;
        while batch.len() < batching.size {
            match spans.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(span) => batch.push(span),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        match block_on(exporter.export(batch)) {
            Ok(()) => {
                counts.exported.fetch_add(count, Ordering::Relaxed);
                if failing {
                    tracing::info!("trace export works again");
                }
                failing = false;
            }
            Err(error) => {
                counts.failed.fetch_add(count, Ordering::Relaxed);
                // One warning per outage, not one per batch.
                if !failing {
                    tracing::warn!(%error, spans = count, "trace export failed; spans are lost until it works again");
                }
                failing = true;
            }
        }
        if closed {
            return;
        }
    }
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
