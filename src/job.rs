//! Jobs as the service sees them: the identity `(cluster, jobId, startTime)`, the queue states and
//! the validated job metadata taken from a trigger body in the job-archive `meta.json` format.
//!
//! This module does no I/O. Validation happens once, in [`JobMeta::from_json`], so everything
//! downstream can rely on the invariants documented on [`JobId`] and [`JobMeta`].

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

/// Identity of a job, written `<cluster>/<jobId>/<startTime>`.
///
/// Invariant: `cluster` matches `[A-Za-z0-9_.-]+` and is neither `.` nor `..`, and `job_id` and
/// `start_time` are non-negative, so every part is safe to use as a folder name under the
/// archive root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId {
    cluster: String,
    job_id: i64,
    start_time: i64,
}

impl JobId {
    /// Builds an id after checking every part; the error names the part and the rule.
    pub fn new(cluster: &str, job_id: i64, start_time: i64) -> Result<JobId, InvalidJob> {
        check_cluster_name(cluster)?;
        if job_id < 0 {
            return Err(InvalidJob::new("jobId", format!("must not be negative, got {job_id}")));
        }
        if start_time < 0 {
            return Err(InvalidJob::new(
                "startTime",
                format!("must not be negative, got {start_time}"),
            ));
        }
        Ok(JobId { cluster: cluster.to_owned(), job_id, start_time })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn job_id(&self) -> i64 {
        self.job_id
    }

    pub fn start_time(&self) -> i64 {
        self.start_time
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.cluster, self.job_id, self.start_time)
    }
}

impl FromStr for JobId {
    type Err = InvalidJob;

    /// Parses `<cluster>/<jobId>/<startTime>`.
    fn from_str(text: &str) -> Result<JobId, InvalidJob> {
        let parts: Vec<&str> = text.split('/').collect();
        let [cluster, job_id, start_time] = parts[..] else {
            return Err(InvalidJob::new(
                "id",
                format!("{text:?} is not of the form <cluster>/<jobId>/<startTime>"),
            ));
        };
        let job_id = parse_plain_integer(job_id).ok_or_else(|| {
            InvalidJob::new("jobId", format!("{job_id:?} is not a non-negative integer"))
        })?;
        let start_time = parse_plain_integer(start_time).ok_or_else(|| {
            InvalidJob::new("startTime", format!("{start_time:?} is not a non-negative integer"))
        })?;
        JobId::new(cluster, job_id, start_time)
    }
}

/// Parses decimal digits without a sign or leading zeros, so that each job has one id text.
fn parse_plain_integer(text: &str) -> Option<i64> {
    let plain = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if plain {
        text.parse().ok()
    } else {
        None
    }
}

/// Checks that a cluster name is a plain folder name: `[A-Za-z0-9_.-]+`, not `.` or `..`.
pub fn check_cluster_name(cluster: &str) -> Result<(), InvalidJob> {
    let plain = !cluster.is_empty()
        && cluster.len() <= 128
        && cluster.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !plain || cluster == "." || cluster == ".." {
        return Err(InvalidJob::new(
            "cluster",
            format!(
                "{cluster:?} is not a plain name: use 1 to 128 of the characters A-Z a-z 0-9 _ . - \
                 and not \".\" or \"..\""
            ),
        ));
    }
    Ok(())
}

/// Where a job is in its life. The worker is the only writer of `Archiving`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Accepted and durably stored, waiting for the worker.
    Queued,
    /// Taken by the worker; its attempt has been counted.
    Archiving,
    /// Written to the job-archive.
    Archived,
    /// Given up on, with a reason; a retry queues it again.
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 4] =
        [JobState::Queued, JobState::Archiving, JobState::Archived, JobState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Archiving => "archiving",
            JobState::Archived => "archived",
            JobState::Failed => "failed",
        }
    }

    /// Returns true if and only if a new trigger for a job in this state queues it again.
    pub fn accepts_trigger(self) -> bool {
        matches!(self, JobState::Failed)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(text: &str) -> Result<JobState, String> {
        JobState::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| {
            format!("unknown state {text:?}: use one of queued, archiving, archived, failed")
        })
    }
}

