//! Graceful shutdown of the real binary on SIGTERM: exit code 0, the current job finishes or
//! goes back to the queue without counting the attempt, and triggers during shutdown get 503.

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use job_archiver::job::JobState;
use job_archiver::store::{JobRecord, Store};
use serde_json::Value;

use crate::crash::{log_events, start_server_process};
use crate::fake_metric_store::{FakeMetricStore, FakeStoreConfig, Mode};
use crate::support::{self, ServerProcess, TestDirs};

const EMMY_ID: &str = "emmy/1403244/1608923076";
const FRITZ_ID: &str = "fritz/398764/1675954353";

/// Log settings for every test here: JSON lines, so tests can find events by message.
const JSON_LOG: &str = "[log]\nformat = \"json\"\n";

#[test]
fn sigterm_while_idle_exits_zero() {
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", JSON_LOG);
    let mut server = start_server_process(&config, dirs.root.path(), "idle");

    let status = server.terminate(Duration::from_secs(30));

    let log = server.log();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM while idle; log:\n{log}");
    let shutting_down =
        find_event(&log, "shutting down: new triggers get 503, the current job may finish");
    assert_eq!(shutting_down["signal"], "SIGTERM", "signal in the shutdown event; log:\n{log}");
    let stopped = find_event(&log, "stopped; 0 jobs remain queued");
    assert_eq!(stopped["queued"], 0, "queued count in the last log event; log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_archiving_finishes_job() {
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", JSON_LOG);
    let client = http_client();
    let mut server = start_process(&config, dirs.root.path(), "archiving");

    let (status, reply) =
        post_json(&client, &server.url, &support::example_job("emmy-1403244")).await;
    assert_eq!(status, 202, "status of the emmy trigger: {reply}");
    // The emmy job takes over a second to archive, so polling every 10 ms observes `archiving`.
    let state = wait_while_queued(&client, &server.url, EMMY_ID).await;
    assert_eq!(state["state"], "archiving", "state of the emmy job before SIGTERM: {state}");

    // The default shutdown_timeout of 30 s leaves the job time to finish.
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(60)));

    let log = server.log();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM while archiving; log:\n{log}");
    let messages = event_messages(&log);
    let signal_at =
        position(&messages, "shutting down: new triggers get 503, the current job may finish");
    let archived_at = position(&messages, "archived job");
    assert!(
        signal_at < archived_at,
        "the emmy job was archived before SIGTERM, so the test did not stop a running job; \
         log messages: {messages:?}"
    );
    assert!(
        !messages.iter().any(|message| message.starts_with("shutdown timeout reached")),
        "the emmy job was cancelled instead of finished; log messages: {messages:?}"
    );
    find_event(&log, "stopped; 0 jobs remain queued");

    let record = read_record(&dirs.store, EMMY_ID);
    assert_eq!(record.state, JobState::Archived, "stored state of the emmy job: {record:?}");
    assert_eq!(record.attempts, 1, "stored attempts of the emmy job: {record:?}");
    let job_dir = dirs.archive.join("emmy/1403/244/1608923076");
    assert!(job_dir.join("meta.json").is_file(), "{} has no meta.json", job_dir.display());
}

/// SIGTERM while the metric store never replies: the worker gives up after `shutdown_timeout`,
/// the job goes back to the queue with its attempt taken back, and a trigger sent during the
/// shutdown gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_hanging_store_requeues_job() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    fake.set_mode(Mode::Hang);
    let dirs = TestDirs::new();
    let extra = format!(
        "[worker]\nshutdown_timeout = \"1s\"\n\n[metric_source]\nkind = \"cc-metric-store\"\n\
         url = \"{}\"\ntimeout = \"60s\"\n\n{JSON_LOG}",
        fake.url()
    );
    let config = dirs.write_config_file("127.0.0.1:0", &extra);
    let client = http_client();
    let mut server = start_process(&config, dirs.root.path(), "hanging-store");

    let (status, reply) =
        post_json(&client, &server.url, &support::example_job("fritz-398764")).await;
    assert_eq!(status, 202, "status of the fritz trigger: {reply}");
    let state = wait_while_queued(&client, &server.url, FRITZ_ID).await;
    assert_eq!(state["state"], "archiving", "state of the fritz job before SIGTERM: {state}");
    let queried =
        support::wait_until(Duration::from_secs(10), || async { !fake.requests().is_empty() })
            .await;
    assert!(queried, "the metric store got no query within 10 s; log:\n{}", server.log());

    support::send_signal(server.child.id(), "TERM");

    // A trigger during shutdown: `/readyz` turns 503 when shutdown starts, and the server keeps
    // serving requests until the worker gives up on the hanging job one second later.
    let shutting_down = support::wait_until(Duration::from_secs(10), || async {
        let response = client.get(format!("{}/readyz", server.url)).send().await;
        response.is_ok_and(|response| response.status() == 503)
    })
    .await;
    assert!(shutting_down, "/readyz did not turn 503 after SIGTERM; log:\n{}", server.log());
    let late_job = support::synthetic_job(4242);
    let response = client
        .post(format!("{}/api/jobs/archive", server.url))
        .json(&late_job)
        .send()
        .await
        .expect("the server answers a trigger during shutdown");
    let retry_after = response.headers().get("retry-after").cloned();
    assert_eq!(response.status(), 503, "status of a trigger during shutdown");
    assert_eq!(
        retry_after.as_ref().and_then(|value| value.to_str().ok()),
        Some("5"),
        "Retry-After of a trigger during shutdown"
    );

    let status =
        tokio::task::block_in_place(|| wait_for_exit(&mut server, Duration::from_secs(15)));
    let log = server.log();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM with a hanging job; log:\n{log}");
    find_event(&log, "shutdown timeout reached; the job was cancelled and stays queued");
    let stopped = find_event(&log, "stopped; 1 jobs remain queued");
    assert_eq!(stopped["queued"], 1, "queued count in the last log event; log:\n{log}");

    let record = read_record(&dirs.store, FRITZ_ID);
    assert_eq!(record.state, JobState::Queued, "stored state of the cancelled job: {record:?}");
    assert_eq!(record.attempts, 0, "the cancelled attempt is not counted: {record:?}");
    assert_eq!(record.failure, None, "stored failure of the cancelled job: {record:?}");
    assert!(
        !dirs.archive.join("fritz/398/764").exists(),
        "the cancelled job left a folder in the archive"
    );

    // After a restart with a working metric store, the job is archived on its first attempt.
    fake.set_mode(Mode::Normal);
    let server = start_process(&config, dirs.root.path(), "hanging-store-restart");
    let archived = wait_for_state(&client, &server.url, FRITZ_ID, "archived").await;
    assert_eq!(archived["attempts"], 1, "attempts of the job after the restart: {archived}");
    assert_eq!(archived["error"], Value::Null, "error of the job after the restart: {archived}");
    let (status, body) =
        get_json(&client, &format!("{}/api/jobs/fritz/4242/1675954353", server.url)).await;
    assert_eq!(status, 404, "status of the job rejected during shutdown: {body}");
    drop(server);
    fake.stop().await;
}

