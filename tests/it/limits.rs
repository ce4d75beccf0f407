//! Backpressure and limits: the queue limit, the free-space floor, body and batch sizes, the
//! store's record size limit, and the header and request timeouts. A rejected trigger stores
//! nothing and never blocks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use job_archiver::config::MetricSourceConfig;
use job_archiver::store::MAX_RECORD_BYTES;
use serde_json::{json, Value};

use crate::fake_metric_store::{FakeMetricStore, FakeStoreConfig, Mode};
use crate::support::{example_job, start_server, synthetic_job, TestDirs, TestServer};

const TRIGGER: &str = "/api/jobs/archive";

/// Returns the id of `synthetic_job(job_id)`.
fn synthetic_id(job_id: i64) -> String {
    format!("fritz/{job_id}/1675954353")
}

/// Sends a trigger and returns the status, the `Retry-After` header and the body.
async fn trigger(server: &TestServer, body: &Value) -> (u16, Option<String>, Value) {
    let response = server
        .client
        .post(format!("{}{TRIGGER}", server.url))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .expect("trigger sent");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap_or_default().to_owned());
    let text = response.text().await.unwrap_or_default();
    (status, retry_after, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Returns the counts of `/api/queue` as (queued, archiving, archived, failed).
async fn queue_counts(server: &TestServer) -> (u64, u64, u64, u64) {
    let (status, body) = server.get_json("/api/queue").await;
    assert_eq!(status, 200, "GET /api/queue: {body}");
    let count = |state: &str| body[state].as_u64().unwrap_or_else(|| panic!("{state} in {body}"));
    (count("queued"), count("archiving"), count("archived"), count("failed"))
}

#[track_caller]
fn assert_error_names(label: &str, body: &Value, needles: &[&str]) {
    let error = body["error"].as_str().unwrap_or_else(|| panic!("{label}: no error in {body}"));
    for needle in needles {
        assert!(error.contains(needle), "{label}: error {error:?} lacks {needle:?}");
    }
}

/// Asserts that none of `ids` is stored.
async fn assert_not_stored(server: &TestServer, label: &str, ids: &[String]) {
    for id in ids {
        let (status, body) = server.get_json(&format!("/api/jobs/{id}")).await;
        assert_eq!(status, 404, "{label}: job {id} was stored: {body}");
    }
}

/// Returns the value of `job_archiver_triggers_rejected_total` for `reason`.
async fn rejected_count(server: &TestServer, reason: &str) -> f64 {
    let (_, body) = server.get_json("/metrics").await;
    let text = body.as_str().expect("/metrics is text");
    let series = format!("job_archiver_triggers_rejected_total{{reason=\"{reason}\"}} ");
    let line = text
        .lines()
        .find(|line| line.starts_with(&series))
        .unwrap_or_else(|| panic!("/metrics lacks {series}"));
    line[series.len()..].trim().parse().expect("a number")
}

/// Starts a server whose worker takes one job and then hangs on the fake metric store, so the
/// queue cannot drain. Shutdown cancels the job in hand after one second.
async fn start_stuck_server(
    dirs: &TestDirs,
    max_queued_jobs: u64,
) -> (TestServer, FakeMetricStore) {
    let store = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    store.set_mode(Mode::Hang);
    let mut config = dirs.config_with_source(MetricSourceConfig::CcMetricStore {
        url: store.url(),
        token_file: None,
        timeout: Duration::from_secs(300),
    });
    config.store.max_queued_jobs = max_queued_jobs;
    config.worker.job_timeout = Duration::from_secs(600);
    config.worker.shutdown_timeout = Duration::from_secs(1);
    let server = start_server(config).await;

    let (status, _, body) = trigger(&server, &synthetic_job(1)).await;
    assert_eq!(status, 202, "trigger of the job the worker takes: {body}");
    server.wait_for_state(&synthetic_id(1), "archiving").await;
    (server, store)
}

#[tokio::test]
async fn queue_limit_rejects_with_429() {
    let dirs = TestDirs::new();
    let (server, store) = start_stuck_server(&dirs, 3).await;
    for job_id in [2, 3] {
        let (status, _, body) = trigger(&server, &synthetic_job(job_id)).await;
        assert_eq!(status, 202, "trigger of job {job_id} below the limit: {body}");
    }
    assert_eq!(queue_counts(&server).await, (2, 1, 0, 0), "counts with 2 queued, 1 archiving");

    // Two more would make 4 queued: the batch is rejected whole.
    let batch = json!([synthetic_job(4), synthetic_job(5)]);
    let (status, retry_after, body) = trigger(&server, &batch).await;
    assert_eq!(status, 429, "batch crossing the limit: {body}");
    assert_eq!(retry_after.as_deref(), Some("30"), "Retry-After of a 429");
    assert_eq!(body["status"], "Too Many Requests", "status field of {body}");
    assert_error_names("batch crossing the limit", &body, &["store.max_queued_jobs", "limit is 3"]);
    assert_not_stored(&server, "rejected batch", &[synthetic_id(4), synthetic_id(5)]).await;
    assert_eq!(queue_counts(&server).await, (2, 1, 0, 0), "counts after the rejected batch");

    let (status, _, body) = trigger(&server, &synthetic_job(4)).await;
    assert_eq!(status, 202, "trigger that reaches the limit: {body}");
    let (status, retry_after, body) = trigger(&server, &synthetic_job(5)).await;
    assert_eq!(status, 429, "trigger beyond the limit: {body}");
    assert_eq!(retry_after.as_deref(), Some("30"), "Retry-After beyond the limit");
    assert_error_names(
        "trigger beyond the limit",
        &body,
        &["store.max_queued_jobs", "3 jobs queued"],
    );
    assert_not_stored(&server, "trigger beyond the limit", &[synthetic_id(5)]).await;
    assert_eq!(queue_counts(&server).await, (3, 1, 0, 0), "counts at the limit");

    // Jobs that are already known take no room, so a full queue still replies 200 for them.
    let (status, _, body) = trigger(&server, &synthetic_job(2)).await;
    assert_eq!(status, 200, "repeat of a queued job at the limit: {body}");
    assert_eq!(body["state"], "queued", "state of the repeated job");
    let (status, _, body) = trigger(&server, &json!([synthetic_job(1), synthetic_job(3)])).await;
    assert_eq!(status, 200, "batch of known jobs at the limit: {body}");
    let (status, _, body) = trigger(&server, &json!([synthetic_job(3), synthetic_job(6)])).await;
    assert_eq!(status, 429, "batch of a known and a new job at the limit: {body}");
    assert_not_stored(&server, "known and new job", &[synthetic_id(6)]).await;

    // A full queue never blocks a trigger: each gets its 429 at once.
    let started = Instant::now();
    for job_id in 100..150 {
        let (status, retry_after, body) = trigger(&server, &synthetic_job(job_id)).await;
        assert_eq!(status, 429, "trigger {job_id} at a full queue: {body}");
        assert_eq!(retry_after.as_deref(), Some("30"), "Retry-After of trigger {job_id}");
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(30), "50 rejected triggers took {elapsed:?}");
    assert_eq!(queue_counts(&server).await, (3, 1, 0, 0), "counts after 50 rejections");
    assert_eq!(rejected_count(&server, "queue_full").await, 53.0, "queue_full rejections");

    server.stop().await;
    store.stop().await;
}

#[tokio::test]
async fn free_space_floor_rejects_with_507() {
    let dirs = TestDirs::new();
    let mut config = dirs.config();
    // No test machine has this much free space.
    config.store.min_free_bytes = u64::MAX / 2;
    let server = start_server(config).await;

    let (status, retry_after, body) = trigger(&server, &example_job("fritz-398764")).await;
    assert_eq!(status, 507, "trigger below the free-space floor: {body}");
    assert_eq!(retry_after.as_deref(), Some("60"), "Retry-After of a 507");
    assert_eq!(body["status"], "Insufficient Storage", "status field of {body}");
    assert_error_names("free-space floor", &body, &["store.min_free_bytes", "free disk space"]);
    let batch = json!([synthetic_job(1), synthetic_job(2)]);
    let (status, _, body) = trigger(&server, &batch).await;
    assert_eq!(status, 507, "batch below the free-space floor: {body}");

    let ids = ["fritz/398764/1675954353".to_owned(), synthetic_id(1), synthetic_id(2)];
    assert_not_stored(&server, "free-space floor", &ids).await;
    assert_eq!(queue_counts(&server).await, (0, 0, 0, 0), "counts below the floor");
    assert_eq!(rejected_count(&server, "queue_full").await, 2.0, "queue_full rejections");
    let (status, body) = server.get_json("/healthz").await;
    assert_eq!(status, 200, "/healthz below the floor: {body}");
    server.stop().await;
}

/// Builds a fritz job whose JSON text has exactly `size` bytes, padded in `metaData.jobName`.
fn job_of_size(job_id: i64, size: usize) -> Vec<u8> {
    let mut job = synthetic_job(job_id);
    job["metaData"] = json!({"jobName": ""});
    let base = serde_json::to_vec(&job).unwrap().len();
    assert!(size >= base, "a job needs at least {base} bytes");
    job["metaData"]["jobName"] = json!("x".repeat(size - base));
    let bytes = serde_json::to_vec(&job).unwrap();
    assert_eq!(bytes.len(), size, "padded job size");
    bytes
}

/// Sends `request` (a whole HTTP/1.1 request) over a new connection and returns the status of
/// the reply and the reply text. The server has 15 s to reply.
fn raw_exchange(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the server");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(request).expect("sending the request");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn body_and_batch_limits_give_413() {
    let dirs = TestDirs::new();
    let mut config = dirs.config();
    config.server.max_body_bytes = 2048;
    config.server.max_batch_jobs = 2;
    let server = start_server(config).await;

    let (status, body) = server.post_bytes(TRIGGER, job_of_size(1, 2049)).await;
    assert_eq!(status, 413, "body one byte over server.max_body_bytes: {body}");
    assert_eq!(body["status"], "Payload Too Large", "status field of {body}");
    assert_error_names("body over the limit", &body, &["server.max_body_bytes", "2048"]);
    let (status, body) = server.post_bytes(TRIGGER, job_of_size(2, 100_000)).await;
    assert_eq!(status, 413, "body far over server.max_body_bytes: {body}");

    // The limit applies to a chunked body without Content-Length as well.
    let addr = server.url.trim_start_matches("http://").to_owned();
    let chunk = job_of_size(3, 4000);
    let mut request = format!(
        "POST {TRIGGER} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    request.extend_from_slice(&chunk);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, text) =
        tokio::task::spawn_blocking(move || raw_exchange(&addr, &request)).await.unwrap();
    assert_eq!(status, 413, "chunked body over server.max_body_bytes: {text}");
    assert!(text.contains("server.max_body_bytes"), "chunked reply lacks the limit: {text}");

    let batch = json!([synthetic_job(4), synthetic_job(5), synthetic_job(6)]);
    let (status, body) = server.post_json(TRIGGER, &batch).await;
    assert_eq!(status, 413, "array over server.max_batch_jobs: {body}");
    assert_error_names(
        "array over the limit",
        &body,
        &["server.max_batch_jobs", "3 jobs", "limit is 2"],
    );

    let ids: Vec<String> = (1..=6).map(synthetic_id).collect();
    assert_not_stored(&server, "over a size limit", &ids).await;
    assert_eq!(queue_counts(&server).await, (0, 0, 0, 0), "counts after the 413s");
    assert_eq!(rejected_count(&server, "too_large").await, 4.0, "too_large rejections");

    // At the limits, triggers are accepted.
    let (status, body) = server.post_bytes(TRIGGER, job_of_size(7, 2048)).await;
    assert_eq!(status, 202, "body of exactly server.max_body_bytes: {body}");
    let (status, body) =
        server.post_json(TRIGGER, &json!([synthetic_job(8), synthetic_job(9)])).await;
    assert_eq!(status, 202, "array of exactly server.max_batch_jobs: {body}");
    server.stop().await;
}

/// Returns `len` characters of text that deflate cannot shrink much, from a fixed seed.
fn incompressible_text(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            // xorshift64: enough to defeat deflate, and the same text on every run.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % 64) as usize] as char
        })
        .collect()
}