/// One host of a job, from `resources[i]` in `meta.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub hostname: String,
    /// OS processor ids the job ran on; `None` means the whole node.
    pub hwthreads: Option<Vec<u32>>,
    /// Accelerator device ids the job used.
    pub accelerators: Option<Vec<String>>,
}

/// A validated job in the job-archive `meta.json` format.
///
/// Invariant: `resources` is not empty, `num_nodes >= 1`, `duration >= 0`, and `raw` is the
/// object the job came from, so every field the caller sent, known or not, is written back to
/// the archived `meta.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobMeta {
    pub id: JobId,
    pub sub_cluster: Option<String>,
    pub num_nodes: u32,
    pub num_acc: u32,
    pub duration: i64,
    pub resources: Vec<Resource>,
    pub raw: Map<String, Value>,
}

impl JobMeta {
    /// Validates one job object. The error names the first field that is wrong.
    pub fn from_json(value: Value) -> Result<JobMeta, InvalidJob> {
        let Value::Object(raw) = value else {
            return Err(InvalidJob::new(
                "job",
                format!("expected a JSON object, got {}", json_type_name(&value)),
            ));
        };
        let cluster = required_str(&raw, "cluster")?;
        let job_id = required_int(&raw, "jobId")?;
        let start_time = required_int(&raw, "startTime")?;
        let id = JobId::new(cluster, job_id, start_time)?;

        let num_nodes = required_int(&raw, "numNodes")?;
        if num_nodes < 1 || num_nodes > i64::from(u32::MAX) {
            return Err(InvalidJob::new(
                "numNodes",
                format!("must be at least 1, got {num_nodes}"),
            ));
        }
        let duration = required_int(&raw, "duration")?;
        if duration < 0 {
            return Err(InvalidJob::new(
                "duration",
                format!("must not be negative, got {duration}"),
            ));
        }
        let num_acc = match optional_int(&raw, "numAcc")? {
            None => 0,
            Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => n as u32,
            Some(n) => {
                return Err(InvalidJob::new("numAcc", format!("must not be negative, got {n}")))
            }
        };
        let sub_cluster = match raw.get("subCluster") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(wrong_type("subCluster", "a string", other)),
        };
        let resources = parse_resources(&raw)?;
        if resources.len() as i64 != num_nodes {
            return Err(InvalidJob::new(
                "numNodes",
                format!(
                    "is {num_nodes}, but resources lists {} hosts; they must agree, as in \
                     cc-backend's start_job",
                    resources.len()
                ),
            ));
        }

        Ok(JobMeta {
            id,
            sub_cluster,
            num_nodes: num_nodes as u32,
            num_acc,
            duration,
            resources,
            raw,
        })
    }

    /// End of the job in epoch seconds: `startTime + duration`.
    pub fn end_time(&self) -> i64 {
        self.id.start_time().saturating_add(self.duration)
    }
}

/// A trigger body that is not a valid job. `field` is the JSON key at fault, with an array
/// index or a nested path where that helps (`resources[2].hostname`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidJob {
    pub field: String,
    pub problem: String,
}

impl InvalidJob {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> InvalidJob {
        InvalidJob { field: field.into(), problem: problem.into() }
    }
}

