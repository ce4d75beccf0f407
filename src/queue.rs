//! The durable job queue: what the HTTP API, the `archive` command and the worker see.
//!
//! [`JobQueue`] is the contract; [`SledQueue`] implements it on the local sled [`Store`] with
//! group commit. A replicated backend can implement the same trait.
//!
//! Durability per operation:
//! - `enqueue`, `retry` and `retry_all_failed` return after a disk sync that covers their
//!   writes, so an acknowledged job survives a power loss.
//! - `claim_next`, `finish_*` and `release` return after the write reached the OS. They survive a
//!   crash of the process; after a power loss the job may fall back to an earlier state and is
//!   archived again, which replaces its output.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::commit::{Durability, GroupCommit, SyncFailed};
use crate::job::{JobId, JobMeta, JobState};
use crate::store::{now_ms, Enqueued, JobRecord, StateCounts, Store, StoreError};

/// A queue operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sync(#[from] SyncFailed),
    #[error("store task failed: {0}")]
    Task(String),
    /// The store's filesystem has less free space than the configured floor.
    #[error(
        "store {path}: {available} bytes free, below the floor of {floor} (store.min_free_bytes); \
         free disk space, then send the jobs again"
    )]
    DiskLow { path: String, available: u64, floor: u64 },
}

impl QueueError {
    /// Returns true if and only if the error is about the caller's job rather than the store:
    /// an unknown job, a job in the wrong state, or a job too large to store.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            QueueError::Store(
                StoreError::NotFound { .. }
                    | StoreError::WrongState { .. }
                    | StoreError::RecordTooLarge { .. }
            )
        )
    }

    /// Returns true if and only if the queue refused new work for lack of room (the queue
    /// limit or the free-disk floor); the caller should send the jobs again later.
    pub fn is_backpressure(&self) -> bool {
        matches!(self, QueueError::Store(StoreError::QueueFull { .. }) | QueueError::DiskLow { .. })
    }
}

/// A job taken by the worker: its record after the attempt was counted, and its metadata.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub key: String,
    pub record: JobRecord,
}

/// Counts per state and the age of the queue's head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub counts: StateCounts,
    /// When the oldest queued or archiving job was accepted, in ms since the Unix epoch.
    pub oldest_enqueued_at_ms: Option<i64>,
}

/// A durable FIFO of jobs with per-job state.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Stores jobs in one write and returns, per job in order, whether it was queued or
    /// already known. On `Ok`, every queued job is on disk.
    async fn enqueue(&self, jobs: &[JobMeta]) -> Result<Vec<Enqueued>, QueueError>;

    /// Takes the oldest queued job, marks it `archiving` and counts the attempt.
    async fn claim_next(&self) -> Result<Option<ClaimedJob>, QueueError>;

    /// Marks a claimed job `archived`.
    async fn finish_archived(
        &self,
        key: &str,
        path: String,
        bytes: u64,
        duration_ms: u64,
    ) -> Result<JobRecord, QueueError>;

    /// Marks a claimed job `failed` with its reason and the step that failed.
    async fn finish_failed(
        &self,
        key: &str,
        message: &str,
        step: &str,
    ) -> Result<JobRecord, QueueError>;

    /// Puts a claimed job back to `queued`, to be taken again at `retry_at_ms` (ms since the
    /// Unix epoch), and records the attempt's error. Other jobs are taken meanwhile.
    async fn schedule_retry(
        &self,
        key: &str,
        message: &str,
        step: &str,
        retry_at_ms: i64,
    ) -> Result<JobRecord, QueueError>;

    /// Due time of the earliest job waiting for a retry, in ms since the Unix epoch.
    fn next_retry_due(&self) -> Result<Option<i64>, QueueError>;

    /// Puts a claimed job back to `queued` at its old position without counting the attempt.
    async fn release(&self, key: &str) -> Result<JobRecord, QueueError>;

    /// Queues a failed job again. On `Ok`, the change is on disk.
    async fn retry(&self, id: &JobId) -> Result<JobRecord, QueueError>;

    /// Queues every failed job again and returns how many. On `Ok`, the changes are on disk.
    async fn retry_all_failed(&self) -> Result<u64, QueueError>;

    /// Puts every `archiving` job back to `queued` at the head. Call once at start.
    async fn recover(&self) -> Result<usize, QueueError>;

    fn get(&self, id: &JobId) -> Result<Option<JobRecord>, QueueError>;

    /// Up to `limit` jobs in id order after `after`, of one state or of all.
    fn list(
        &self,
        state: Option<JobState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, JobRecord)>, QueueError>;

    fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Resolves when jobs may have been queued since the last call.
    async fn work_available(&self);
}

