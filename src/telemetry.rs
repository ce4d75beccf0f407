//! Logging setup: tracing to stderr, as text or JSON lines, filtered by `RUST_LOG`.
//!
//! Level meanings: `error` is a failed job or operation that needs an operator, `warn` is
//! degraded or retried work, `info` is lifecycle (start, ready, each archived job, shutdown),
//! `debug` is per-request and per-step detail, `trace` is internals.
//!
//! While a CLI command shows a progress bar on stderr, each log line is printed above the bar
//! instead of through it.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter without `RUST_LOG`: this crate at `info`, the libraries it uses at `warn`.
const DEFAULT_FILTER: &str = "warn,job_archiver=info";

/// The progress bar shown on stderr, if any; log lines are printed above it.
static PROGRESS_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Installs the global subscriber. `RUST_LOG` overrides the default filter; an invalid
/// `RUST_LOG` is reported in the log and the default filter applies.
///
/// Text lines are colored only when stderr is a terminal. JSON output is one object per line,
/// with the event's fields at the top level and the fields of the current span (such as the
/// `job_id` of the `job` span) under `span`.
pub fn init(format: LogFormat) {
    let (filter, invalid_filter) = match std::env::var("RUST_LOG") {
        Ok(directives) => match EnvFilter::try_new(&directives) {
            Ok(filter) => (filter, None),
            Err(err) => (EnvFilter::new(DEFAULT_FILTER), Some((directives, err))),
        },
        Err(_) => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(StderrWriter);
    // A second call (only in tests) keeps the first subscriber, which is harmless.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    if let Some((directives, err)) = invalid_filter {
        tracing::warn!(
            rust_log = %directives,
            error = %err,
            default = DEFAULT_FILTER,
            "RUST_LOG is invalid, so the default filter applies; fix the variable, for example \
             RUST_LOG=job_archiver=debug"
        );
    }
}

/// Prints the log lines above `bar` until [`clear_progress_bar`] is called.
pub fn set_progress_bar(bar: &ProgressBar) {
    *lock_progress_bar() = Some(bar.clone());
}

/// Prints the log lines to stderr directly again.
pub fn clear_progress_bar() {
    *lock_progress_bar() = None;
}

fn lock_progress_bar() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    // The guarded value is a handle that a panic cannot leave half-written.
    PROGRESS_BAR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes one [`EventWriter`] per log event.
struct StderrWriter;

impl<'a> MakeWriter<'a> for StderrWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter { buffer: Vec::new() }
    }
}

/// Collects one formatted event and writes it to stderr in one piece when dropped, above the
/// progress bar when one is shown.
struct EventWriter {
    buffer: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let bar = lock_progress_bar().clone();
        // A log line that cannot be written to stderr has nowhere else to go.
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.buffer);
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}
