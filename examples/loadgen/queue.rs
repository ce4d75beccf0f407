//! The `queue` mode: the queue alone, in this process. It fills a fresh store through
//! [`SledQueue`] and drains it twice: with the real [`Worker`] loop around a metric source and
//! an archive writer that do no I/O, and with a bare claim-and-finish loop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use job_archiver::api::Health;
use job_archiver::archive::{ArchiveError, ArchiveWriter, JobFiles, WrittenJob};
use job_archiver::archiver::ArchiveSettings;
use job_archiver::commit::Durability;
use job_archiver::config::RetryConfig;
use job_archiver::job::{JobId, JobMeta};
use job_archiver::job_data::{JobData, JobMetric, MetricScope, Series};
use job_archiver::metric_source::{LoadRequest, Loaded, MetricSource, SourceError};
use job_archiver::metrics::Metrics;
use job_archiver::queue::{JobQueue, QueueLimits, SledQueue};
use job_archiver::store::Store;
use job_archiver::worker::{RunMode, Worker};

use crate::http::JobTemplate;
use crate::probe;

/// Page cache of the store, the service's default `store.cache_bytes`.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Options of the `queue` mode.
pub struct QueueOptions {
    pub work_dir: PathBuf,
    pub jobs: u64,
    pub batch: usize,
}

/// Rates of one fill and one drain.
#[derive(Debug, Serialize)]
pub struct QueueResult {
    pub jobs: u64,
    pub batch: usize,
    pub fill_jobs_per_second: f64,
    pub worker_jobs_per_second: f64,
    pub worker_archived: u64,
    pub bare_jobs_per_second: f64,
    pub store_bytes: probe::FolderSize,
}

pub async fn run(options: &QueueOptions) -> anyhow::Result<QueueResult> {
    let template = JobTemplate::load("fritz")?;

    // The real worker loop, with no I/O in the source and the writer.
    let dir = options.work_dir.join("queue-worker");
    let queue = open_queue(&dir.join("store"), Durability::OsBuffers)?;
    let fill_seconds = fill(&queue, &template, 0, options.jobs, options.batch).await?;
    let worker = Worker {
        queue: Arc::clone(&queue) as Arc<dyn JobQueue>,
        source: Arc::new(NoopSource),
        writer: Arc::new(NoopWriter::new()?),
        settings: ArchiveSettings {
            core_scope_max_nodes: 8,
            resolution: 0,
            compress_threshold_bytes: 2000,
        },
        metrics: Arc::new(Metrics::new()),
        shutdown_timeout: Duration::from_secs(30),
        job_timeout: Duration::from_secs(600),
        retry: RetryConfig {
            max_attempts: 1,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        },
        health: Arc::new(Health::default()),
        clusters: Arc::default(),
    };
    let (_stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    worker.run(RunMode::UntilEmpty, stop_rx, None).await?;
    let worker_seconds = started.elapsed().as_secs_f64();
    let worker_archived = queue.stats()?.counts.archived;
    let store_bytes = probe::folder_size(&dir.join("store"));
    drop(worker);
    drop(queue);

    // Claim and finish only, without the archiving around them.
    let dir = options.work_dir.join("queue-bare");
    let queue = open_queue(&dir.join("store"), Durability::OsBuffers)?;
    fill(&queue, &template, 0, options.jobs, options.batch).await?;
    let started = Instant::now();
    let mut drained = 0u64;
    while let Some(job) = queue.claim_next().await? {
        queue.finish_archived(&job.key, String::new(), 0, 0).await?;
        drained += 1;
    }
    let bare_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(drained == options.jobs, "drained {drained} of {} jobs", options.jobs);

    Ok(QueueResult {
        jobs: options.jobs,
        batch: options.batch,
        fill_jobs_per_second: options.jobs as f64 / fill_seconds,
        worker_jobs_per_second: options.jobs as f64 / worker_seconds,
        worker_archived,
        bare_jobs_per_second: options.jobs as f64 / bare_seconds,
        store_bytes,
    })
}

/// Opens a fresh store in `path` and the queue on it.
pub fn open_queue(path: &Path, durability: Durability) -> anyhow::Result<Arc<SledQueue>> {
    let store = Store::open(path, CACHE_BYTES)?;
    Ok(Arc::new(SledQueue::new(Arc::new(store), durability, QueueLimits::NONE)))
}

/// Enqueues jobs `first_id..first_id + count` in batches of `batch`, each batch one durable
/// write, and returns the seconds it took.
pub async fn fill(
    queue: &SledQueue,
    template: &JobTemplate,
    first_id: u64,
    count: u64,
    batch: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut next = first_id;
    let end = first_id + count;
    while next < end {
        let batch_end = (next + batch as u64).min(end);
        let jobs = (next..batch_end)
            .map(|id| JobMeta::from_json(template.job(id)))
            .collect::<Result<Vec<_>, _>>()?;
        queue.enqueue(&jobs).await?;
        next = batch_end;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A metric source that returns two samples of every requested metric per host, at node scope,
/// without any I/O.
struct NoopSource;

#[async_trait]
impl MetricSource for NoopSource {
    async fn load(&self, request: &LoadRequest<'_>) -> Result<Loaded, SourceError> {
        let mut data = JobData::new();
        for name in request.metrics {
            let Some(config) = request.cluster.metric(name) else { continue };
            let series = request
                .job
                .resources
                .iter()
                .map(|resource| Series {
                    hostname: resource.hostname.clone(),
                    id: None,
                    statistics: None,
                    data: vec![1.0, 2.0],
                })
                .collect();
            let metric = JobMetric {
                unit: config.unit.clone(),
                timestep: config.timestep,
                series,
                statistics_series: None,
            };
            data.insert(name.clone(), BTreeMap::from([(MetricScope::Node, metric)]));
        }
        Ok(Loaded { data, partial_errors: Vec::new() })
    }
}

/// An archive writer that returns the fritz `cluster.json` for every cluster and discards every
/// job.
struct NoopWriter {
    cluster_json: Vec<u8>,
}

impl NoopWriter {
    fn new() -> anyhow::Result<NoopWriter> {
        let path = format!("{}/archive/fritz/cluster.json", crate::server::EXAMPLES_DIR);
        let cluster_json =
            std::fs::read(&path).map_err(|err| anyhow::format_err!("{path}: {err}"))?;
        Ok(NoopWriter { cluster_json })
    }
}

impl ArchiveWriter for NoopWriter {
    fn read_cluster_config(&self, _cluster: &str) -> Result<Vec<u8>, ArchiveError> {
        Ok(self.cluster_json.clone())
    }

    fn write_job(&self, _id: &JobId, files: &JobFiles) -> Result<WrittenJob, ArchiveError> {
        let bytes = (files.meta_json.len() + files.data.len()) as u64;
        Ok(WrittenJob { path: PathBuf::from("/dev/null"), bytes })
    }
}
