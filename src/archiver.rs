//! Archiving one job: read its cluster, choose scopes, load its metric data, compute
//! statistics, encode the files and write them. This module knows nothing of the queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::archive::{format, ArchiveError, ArchiveWriter, WrittenJob};
use crate::cluster::Cluster;
use crate::job::JobMeta;
use crate::metric_source::{LoadRequest, MetricSource};
use crate::{scopes, stats};

/// Settings of the archiving work, from `[worker]` and `[archive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveSettings {
    pub core_scope_max_nodes: u32,
    pub resolution: u32,
    pub compress_threshold_bytes: usize,
}

/// The step of [`archive_job`] that failed. Its name is stored with a failed job and used as
/// a metric label, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The stored job metadata could not be read back.
    Metadata,
    /// Reading or parsing the cluster's `cluster.json`.
    Cluster,
    /// Loading metric data from the metric source.
    Load,
    /// Statistics and encoding of `meta.json` and `data.json`.
    Encode,
    /// Writing the job folder.
    Write,
    /// The job ran past its deadline.
    Timeout,
    /// The archiving code panicked; this is a bug.
    Internal,
    /// Earlier attempts ended without an outcome because the process died during each; the
    /// job is not tried again automatically.
    Interrupted,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Metadata,
        Step::Cluster,
        Step::Load,
        Step::Encode,
        Step::Write,
        Step::Timeout,
        Step::Internal,
        Step::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Metadata => "metadata",
            Step::Cluster => "cluster",
            Step::Load => "load",
            Step::Encode => "encode",
            Step::Write => "write",
            Step::Timeout => "timeout",
            Step::Internal => "internal",
            Step::Interrupted => "interrupted",
        }
    }
}

/// Why archiving a job failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", step.as_str())]
pub struct ArchiveFailure {
    pub step: Step,
    pub message: String,
    /// True when the same attempt may succeed later (an unreachable metric store, a full disk).
    pub transient: bool,
}

impl ArchiveFailure {
    fn new(step: Step, message: impl Into<String>, transient: bool) -> ArchiveFailure {
        ArchiveFailure { step, message: message.into(), transient }
    }
}

/// Parsed `cluster.json` files by cluster name, with the bytes they were parsed from. The file
/// is read for every job, so an edited `cluster.json` takes effect at once; it is parsed again
/// only when its bytes change.
#[derive(Default)]
pub struct ClusterCache {
    parsed: Mutex<HashMap<String, ParsedCluster>>,
}

/// The bytes of a `cluster.json` and the cluster parsed from them.
type ParsedCluster = (Vec<u8>, Arc<Cluster>);

impl ClusterCache {
    fn get_or_parse(&self, name: &str, bytes: Vec<u8>) -> Result<Arc<Cluster>, ArchiveFailure> {
        if let Ok(parsed) = self.parsed.lock() {
            if let Some((cached_bytes, cluster)) = parsed.get(name) {
                if *cached_bytes == bytes {
                    return Ok(Arc::clone(cluster));
                }
            }
        }
        let cluster = Arc::new(Cluster::from_json(&bytes).map_err(|err| {
            ArchiveFailure::new(Step::Cluster, format!("cluster {name}: {err}"), false)
        })?);
        if let Ok(mut parsed) = self.parsed.lock() {
            parsed.insert(name.to_owned(), (bytes, Arc::clone(&cluster)));
        }
        Ok(cluster)
    }
}

/// What [`archive_job`] produced.
#[derive(Debug, Clone)]
pub struct ArchivedJob {
    pub written: WrittenJob,
    /// Metrics or scopes that the source could not load; the job was archived without them.
    pub partial_errors: Vec<String>,
}

