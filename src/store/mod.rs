//! The embedded store: sled trees for job records, the queue order, a per-state index and the
//! per-state counts, with the on-disk record format and its version.
//!
//! Only this module knows sled. Every state change is one sled transaction over all trees, so
//! the record, its queue entry, its index entry and the counts never disagree. A write is in
//! sled's memory when a method returns; [`Store::sync`] makes everything written so far durable.
//!
//! Invariant: a job that is `queued` or `archiving` has exactly one entry, in `queue` or in
//! `delayed`; `archived` and `failed` jobs have none.
//!
//! Trees and keys:
//! - `jobs`: job id (`cluster/jobId/startTime`) to a versioned [`JobRecord`].
//! - `queue`: sequence number (u64, big-endian) to job id; acceptance order, oldest first.
//! - `delayed`: due time (ms, u64 big-endian) and sequence number to job id; jobs waiting for a
//!   retry, and jobs put back by recovery with due time 0, which the worker takes first.
//! - `by_state`: one state byte followed by the job id, to nothing; lists jobs of one state.
//! - `counts`: state name to a u64 count (big-endian).

mod check;
mod record;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{IVec, Transactional, Tree};

use crate::job::{JobId, JobState};
use record::{decode_record, encode_record};

/// Version byte in front of every stored job record. Bump it when [`StoredRecordV1`] changes,
/// and keep a decoder for every older version.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// Upper bound for one encoded job record. sled 0.34 writes values above a quarter of its
/// 512 KiB segment to separate blob files that it never fsyncs, so records stay below that
/// threshold and the data-file sync in [`Store::sync`] covers every record.
pub const MAX_RECORD_BYTES: usize = 96 * 1024;

/// A job as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub state: JobState,
    /// Attempts since the job was last queued by a trigger or a retry.
    pub attempts: u32,
    /// Queue position while queued or archiving; meaningless otherwise.
    pub seq: u64,
    /// When set, the job's entry is in `delayed` with this due time (ms since the Unix epoch)
    /// instead of in `queue`.
    pub retry_at_ms: Option<i64>,
    /// When the trigger was accepted, in milliseconds since the Unix epoch.
    pub enqueued_at_ms: i64,
    /// When the last attempt started.
    pub started_at_ms: Option<i64>,
    pub archived_at_ms: Option<i64>,
    pub archive_path: Option<String>,
    pub archive_bytes: u64,
    /// How long the successful attempt took.
    pub archive_duration_ms: Option<u64>,
    /// The last failure; kept until the job is archived.
    pub failure: Option<Failure>,
    /// End of the job (startTime + duration), epoch seconds.
    pub job_end_time: i64,
    /// The trigger body of this job, a JSON object in the `meta.json` format.
    pub meta_json: Vec<u8>,
}

/// Why and where an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    /// The archiving step that failed, such as `cluster`, `load` or `write`.
    pub step: String,
    pub at_ms: i64,
    /// The error of each attempt, oldest first.
    pub history: Vec<String>,
}

/// Counts of jobs per state, read from the persisted counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub queued: u64,
    pub archiving: u64,
    pub archived: u64,
    pub failed: u64,
}

impl StateCounts {
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Archiving => self.archiving,
            JobState::Archived => self.archived,
            JobState::Failed => self.failed,
        }
    }
}

impl StateCounts {
    fn get_mut(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Queued => &mut self.queued,
            JobState::Archiving => &mut self.archiving,
            JobState::Archived => &mut self.archived,
            JobState::Failed => &mut self.failed,
        }
    }
}

/// Result of [`Store::check`].
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Records read.
    pub records: u64,
    /// Jobs per state, counted from the records.
    pub counts: StateCounts,
    /// One line per disagreement found; empty for a sound store.
    pub problems: Vec<String>,
}

/// What happened to one job of an enqueue call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Newly queued (or queued again after a failure).
    Queued,
    /// Already known; nothing was written. Holds the current state.
    Existing(JobState),
}

