//! Metric store faults against the in-process service and the fake cc-metric-store.
//!
//! Transient failures (a refused connection, a hanging store, HTTP 5xx, an attempt past
//! `worker.job_timeout`) are retried with backoff and then fail with their step. Permanent ones
//! (a reply that does not decode, HTTP 4xx) fail at once. A job that waits for its retry does
//! not hold up the jobs behind it.

use std::time::Duration;

use job_archiver::config::{Config, MetricSourceConfig, RetryConfig};
use serde_json::{json, Value};

use crate::fake_metric_store::{FakeMetricStore, FakeStoreConfig, Mode};
use crate::support::{example_job, start_server, synthetic_job, TestDirs, TestServer};

/// The fritz example job, which the fake store serves from its fixture.
const FRITZ_ID: &str = "fritz/398764/1675954353";

/// Attempts per job in these tests.
const MAX_ATTEMPTS: u64 = 3;

/// Bound on the wait for a job's outcome. Each test needs a few seconds at most, so this only
/// stops a hung test.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_retried_then_failed() {
    // A bound socket that does not listen: connections to it are refused, and no other test
    // can take the port while the socket lives.
    let socket = tokio::net::TcpSocket::new_v4().expect("creating a TCP socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("binding a port on 127.0.0.1");
    let url = format!("http://{}", socket.local_addr().unwrap());
    let dirs = TestDirs::new();
    let server = start_server(store_config(&dirs, &url, Duration::from_secs(5))).await;

    trigger(&server, &example_job("fritz-398764")).await;
    let failed = wait_retried_then_failed(&server, FRITZ_ID, "load").await;

    assert_history_mentions(&failed, "metric source unreachable");
    let metrics = scrape(&server).await;
    assert_eq!(
        sample(&metrics, "job_archiver_metric_store_requests_total{outcome=\"unreachable\"}"),
        MAX_ATTEMPTS as f64,
        "unreachable requests in /metrics"
    );
    server.stop().await;
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_store_times_out_and_retries() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    fake.set_mode(Mode::Hang);
    let dirs = TestDirs::new();
    let server = start_server(store_config(&dirs, &fake.url(), Duration::from_millis(300))).await;

    trigger(&server, &example_job("fritz-398764")).await;
    let failed = wait_retried_then_failed(&server, FRITZ_ID, "load").await;

    assert_history_mentions(&failed, "request timed out after 300ms");
    assert_eq!(fake.requests().len() as u64, MAX_ATTEMPTS, "requests the fake store received");
    let metrics = scrape(&server).await;
    assert_eq!(
        sample(&metrics, "job_archiver_metric_store_requests_total{outcome=\"timeout\"}"),
        MAX_ATTEMPTS as f64,
        "timed-out requests in /metrics"
    );
    server.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_500_retried_then_failed() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    fake.set_mode(Mode::Status500);
    let dirs = TestDirs::new();
    let server = start_server(store_config(&dirs, &fake.url(), Duration::from_secs(5))).await;

    trigger(&server, &example_job("fritz-398764")).await;
    let failed = wait_retried_then_failed(&server, FRITZ_ID, "load").await;

    assert_history_mentions(&failed, "HTTP 500");
    assert_eq!(fake.requests().len() as u64, MAX_ATTEMPTS, "requests the fake store received");
    let metrics = scrape(&server).await;
    assert_eq!(
        sample(&metrics, "job_archiver_metric_store_requests_total{outcome=\"error_status\"}"),
        MAX_ATTEMPTS as f64,
        "error-status requests in /metrics"
    );
    server.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_recovering_after_two_500s_archives() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    fake.set_mode(Mode::Status500);
    let dirs = TestDirs::new();
    let mut config = store_config(&dirs, &fake.url(), Duration::from_secs(5));
    // The mode switch happens in the wait after the second attempt. With these settings that
    // wait lasts 200 to 400 ms, which leaves room for a slow machine.
    config.retry.initial_backoff = Duration::from_millis(200);
    config.retry.max_backoff = Duration::from_millis(400);
    let server = start_server(config).await;

    trigger(&server, &example_job("fritz-398764")).await;
    let waiting = poll_job(&server, FRITZ_ID, |job| {
        job["state"] == "queued" && job["errorHistory"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert_eq!(waiting["attempts"], 2, "attempts while waiting for the third: {waiting}");
    fake.set_mode(Mode::Normal);

    let archived = server.wait_for_state(FRITZ_ID, "archived").await;
    assert_eq!(archived["attempts"], 3, "attempts of the archived job: {archived}");
    assert_eq!(archived["error"], Value::Null, "error of the archived job: {archived}");
    assert_eq!(fake.requests().len(), 3, "requests the fake store received");
    let folder = dirs.archive.join("fritz/398/764/1675954353");
    assert!(folder.join("meta.json").is_file(), "meta.json missing in {}", folder.display());
    let metrics = scrape(&server).await;
    assert_eq!(
        sample(&metrics, "job_archiver_retries_scheduled_total"),
        2.0,
        "job_archiver_retries_scheduled_total"
    );
    assert_eq!(sample(&metrics, "job_archiver_jobs_archived_total"), 1.0, "archived jobs");
    server.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_or_4xx_reply_fails_at_once() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let dirs = TestDirs::new();
    let server = start_server(store_config(&dirs, &fake.url(), Duration::from_secs(5))).await;
    let fixed = |status: u16, body: &str| Mode::Fixed { status, body: body.to_owned() };
    // (case, mode of the fake store, text the job's error must contain)
    let cases = [
        ("garbage", Mode::Garbage, "invalid reply from metric source"),
        (
            "truncated JSON",
            fixed(200, "{\"results\":[[{\"data\":[1.0,2.0"),
            "reply is not query results",
        ),
        (
            "results of the wrong type",
            fixed(200, "{\"results\":{\"cpu_load\":1}}"),
            "invalid reply",
        ),
        ("too few result arrays", fixed(200, "{\"results\":[]}"), "result arrays, one per query"),
        ("HTTP 400", fixed(400, "{\"error\":\"bad query\"}"), "HTTP 400"),
        ("HTTP 401", fixed(401, "{\"error\":\"unauthorized\"}"), "HTTP 401"),
    ];

    for (index, (case, mode, expected)) in cases.into_iter().enumerate() {
        fake.set_mode(mode);
        let job_id = 100 + index as i64;
        let id = format!("fritz/{job_id}/1675954353");
        trigger(&server, &synthetic_job(job_id)).await;
        let failed = server.wait_for_state(&id, "failed").await;

        assert_eq!(failed["attempts"], 1, "attempts after {case}: {failed}");
        assert_eq!(failed["failedStep"], "load", "failedStep after {case}: {failed}");
        let history = failed["errorHistory"].as_array().cloned().unwrap_or_default();
        assert_eq!(history.len(), 1, "errorHistory entries after {case}: {failed}");
        let error = failed["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "error after {case} lacks {expected:?}: {error}");
    }

    let metrics = scrape(&server).await;
    assert_eq!(
        sample(&metrics, "job_archiver_retries_scheduled_total"),
        0.0,
        "retries scheduled for permanent failures"
    );
    assert_eq!(
        sample(&metrics, "job_archiver_jobs_failed_total{step=\"load\"}"),
        6.0,
        "jobs failed in the load step"
    );
    server.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_job_does_not_block_worker() {
    let dirs = TestDirs::new();
    // A folder in place of fritz2's cluster.json: reading it fails with an I/O error (EISDIR),
    // which is transient, so job A waits for a retry.
    std::fs::create_dir_all(dirs.archive.join("fritz2/cluster.json")).unwrap();
    let mut config = dirs.config();
    config.retry = RetryConfig { max_attempts: 3, initial_backoff: secs(5), max_backoff: secs(5) };
    let server = start_server(config).await;
    let mut job_a = synthetic_job(1);
    job_a["cluster"] = json!("fritz2");
    let id_a = "fritz2/1/1675954353";

    let (status, reply) =
        server.post_json("/api/jobs/archive", &json!([job_a, example_job("fritz-398764")])).await;
    assert_eq!(status, 202, "status of the trigger of jobs A and B: {reply}");
    let archived_b = server.wait_for_state(FRITZ_ID, "archived").await;

    let (_, job_a) = server.get_json(&format!("/api/jobs/{id_a}")).await;
    assert_eq!(job_a["state"], "queued", "state of job A once B is archived: {job_a}");
    assert_eq!(job_a["attempts"], 1, "attempts of job A once B is archived: {job_a}");
    assert_eq!(job_a["failedStep"], "cluster", "failedStep of job A: {job_a}");
    let error = job_a["error"].as_str().unwrap_or_default();
    assert!(error.contains("fritz2/cluster.json"), "error of job A lacks the path: {error}");
    assert!(error.contains("Is a directory"), "error of job A lacks the cause: {error}");
    assert_eq!(archived_b["attempts"], 1, "attempts of job B: {archived_b}");
    let (_, queue) = server.get_json("/api/queue").await;
    assert_eq!(queue["queued"], 1, "queued jobs while A waits: {queue}");
    assert_eq!(queue["archived"], 1, "archived jobs while A waits: {queue}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timeout_retried_then_failed() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    fake.set_mode(Mode::Hang);
    let dirs = TestDirs::new();
    let mut config = store_config(&dirs, &fake.url(), Duration::from_secs(60));
    config.worker.job_timeout = Duration::from_millis(500);
    let server = start_server(config).await;

    trigger(&server, &example_job("fritz-398764")).await;
    let failed = wait_retried_then_failed(&server, FRITZ_ID, "timeout").await;

    assert_history_mentions(&failed, "worker.job_timeout (500ms)");
    let metrics = scrape(&server).await;
    assert_eq!(
        sample(&metrics, "job_archiver_jobs_failed_total{step=\"timeout\"}"),
        1.0,
        "jobs failed in the timeout step"
    );
    server.stop().await;
    fake.stop().await;
}

/// Returns a config that reads from the cc-metric-store at `url`, with 3 attempts and
/// backoffs of 50 to 200 ms.
fn store_config(dirs: &TestDirs, url: &str, timeout: Duration) -> Config {
    let source =
        MetricSourceConfig::CcMetricStore { url: url.to_owned(), token_file: None, timeout };
    let mut config = dirs.config_with_source(source);
    config.retry = RetryConfig {
        max_attempts: MAX_ATTEMPTS as u32,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    };
    config
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

async fn trigger(server: &TestServer, job: &Value) {
    let (status, reply) = server.post_json("/api/jobs/archive", job).await;
    assert_eq!(status, 202, "status of the trigger: {reply}");
}

/// Polls the job every 5 ms until it fails, and checks the retry contract on the way. The
/// attempts grow one by one, and between attempts the job is `queued` with one `errorHistory`
/// entry per attempt so far. It ends `failed` in `step` after [`MAX_ATTEMPTS`] attempts, with
/// two retries scheduled. Returns the failed job's status.
async fn wait_retried_then_failed(server: &TestServer, id: &str, step: &str) -> Value {
    let deadline = tokio::time::Instant::now() + OUTCOME_TIMEOUT;
    let mut observed = Vec::new();
    let failed = loop {
        let (status, job) = server.get_json(&format!("/api/jobs/{id}")).await;
        assert_eq!(status, 200, "status of GET /api/jobs/{id}: {job}");
        if job["state"] == "failed" {
            break job;
        }
        observed.push(job);
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} not failed within {OUTCOME_TIMEOUT:?}; last status: {}",
            observed.last().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    let attempts: Vec<u64> = observed.iter().filter_map(|job| job["attempts"].as_u64()).collect();
    assert!(
        attempts.windows(2).all(|pair| pair[0] <= pair[1] && pair[1] <= pair[0] + 1),
        "attempts seen while retrying do not grow one by one: {attempts:?}"
    );
    let waiting: Vec<&Value> = observed
        .iter()
        .filter(|job| job["state"] == "queued" && job["attempts"].as_u64().unwrap_or(0) >= 1)
        .collect();
    assert!(!waiting.is_empty(), "job {id} was never seen queued between attempts: {observed:?}");
    for job in &waiting {
        let history = job["errorHistory"].as_array().map(Vec::len).unwrap_or(0) as u64;
        assert_eq!(Some(history), job["attempts"].as_u64(), "errorHistory between attempts: {job}");
        assert_eq!(job["failedStep"], step, "failedStep between attempts: {job}");
    }

    assert_eq!(failed["attempts"], MAX_ATTEMPTS, "attempts of the failed job: {failed}");
    assert_eq!(failed["failedStep"], step, "failedStep of the failed job: {failed}");
    let history = failed["errorHistory"].as_array().cloned().unwrap_or_default();
    assert_eq!(history.len() as u64, MAX_ATTEMPTS, "errorHistory entries: {failed}");
    for entry in &history {
        let entry = entry.as_str().unwrap_or_default();
        assert!(entry.starts_with(&format!("{step}: ")), "errorHistory entry: {entry}");
    }
    let metrics = scrape(server).await;
    assert_eq!(
        sample(&metrics, "job_archiver_retries_scheduled_total"),
        (MAX_ATTEMPTS - 1) as f64,
        "job_archiver_retries_scheduled_total"
    );
    failed
}

/// Checks that every `errorHistory` entry and the last error contain `text`.
fn assert_history_mentions(job: &Value, text: &str) {
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains(text), "error lacks {text:?}: {error}");
    for entry in job["errorHistory"].as_array().cloned().unwrap_or_default() {
        let entry = entry.as_str().unwrap_or_default();
        assert!(entry.contains(text), "errorHistory entry lacks {text:?}: {entry}");
    }
}

/// Polls the job every 5 ms until `done` returns true for its status, and returns that status.
async fn poll_job(server: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + OUTCOME_TIMEOUT;
    loop {
        let (_, job) = server.get_json(&format!("/api/jobs/{id}")).await;
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} not in the expected state within {OUTCOME_TIMEOUT:?}; last status: {job}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Returns the text of `GET /metrics`.
async fn scrape(server: &TestServer) -> String {
    let (status, body) = server.get_json("/metrics").await;
    assert_eq!(status, 200, "status of GET /metrics");
    body.as_str().expect("/metrics is text, not JSON").to_owned()
}

/// Returns the value of one series, such as `name{label="value"}`, in the Prometheus text
/// `metrics`. Panics when the series is missing.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("series {series} missing from /metrics:\n{metrics}"))
}
