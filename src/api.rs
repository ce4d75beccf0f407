//! The HTTP API: routes, handlers and the mapping of errors to status codes.
//!
//! | method | path | what it does |
//! |---|---|---|
//! | POST | `/api/jobs/archive` | queue one job (`meta.json` object) or an array of jobs; 202 after the durable write |
//! | GET | `/api/jobs?state=&limit=&after=` | a page of jobs, in id order |
//! | GET | `/api/jobs/{cluster}/{jobId}/{startTime}` | one job's state |
//! | POST | `/api/jobs/{cluster}/{jobId}/{startTime}/retry` | queue a failed job again |
//! | POST | `/api/jobs/retry?state=failed` | queue every failed job again |
//! | GET | `/api/queue` | counts per state and the age of the oldest queued job |
//! | GET | `/healthz` | 200 while the process serves requests |
//! | GET | `/readyz` | 200 after start-up recovery, 503 before it and during shutdown |
//! | GET | `/metrics` | Prometheus metrics |

pub mod dto;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tokio::time::Instant;

use crate::auth::Authenticator;
use crate::job::{InvalidJob, JobId, JobMeta, JobState};
use crate::metrics::{Metrics, RejectReason};
use crate::queue::{JobQueue, QueueError};
use crate::store::{now_ms, Enqueued, StoreError};
use dto::{ErrorReply, JobPage, JobStatus, QueueReply, RetryReply, TriggerReply};
use tower_http::timeout::TimeoutLayer;

/// Largest page of `GET /api/jobs`.
const MAX_PAGE: usize = 10_000;

/// Readiness and shutdown flags shared by the server, the worker and `main`.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    shutting_down: AtomicBool,
    /// The last archive write error, until a write succeeds again.
    archive_problem: Mutex<Option<String>>,
}

impl Health {
    /// Marks start-up recovery as done.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Marks the start of shutdown: triggers get 503 and `/readyz` turns 503.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_shutting_down()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Records that the archive could not be read or written, or clears that with `None`.
    pub fn set_archive_problem(&self, problem: Option<String>) {
        if let Ok(mut current) = self.archive_problem.lock() {
            *current = problem;
        }
    }

    /// The archive problem `/readyz` reports, if any.
    pub fn archive_problem(&self) -> Option<String> {
        self.archive_problem.lock().ok().and_then(|problem| problem.clone())
    }
}

/// Limits and timeouts of the HTTP API, from `[server]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    pub max_body_bytes: usize,
    pub max_batch_jobs: usize,
    pub request_timeout: Duration,
    /// Serve `/metrics`, `/healthz` and `/readyz` without authentication.
    pub public_probes: bool,
}

/// What every handler shares.
pub struct AppState {
    pub queue: Arc<dyn JobQueue>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub auth: Authenticator,
    pub limits: ApiLimits,
}

/// Builds the router with every route of the API. Every `/api` route, and the probes unless
/// `public_probes` is set, passes the authenticator first.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/jobs/archive", post(trigger))
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/retry", post(retry_all))
        .route("/api/jobs/{cluster}/{job_id}/{start_time}", get(get_job))
        .route("/api/jobs/{cluster}/{job_id}/{start_time}/retry", post(retry_job))
        .route("/api/queue", get(queue_stats));
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    let authenticated = middleware::from_fn_with_state(Arc::clone(&state), authenticate);
    let (api, probes) = if state.limits.public_probes {
        (api.route_layer(authenticated), probes)
    } else {
        (api.route_layer(authenticated.clone()), probes.route_layer(authenticated))
    };
    api.merge(probes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.limits.request_timeout,
        ))
        .with_state(state)
}

async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match state.auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(failure) => {
            state.metrics.auth_failures.with_label_values(&[failure.as_str()]).inc();
            tracing::warn!(reason = failure.as_str(), path = %request.uri().path(), "request not authenticated");
            ApiError::new(StatusCode::UNAUTHORIZED, failure.message()).into_response()
        }
    }
}