/// Errors of the store. Messages name the store folder or the job.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {path}: locked by another process; stop the other job-archiver or use another \
         [store] path"
    )]
    Locked { path: PathBuf },
    #[error("store {path}: cannot open: {message}")]
    Open { path: PathBuf, message: String },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store {path}: sync failed: {source}")]
    Sync { path: PathBuf, source: std::io::Error },
    #[error("job {id}: stored record has format version {version}, this build reads only {RECORD_FORMAT_VERSION}")]
    UnknownFormatVersion { id: String, version: u8 },
    #[error("job {id}: stored record is corrupt: {message}")]
    Corrupt { id: String, message: String },
    #[error(
        "job {id}: record takes {bytes} bytes, above the store's limit of {MAX_RECORD_BYTES}; \
         shorten metaData (for example jobScript)"
    )]
    RecordTooLarge { id: String, bytes: usize },
    #[error("job {id}: not found")]
    NotFound { id: String },
    #[error(
        "queue full: {queued} jobs queued and this request adds {adding}, the limit is {limit} \
         (store.max_queued_jobs); send the jobs again later, in smaller batches if {adding} \
         alone is above the limit"
    )]
    QueueFull { queued: u64, adding: u64, limit: u64 },
    #[error("job {id}: is {state}, expected {expected}")]
    WrongState { id: String, state: JobState, expected: &'static str },
}

/// The sled database and its trees.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    jobs: Tree,
    queue: Tree,
    delayed: Tree,
    by_state: Tree,
    counts: Tree,
    /// sled's log file, opened a second time: `sync_data` on it flushes the same inode that
    /// sled writes, which sled 0.34's own `flush` (sync_file_range) does not make durable.
    data_file: File,
}