#[tokio::test]
async fn oversized_record_gets_413() {
    let dirs = TestDirs::new();
    let server = start_server(dirs.config()).await;
    let mut job = synthetic_job(1);
    job["metaData"] = json!({"jobScript": incompressible_text(300_000)});

    let (status, body) = server.post_json(TRIGGER, &job).await;
    assert_eq!(status, 413, "job with a 300 KB jobScript: {body}");
    let limit = MAX_RECORD_BYTES.to_string();
    assert_error_names("oversized record", &body, &[&limit, "shorten metaData", "jobScript"]);

    // One oversized job rejects its whole batch.
    let (status, body) = server.post_json(TRIGGER, &json!([synthetic_job(2), job])).await;
    assert_eq!(status, 413, "batch with one oversized job: {body}");
    assert_not_stored(&server, "oversized record", &[synthetic_id(1), synthetic_id(2)]).await;
    assert_eq!(queue_counts(&server).await, (0, 0, 0, 0), "counts after the 413s");
    assert_eq!(rejected_count(&server, "too_large").await, 2.0, "too_large rejections");

    // A jobScript that compresses well stays within the limit even when it is long.
    let mut job = synthetic_job(3);
    job["metaData"] = json!({"jobScript": "#SBATCH --nodes=1\n".repeat(20_000)});
    let (status, body) = server.post_json(TRIGGER, &job).await;
    assert_eq!(status, 202, "job with a compressible 360 KB jobScript: {body}");
    server.stop().await;
}

