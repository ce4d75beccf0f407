//! job-archiver: a crash-safe archiving service for HPC jobs.
//!
//! A finished job arrives as a trigger (HTTP or the `archive` command), is written to a durable
//! queue before it is acknowledged, and one worker archives its metric data into a
//! ClusterCockpit-compatible job-archive. ARCHITECTURE.md maps the modules in reading order.

/// Prints a line to standard output like `println!`, but ends the process quietly with exit
/// code 141 (as a SIGPIPE would) when the output is a closed pipe, for example
/// `job-archiver status | head -1`, instead of panicking.
macro_rules! out {
    () => {
        $crate::cli::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

pub mod api;
pub mod archive;
pub mod archiver;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod http_server;
pub mod job;
pub mod job_data;
pub mod metric_source;
pub mod metrics;
pub mod queue;
pub mod scopes;
pub mod service;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod worker;
