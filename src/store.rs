//! The embedded store: sled trees for job records, the queue order, a per-state index and the
//! per-state counts, with the on-disk record format and its version.
//!
//! Only this module knows sled. Every state change is one sled transaction over all trees, so
//! the record, its queue entry, its index entry and the counts never disagree. A write is in
//! sled's memory when a method returns; [`Store::sync`] makes everything written so far durable.
//!
//! Trees and keys:
//! - `jobs`: job id (`cluster/jobId/startTime`) to a versioned [`JobRecord`].
//! - `queue`: sequence number (u64, big-endian) to job id; acceptance order, oldest first.
//! - `by_state`: one state byte followed by the job id, to nothing; lists jobs of one state.
//! - `counts`: state name to a u64 count (big-endian).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{IVec, Transactional, Tree};

use crate::job::{JobId, JobState};

/// Version byte in front of every stored job record. Bump it when [`StoredRecordV1`] changes,
/// and keep a decoder for every older version.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// Upper bound for one encoded job record. sled 0.34 writes values above a quarter of its
/// 512 KiB segment to separate blob files that it never fsyncs, so records stay below that
/// threshold and the data-file sync in [`Store::sync`] covers every record.
pub const MAX_RECORD_BYTES: usize = 96 * 1024;

/// `meta.json` bodies above this size are stored deflated.
const COMPRESS_META_ABOVE: usize = 4 * 1024;

/// A job as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub state: JobState,
    /// Attempts since the job was last queued by a trigger or a retry.
    pub attempts: u32,
    /// Queue position while queued or archiving; meaningless otherwise.
    pub seq: u64,
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
    #[error("job {id}: is {state}, expected {expected}")]
    WrongState { id: String, state: JobState, expected: &'static str },
}

