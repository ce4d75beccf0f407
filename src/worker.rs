//! The single worker: takes the oldest queued job, archives it, records the outcome, and goes
//! on with the next one until it is told to stop or, in batch mode, the queue is empty.
//!
//! Everything that can wake the worker is one [`Event`], so its whole behaviour is the `match`
//! in [`Worker::run`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::api::Health;
use crate::archive::ArchiveWriter;
use crate::archiver::{
    archive_job, ArchiveFailure, ArchiveSettings, ArchivedJob, ClusterCache, Step,
};
use crate::config::RetryConfig;
use crate::job::JobMeta;
use crate::metric_source::MetricSource;
use crate::metrics::Metrics;
use crate::queue::{ClaimedJob, JobQueue, QueueError};
use crate::store::now_ms;

/// When the worker stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Wait for new jobs until the stop signal.
    UntilStopped,
    /// Stop when the queue is empty (the `archive` command).
    UntilEmpty,
}

/// The worker's dependencies.
pub struct Worker {
    pub queue: Arc<dyn JobQueue>,
    pub source: Arc<dyn MetricSource>,
    pub writer: Arc<dyn ArchiveWriter>,
    pub settings: ArchiveSettings,
    pub metrics: Arc<Metrics>,
    /// How long a stop waits for the current job before it is cancelled and left queued.
    pub shutdown_timeout: Duration,
    /// Deadline of one attempt.
    pub job_timeout: Duration,
    pub retry: RetryConfig,
    /// Readiness state, where the worker reports an archive that cannot be written.
    pub health: Arc<Health>,
    /// Parsed `cluster.json` files, so a cluster is not parsed again for every job.
    pub clusters: Arc<ClusterCache>,
}

/// The outcome of one finished job, for callers that report per job.
#[derive(Debug, Clone)]
pub enum Outcome {
    Archived { key: String, job: ArchivedJob, duration: Duration },
    Failed { key: String, failure: ArchiveFailure },
}

/// The reason the worker loop woke up.
enum Event {
    /// A job was claimed.
    Job(Box<ClaimedJob>),
    /// The queue is empty.
    Idle,
    /// The stop signal was raised.
    Stop,
}

impl Worker {
    /// Runs until stopped (or until the queue is empty in batch mode). Each finished job is
    /// sent to `outcomes` when one is given. Returns an error only when the store fails; the
    /// job in hand then stays `archiving` and is recovered at the next start.
    pub async fn run(
        &self,
        mode: RunMode,
        mut stop: watch::Receiver<bool>,
        outcomes: Option<tokio::sync::mpsc::UnboundedSender<Outcome>>,
    ) -> Result<(), QueueError> {
        loop {
            let event = if *stop.borrow() {
                Event::Stop
            } else {
                match self.queue.claim_next().await? {
                    Some(job) => Event::Job(Box::new(job)),
                    None => Event::Idle,
                }
            };
            match event {
                Event::Stop => return Ok(()),
                Event::Idle => {
                    let next_retry = self.queue.next_retry_due()?;
                    if mode == RunMode::UntilEmpty && next_retry.is_none() {
                        return Ok(());
                    }
                    // Sleep until the next retry is due, or for a long while when none is
                    // waiting; new work and the stop signal end the sleep early.
                    let pause = match next_retry {
                        Some(due) => {
                            Duration::from_millis((due - now_ms()).clamp(1, 60_000) as u64)
                        }
                        None => Duration::from_secs(3600),
                    };
                    tokio::select! {
                        () = self.queue.work_available() => (),
                        _ = stop.changed() => (),
                        () = tokio::time::sleep(pause) => (),
                    }
                }
                Event::Job(job) => {
                    let span = tracing::info_span!(
                        "job",
                        job_id = %job.key,
                        attempt = job.record.attempts
                    );
                    let outcome = self.process(*job, &mut stop).instrument(span).await?;
                    if let (Some(outcome), Some(outcomes)) = (outcome, &outcomes) {
                        let _ = outcomes.send(outcome);
                    }
                }
            }
        }
    }

