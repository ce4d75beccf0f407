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

use crate::archive::ArchiveWriter;
use crate::archiver::{archive_job, ArchiveFailure, ArchiveSettings, ArchivedJob, Step};
use crate::job::JobMeta;
use crate::metric_source::MetricSource;
use crate::metrics::Metrics;
use crate::queue::{ClaimedJob, JobQueue, QueueError};

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
}

/// What one finished job came to, for callers that report per job.
#[derive(Debug, Clone)]
pub enum Outcome {
    Archived { key: String, job: ArchivedJob, duration: Duration },
    Failed { key: String, failure: ArchiveFailure },
}

/// Why the worker loop woke up.
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
                Event::Idle if mode == RunMode::UntilEmpty => return Ok(()),
                Event::Idle => {
                    tokio::select! {
                        () = self.queue.work_available() => (),
                        _ = stop.changed() => (),
                    }
                }
                Event::Job(job) => {
                    let span =
                        tracing::info_span!("job", id = %job.key, attempt = job.record.attempts);
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
        self.metrics.worker_busy.set(1);
        let result = self.archive_until_stopped(&job, stop).await;
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
                let path = archived.written.path.display().to_string();
                let record = self
                    .queue
                    .finish_archived(
                        &job.key,
                        path,
                        archived.written.bytes,
                        duration.as_millis() as u64,
                    )
                    .await?;
                self.metrics.observe_archived(&record, duration, archived.written.bytes);
                tracing::info!(
                    duration_ms = duration.as_millis() as u64,
                    bytes = archived.written.bytes,
                    path = %archived.written.path.display(),
                    "archived job"
                );
                Ok(Some(Outcome::Archived { key: job.key, job: archived, duration }))
            }
            Err(failure) => {
                self.queue.finish_failed(&job.key, &failure.message, failure.step.as_str()).await?;
                self.metrics.observe_failed(failure.step, duration);
                tracing::error!(step = failure.step.as_str(), error = %failure.message, "job failed");
                Ok(Some(Outcome::Failed { key: job.key, failure }))
            }
        }
    }

    /// Runs the archiving of one job as its own task, so a panic in it fails the job instead of
    /// the process. On a stop, waits up to `shutdown_timeout`, then cancels and returns `None`.
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
        let mut task = tokio::spawn(
            async move { archive_job(&meta, source.as_ref(), &writer, &settings).await }
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
