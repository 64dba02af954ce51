//! The process's log on stderr: human-readable lines (the default), or one
//! JSON object per line for a log collector (`--log-format json`), with the
//! connection's span (id, endpoint, client) on every event inside it.

use std::sync::OnceLock;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours on a terminal only).
    #[default]
    Text,
    /// One JSON object per line: time, level, target, the event's fields
    /// and the current span's (`connection`: `id`, `endpoint`, `client`).
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The target of the operator's reports in the JSON log, and the filter
/// directive that always lets them through.
const REPORTS: &str = "wsgate::report=info";

/// Install the subscriber: `RUST_LOG` filters (default `default_level`).
pub fn init(format: LogFormat, default_level: &str) {
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // The operator's reports are always written, whatever RUST_LOG says.
    let filter = match REPORTS.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            // Colours for a terminal only, not for a log file or a collector.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Tell the operator `message` (what the gateway listens on, a deploy's
/// outcome): a plain line, or an `info` event in the JSON log.
pub fn report_line(message: &str) {
    if FORMAT.get() == Some(&LogFormat::Json) {
        tracing::info!(target: "wsgate::report", "{message}");
    } else {
        eprintln!("{message}");
    }
}

/// Report the error that ends the command (`error: …`, or an `error` event).
pub fn fail(error: &anyhow::Error) {
    if FORMAT.get() == Some(&LogFormat::Json) {
        tracing::error!(target: "wsgate::report", error = %format!("{error:#}"), "exiting");
    } else {
        eprintln!("error: {error:#}");
    }
}

/// [`report_line`] a formatted message.
macro_rules! report {
    ($($argument:tt)*) => {
        $crate::log::report_line(&format!($($argument)*))
    };
}
pub(crate) use report;