/// SIGTERM after the process logged its start but before it is ready takes the same clean path
/// as later: exit code 0, not death by the signal's default action.
#[test]
fn sigterm_during_startup_exits_zero() {
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", JSON_LOG);
    let log_path = dirs.root.path().join("startup.log");
    let child = Command::new(support::binary())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .current_dir(dirs.root.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log_path).expect("creating the log file"))
        .spawn()
        .expect("starting the job-archiver binary");
    let url = "http://127.0.0.1:0".to_owned();
    let mut server = ServerProcess { child, url, stderr_path: log_path };

    // The first log event comes after the configuration is loaded and before the store is
    // opened, the listener is bound and the backlog is recovered.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !server.log().contains("\"starting job-archiver\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "no start event within 30 s: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    support::send_signal(server.child.id(), "TERM");
    let status = wait_for_exit(&mut server, Duration::from_secs(30));

    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM during start-up was {status}; log:\n{}",
        server.log()
    );
    find_event(&server.log(), "stopped; 0 jobs remain queued");
}

/// Reads one job's record from the store of a stopped server.
fn read_record(store_path: &Path, id: &str) -> JobRecord {
    let store = Store::open(store_path, 8 << 20).expect("opening the store of the stopped server");
    store
        .get(id)
        .expect("reading the job record")
        .unwrap_or_else(|| panic!("job {id} is not in the store"))
}

/// Waits up to `timeout` for the process to exit; kills it and panics after that.
fn wait_for_exit(server: &mut ServerProcess, timeout: Duration) -> ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = server.child.try_wait().expect("reading the exit status") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            server.kill();
            panic!("server did not exit within {timeout:?} of SIGTERM; log:\n{}", server.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn event_messages(log: &str) -> Vec<String> {
    log_events(log)
        .iter()
        .filter_map(|event| event["message"].as_str().map(str::to_owned))
        .collect()
}

/// Returns the first log event with `message`, and panics with the log when there is none.
fn find_event(log: &str, message: &str) -> Value {
    log_events(log)
        .into_iter()
        .find(|event| event["message"] == message)
        .unwrap_or_else(|| panic!("no log event {message:?}; log:\n{log}"))
}

fn position(messages: &[String], message: &str) -> usize {
    messages
        .iter()
        .position(|candidate| candidate == message)
        .unwrap_or_else(|| panic!("no log event {message:?}; log messages: {messages:?}"))
}

/// Polls the job every 10 ms while it is queued, for up to 30 s, and returns its last status.
async fn wait_while_queued(client: &reqwest::Client, url: &str, id: &str) -> Value {
    let mut status = Value::Null;
    for _ in 0..3000 {
        status = get_json(client, &format!("{url}/api/jobs/{id}")).await.1;
        if status["state"] != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    status
}

/// Polls the job every 50 ms until it reaches `state`, for up to 60 s.
async fn wait_for_state(client: &reqwest::Client, url: &str, id: &str, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..1200 {
        let (status, body) = get_json(client, &format!("{url}/api/jobs/{id}")).await;
        if status == 200 && body["state"] == state {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not reach state {state} within 60 s; last status: {last}");
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building the HTTP client")
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_else(|err| panic!("GET {url}: body: {err}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let url = format!("{url}/api/jobs/archive");
    let response =
        client.post(&url).json(body).send().await.unwrap_or_else(|err| panic!("POST {url}: {err}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_else(|err| panic!("POST {url}: body: {err}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Starts the binary without blocking the other tasks of the test's runtime.
fn start_process(config: &Path, log_dir: &Path, name: &str) -> ServerProcess {
    tokio::task::block_in_place(|| start_server_process(config, log_dir, name))
}