/// Room the queue keeps: triggers beyond either limit are rejected at once, never blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Maximum number of jobs in state `queued` at once.
    pub max_queued_jobs: u64,
    /// Minimum free space on the store's filesystem, in bytes, for new jobs to be accepted.
    pub min_free_bytes: u64,
}

impl QueueLimits {
    /// No limits, for tools and tests that fill a store on purpose.
    pub const NONE: QueueLimits = QueueLimits { max_queued_jobs: u64::MAX, min_free_bytes: 0 };
}

/// [`JobQueue`] on the local sled store.
pub struct SledQueue {
    store: Arc<Store>,
    commit: GroupCommit,
    new_work: Notify,
    limits: QueueLimits,
    /// The last free-space reading and when it was taken; readings are reused for a second
    /// so that a burst of triggers does not pay a `statvfs` call each.
    free_space: std::sync::Mutex<Option<(tokio::time::Instant, u64)>>,
}

impl SledQueue {
    pub fn new(store: Arc<Store>, durability: Durability, limits: QueueLimits) -> SledQueue {
        let commit = GroupCommit::start(Arc::clone(&store), durability);
        SledQueue {
            store,
            commit,
            new_work: Notify::new(),
            limits,
            free_space: std::sync::Mutex::new(None),
        }
    }

    /// Fails when the store's filesystem has less free space than the floor.
    fn check_free_space(&self) -> Result<(), QueueError> {
        if self.limits.min_free_bytes == 0 {
            return Ok(());
        }
        let path = self.store.path();
        let now = tokio::time::Instant::now();
        let cached = self.free_space.lock().ok().and_then(|reading| *reading);
        let available = match cached {
            Some((at, available)) if now.duration_since(at) < std::time::Duration::from_secs(1) => {
                available
            }
            _ => {
                let stat = nix::sys::statvfs::statvfs(path).map_err(|err| {
                    let message =
                        format!("store {}: cannot read free space: {err}", path.display());
                    QueueError::Task(message)
                })?;
                let available =
                    (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
                if let Ok(mut reading) = self.free_space.lock() {
                    *reading = Some((now, available));
                }
                available
            }
        };
        if available < self.limits.min_free_bytes {
            return Err(QueueError::DiskLow {
                path: path.display().to_string(),
                available,
                floor: self.limits.min_free_bytes,
            });
        }
        Ok(())
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs a store call on the blocking pool, since sled writes and flushes block.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || call(&store)).await {
            Ok(result) => result.map_err(QueueError::from),
            Err(err) => Err(QueueError::Task(err.to_string())),
        }
    }
}

#[async_trait]
impl JobQueue for SledQueue {
    async fn enqueue(&self, jobs: &[JobMeta]) -> Result<Vec<Enqueued>, QueueError> {
        let mut entries = Vec::with_capacity(jobs.len());
        for job in jobs {
            let meta =
                serde_json::to_vec(&job.raw).map_err(|err| QueueError::Task(err.to_string()))?;
            entries.push((job.id.clone(), job.end_time(), meta));
        }
        self.check_free_space()?;
        let max_queued = self.limits.max_queued_jobs;
        let outcomes =
            self.blocking(move |store| store.enqueue(&entries, now_ms(), max_queued)).await?;
        if outcomes.contains(&Enqueued::Queued) {
            self.commit.wait_durable().await?;
            self.new_work.notify_one();
        }
        Ok(outcomes)
    }

    async fn claim_next(&self) -> Result<Option<ClaimedJob>, QueueError> {
        self.blocking(|store| {
            let Some(key) = store.next_to_claim(now_ms())? else {
                return Ok(None);
            };
            let record = store.start_attempt(&key, now_ms())?;
            store.flush_to_os()?;
            Ok(Some(ClaimedJob { key, record }))
        })
        .await
    }

