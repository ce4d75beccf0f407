//! Request and reply bodies of the HTTP API: the only types serialized over HTTP. Keys are
//! camelCase, as in ClusterCockpit. The CLI decodes the same types.

use serde::{Deserialize, Serialize};

use crate::queue::QueueStats;
use crate::store::JobRecord;

/// Reply to a trigger, one per job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerReply {
    pub id: String,
    pub state: String,
}

/// An error reply: `{"status": "<HTTP status text>", "error": "<message>"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    pub status: String,
    pub error: String,
}

/// A job's state as `GET /api/jobs/...` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub id: String,
    pub state: String,
    /// Attempts since the job was last queued by a trigger or a retry.
    pub attempts: u32,
    /// The last error, kept until the job is archived.
    pub error: Option<String>,
    /// The step the last error came from.
    pub failed_step: Option<String>,
    pub failed_at: Option<String>,
    /// The error of each failed attempt, oldest first.
    pub error_history: Vec<String>,
    /// RFC 3339 times in UTC.
    pub enqueued_at: String,
    pub started_at: Option<String>,
    pub archived_at: Option<String>,
    pub archive_path: Option<String>,
    pub archive_bytes: Option<u64>,
    pub archive_duration_ms: Option<u64>,
}

impl JobStatus {
    pub fn from_record(id: &str, record: &JobRecord) -> JobStatus {
        let archived = record.archived_at_ms.is_some();
        JobStatus {
            id: id.to_owned(),
            state: record.state.as_str().to_owned(),
            attempts: record.attempts,
            error: record.failure.as_ref().map(|failure| failure.message.clone()),
            failed_step: record.failure.as_ref().map(|failure| failure.step.clone()),
            failed_at: record.failure.as_ref().map(|failure| rfc3339(failure.at_ms)),
            error_history: record
                .failure
                .as_ref()
                .map(|failure| failure.history.clone())
                .unwrap_or_default(),
            enqueued_at: rfc3339(record.enqueued_at_ms),
            started_at: record.started_at_ms.map(rfc3339),
            archived_at: record.archived_at_ms.map(rfc3339),
            archive_path: record.archive_path.clone(),
            archive_bytes: archived.then_some(record.archive_bytes),
            archive_duration_ms: record.archive_duration_ms,
        }
    }
}

/// A page of jobs. `next` is the `after` value for the following page, when there may be one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobPage {
    pub jobs: Vec<JobStatus>,
    pub next: Option<String>,
}

/// Reply of `GET /api/queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueReply {
    pub queued: u64,
    pub archiving: u64,
    pub archived: u64,
    pub failed: u64,
    /// When the oldest queued job was accepted, RFC 3339.
    pub oldest_queued_at: Option<String>,
    /// Its age in seconds.
    pub oldest_queued_age_seconds: Option<f64>,
}

impl QueueReply {
    pub fn new(stats: &QueueStats, now_ms: i64) -> QueueReply {
        QueueReply {
            queued: stats.counts.queued,
            archiving: stats.counts.archiving,
            archived: stats.counts.archived,
            failed: stats.counts.failed,
            oldest_queued_at: stats.oldest_enqueued_at_ms.map(rfc3339),
            oldest_queued_age_seconds: stats
                .oldest_enqueued_at_ms
                .map(|at| ((now_ms - at).max(0) as f64) / 1000.0),
        }
    }
}

/// Reply of the retry endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryReply {
    /// Number of jobs queued again.
    pub retried: u64,
}

fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}