impl Store {
    /// Opens or creates the store in `path`, with a page cache of `cache_bytes`.
    ///
    /// Fails with [`StoreError::Locked`] when another process has the store open.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        std::fs::create_dir_all(path).map_err(|err| StoreError::Open {
            path: path.to_owned(),
            message: format!("cannot create the folder: {err}"),
        })?;
        // Any file in the folder means a store was there: sled's `conf`, `db` or a snapshot.
        let existed =
            std::fs::read_dir(path).map(|mut entries| entries.next().is_some()).unwrap_or(false);
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(1000));
        // sled 0.34 panics on some damaged files. The panic is turned into an error below, and
        // the default hook is silenced meanwhile so it does not print a backtrace as if the
        // service had crashed.
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        std::panic::set_hook(previous_hook);
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(err))) if err.to_string().contains("could not acquire lock") => {
                return Err(StoreError::Locked { path: path.to_owned() })
            }
            Ok(Err(err)) => {
                return Err(StoreError::Open { path: path.to_owned(), message: err.to_string() })
            }
            Err(_) => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    message: "sled panicked while reading the files; the store is damaged, \
                              restore it from a backup or move it away"
                        .to_owned(),
                })
            }
        };
        let data_file = File::open(path.join("db")).map_err(|err| StoreError::Open {
            path: path.to_owned(),
            message: format!("cannot open the data file for syncing: {err}"),
        })?;
        check_marker(&db, path, existed)?;
        Ok(Store {
            path: path.to_owned(),
            jobs: db.open_tree("jobs")?,
            queue: db.open_tree("queue")?,
            delayed: db.open_tree("delayed")?,
            by_state: db.open_tree("by_state")?,
            counts: db.open_tree("counts")?,
            db,
            data_file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every write that returned before this call durable: sled writes its buffers to
    /// its data file, then the file is fsynced. Blocks the calling thread for a disk sync.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.data_file
            .sync_data()
            .map_err(|source| StoreError::Sync { path: self.path.clone(), source })
    }

    /// Writes sled's buffers to its data file without a disk sync. Afterwards the writes survive
    /// a crash of this process, but not a power loss.
    pub fn flush_to_os(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Queues jobs in one transaction, in the given order. A job that is already queued,
    /// archiving or archived is left as it is; a failed one is queued again at the tail.
    /// Each job comes as its id, its end time and its `meta.json` body.
    ///
    /// Fails with [`StoreError::QueueFull`], writing nothing, when the newly queued jobs would
    /// bring the queued count above `max_queued`.
    pub fn enqueue(
        &self,
        jobs: &[(JobId, i64, Vec<u8>)],
        now_ms: i64,
        max_queued: u64,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let mut prepared = Vec::with_capacity(jobs.len());
        for (id, end_time, meta) in jobs {
            let record = JobRecord {
                state: JobState::Queued,
                attempts: 0,
                seq: 0,
                retry_at_ms: None,
                enqueued_at_ms: now_ms,
                started_at_ms: None,
                archived_at_ms: None,
                archive_path: None,
                archive_bytes: 0,
                archive_duration_ms: None,
                failure: None,
                job_end_time: *end_time,
                meta_json: meta.clone(),
            };
            // Checked here, outside the transaction, so an oversized job rejects the batch.
            let size = encode_record(&record)?.len();
            if size > MAX_RECORD_BYTES {
                return Err(StoreError::RecordTooLarge { id: id.to_string(), bytes: size });
            }
            prepared.push((id.to_string(), record));
        }
        self.transact(|tx| {
            let queued_before = tx.count(JobState::Queued)?;
            let mut queued = queued_before;
            let mut outcomes = Vec::with_capacity(prepared.len());
            for (key, record) in &prepared {
                let previous = tx.get_record(key)?;
                if let Some(previous) = &previous {
                    if !previous.state.accepts_trigger() {
                        outcomes.push(Enqueued::Existing(previous.state));
                        continue;
                    }
                }
                if queued >= max_queued {
                    let adding = prepared.len() as u64;
                    let queued = queued_before;
                    return tx.abort(StoreError::QueueFull { queued, adding, limit: max_queued });
                }
                queued += 1;
                let mut record = record.clone();
                record.seq = tx.queue.generate_id()?;
                let old_state = previous.as_ref().map(|previous| previous.state);
                if let Some(previous) = previous {
                    record.failure = previous.failure;
                }
                tx.put_queued(key, old_state, &record)?;
                outcomes.push(Enqueued::Queued);
            }
            Ok(outcomes)
        })
    }

    /// The next job the worker should take at `now_ms`: the earliest due entry of `delayed`
    /// (recovered jobs are due at 0), else the head of `queue`.
    pub fn next_to_claim(&self, now_ms: i64) -> Result<Option<String>, StoreError> {
        if let Some((key, value)) = self.delayed.first()? {
            if decode_u64(&key[..8]) as i64 <= now_ms {
                return Ok(Some(String::from_utf8_lossy(&value).into_owned()));
            }
        }
        match self.queue.first()? {
            Some((_, value)) => Ok(Some(String::from_utf8_lossy(&value).into_owned())),
            None => Ok(None),
        }
    }

    /// Due time of the earliest job waiting for a retry, if any.
    pub fn next_retry_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.delayed.first()?.map(|(key, _)| decode_u64(&key[..8]) as i64))
    }

    /// The queued job that was accepted first, among the head of the queue and the first job
    /// waiting for a retry.
    pub fn oldest_queued(&self) -> Result<Option<JobRecord>, StoreError> {
        let mut oldest: Option<JobRecord> = None;
        let heads = [self.queue.first()?, self.delayed.first()?];
        for (_, key) in heads.into_iter().flatten() {
            let key = String::from_utf8_lossy(&key).into_owned();
            if let Some(record) = self.get(&key)? {
                if oldest.as_ref().is_none_or(|o| record.enqueued_at_ms < o.enqueued_at_ms) {
                    oldest = Some(record);
                }
            }
        }
        Ok(oldest)
    }

    /// Marks a queued job `archiving` and counts the attempt, stamping `started_at_ms`.
    pub fn start_attempt(&self, key: &str, now_ms: i64) -> Result<JobRecord, StoreError> {
        self.transact(|tx| {
            let mut record = tx.require(key)?;
            if record.state != JobState::Queued {
                return tx.abort(StoreError::WrongState {
                    id: key.to_owned(),
                    state: record.state,
                    expected: "queued",
                });
            }
            record.state = JobState::Archiving;
            record.attempts = record.attempts.saturating_add(1);
            record.started_at_ms = Some(now_ms);
            tx.update(key, JobState::Queued, &record)?;
            Ok(record)
        })
    }

    /// Marks an archiving job `archived` and removes it from the queue.
    pub fn mark_archived(
        &self,
        key: &str,
        path: String,
        bytes: u64,
        duration_ms: u64,
        now_ms: i64,
    ) -> Result<JobRecord, StoreError> {
        self.transact(|tx| {
            let mut record = tx.require_state(key, JobState::Archiving)?;
            tx.remove_entry(&record)?;
            record.retry_at_ms = None;
            record.state = JobState::Archived;
            record.archived_at_ms = Some(now_ms);
            record.archive_path = Some(path.clone());
            record.archive_bytes = bytes;
            record.archive_duration_ms = Some(duration_ms);
            record.failure = None;
            tx.update(key, JobState::Archiving, &record)?;
            Ok(record)
        })
    }

    /// Marks an archiving job `failed` with its reason and removes it from the queue.
    pub fn mark_failed(
        &self,
        key: &str,
        message: &str,
        step: &str,
        now_ms: i64,
    ) -> Result<JobRecord, StoreError> {
        self.transact(|tx| {
            let mut record = tx.require_state(key, JobState::Archiving)?;
            tx.remove_entry(&record)?;
            record.retry_at_ms = None;
            record.state = JobState::Failed;
            record.failure = Some(next_failure(record.failure.take(), message, step, now_ms));
            tx.update(key, JobState::Archiving, &record)?;
            Ok(record)
        })
    }

    /// Puts an archiving job back to `queued`, due again at `retry_at_ms`, and records the
    /// error of the attempt. The job waits in `delayed`, so it does not hold up the queue.
    pub fn schedule_retry(
        &self,
        key: &str,
        message: &str,
        step: &str,
        retry_at_ms: i64,
        now_ms: i64,
    ) -> Result<JobRecord, StoreError> {
        self.transact(|tx| {
            let mut record = tx.require_state(key, JobState::Archiving)?;
            record.failure = Some(next_failure(record.failure.take(), message, step, now_ms));
            tx.requeue_delayed(key, &mut record, retry_at_ms)?;
            Ok(record)
        })
    }

    /// Puts an archiving job back to `queued` at its old queue position and takes back the
    /// attempt, for work that was cancelled rather than failed.
    pub fn release(&self, key: &str) -> Result<JobRecord, StoreError> {
        self.transact(|tx| {
            let mut record = tx.require_state(key, JobState::Archiving)?;
            record.state = JobState::Queued;
            record.attempts = record.attempts.saturating_sub(1);
            tx.update(key, JobState::Archiving, &record)?;
            Ok(record)
        })
    }

    /// Queues a failed job again at the tail, with a fresh attempt count.
    pub fn requeue_failed(&self, key: &str, now_ms: i64) -> Result<JobRecord, StoreError> {
        self.transact(|tx| {
            let mut record = tx.require_state(key, JobState::Failed)?;
            record.state = JobState::Queued;
            record.attempts = 0;
            record.retry_at_ms = None;
            record.seq = tx.queue.generate_id()?;
            record.enqueued_at_ms = now_ms;
            tx.put_queued(key, Some(JobState::Failed), &record)?;
            Ok(record)
        })
    }

    /// Puts every `archiving` job back to `queued` at the head of the queue: its entry moves
    /// to `delayed` with due time 0, which the worker takes before anything else. The attempt
    /// stays counted. Returns how many were found.
    pub fn recover_archiving(&self) -> Result<usize, StoreError> {
        let keys: Vec<String> =
            self.keys_in_state(JobState::Archiving, None).collect::<Result<_, _>>()?;
        for key in &keys {
            self.transact(|tx| {
                let mut record = tx.require_state(key, JobState::Archiving)?;
                tx.requeue_delayed(key, &mut record, 0)
            })?;
        }
        Ok(keys.len())
    }

    pub fn get(&self, key: &str) -> Result<Option<JobRecord>, StoreError> {
        match self.jobs.get(key)? {
            None => Ok(None),
            Some(bytes) => decode_record(key, &bytes).map(Some),
        }
    }

    /// Job ids in one state, in id order, starting after `after`.
    pub fn keys_in_state(
        &self,
        state: JobState,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        let prefix = [state_byte(state)];
        let start = match after {
            Some(after) => {
                let mut key = index_key(state, after);
                key.push(0);
                key
            }
            None => prefix.to_vec(),
        };
        let mut end = prefix.to_vec();
        end[0] += 1;
        self.by_state.range(start..end).map(|entry| {
            let (key, _) = entry?;
            Ok(String::from_utf8_lossy(&key[1..]).into_owned())
        })
    }

    /// All job ids in id order, starting after `after`.
    pub fn keys(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        let start = match after {
            Some(after) => {
                let mut key = after.as_bytes().to_vec();
                key.push(0);
                key
            }
            None => Vec::new(),
        };
        self.jobs.range(start..).map(|entry| {
            let (key, _) = entry?;
            Ok(String::from_utf8_lossy(&key).into_owned())
        })
    }

    /// Job counts per state, from the persisted counters.
    pub fn counts(&self) -> Result<StateCounts, StoreError> {
        let read = |state: JobState| -> Result<u64, StoreError> {
            Ok(self.counts.get(state.as_str())?.map(|v| decode_count(&v)).unwrap_or(0))
        };
        Ok(StateCounts {
            queued: read(JobState::Queued)?,
            archiving: read(JobState::Archiving)?,
            archived: read(JobState::Archived)?,
            failed: read(JobState::Failed)?,
        })
    }

    /// Runs `body` as one sled transaction over all trees. sled retries the body on conflict.
    fn transact<T>(
        &self,
        body: impl Fn(&Tx<'_>) -> Result<T, ConflictableTransactionError<StoreError>>,
    ) -> Result<T, StoreError> {
        let trees = (&self.jobs, &self.queue, &self.delayed, &self.by_state, &self.counts);
        let result = trees.transaction(|(jobs, queue, delayed, by_state, counts)| {
            body(&Tx { jobs, queue, delayed, by_state, counts })
        });
        match result {
            Ok(value) => Ok(value),
            Err(TransactionError::Abort(err)) => Err(err),
            Err(TransactionError::Storage(err)) => Err(StoreError::Sled(err)),
        }
    }
}

