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
// Authentication: static tokens, Ed25519 JWTs, probes, failure counts, config and the CLI token.
mod auth;
// Backpressure and limits: queue and disk floors, body, batch and record sizes, timeouts.
mod limits;
// Metric store faults: transient ones retried with backoff, permanent ones failed at once.
mod faults;
// Property tests: random trigger bodies, random metric-store replies, and the archive layout.
mod proptests;
// Path traversal in job fields and route paths: 400 or 404, and no file outside the layout.
mod traversal;
// Conventions of the source tree: module docs, no ignored tests.
mod tidy;
// Archive faults: full, read-only and missing archive filesystems, and unreadable cluster.json.
mod archive_faults;
// Kill soak, the archive command under SIGKILL, and a poison job, with the real binary.
mod soak;
// A store in use, damaged or of an unknown record format; check against the service's counts.
mod store_damage;
// Concurrent trigger load and a replay source for the crash and soak tests.
mod trigger_load;
