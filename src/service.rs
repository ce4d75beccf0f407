//! Assembly of the running service from a [`Config`]: the store, the queue, the metric source,
//! the archive writer and the worker, for `serve` (HTTP API plus worker) and for `archive`
//! (the same queue and worker in one process, until the queue is empty).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::api::{self, ApiLimits, AppState, Health};
use crate::archive::fs::FsArchive;
use crate::archive::ArchiveWriter;
use crate::archiver::ArchiveSettings;
use crate::auth::Authenticator;
use crate::commit::Durability;
use crate::config::{Config, MetricSourceConfig};
use crate::http_server;
use crate::job::{JobMeta, JobState};
use crate::metric_source::archive::ArchiveReplay;
use crate::metric_source::cc_metric_store::CcMetricStore;
use crate::metric_source::MetricSource;
use crate::metrics::Metrics;
use crate::queue::{JobQueue, QueueLimits, SledQueue};
use crate::store::{Enqueued, Store};
use crate::worker::{Outcome, RunMode, Worker};

/// The parts of a running service.
pub struct Components {
    pub queue: Arc<SledQueue>,
    pub source: Arc<dyn MetricSource>,
    pub writer: Arc<dyn ArchiveWriter>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Components {
    /// Opens the store and the archive and builds the metric source. Fails when the store is
    /// locked by another process or damaged, or the archive root cannot be used.
    pub fn open(config: &Config) -> anyhow::Result<Components> {
        if config.store.durability == Durability::OsBuffers {
            tracing::warn!(
                "store.durability = \"os\": triggers are acknowledged without a disk sync, so a \
                 power loss can lose acknowledged jobs; use this for benchmarks only"
            );
        }
        let store = Store::open(&config.store.path, config.store.cache_bytes)?;
        let limits = QueueLimits {
            max_queued_jobs: config.store.max_queued_jobs,
            min_free_bytes: config.store.min_free_bytes,
        };
        let queue = Arc::new(SledQueue::new(Arc::new(store), config.store.durability, limits));
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        // An archive root that cannot be used yet does not stop the service: jobs are queued,
        // and each write tries the root again.
        let archive = FsArchive::new(&config.archive.path);
        if let Err(err) = archive.ensure_root() {
            tracing::error!(error = %err, "the archive cannot be used yet; jobs stay queued and are retried");
            health.set_archive_problem(Some(err.to_string()));
            metrics.archive_degraded.set(1);
        }
        let writer: Arc<dyn ArchiveWriter> = Arc::new(archive);
        let source: Arc<dyn MetricSource> = match &config.metric_source {
            MetricSourceConfig::Archive { path } => Arc::new(ArchiveReplay::new(path.clone())),
            MetricSourceConfig::CcMetricStore { url, token_file, timeout } => {
                let token = match token_file {
                    Some(path) => Some(read_token(path)?),
                    None => None,
                };
                let store = CcMetricStore::new(url, token, *timeout)
                    .map_err(|err| anyhow::format_err!("metric_source: {err}"))?;
                Arc::new(store.with_request_counter(metrics.metric_store_requests.clone()))
            }
        };
        Ok(Components { queue, source, writer, metrics, health })
    }

    fn worker(&self, config: &Config) -> Worker {
        Worker {
            queue: self.queue.clone(),
            source: Arc::clone(&self.source),
            writer: Arc::clone(&self.writer),
            settings: ArchiveSettings {
                core_scope_max_nodes: config.worker.core_scope_max_nodes,
                resolution: config.worker.resolution,
                compress_threshold_bytes: config.archive.compress_threshold_bytes,
            },
            metrics: Arc::clone(&self.metrics),
            shutdown_timeout: config.worker.shutdown_timeout,
            job_timeout: config.worker.job_timeout,
            retry: config.retry,
            health: Arc::clone(&self.health),
            clusters: Arc::default(),
        }
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("metric_source.token_file {}", path.display()))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("metric_source.token_file {}: the file is empty", path.display());
    }
    Ok(token)
}