/// The trees inside one transaction, with the moves every state change shares.
struct Tx<'a> {
    jobs: &'a TransactionalTree,
    queue: &'a TransactionalTree,
    delayed: &'a TransactionalTree,
    by_state: &'a TransactionalTree,
    counts: &'a TransactionalTree,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl Tx<'_> {
    fn abort<T>(&self, err: StoreError) -> TxResult<T> {
        Err(ConflictableTransactionError::Abort(err))
    }

    fn get_record(&self, key: &str) -> TxResult<Option<JobRecord>> {
        match self.jobs.get(key)? {
            None => Ok(None),
            Some(bytes) => {
                decode_record(key, &bytes).map(Some).map_err(ConflictableTransactionError::Abort)
            }
        }
    }

    fn require(&self, key: &str) -> TxResult<JobRecord> {
        match self.get_record(key)? {
            Some(record) => Ok(record),
            None => self.abort(StoreError::NotFound { id: key.to_owned() }),
        }
    }

    fn require_state(&self, key: &str, expected: JobState) -> TxResult<JobRecord> {
        let record = self.require(key)?;
        if record.state != expected {
            return self.abort(StoreError::WrongState {
                id: key.to_owned(),
                state: record.state,
                expected: expected.as_str(),
            });
        }
        Ok(record)
    }

    /// Writes a record whose state may differ from `old_state`, moving its index entry and
    /// both counts.
    fn update(&self, key: &str, old_state: JobState, record: &JobRecord) -> TxResult<()> {
        let bytes = encode_record(record).map_err(ConflictableTransactionError::Abort)?;
        self.jobs.insert(key, bytes)?;
        if old_state != record.state {
            self.by_state.remove(index_key(old_state, key))?;
            self.by_state.insert(index_key(record.state, key), &[])?;
            self.add_count(old_state, -1)?;
            self.add_count(record.state, 1)?;
        }
        Ok(())
    }

    /// Writes a newly queued record and its queue entry; `old_state` is the state of the
    /// record it replaces, if any.
    fn put_queued(
        &self,
        key: &str,
        old_state: Option<JobState>,
        record: &JobRecord,
    ) -> TxResult<()> {
        self.queue.insert(&record.seq.to_be_bytes(), key.as_bytes())?;
        match old_state {
            Some(old_state) => self.update(key, old_state, record),
            None => {
                let bytes = encode_record(record).map_err(ConflictableTransactionError::Abort)?;
                self.jobs.insert(key, bytes)?;
                self.by_state.insert(index_key(record.state, key), &[])?;
                self.add_count(record.state, 1)?;
                Ok(())
            }
        }
    }

    /// Moves an archiving job back to `queued` with its entry in `delayed`, due at `due_ms`,
    /// and writes the record.
    fn requeue_delayed(&self, key: &str, record: &mut JobRecord, due_ms: i64) -> TxResult<()> {
        self.remove_entry(record)?;
        record.state = JobState::Queued;
        record.retry_at_ms = Some(due_ms);
        self.delayed.insert(delayed_key(due_ms, record.seq), key.as_bytes())?;
        self.update(key, JobState::Archiving, record)
    }

    /// Removes a job's queue entry, from `queue` or `delayed`.
    fn remove_entry(&self, record: &JobRecord) -> TxResult<()> {
        match record.retry_at_ms {
            Some(due) => self.delayed.remove(delayed_key(due, record.seq))?,
            None => self.queue.remove(&record.seq.to_be_bytes())?,
        };
        Ok(())
    }

    fn count(&self, state: JobState) -> Result<u64, UnabortableTransactionError> {
        Ok(self.counts.get(state.as_str())?.map(|v| decode_count(&v)).unwrap_or(0))
    }

    fn add_count(&self, state: JobState, delta: i64) -> Result<(), UnabortableTransactionError> {
        let current = self.count(state)?;
        let next = current.saturating_add_signed(delta);
        self.counts.insert(state.as_str(), &next.to_be_bytes())?;
        Ok(())
    }
}