async fn method_not_allowed(request: Request) -> ApiError {
    let message = format!(
        "method {} is not allowed on {}; the README's API table lists each route's method",
        request.method(),
        request.uri().path()
    );
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

/// An error reply with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<QueueError> for ApiError {
    fn from(err: QueueError) -> ApiError {
        let status = match &err {
            QueueError::Store(StoreError::NotFound { .. }) => StatusCode::NOT_FOUND,
            QueueError::Store(StoreError::WrongState { .. }) => StatusCode::CONFLICT,
            QueueError::Store(StoreError::RecordTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            QueueError::Store(StoreError::QueueFull { .. }) => StatusCode::TOO_MANY_REQUESTS,
            QueueError::DiskLow { .. } => StatusCode::INSUFFICIENT_STORAGE,
            QueueError::Sync(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %err, "request failed in the store");
        }
        ApiError::new(status, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorReply {
            status: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            error: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        let retry_after = match self.status {
            StatusCode::SERVICE_UNAVAILABLE => Some("5"),
            StatusCode::TOO_MANY_REQUESTS => Some("30"),
            StatusCode::INSUFFICIENT_STORAGE => Some("60"),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

async fn trigger(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let reject = |reason: RejectReason, err: ApiError| {
        state.metrics.rejected.with_label_values(&[reason.as_str()]).inc();
        tracing::debug!(reason = reason.as_str(), error = %err.message, "trigger rejected");
        err
    };
    if state.health.is_shutting_down() {
        let err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down; send the job again later",
        );
        return Err(reject(RejectReason::ShuttingDown, err));
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let message = format!(
                "body: larger than {} bytes (server.max_body_bytes); split the batch",
                state.limits.max_body_bytes
            );
            let err = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message);
            return Err(reject(RejectReason::TooLarge, err));
        }
        Err(rejection) => {
            let message = format!("body: cannot read: {}", rejection.body_text());
            let err = ApiError::new(rejection.status(), message);
            return Err(reject(RejectReason::InvalidJson, err));
        }
    };
    let (jobs, is_batch) = parse_trigger_body(&body, state.limits.max_batch_jobs)
        .map_err(|(reason, err)| reject(reason, err))?;
    let outcomes = match state.queue.enqueue(&jobs).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            let reason = if err.is_backpressure() {
                tracing::warn!(error = %err, "trigger rejected: the queue is full or the disk is low");
                RejectReason::QueueFull
            } else if err.is_client_error() {
                RejectReason::TooLarge
            } else {
                RejectReason::StoreError
            };
            return Err(reject(reason, ApiError::from(err)));
        }
    };

    let mut any_queued = false;
    let replies: Vec<TriggerReply> = jobs
        .iter()
        .zip(&outcomes)
        .map(|(job, outcome)| {
            let state = match outcome {
                Enqueued::Queued => {
                    any_queued = true;
                    JobState::Queued
                }
                Enqueued::Existing(state) => *state,
            };
            TriggerReply { id: job.id.to_string(), state: state.as_str().to_owned() }
        })
        .collect();
    let newly_queued = outcomes.iter().filter(|outcome| **outcome == Enqueued::Queued).count();
    state.metrics.accepted.inc_by(newly_queued as u64);
    state.metrics.ack_duration.observe(received.elapsed().as_secs_f64());

    let status = if any_queued { StatusCode::ACCEPTED } else { StatusCode::OK };
    if is_batch {
        Ok((status, Json(replies)).into_response())
    } else {
        let reply = replies.into_iter().next().expect("a single job has one reply");
        Ok((status, Json(reply)).into_response())
    }
}

/// Parses a trigger body: one job object or a non-empty array of at most `max_batch_jobs`.
/// Returns the jobs and whether the body was an array.
pub fn parse_trigger_body(
    body: &[u8],
    max_batch_jobs: usize,
) -> Result<(Vec<JobMeta>, bool), (RejectReason, ApiError)> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        let message = format!("body: invalid JSON: {err}; send one job object or an array of them");
        (RejectReason::InvalidJson, ApiError::bad_request(message))
    })?;
    let invalid =
        |err: InvalidJob| (RejectReason::InvalidJob, ApiError::bad_request(err.to_string()));
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(invalid(InvalidJob::new("body", "empty array; send at least one job")));
            }
            if items.len() > max_batch_jobs {
                let message = format!(
                    "body: {} jobs in one array, the limit is {max_batch_jobs} (server.max_batch_jobs); \
                     split the batch",
                    items.len()
                );
                return Err((
                    RejectReason::TooLarge,
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message),
                ));
            }
            let mut jobs = Vec::with_capacity(items.len());
            for (idx, item) in items.into_iter().enumerate() {
                let job = JobMeta::from_json(item).map_err(|err| {
                    invalid(InvalidJob::new(format!("[{idx}].{}", err.field), err.problem))
                })?;
                jobs.push(job);
            }
            Ok((jobs, true))
        }
        Value::Object(_) => Ok((vec![JobMeta::from_json(value).map_err(invalid)?], false)),
        other => Err(invalid(InvalidJob::new(
            "body",
            format!(
                "expected a job object or an array of job objects, got {}",
                crate::job::json_type_name(&other)
            ),
        ))),
    }
}