/// Runs the HTTP API and the worker on `listener` until `shutdown` resolves, then stops in
/// order: triggers get 503, the worker finishes or releases its job, the server drains, and
/// the store is synced.
pub async fn serve(
    config: &Config,
    components: Components,
    listener: TcpListener,
    shutdown: impl Future<Output = &'static str> + Send,
) -> anyhow::Result<()> {
    let health = Arc::clone(&components.health);
    let queue: Arc<dyn JobQueue> = components.queue.clone();
    let auth = Authenticator::from_config(&config.server.auth)?;

    let recovered = queue.recover().await.context("recovering jobs of the last run")?;
    let stats = queue.stats()?;
    tracing::info!(
        recovered_archiving = recovered,
        queued = stats.counts.queued,
        failed = stats.counts.failed,
        archived = stats.counts.archived,
        "recovered the backlog"
    );
    health.set_ready();

    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = components.worker(config);
    let mut worker_task =
        tokio::spawn(async move { worker.run(RunMode::UntilStopped, stop_rx, None).await });

    let state = Arc::new(AppState {
        queue: Arc::clone(&queue),
        metrics: Arc::clone(&components.metrics),
        health: Arc::clone(&health),
        auth,
        limits: ApiLimits {
            max_body_bytes: config.server.max_body_bytes,
            max_batch_jobs: config.server.max_batch_jobs,
            request_timeout: config.server.request_timeout,
            public_probes: config.server.public_probes,
        },
    });
    let app = api::router(state);
    let (server_stop_tx, mut server_stop_rx) = watch::channel(false);
    let header_read_timeout = config.server.header_read_timeout;
    let server = tokio::spawn(async move {
        http_server::serve(listener, app, header_read_timeout, async move {
            let _ = server_stop_rx.wait_for(|stop| *stop).await;
        })
        .await
    });
    tracing::info!("ready");

    // The worker ends on its own only when the store fails; the service then stops too,
    // because it could no longer archive what it acknowledges.
    let worker_error = tokio::select! {
        signal = shutdown => {
            tracing::info!(signal, "shutting down: new triggers get 503, the current job may finish");
            health.set_shutting_down();
            let _ = stop_tx.send(true);
            join_worker(&mut worker_task).await
        }
        joined = &mut worker_task => {
            health.set_shutting_down();
            Some(match joined {
                Ok(Ok(())) => anyhow::format_err!("the worker stopped unexpectedly"),
                Ok(Err(err)) => anyhow::Error::new(err),
                Err(err) => anyhow::format_err!("the worker task failed: {err}"),
            })
        }
    };
    let _ = server_stop_tx.send(true);
    if let Err(err) = server.await {
        tracing::error!(error = %err, "the HTTP server task failed");
    }

    // After a worker error the store may fail again here; that error must not hide the
    // worker's, which names the cause.
    let store = Arc::clone(components.queue.store());
    let synced = tokio::task::spawn_blocking(move || store.sync()).await;
    let remaining = queue.stats();
    match (synced, remaining, &worker_error) {
        (Ok(Ok(())), Ok(stats), _) => tracing::info!(
            queued = stats.counts.queued,
            failed = stats.counts.failed,
            "stopped; {} jobs remain queued",
            stats.counts.queued
        ),
        (synced, remaining, None) => {
            synced??;
            remaining?;
        }
        (_, _, Some(_)) => tracing::info!("stopped"),
    }
    match worker_error {
        Some(err) => {
            Err(err.context("the worker stopped on a store error; run `job-archiver check`"))
        }
        None => Ok(()),
    }
}

async fn join_worker(
    worker_task: &mut tokio::task::JoinHandle<Result<(), crate::queue::QueueError>>,
) -> Option<anyhow::Error> {
    match worker_task.await {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(anyhow::Error::new(err)),
        Err(err) => Some(anyhow::format_err!("the worker task failed: {err}")),
    }
}

/// Result of the `archive` command, per job and in total.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// Files or jobs that could not be queued, with the reason.
    pub rejected: Vec<(PathBuf, String)>,
    /// Jobs of the given files that were archived earlier and left as they were.
    pub already_archived: Vec<String>,
    pub archived: Vec<String>,
    pub failed: Vec<(String, String)>,
    /// Jobs still queued because the run was stopped.
    pub left_queued: u64,
}

