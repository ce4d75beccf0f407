//! Where a job's metric data comes from. The worker sees only the [`MetricSource`] trait; each
//! kind of source (`[metric_source] kind` in the config) is one implementation in a sub-module.

pub mod archive;
pub mod cc_metric_store;

use async_trait::async_trait;

use crate::cluster::Cluster;
use crate::job::JobMeta;
use crate::job_data::{JobData, MetricScope};

/// What to load for one job.
pub struct LoadRequest<'a> {
    pub job: &'a JobMeta,
    /// The job's cluster configuration, with its topology.
    pub cluster: &'a Cluster,
    /// Metric names to load, from the cluster's metric list for the job's sub-cluster.
    pub metrics: &'a [String],
    /// Requested scopes; each metric is loaded at `max(native scope, requested scope)`.
    pub scopes: &'a [MetricScope],
    /// Seconds between samples; 0 means the source's native resolution.
    pub resolution: u32,
}

/// Data returned for a job, with the errors of the metrics or scopes that could not be loaded.
#[derive(Debug, Default)]
pub struct Loaded {
    pub data: JobData,
    /// One message per metric or scope that the source reported as failed. The job is archived
    /// without those when `data` has anything at all.
    pub partial_errors: Vec<String>,
}

/// A metric source failure that loses the whole job's data.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source could not be reached or did not answer in time. Worth a retry.
    #[error("metric source unreachable: {0}")]
    Unreachable(String),
    /// The source answered with an HTTP error status.
    #[error("metric source replied with HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// The reply could not be decoded.
    #[error("invalid reply from metric source: {0}")]
    InvalidReply(String),
    /// The source had no data for the job at all.
    #[error("no metric data for the job: {0}")]
    NoData(String),
}

impl SourceError {
    /// Returns true if and only if the same request may succeed later: a connection failure, a
    /// timeout or a 5xx status.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Unreachable(_) => true,
            SourceError::Status { status, .. } => *status >= 500,
            SourceError::InvalidReply(_) | SourceError::NoData(_) => false,
        }
    }
}

/// A provider of job metric data.
#[async_trait]
pub trait MetricSource: Send + Sync {
    /// Loads the requested metrics of one job. Metrics or scopes that fail are reported in
    /// [`Loaded::partial_errors`]; an error is returned only when nothing could be loaded.
    async fn load(&self, request: &LoadRequest<'_>) -> Result<Loaded, SourceError>;
}