fn parse_resources(raw: &Map<String, Value>) -> Result<Vec<Resource>, InvalidJob> {
    let items = match raw.get("resources") {
        None | Some(Value::Null) => return Err(missing("resources")),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(wrong_type("resources", "an array of objects", other)),
    };
    if items.is_empty() {
        return Err(InvalidJob::new("resources", "must list at least one host, got []"));
    }
    let mut resources = Vec::with_capacity(items.len());
    for (idx, item) in items.iter().enumerate() {
        let field = format!("resources[{idx}]");
        let Value::Object(object) = item else {
            return Err(wrong_type(&field, "an object", item));
        };
        let hostname = match object.get("hostname") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) => {
                return Err(InvalidJob::new(format!("{field}.hostname"), "must not be empty"))
            }
            None | Some(Value::Null) => return Err(missing(&format!("{field}.hostname"))),
            Some(other) => return Err(wrong_type(&format!("{field}.hostname"), "a string", other)),
        };
        let hwthreads = match object.get("hwthreads") {
            None | Some(Value::Null) => None,
            Some(Value::Array(ids)) => {
                let mut parsed = Vec::with_capacity(ids.len());
                for (id_idx, id) in ids.iter().enumerate() {
                    let id_field = format!("{field}.hwthreads[{id_idx}]");
                    match id.as_u64().and_then(|id| u32::try_from(id).ok()) {
                        Some(id) => parsed.push(id),
                        None => return Err(wrong_type(&id_field, "a non-negative integer", id)),
                    }
                }
                Some(parsed)
            }
            Some(other) => {
                return Err(wrong_type(&format!("{field}.hwthreads"), "an array", other))
            }
        };
        let accelerators = match object.get("accelerators") {
            None | Some(Value::Null) => None,
            Some(Value::Array(ids)) => {
                let mut parsed = Vec::with_capacity(ids.len());
                for (id_idx, id) in ids.iter().enumerate() {
                    match id {
                        Value::String(s) => parsed.push(s.clone()),
                        other => {
                            let id_field = format!("{field}.accelerators[{id_idx}]");
                            return Err(wrong_type(&id_field, "a string", other));
                        }
                    }
                }
                Some(parsed)
            }
            Some(other) => {
                return Err(wrong_type(&format!("{field}.accelerators"), "an array", other))
            }
        };
        resources.push(Resource { hostname, hwthreads, accelerators });
    }
    Ok(resources)
}

fn required_str<'a>(raw: &'a Map<String, Value>, field: &str) -> Result<&'a str, InvalidJob> {
    match raw.get(field) {
        None | Some(Value::Null) => Err(missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong_type(field, "a string", other)),
    }
}

fn required_int(raw: &Map<String, Value>, field: &str) -> Result<i64, InvalidJob> {
    optional_int(raw, field)?.ok_or_else(|| missing(field))
}

fn optional_int(raw: &Map<String, Value>, field: &str) -> Result<Option<i64>, InvalidJob> {
    match raw.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(n) => Ok(Some(n)),
            None => Err(InvalidJob::new(
                field,
                format!("expected an integer in the 64-bit range, got {n}"),
            )),
        },
        Some(other) => Err(wrong_type(field, "an integer", other)),
    }
}

fn missing(field: &str) -> InvalidJob {
    InvalidJob::new(field, "is missing")
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> InvalidJob {
    InvalidJob::new(field, format!("expected {expected}, got {}", json_type_name(got)))
}

/// Names a JSON value's type the way error messages print it.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({"jobId": 5, "cluster": "fritz", "startTime": 100, "numNodes": 1, "duration": 60,
               "resources": [{"hostname": "f0101", "hwthreads": [0, 1]}]})
    }

    #[test]
    fn id_display_round_trips() {
        let id = JobId::new("fritz", 398764, 1675954353).unwrap();
        assert_eq!(id.to_string(), "fritz/398764/1675954353");
        assert_eq!("fritz/398764/1675954353".parse::<JobId>().unwrap(), id);
    }

    #[test]
    fn cluster_names_that_escape_are_rejected() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", "a\0b"] {
            let err = JobId::new(bad, 1, 1).unwrap_err();
            assert_eq!(err.field, "cluster", "cluster {bad:?} gave {err}");
        }
        assert!(JobId::new("emmy.v2_a-b", 1, 1).is_ok());
    }

    #[test]
    fn valid_job_parses() {
        let job = JobMeta::from_json(valid()).unwrap();
        assert_eq!(job.id.to_string(), "fritz/5/100");
        assert_eq!(job.resources[0].hwthreads, Some(vec![0, 1]));
        assert_eq!(job.end_time(), 160);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("jobId", json!(null), "jobId"),
            ("duration", json!(-1), "duration"),
            ("resources", json!([]), "resources"),
            ("resources", json!([{"hostname": 3}]), "resources[0].hostname"),
            ("numNodes", json!("1"), "numNodes"),
            ("startTime", json!(1.5), "startTime"),
            ("numNodes", json!(2), "numNodes"),
        ];
        for (key, value, field) in cases {
            let mut job = valid();
            job[key] = value.clone();
            let err = JobMeta::from_json(job).unwrap_err();
            assert_eq!(err.field, field, "{key} = {value} gave {err}");
        }
    }
}