fn parse_path_id(path: JobPath) -> Result<JobId, ApiError> {
    let Path((cluster, job_id, start_time)) = path.map_err(|rejection| {
        ApiError::bad_request(format!("job id in path: {}", rejection.body_text()))
    })?;
    format!("{cluster}/{job_id}/{start_time}")
        .parse::<JobId>()
        .map_err(|err| ApiError::bad_request(format!("job id in path: {err}")))
}

/// The `{cluster}/{jobId}/{startTime}` parameters of a route, as a string triple.
type JobPath = Result<Path<(String, String, String)>, PathRejection>;

async fn get_job(
    State(state): State<Arc<AppState>>,
    path: JobPath,
) -> Result<Json<JobStatus>, ApiError> {
    let id = parse_path_id(path)?;
    match state.queue.get(&id)? {
        Some(record) => Ok(Json(JobStatus::from_record(&id.to_string(), &record))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("job {id}: not found"))),
    }
}

async fn list_jobs(
    State(state): State<Arc<AppState>>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<JobPage>, ApiError> {
    let mut state_filter = None;
    let mut limit = 100usize;
    let mut after = None;
    for (key, value) in &params {
        match key.as_str() {
            "state" => {
                state_filter = Some(value.parse::<JobState>().map_err(|err| {
                    ApiError::bad_request(format!("query parameter state: {err}"))
                })?)
            }
            "limit" => {
                limit = match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "query parameter limit: {value:?} is not a number from 1 to {MAX_PAGE}"
                        )))
                    }
                }
            }
            "after" => after = Some(value.clone()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; use state, limit and after"
                )))
            }
        }
    }
    let page = state.queue.list(state_filter, after.as_deref(), limit)?;
    let next = (page.len() == limit).then(|| page.last().map(|(key, _)| key.clone())).flatten();
    let jobs = page.iter().map(|(key, record)| JobStatus::from_record(key, record)).collect();
    Ok(Json(JobPage { jobs, next }))
}

async fn retry_job(
    State(state): State<Arc<AppState>>,
    path: JobPath,
) -> Result<Response, ApiError> {
    let id = parse_path_id(path)?;
    let record = state.queue.retry(&id).await?;
    state.metrics.retries.inc();
    tracing::warn!(id = %id, "failed job queued again by request");
    Ok((StatusCode::ACCEPTED, Json(JobStatus::from_record(&id.to_string(), &record)))
        .into_response())
}

async fn retry_all(
    State(state): State<Arc<AppState>>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    match params.get("state").map(String::as_str) {
        Some("failed") if params.len() == 1 => (),
        _ => {
            return Err(ApiError::bad_request(
                "query: retry needs exactly state=failed, the only state that can be retried",
            ))
        }
    }
    let retried = state.queue.retry_all_failed().await?;
    state.metrics.retries.inc_by(retried);
    if retried > 0 {
        tracing::warn!(count = retried, "all failed jobs queued again by request");
    }
    Ok((StatusCode::ACCEPTED, Json(RetryReply { retried })).into_response())
}

async fn queue_stats(State(state): State<Arc<AppState>>) -> Result<Json<QueueReply>, ApiError> {
    let stats = state.queue.stats()?;
    Ok(Json(QueueReply::new(&stats, now_ms())))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if let Some(problem) = state.health.archive_problem() {
        let body = format!("archive degraded: {problem}\n");
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else if state.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if state.health.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.queue.stats() {
        Ok(stats) => state.metrics.refresh_queue(&stats),
        Err(err) => tracing::error!(error = %err, "reading queue counts for /metrics failed"),
    }
    let body = state.metrics.encode();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