/// Reads from `stream` until the server closes it or 15 s pass, and returns what was read and
/// whether the connection was closed.
fn read_until_closed(stream: &mut TcpStream) -> (String, bool) {
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

#[tokio::test]
async fn slow_headers_close_connection() {
    let dirs = TestDirs::new();
    let mut config = dirs.config();
    config.server.header_read_timeout = Duration::from_secs(1);
    let server = start_server(config).await;
    let addr = server.url.trim_start_matches("http://").to_owned();

    let check_addr = addr.clone();
    tokio::task::spawn_blocking(move || {
        let addr = check_addr;
        // A request line and one header, then nothing.
        let mut partial = TcpStream::connect(&addr).expect("connecting");
        write!(partial, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n").unwrap();
        // A connection that sends nothing at all.
        let mut silent = TcpStream::connect(&addr).expect("connecting");

        let started = Instant::now();
        let (received, closed) = read_until_closed(&mut partial);
        assert!(closed, "connection with partial headers still open after 15 s: {received:?}");
        assert!(!received.contains(" 200 "), "partial headers got a reply: {received:?}");
        let (received, closed) = read_until_closed(&mut silent);
        assert!(closed, "silent connection still open after 15 s: {received:?}");
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(10), "closing both took {elapsed:?}");
    })
    .await
    .unwrap();

    // A complete request on a new connection is served as usual.
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, text) =
        tokio::task::spawn_blocking(move || raw_exchange(&addr, request.as_bytes())).await.unwrap();
    assert_eq!(status, 200, "complete request after the timeouts: {text}");
    server.stop().await;
}

#[tokio::test]
async fn unfinished_body_gets_408() {
    let dirs = TestDirs::new();
    let mut config = dirs.config();
    config.server.request_timeout = Duration::from_secs(1);
    let server = start_server(config).await;
    let addr = server.url.trim_start_matches("http://").to_owned();

    // The headers promise 1000 bytes, the client sends 10 and waits.
    let request_addr = addr.clone();
    let (status, text) = tokio::task::spawn_blocking(move || {
        let addr = request_addr;
        let mut stream = TcpStream::connect(&addr).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        write!(
            stream,
            "POST {TRIGGER} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n{{\"jobId\":"
        )
        .unwrap();
        let mut reply = [0u8; 4096];
        let n = stream.read(&mut reply).unwrap_or(0);
        let text = String::from_utf8_lossy(&reply[..n]).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        (status, text)
    })
    .await
    .unwrap();
    assert_eq!(status, 408, "unfinished body after server.request_timeout: {text:?}");
    assert_eq!(queue_counts(&server).await, (0, 0, 0, 0), "counts after the 408");
    server.stop().await;
}
