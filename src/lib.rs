//! job-archiver: a crash-safe archiving service for HPC jobs.
//!
//! A finished job arrives as a trigger (HTTP or the `archive` command), is written to a durable
//! queue before it is acknowledged, and one worker archives its metric data into a
//! ClusterCockpit-compatible job-archive. See ARCHITECTURE.md for the map of modules.

pub mod job;
pub mod job_data;
pub mod cluster;
pub mod scopes;
pub mod stats;
pub mod metric_source;
pub mod archive;