/// One loaded job file.
pub struct JobFile {
    pub path: PathBuf,
    pub jobs: Result<Vec<JobMeta>, String>,
}

/// Reads job files: each argument is a `.json` file or a folder searched recursively for them,
/// in name order. Each file holds one job object or an array of jobs.
pub fn read_job_files(paths: &[PathBuf], max_batch_jobs: usize) -> anyhow::Result<Vec<JobFile>> {
    let mut files = Vec::new();
    for path in paths {
        let metadata =
            std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
        if metadata.is_dir() {
            collect_json_files(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    Ok(files
        .into_iter()
        .map(|path| {
            let jobs = std::fs::read(&path).map_err(|err| format!("cannot read: {err}")).and_then(
                |bytes| {
                    api::parse_trigger_body(&bytes, max_batch_jobs)
                        .map(|(jobs, _)| jobs)
                        .map_err(|(_, err)| err.message().to_owned())
                },
            );
            JobFile { path, jobs }
        })
        .collect())
}

fn collect_json_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: cannot list", dir.display()))?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_json_files(&entry, files)?;
        } else if entry.extension().is_some_and(|ext| ext == "json") {
            files.push(entry);
        }
    }
    Ok(())
}

/// Queues the jobs of `files` and archives until the queue is empty or `shutdown` resolves.
/// Jobs queued by an earlier, interrupted run are archived as well. Each outcome is passed to
/// `on_outcome` as it happens.
pub async fn archive_batch(
    config: &Config,
    components: Components,
    files: Vec<JobFile>,
    shutdown: impl Future<Output = &'static str> + Send,
    mut on_outcome: impl FnMut(&Outcome),
) -> anyhow::Result<BatchReport> {
    let queue: Arc<dyn JobQueue> = components.queue.clone();
    let mut report = BatchReport::default();
    let recovered = queue.recover().await.context("recovering jobs of the last run")?;
    if recovered > 0 {
        tracing::info!(
            recovered,
            "resuming jobs that were being archived when the last run stopped"
        );
    }

    for file in files {
        let jobs = match file.jobs {
            Ok(jobs) => jobs,
            Err(reason) => {
                report.rejected.push((file.path, reason));
                continue;
            }
        };
        match queue.enqueue(&jobs).await {
            Ok(outcomes) => {
                for (job, outcome) in jobs.iter().zip(outcomes) {
                    if outcome == Enqueued::Existing(JobState::Archived) {
                        report.already_archived.push(job.id.to_string());
                    }
                }
            }
            Err(err) if err.is_client_error() => report.rejected.push((file.path, err.to_string())),
            Err(err) => return Err(err.into()),
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel();
    let worker = components.worker(config);
    let mut worker_task =
        tokio::spawn(
            async move { worker.run(RunMode::UntilEmpty, stop_rx, Some(outcome_tx)).await },
        );
    tokio::pin!(shutdown);
    let mut stopping = false;
    loop {
        tokio::select! {
            Some(outcome) = outcome_rx.recv() => {
                on_outcome(&outcome);
                match outcome {
                    Outcome::Archived { key, .. } => report.archived.push(key),
                    Outcome::Failed { key, failure } => report.failed.push((key, failure.to_string())),
                }
            }
            signal = &mut shutdown, if !stopping => {
                tracing::info!(signal, "stopping: the current job may finish, the rest stays queued");
                stopping = true;
                let _ = stop_tx.send(true);
            }
            joined = &mut worker_task => {
                while let Ok(outcome) = outcome_rx.try_recv() {
                    on_outcome(&outcome);
                    match outcome {
                        Outcome::Archived { key, .. } => report.archived.push(key),
                        Outcome::Failed { key, failure } => report.failed.push((key, failure.to_string())),
                    }
                }
                joined.context("the worker task failed")??;
                break;
            }
        }
    }
    let store = Arc::clone(components.queue.store());
    tokio::task::spawn_blocking(move || store.sync()).await??;
    report.left_queued = queue.stats()?.counts.queued;
    Ok(report)
}