fn next_failure(previous: Option<Failure>, message: &str, step: &str, now_ms: i64) -> Failure {
    /// Keeps the failure history of a job bounded however often it is retried.
    const MAX_HISTORY: usize = 20;
    let mut history = previous.map(|failure| failure.history).unwrap_or_default();
    history.push(format!("{step}: {message}"));
    if history.len() > MAX_HISTORY {
        history.drain(..history.len() - MAX_HISTORY);
    }
    Failure { message: message.to_owned(), step: step.to_owned(), at_ms: now_ms, history }
}

/// Key of the record that marks a store as created by this service, in sled's default tree.
const MARKER_KEY: &[u8] = b"job-archiver-store";

/// Writes the marker into a new store, or requires it in an existing one.
///
/// sled 0.34 opens a damaged log as an empty database when it has no snapshot yet, which is
/// the case until a store has been reopened once. Without the marker, such damage would
/// silently drop every acknowledged job.
fn check_marker(db: &sled::Db, path: &Path, existed: bool) -> Result<(), StoreError> {
    if db.get(MARKER_KEY)?.is_some() {
        return Ok(());
    }
    if existed {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "the store's marker record is missing, so its files are damaged or were \
                      not written by job-archiver; restore the folder from a backup, or move it \
                      away to start with an empty queue"
                .to_owned(),
        });
    }
    db.insert(MARKER_KEY, &[RECORD_FORMAT_VERSION])?;
    db.flush()?;
    Ok(())
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn state_byte(state: JobState) -> u8 {
    match state {
        JobState::Queued => b'q',
        JobState::Archiving => b'r',
        JobState::Archived => b's',
        JobState::Failed => b't',
    }
}