/// Archives one job. When this returns `Ok`, the job's folder is complete and on disk. On
/// `Err`, an earlier complete folder of the job, if any, is still in place.
pub async fn archive_job(
    job: &JobMeta,
    source: &dyn MetricSource,
    writer: &Arc<dyn ArchiveWriter>,
    settings: &ArchiveSettings,
    clusters: &ClusterCache,
) -> Result<ArchivedJob, ArchiveFailure> {
    let started = Instant::now();

    let cluster = read_cluster(job, writer, clusters).await?;
    let sub_cluster = cluster.sub_cluster_for(job).map(|sub_cluster| sub_cluster.name.clone());
    let metrics: Vec<String> = cluster
        .metrics_for(sub_cluster.as_deref())
        .into_iter()
        .map(|metric| metric.name.clone())
        .collect();
    let scopes = scopes::archive_scopes(job, settings.core_scope_max_nodes);
    tracing::debug!(elapsed = ?started.elapsed(), metrics = metrics.len(), ?scopes, "read cluster");

    let step_start = Instant::now();
    let request = LoadRequest {
        job,
        cluster: &cluster,
        metrics: &metrics,
        scopes: &scopes,
        resolution: settings.resolution,
    };
    let loaded = source
        .load(&request)
        .await
        .map_err(|err| ArchiveFailure::new(Step::Load, err.to_string(), err.is_transient()))?;
    if loaded.data.is_empty() {
        let mut message = "the metric source returned no data for any metric".to_owned();
        if let Some(first) = loaded.partial_errors.first() {
            message.push_str(&format!("; first error: {first}"));
        }
        return Err(ArchiveFailure::new(Step::Load, message, false));
    }
    if !loaded.partial_errors.is_empty() {
        tracing::warn!(
            failed = loaded.partial_errors.len(),
            first = %loaded.partial_errors[0],
            "archiving without the metrics or scopes that failed to load"
        );
    }
    tracing::debug!(elapsed = ?step_start.elapsed(), metrics = loaded.data.len(), "loaded metric data");

    // Statistics, JSON encoding and gzip are CPU-bound: keep them off the async threads.
    let step_start = Instant::now();
    let job_for_encode = job.clone();
    let threshold = settings.compress_threshold_bytes;
    let mut data = loaded.data;
    let files = tokio::task::spawn_blocking(move || {
        stats::fill_series_stats(&mut data);
        stats::add_statistics_series(&mut data);
        let statistics = stats::job_statistics(&data, job_for_encode.num_nodes, &cluster);
        format::encode_job_files(&job_for_encode, &data, &statistics, threshold)
    })
    .await
    .map_err(|err| {
        ArchiveFailure::new(Step::Encode, format!("encoding task failed: {err}"), false)
    })?;
    tracing::debug!(
        elapsed = ?step_start.elapsed(),
        data_bytes = files.data.len(),
        gzipped = files.data_gzipped,
        "encoded job files"
    );

    let step_start = Instant::now();
    let writer_for_write = Arc::clone(writer);
    let id = job.id.clone();
    let written = tokio::task::spawn_blocking(move || writer_for_write.write_job(&id, &files))
        .await
        .map_err(|err| {
            ArchiveFailure::new(Step::Write, format!("write task failed: {err}"), false)
        })?
        .map_err(|err| ArchiveFailure::new(Step::Write, err.to_string(), err.is_transient()))?;
    tracing::debug!(elapsed = ?step_start.elapsed(), path = %written.path.display(), "wrote job folder");

    Ok(ArchivedJob { written, partial_errors: loaded.partial_errors })
}

async fn read_cluster(
    job: &JobMeta,
    writer: &Arc<dyn ArchiveWriter>,
    clusters: &ClusterCache,
) -> Result<Arc<Cluster>, ArchiveFailure> {
    let writer = Arc::clone(writer);
    let cluster_name = job.id.cluster().to_owned();
    let bytes = tokio::task::spawn_blocking(move || writer.read_cluster_config(&cluster_name))
        .await
        .map_err(|err| {
            ArchiveFailure::new(Step::Cluster, format!("read task failed: {err}"), false)
        })?
        .map_err(|err| {
            let transient =
                !matches!(err, ArchiveError::UnknownCluster { .. }) && err.is_transient();
            ArchiveFailure::new(Step::Cluster, err.to_string(), transient)
        })?;
    clusters.get_or_parse(job.id.cluster(), bytes)
}
