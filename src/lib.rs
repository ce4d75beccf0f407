//! job-archiver: a crash-safe archiving service for HPC jobs.
//!
//! A finished job arrives as a trigger (HTTP or the `archive` command), is written to a durable
//! queue before it is acknowledged, and one worker archives its metric data into a
//! ClusterCockpit-compatible job-archive. ARCHITECTURE.md maps the modules; they are listed
//! here in reading order.

pub mod job;
pub mod job_data;
pub mod config;
pub mod store;
pub mod commit;
pub mod queue;
pub mod cluster;
pub mod scopes;
pub mod stats;
pub mod metric_source;
pub mod archive;
pub mod archiver;
pub mod worker;
pub mod metrics;
pub mod api;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod client;
pub mod cli;
