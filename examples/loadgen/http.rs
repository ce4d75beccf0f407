//! HTTP trigger load: N keep-alive clients post single jobs with unique ids to
//! `/api/jobs/archive` and record each acknowledgement's latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::probe::{self, percentile};

/// A run stops after this many failed requests, so a broken server cannot keep it busy.
const MAX_ERRORS: u64 = 100;

/// How long one load level runs.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// A fixed number of acknowledged jobs, shared by all clients.
    Count(u64),
    /// A fixed time.
    Duration(Duration),
}

/// Trigger bodies: the fritz example job without its statistics, with a unique `jobId` each.
pub struct JobTemplate {
    fields: Map<String, Value>,
}

impl JobTemplate {
    /// Loads the fritz example job and sets its cluster to `cluster`.
    pub fn load(cluster: &str) -> anyhow::Result<JobTemplate> {
        let path = format!("{}/jobs/fritz-398764-meta.json", crate::server::EXAMPLES_DIR);
        let text = std::fs::read(&path).map_err(|err| anyhow::format_err!("{path}: {err}"))?;
        let Value::Object(mut fields) = serde_json::from_slice(&text)? else {
            anyhow::bail!("{path}: not a JSON object");
        };
        fields.remove("statistics");
        fields.insert("cluster".to_owned(), Value::from(cluster));
        Ok(JobTemplate { fields })
    }

    /// Returns the job object with `jobId` set to `job_id`.
    pub fn job(&self, job_id: u64) -> Value {
        let mut fields = self.fields.clone();
        fields.insert("jobId".to_owned(), Value::from(job_id));
        Value::Object(fields)
    }

    pub fn body(&self, job_id: u64) -> Vec<u8> {
        serde_json::to_vec(&self.job(job_id)).expect("a JSON value serializes")
    }
}

/// Result of one load level.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub clients: usize,
    pub acks: u64,
    pub errors: u64,
    pub seconds: f64,
    pub acks_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// CPU seconds the server process used during the level, when its pid is known.
    pub server_cpu_seconds: Option<f64>,
    /// CPU seconds the load generator used during the level.
    pub client_cpu_seconds: Option<f64>,
    /// The first error, if any, for the report.
    pub first_error: Option<String>,
}

/// Shared state of the clients of one level.
struct Shared {
    url: String,
    template: Arc<JobTemplate>,
    next_id: Arc<AtomicU64>,
    /// One past the last job id to send, for [`Limit::Count`].
    end_id: u64,
    deadline: Option<Instant>,
    errors: AtomicU64,
    stop: AtomicBool,
    first_error: std::sync::Mutex<Option<String>>,
}

/// Runs `clients` concurrent clients against `url` until `limit`. Job ids are taken from
/// `next_id`, so successive levels on one server never repeat an id. `progress`, when given, is
/// increased after every acknowledgement, for samplers that watch the run.
pub async fn run_level(
    url: &str,
    clients: usize,
    limit: Limit,
    template: Arc<JobTemplate>,
    next_id: Arc<AtomicU64>,
    server_pid: Option<u32>,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<LoadResult> {
    let first_id = next_id.load(Ordering::SeqCst);
    let (end_id, deadline) = match limit {
        Limit::Count(count) => (first_id + count, None),
        Limit::Duration(duration) => (u64::MAX, Some(Instant::now() + duration)),
    };
    let shared = Arc::new(Shared {
        url: format!("{url}/api/jobs/archive"),
        template,
        next_id,
        end_id,
        deadline,
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        first_error: std::sync::Mutex::new(None),
    });

    // Run the clients, with the CPU time of both processes around them.
    let server_cpu_before = server_pid.and_then(probe::cpu_seconds);
    let client_cpu_before = probe::cpu_seconds(std::process::id());
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(run_client(Arc::clone(&shared), progress.clone())))
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();

    let server_cpu_seconds = server_pid
        .and_then(probe::cpu_seconds)
        .zip(server_cpu_before)
        .map(|(after, before)| after - before);
    let client_cpu_seconds = probe::cpu_seconds(std::process::id())
        .zip(client_cpu_before)
        .map(|(after, before)| after - before);
    latencies.sort_unstable();
    let first_error = shared.first_error.lock().expect("error lock poisoned").clone();
    let acks = latencies.len() as u64;
    Ok(LoadResult {
        clients,
        acks,
        errors: shared.errors.load(Ordering::SeqCst),
        seconds,
        acks_per_second: acks as f64 / seconds,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        max_us: latencies.last().copied().unwrap_or(0),
        server_cpu_seconds,
        client_cpu_seconds,
        first_error,
    })
}

/// Posts jobs back to back over one keep-alive connection and returns the latency of each
/// acknowledged job in microseconds.
async fn run_client(
    shared: Arc<Shared>,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<Vec<u64>> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
    let mut latencies = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        let job_id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        if job_id >= shared.end_id {
            break;
        }
        let body = shared.template.body(job_id);
        let started = Instant::now();
        let result = client
            .post(&shared.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let outcome = match result {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if status == reqwest::StatusCode::ACCEPTED {
                    Ok(())
                } else {
                    Err(format!("job {job_id}: HTTP {status}: {text}"))
                }
            }
            Err(err) => Err(format!("job {job_id}: {err}")),
        };
        match outcome {
            Ok(()) => {
                latencies.push(started.elapsed().as_micros() as u64);
                if let Some(progress) = &progress {
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(message) => {
                shared.first_error.lock().expect("error lock poisoned").get_or_insert(message);
                if shared.errors.fetch_add(1, Ordering::SeqCst) + 1 >= MAX_ERRORS {
                    shared.stop.store(true, Ordering::SeqCst);
                }
            }
        }
    }
    Ok(latencies)
}