    /// Archives one claimed job and records the outcome. Returns `None` when a stop cancelled
    /// the job and it went back to the queue.
    async fn process(
        &self,
        job: ClaimedJob,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Outcome>, QueueError> {
        let started = Instant::now();
        let queued_for_ms = job.record.started_at_ms.map(|at| at - job.record.enqueued_at_ms);
        tracing::debug!(queued_for_ms, "archiving started");
        self.metrics.observe_claimed(&job.record);
        self.metrics.worker_busy.set(1);
        let result = if job.record.attempts > self.retry.max_attempts {
            // Each earlier attempt was counted when it started and never reached an outcome,
            // so the process died during it. Stop here instead of crashing again.
            Some(Err(ArchiveFailure {
                step: Step::Interrupted,
                message: format!(
                    "gave up: the last {} attempts ended without an outcome, because the process \
                     crashed or was killed while archiving this job",
                    job.record.attempts - 1
                ),
                transient: false,
            }))
        } else {
            self.archive_until_stopped(&job, stop).await
        };
        self.metrics.worker_busy.set(0);
        let Some(result) = result else {
            self.queue.release(&job.key).await?;
            self.metrics.shutdown_timeouts.inc();
            tracing::warn!("shutdown timeout reached; the job was cancelled and stays queued");
            return Ok(None);
        };
        let duration = started.elapsed();
        match result {
            Ok(archived) => {
                self.report_archive_health(None);
                let path = archived.written.path.display().to_string();
                // Metrics change before the state does, so a reader that sees the new state also
                // sees it counted.
                let mut observed = job.record.clone();
                observed.archived_at_ms = Some(now_ms());
                self.metrics.observe_archived(&observed, duration, archived.written.bytes);
                self.queue
                    .finish_archived(
                        &job.key,
                        path,
                        archived.written.bytes,
                        duration.as_millis() as u64,
                    )
                    .await?;
                tracing::info!(
                    duration_ms = duration.as_millis() as u64,
                    bytes = archived.written.bytes,
                    path = %archived.written.path.display(),
                    "archived job"
                );
                Ok(Some(Outcome::Archived { key: job.key, job: archived, duration }))
            }
            Err(failure) if failure.transient && job.record.attempts < self.retry.max_attempts => {
                if matches!(failure.step, Step::Write | Step::Cluster) {
                    self.report_archive_health(Some(&failure.message));
                }
                let delay = backoff(&self.retry, job.record.attempts);
                let retry_at_ms = now_ms() + delay.as_millis() as i64;
                self.metrics.retries_scheduled.inc();
                self.queue
                    .schedule_retry(&job.key, &failure.message, failure.step.as_str(), retry_at_ms)
                    .await?;
                tracing::warn!(
                    step = failure.step.as_str(),
                    error = %failure.message,
                    attempt = job.record.attempts,
                    max_attempts = self.retry.max_attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    "attempt failed; retrying after a backoff"
                );
                Ok(None)
            }
            Err(failure) => {
                if failure.transient && matches!(failure.step, Step::Write | Step::Cluster) {
                    self.report_archive_health(Some(&failure.message));
                }
                self.metrics.observe_failed(failure.step, duration);
                self.queue.finish_failed(&job.key, &failure.message, failure.step.as_str()).await?;
                tracing::error!(
                    step = failure.step.as_str(),
                    error = %failure.message,
                    transient = failure.transient,
                    duration_ms = duration.as_millis() as u64,
                    "job failed; `job-archiver failed` lists it, `job-archiver retry` queues it again"
                );
                Ok(Some(Outcome::Failed { key: job.key, failure }))
            }
        }
    }

    /// Sets or clears the archive problem that `/readyz` and the metrics report.
    fn report_archive_health(&self, problem: Option<&str>) {
        self.metrics.archive_degraded.set(i64::from(problem.is_some()));
        self.health.set_archive_problem(problem.map(str::to_owned));
    }

    /// Runs the archiving of one job as its own task, so a panic in it fails the job instead of
    /// the process. The attempt ends at `job_timeout`. On a stop, waits up to
    /// `shutdown_timeout`, then cancels and returns `None`.
    async fn archive_until_stopped(
        &self,
        job: &ClaimedJob,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<ArchivedJob, ArchiveFailure>> {
        let meta = match parse_stored_meta(&job.record.meta_json) {
            Ok(meta) => meta,
            Err(failure) => return Some(Err(failure)),
        };
        let source = Arc::clone(&self.source);
        let writer = Arc::clone(&self.writer);
        let settings = self.settings;
        let job_timeout = self.job_timeout;
        let clusters = Arc::clone(&self.clusters);
        let mut task = tokio::spawn(
            async move {
                let attempt = archive_job(&meta, source.as_ref(), &writer, &settings, &clusters);
                match tokio::time::timeout(job_timeout, attempt).await {
                    Ok(result) => result,
                    Err(_) => Err(ArchiveFailure {
                        step: Step::Timeout,
                        message: format!(
                            "the attempt ran past worker.job_timeout ({})",
                            humantime::format_duration(job_timeout)
                        ),
                        transient: true,
                    }),
                }
            }
            .in_current_span(),
        );
        let joined = tokio::select! {
            joined = &mut task => joined,
            _ = wait_for_stop(stop) => {
                match tokio::time::timeout(self.shutdown_timeout, &mut task).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        task.abort();
                        return None;
                    }
                }
            }
        };
        Some(match joined {
            Ok(result) => result,
            Err(err) => Err(ArchiveFailure {
                step: Step::Internal,
                message: format!("archiving panicked: {}", panic_message(err)),
                transient: false,
            }),
        })
    }
}

/// The wait before the next attempt after `attempt` attempts: `initial_backoff` doubled per
/// attempt, capped at `max_backoff`, then drawn uniformly from its upper half so that jobs
/// failing together do not retry together.
pub fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let base =
        retry.initial_backoff.saturating_mul(1u32 << doublings.min(31)).min(retry.max_backoff);
    let jitter: f64 = rand::random();
    base.mul_f64(0.5 + 0.5 * jitter)
}

fn parse_stored_meta(bytes: &[u8]) -> Result<JobMeta, ArchiveFailure> {
    let failure =
        |message: String| ArchiveFailure { step: Step::Metadata, message, transient: false };
    let value =
        serde_json::from_slice(bytes).map_err(|err| failure(format!("stored metadata: {err}")))?;
    JobMeta::from_json(value).map_err(|err| failure(format!("stored metadata: {err}")))
}

async fn wait_for_stop(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens at exit: treat it as a stop.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn panic_message(err: tokio::task::JoinError) -> String {
    if !err.is_panic() {
        return err.to_string();
    }
    let payload = err.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_owned()
    }
}