/// The sled database and its trees.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    jobs: Tree,
    queue: Tree,
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
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(1000));
        let db = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
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
        Ok(Store {
            path: path.to_owned(),
            jobs: db.open_tree("jobs")?,
            queue: db.open_tree("queue")?,
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
    pub fn enqueue(
        &self,
        jobs: &[(JobId, i64, Vec<u8>)],
        now_ms: i64,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let mut prepared = Vec::with_capacity(jobs.len());
        for (id, end_time, meta) in jobs {
            let record = JobRecord {
                state: JobState::Queued,
                attempts: 0,
                seq: 0,
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
            let mut outcomes = Vec::with_capacity(prepared.len());
            for (key, record) in &prepared {
                let previous = tx.get_record(key)?;
                if let Some(previous) = &previous {
                    if !previous.state.accepts_trigger() {
                        outcomes.push(Enqueued::Existing(previous.state));
                        continue;
                    }
                }
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

    /// The oldest queue entry: its sequence number and job id.
    pub fn first_in_queue(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.queue_entries(None).next().transpose()
    }

    /// Queue entries in order, starting after sequence number `after`.
    pub fn queue_entries(
        &self,
        after: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, String), StoreError>> + '_ {
        let start = after.map(|seq| seq.saturating_add(1)).unwrap_or(0);
        self.queue.range(start.to_be_bytes()..).map(|entry| {
            let (key, value) = entry?;
            Ok((decode_seq(&key), String::from_utf8_lossy(&value).into_owned()))
        })
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
            tx.queue.remove(&record.seq.to_be_bytes())?;
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
            tx.queue.remove(&record.seq.to_be_bytes())?;
            record.state = JobState::Failed;
            record.failure = Some(next_failure(record.failure.take(), message, step, now_ms));
            tx.update(key, JobState::Archiving, &record)?;
            Ok(record)
        })
    }

    /// Puts an archiving job back to `queued` at its old queue position. `uncount_attempt`
    /// takes back the attempt, for work that was cancelled rather than failed.
    pub fn release(&self, key: &str, uncount_attempt: bool) -> Result<JobRecord, StoreError> {
        self.transact(|tx| {
            let mut record = tx.require_state(key, JobState::Archiving)?;
            record.state = JobState::Queued;
            if uncount_attempt {
                record.attempts = record.attempts.saturating_sub(1);
            }
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
            record.seq = tx.queue.generate_id()?;
            record.enqueued_at_ms = now_ms;
            tx.put_queued(key, Some(JobState::Failed), &record)?;
            Ok(record)
        })
    }

    /// Puts every `archiving` job back to `queued`, keeping its queue position, so it is the
    /// first to be taken again. Returns how many were found.
    pub fn recover_archiving(&self) -> Result<usize, StoreError> {
        let keys: Vec<String> =
            self.keys_in_state(JobState::Archiving, None).collect::<Result<_, _>>()?;
        for key in &keys {
            self.release(key, false)?;
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

    /// Number of entries in the queue tree, by a scan. Used by the integrity check only.
    pub fn queue_len_scanned(&self) -> usize {
        self.queue.len()
    }

    /// Number of jobs of one state in the index, by a scan. Used by the integrity check only.
    pub fn state_len_scanned(&self, state: JobState) -> usize {
        self.by_state.scan_prefix([state_byte(state)]).count()
    }

    /// Runs `body` as one sled transaction over all trees. sled retries the body on conflict.
    fn transact<T>(
        &self,
        body: impl Fn(&Tx<'_>) -> Result<T, ConflictableTransactionError<StoreError>>,
    ) -> Result<T, StoreError> {
        let result = (&self.jobs, &self.queue, &self.by_state, &self.counts).transaction(
            |(jobs, queue, by_state, counts)| body(&Tx { jobs, queue, by_state, counts }),
        );
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

    fn add_count(&self, state: JobState, delta: i64) -> Result<(), UnabortableTransactionError> {
        let current = self.counts.get(state.as_str())?.map(|v| decode_count(&v)).unwrap_or(0);
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

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn state_byte(state: JobState) -> u8 {
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

fn decode_seq(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let len = bytes.len().min(8);
    buf[8 - len..].copy_from_slice(&bytes[..len]);
    u64::from_be_bytes(buf)
}

fn decode_count(bytes: &IVec) -> u64 {
    decode_seq(bytes)
}

// === On-disk record format ===

/// Version 1 of the stored job record. Field order is part of the format.
#[derive(Serialize, Deserialize)]
struct StoredRecordV1 {
    state: u8,
    attempts: u32,
    seq: u64,
    enqueued_at_ms: i64,
    started_at_ms: Option<i64>,
    archived_at_ms: Option<i64>,
    archive_path: Option<String>,
    archive_bytes: u64,
    archive_duration_ms: Option<u64>,
    failure: Option<StoredFailureV1>,
    job_end_time: i64,
    /// True when `meta` is deflated.
    meta_deflated: bool,
    meta: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct StoredFailureV1 {
    message: String,
    step: String,
    at_ms: i64,
    history: Vec<String>,
}

fn encode_record(record: &JobRecord) -> Result<Vec<u8>, StoreError> {
    let (meta_deflated, meta) = if record.meta_json.len() > COMPRESS_META_ABOVE {
        (true, deflate(&record.meta_json))
    } else {
        (false, record.meta_json.clone())
    };
    let stored = StoredRecordV1 {
        state: state_byte(record.state),
        attempts: record.attempts,
        seq: record.seq,
        enqueued_at_ms: record.enqueued_at_ms,
        started_at_ms: record.started_at_ms,
        archived_at_ms: record.archived_at_ms,
        archive_path: record.archive_path.clone(),
        archive_bytes: record.archive_bytes,
        archive_duration_ms: record.archive_duration_ms,
        failure: record.failure.as_ref().map(|failure| StoredFailureV1 {
            message: failure.message.clone(),
            step: failure.step.clone(),
            at_ms: failure.at_ms,
            history: failure.history.clone(),
        }),
        job_end_time: record.job_end_time,
        meta_deflated,
        meta,
    };
    let mut bytes = vec![RECORD_FORMAT_VERSION];
    let body = bincode::serde::encode_to_vec(&stored, bincode::config::standard())
        .map_err(|err| StoreError::Corrupt { id: String::new(), message: err.to_string() })?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

fn decode_record(key: &str, bytes: &[u8]) -> Result<JobRecord, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt { id: key.to_owned(), message };
    let Some((&version, body)) = bytes.split_first() else {
        return Err(corrupt("empty record".to_owned()));
    };
    if version != RECORD_FORMAT_VERSION {
        return Err(StoreError::UnknownFormatVersion { id: key.to_owned(), version });
    }
    let (stored, used): (StoredRecordV1, usize) =
        bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map_err(|err| corrupt(err.to_string()))?;
    if used != body.len() {
        return Err(corrupt(format!("{} trailing bytes", body.len() - used)));
    }
    let state = match stored.state {
        b'q' => JobState::Queued,
        b'r' => JobState::Archiving,
        b's' => JobState::Archived,
        b't' => JobState::Failed,
        other => return Err(corrupt(format!("unknown state byte {other}"))),
    };
    let meta_json =
        if stored.meta_deflated { inflate(&stored.meta).map_err(corrupt)? } else { stored.meta };
    Ok(JobRecord {
        state,
        attempts: stored.attempts,
        seq: stored.seq,
        enqueued_at_ms: stored.enqueued_at_ms,
        started_at_ms: stored.started_at_ms,
        archived_at_ms: stored.archived_at_ms,
        archive_path: stored.archive_path,
        archive_bytes: stored.archive_bytes,
        archive_duration_ms: stored.archive_duration_ms,
        failure: stored.failure.map(|failure| Failure {
            message: failure.message,
            step: failure.step,
            at_ms: failure.at_ms,
            history: failure.history,
        }),
        job_end_time: stored.job_end_time,
        meta_json,
    })
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    encoder.write_all(bytes).expect("deflate into memory");
    encoder.finish().expect("deflate into memory")
}

fn inflate(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .take(64 * 1024 * 1024)
        .read_to_end(&mut out)
        .map_err(|err| format!("deflated metadata: {err}"))?;
    Ok(out)
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
        let out = store.enqueue(&jobs, 10).unwrap();
        assert_eq!(out, vec![Enqueued::Queued, Enqueued::Queued]);
        let again = store.enqueue(&jobs[..1], 11).unwrap();
        assert_eq!(again, vec![Enqueued::Existing(JobState::Queued)]);

        let (_, first) = store.first_in_queue().unwrap().unwrap();
        assert_eq!(first, "fritz/1/100");
        store.start_attempt(&first, 12).unwrap();
        store.mark_failed(&first, "no data", "load", 13).unwrap();
        let counts = store.counts().unwrap();
        assert_eq!((counts.queued, counts.failed), (1, 1));

        let requeued = store.enqueue(&jobs[..1], 14).unwrap();
        assert_eq!(requeued, vec![Enqueued::Queued]);
        let (_, head) = store.first_in_queue().unwrap().unwrap();
        assert_eq!(head, "fritz/2/100", "a re-triggered failed job goes to the tail");
        assert_eq!(store.get("fritz/1/100").unwrap().unwrap().failure.unwrap().step, "load");
        let counts = store.counts().unwrap();
        assert_eq!((counts.queued, counts.failed), (2, 0));
    }

    #[test]
    fn recover_puts_archiving_back_at_head() {
        let (_dir, store) = open();
        let jobs: Vec<_> = (1..=3).map(|n| (id(n), 5, b"{}".to_vec())).collect();
        store.enqueue(&jobs, 10).unwrap();
        store.start_attempt("fritz/1/100", 11).unwrap();
        assert_eq!(store.recover_archiving().unwrap(), 1);
        let record = store.get("fritz/1/100").unwrap().unwrap();
        assert_eq!(record.state, JobState::Queued);
        assert_eq!(record.attempts, 1, "the crashed attempt stays counted");
        assert_eq!(store.first_in_queue().unwrap().unwrap().1, "fritz/1/100");
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
        let err = store.enqueue(&[(id(1), 5, meta)], 1).unwrap_err();
        assert!(matches!(err, StoreError::RecordTooLarge { .. }), "{err}");
        assert_eq!(store.counts().unwrap(), StateCounts::default());
    }
}