    async fn finish_archived(
        &self,
        key: &str,
        path: String,
        bytes: u64,
        duration_ms: u64,
    ) -> Result<JobRecord, QueueError> {
        let key = key.to_owned();
        self.blocking(move |store| {
            let record = store.mark_archived(&key, path, bytes, duration_ms, now_ms())?;
            store.flush_to_os()?;
            Ok(record)
        })
        .await
    }

    async fn finish_failed(
        &self,
        key: &str,
        message: &str,
        step: &str,
    ) -> Result<JobRecord, QueueError> {
        let (key, message, step) = (key.to_owned(), message.to_owned(), step.to_owned());
        self.blocking(move |store| {
            let record = store.mark_failed(&key, &message, &step, now_ms())?;
            store.flush_to_os()?;
            Ok(record)
        })
        .await
    }

    async fn schedule_retry(
        &self,
        key: &str,
        message: &str,
        step: &str,
        retry_at_ms: i64,
    ) -> Result<JobRecord, QueueError> {
        let (key, message, step) = (key.to_owned(), message.to_owned(), step.to_owned());
        self.blocking(move |store| {
            let record = store.schedule_retry(&key, &message, &step, retry_at_ms, now_ms())?;
            store.flush_to_os()?;
            Ok(record)
        })
        .await
    }

    fn next_retry_due(&self) -> Result<Option<i64>, QueueError> {
        Ok(self.store.next_retry_due()?)
    }

    async fn release(&self, key: &str) -> Result<JobRecord, QueueError> {
        let key = key.to_owned();
        self.blocking(move |store| {
            let record = store.release(&key)?;
            store.flush_to_os()?;
            Ok(record)
        })
        .await
    }

    async fn retry(&self, id: &JobId) -> Result<JobRecord, QueueError> {
        let key = id.to_string();
        let record = self.blocking(move |store| store.requeue_failed(&key, now_ms())).await?;
        self.commit.wait_durable().await?;
        self.new_work.notify_one();
        Ok(record)
    }

    async fn retry_all_failed(&self) -> Result<u64, QueueError> {
        let count = self
            .blocking(|store| {
                let mut count = 0u64;
                // Collect a page of keys first: requeueing changes the index being iterated.
                loop {
                    let page: Vec<String> = store
                        .keys_in_state(JobState::Failed, None)
                        .take(1000)
                        .collect::<Result<_, _>>()?;
                    if page.is_empty() {
                        return Ok(count);
                    }
                    for key in &page {
                        store.requeue_failed(key, now_ms())?;
                        count += 1;
                    }
                }
            })
            .await?;
        if count > 0 {
            self.commit.wait_durable().await?;
            self.new_work.notify_one();
        }
        Ok(count)
    }

    async fn recover(&self) -> Result<usize, QueueError> {
        let recovered = self.blocking(|store| store.recover_archiving()).await?;
        if recovered > 0 {
            self.commit.wait_durable().await?;
        }
        Ok(recovered)
    }

    fn get(&self, id: &JobId) -> Result<Option<JobRecord>, QueueError> {
        Ok(self.store.get(&id.to_string())?)
    }

    fn list(
        &self,
        state: Option<JobState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, JobRecord)>, QueueError> {
        let keys: Box<dyn Iterator<Item = Result<String, StoreError>>> = match state {
            Some(state) => Box::new(self.store.keys_in_state(state, after)),
            None => Box::new(self.store.keys(after)),
        };
        let mut page = Vec::new();
        for key in keys.take(limit) {
            let key = key?;
            // A job can change state between the index read and this read; skip it then.
            if let Some(record) = self.store.get(&key)? {
                if state.is_none_or(|state| state == record.state) {
                    page.push((key, record));
                }
            }
        }
        Ok(page)
    }

    fn stats(&self) -> Result<QueueStats, QueueError> {
        let counts = self.store.counts()?;
        let oldest_enqueued_at_ms = self.store.oldest_queued()?.map(|record| record.enqueued_at_ms);
        Ok(QueueStats { counts, oldest_enqueued_at_ms })
    }

    async fn work_available(&self) {
        self.new_work.notified().await;
    }
}
