//! The integration tests, in one binary. Each module below covers one boundary of the service.

// Crash safety of the real binary: SIGKILL at random moments, restart, no job lost or duplicated.
mod crash;
// A fake cc-metric-store that answers queries from a job-archive data.json.
mod fake_metric_store;
// The cc-metric-store client against the fake store: round trip, authentication and failures.
mod metric_store_client;
// Shared harness: temporary folders, configs, an in-process server and the real binary.
mod support;
// The HTTP API end to end: triggers, states, listing, retries, health and metrics.
mod api;
// Malformed trigger bodies: 400 with the field named, nothing stored.
mod malformed;
