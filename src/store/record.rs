//! The on-disk form of a job record: one format-version byte, then the bincode 2 encoding of
//! the version's struct. Only this file knows the byte layout.

use serde::{Deserialize, Serialize};

use crate::store::{
    state_byte, state_from_byte, Failure, JobRecord, StoreError, RECORD_FORMAT_VERSION,
};

/// `meta.json` bodies above this size are stored deflated.
const COMPRESS_META_ABOVE: usize = 4 * 1024;

/// Version 1 of the stored job record. Field order is part of the format.
#[derive(Serialize, Deserialize)]
struct StoredRecordV1 {
    state: u8,
    attempts: u32,
    seq: u64,
    retry_at_ms: Option<i64>,
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

pub(crate) fn encode_record(record: &JobRecord) -> Result<Vec<u8>, StoreError> {
    let (meta_deflated, meta) = if record.meta_json.len() > COMPRESS_META_ABOVE {
        (true, deflate(&record.meta_json))
    } else {
        (false, record.meta_json.clone())
    };
    let stored = StoredRecordV1 {
        state: state_byte(record.state),
        attempts: record.attempts,
        seq: record.seq,
        retry_at_ms: record.retry_at_ms,
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

pub(crate) fn decode_record(key: &str, bytes: &[u8]) -> Result<JobRecord, StoreError> {
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
    let Some(state) = state_from_byte(stored.state) else {
        return Err(corrupt(format!("unknown state byte {}", stored.state)));
    };
    let meta_json =
        if stored.meta_deflated { inflate(&stored.meta).map_err(corrupt)? } else { stored.meta };
    Ok(JobRecord {
        state,
        attempts: stored.attempts,
        seq: stored.seq,
        retry_at_ms: stored.retry_at_ms,
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
