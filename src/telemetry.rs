//! Logging setup: tracing to stderr, as text or JSON lines, filtered by `RUST_LOG`.
//!
//! Level meanings: `error` is a failed job or operation that needs an operator, `warn` is
//! degraded or retried work, `info` is lifecycle (start, ready, each archived job, shutdown),
//! `debug` is per-request and per-step detail, `trace` is internals.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default filter, which keeps this
/// crate at `info` and the libraries it uses at `warn`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,job_archiver=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second call (only in tests) keeps the first subscriber, which is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
