//! The integration tests, in one binary. Each module below covers one boundary of the service.

// The binary's commands: archive, the client commands, config validation and precedence.
mod cli;
// Crash safety of the real binary: SIGKILL at random moments, restart, no job lost or duplicated.
mod crash;
// A fake cc-metric-store that replies to queries from a job-archive data.json.
mod fake_metric_store;
// The cc-metric-store client against the fake store: round trip, authentication and failures.
mod metric_store_client;
// Graceful shutdown of the real binary on SIGTERM: exit 0, the current job finishes or is requeued.
mod shutdown;
// Shared harness: temporary folders, configs, an in-process server and the real binary.
mod support;
// The HTTP API end to end: triggers, states, listing, retries, health and metrics.
mod api;
// Malformed trigger bodies: 400 with the field named, nothing stored.
mod malformed;
// Archived jobs checked against the job-archive JSON schemas.
mod schema;
// Round trips through the whole service: fake metric store or archive replay to job-archive.
mod roundtrip;
// Monitoring: /metrics checked by promtool, series count, dashboard and alert names, logs, watch.
mod metrics;
// A real Prometheus server scraping the service, and promtool on the deploy/prometheus files.
mod prometheus;