fn index_key(state: JobState, key: &str) -> Vec<u8> {
    let mut index = Vec::with_capacity(1 + key.len());
    index.push(state_byte(state));
    index.extend_from_slice(key.as_bytes());
    index
}

fn delayed_key(due_ms: i64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&(due_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn state_from_byte(byte: u8) -> Option<JobState> {
    JobState::ALL.into_iter().find(|state| state_byte(*state) == byte)
}

fn decode_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let len = bytes.len().min(8);
    buf[8 - len..].copy_from_slice(&bytes[..len]);
    u64::from_be_bytes(buf)
}

fn decode_count(bytes: &IVec) -> u64 {
    decode_u64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> JobId {
        JobId::new("fritz", n, 100).unwrap()
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
        (dir, store)
    }

    #[test]
    fn record_round_trips_with_version() {
        let record = JobRecord {
            state: JobState::Failed,
            attempts: 3,
            seq: 9,
            retry_at_ms: Some(5),
            enqueued_at_ms: 1,
            started_at_ms: Some(2),
            archived_at_ms: None,
            archive_path: None,
            archive_bytes: 0,
            archive_duration_ms: None,
            failure: Some(Failure {
                message: "boom".into(),
                step: "load".into(),
                at_ms: 3,
                history: vec!["load: boom".into()],
            }),
            job_end_time: 77,
            meta_json: vec![b'x'; 10_000],
        };
        let bytes = encode_record(&record).unwrap();
        assert_eq!(bytes[0], RECORD_FORMAT_VERSION);
        assert!(bytes.len() < 1000, "large meta is not deflated: {} bytes", bytes.len());
        assert_eq!(decode_record("k", &bytes).unwrap(), record);
    }

    #[test]
    fn unknown_version_is_reported() {
        let err = decode_record("fritz/1/2", &[9, 0, 0]).unwrap_err();
        assert!(matches!(err, StoreError::UnknownFormatVersion { version: 9, .. }), "{err}");
    }

    #[test]
    fn enqueue_claim_finish_keeps_counts() {
        let (_dir, store) = open();
        let jobs = vec![(id(1), 5, b"{}".to_vec()), (id(2), 5, b"{}".to_vec())];
        let out = store.enqueue(&jobs, 10, u64::MAX).unwrap();
        assert_eq!(out, vec![Enqueued::Queued, Enqueued::Queued]);
        let again = store.enqueue(&jobs[..1], 11, u64::MAX).unwrap();
        assert_eq!(again, vec![Enqueued::Existing(JobState::Queued)]);

        let first = store.next_to_claim(12).unwrap().unwrap();
        assert_eq!(first, "fritz/1/100");
        store.start_attempt(&first, 12).unwrap();
        store.mark_failed(&first, "no data", "load", 13).unwrap();
        let counts = store.counts().unwrap();
        assert_eq!((counts.queued, counts.failed), (1, 1));

        let requeued = store.enqueue(&jobs[..1], 14, u64::MAX).unwrap();
        assert_eq!(requeued, vec![Enqueued::Queued]);
        let head = store.next_to_claim(14).unwrap().unwrap();
        assert_eq!(head, "fritz/2/100", "a re-triggered failed job goes to the tail");
        assert_eq!(store.get("fritz/1/100").unwrap().unwrap().failure.unwrap().step, "load");
        let counts = store.counts().unwrap();
        assert_eq!((counts.queued, counts.failed), (2, 0));
    }

    #[test]
    fn recover_puts_archiving_back_at_head() {
        let (_dir, store) = open();
        let jobs: Vec<_> = (1..=3).map(|n| (id(n), 5, b"{}".to_vec())).collect();
        store.enqueue(&jobs, 10, u64::MAX).unwrap();
        store.start_attempt("fritz/1/100", 11).unwrap();
        assert_eq!(store.recover_archiving().unwrap(), 1);
        let record = store.get("fritz/1/100").unwrap().unwrap();
        assert_eq!(record.state, JobState::Queued);
        assert_eq!(record.attempts, 1, "the crashed attempt stays counted");
        assert_eq!(store.next_to_claim(12).unwrap().unwrap(), "fritz/1/100");
        assert!(store.check().unwrap().problems.is_empty(), "store unsound after recovery");
    }

    #[test]
    fn oversized_record_is_rejected() {
        let (_dir, store) = open();
        // Random bytes do not deflate, so the record stays above the limit.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let meta: Vec<u8> = (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        let err = store.enqueue(&[(id(1), 5, meta)], 1, u64::MAX).unwrap_err();
        assert!(matches!(err, StoreError::RecordTooLarge { .. }), "{err}");
        assert_eq!(store.counts().unwrap(), StateCounts::default());
    }

    #[test]
    fn queue_limit_rejects_whole_batch() {
        let (_dir, store) = open();
        store.enqueue(&[(id(1), 5, b"{}".to_vec())], 1, 2).unwrap();
        let batch = vec![(id(2), 5, b"{}".to_vec()), (id(3), 5, b"{}".to_vec())];
        let err = store.enqueue(&batch, 2, 2).unwrap_err();
        assert!(matches!(err, StoreError::QueueFull { queued: 1, adding: 2, limit: 2 }), "{err}");
        assert_eq!(store.counts().unwrap().queued, 1, "nothing of the rejected batch is stored");
        assert!(store.get("fritz/2/100").unwrap().is_none(), "job 2 stored despite the limit");
    }

    #[test]
    fn retry_waits_without_blocking_queue() {
        let (_dir, store) = open();
        let jobs: Vec<_> = (1..=2).map(|n| (id(n), 5, b"{}".to_vec())).collect();
        store.enqueue(&jobs, 10, u64::MAX).unwrap();
        store.start_attempt("fritz/1/100", 11).unwrap();
        store.schedule_retry("fritz/1/100", "store down", "load", 1_000, 12).unwrap();

        assert_eq!(store.next_to_claim(500).unwrap().as_deref(), Some("fritz/2/100"), "before due");
        assert_eq!(store.next_to_claim(1_000).unwrap().as_deref(), Some("fritz/1/100"), "once due");
        assert_eq!(store.next_retry_due().unwrap(), Some(1_000));
        let record = store.get("fritz/1/100").unwrap().unwrap();
        assert_eq!(record.state, JobState::Queued);
        assert_eq!(record.failure.unwrap().history, vec!["load: store down".to_owned()]);

        store.start_attempt("fritz/1/100", 1_001).unwrap();
        store.mark_archived("fritz/1/100", "p".into(), 1, 1, 1_002).unwrap();
        assert_eq!(store.next_retry_due().unwrap(), None, "the delayed entry is gone");
        let report = store.check().unwrap();
        assert!(report.problems.is_empty(), "problems: {:?}", report.problems);
        assert_eq!(report.counts.archived, 1);
    }

    #[test]
    fn check_reports_bad_counts() {
        let (_dir, store) = open();
        store.enqueue(&[(id(1), 5, b"{}".to_vec())], 1, u64::MAX).unwrap();
        store.counts.insert("queued", &7u64.to_be_bytes()).unwrap();
        let problems = store.check().unwrap().problems.join("\n");
        assert!(problems.contains("count of queued jobs is 7"), "{problems}");

        store.jobs.insert("fritz/9/9", &[9u8, 1, 2][..]).unwrap();
        let problems = store.check().unwrap().problems;
        assert_eq!(problems.len(), 1, "an undecodable record is one problem: {problems:?}");
        assert!(problems[0].contains("format version 9"), "{problems:?}");
    }
}
