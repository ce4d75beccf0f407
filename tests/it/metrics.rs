//! The operator's view of the service.
//!
//! The `/metrics` text is clean for `promtool`, its series count does not grow with jobs, and its
//! queue gauges are read from the store after a restart. The tests also cover the cc-metric-store
//! request counter, the metric names that the Grafana dashboard and the alert rules use, the log
//! output of the real binary, and the CLI's `status --watch`, progress and summaries.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use job_archiver::cluster::Cluster;
use job_archiver::commit::Durability;
use job_archiver::config::MetricSourceConfig;
use job_archiver::job::JobMeta;
use job_archiver::metric_source::cc_metric_store::CcMetricStore;
use job_archiver::metric_source::{LoadRequest, MetricSource};
use job_archiver::scopes::archive_scopes;
use prometheus::{IntCounterVec, Opts};
use serde_json::Value;

use crate::fake_metric_store::{FakeMetricStore, FakeStoreConfig, Mode};
use crate::support::{self, ServerProcess, TestDirs, TestServer};

const FRITZ_ID: &str = "fritz/398764/1675954353";

/// Jobs in the series-count test. Each one fails fast in the `cluster` step, because its cluster
/// is unknown. 10,000 jobs took 22 s in a debug build on a 2-CPU Linux VM. For 100,000 jobs
/// (95 s in a release build on the same VM), run
/// `JOB_ARCHIVER_CARDINALITY_JOBS=100000 cargo test --release --test it series_count`.
const DEFAULT_CARDINALITY_JOBS: usize = 10_000;

/// Jobs per trigger request of the series-count test.
const CARDINALITY_BATCH: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check() {
    let dirs = TestDirs::new();
    let server = support::start_server(dirs.config()).await;
    archive_fritz_and_fail_one(&server).await;
    let (status, _) = server.post_bytes("/api/jobs/archive", b"{not json".to_vec()).await;
    assert_eq!(status, 400, "status of a malformed trigger");

    let text = scrape(&server).await;
    let output = run_with_stdin(Command::new("promtool").args(["check", "metrics"]), &text);

    assert_eq!(
        output.status.code(),
        Some(0),
        "exit status of promtool check metrics; stdout:\n{}\nstderr:\n{}\nmetrics:\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(problems.trim(), "", "promtool check metrics reported problems");
    let rejected =
        sample_value(&text, "job_archiver_triggers_rejected_total{reason=\"invalid_json\"}");
    assert_eq!(rejected, Some(1.0), "rejected trigger count in:\n{text}");
    server.stop().await;
}

/// The series of `/metrics` are the same after one job and after many: no label takes a job id,
/// a host or a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn series_count_stays_flat() {
    let n_jobs = env_number("JOB_ARCHIVER_CARDINALITY_JOBS", DEFAULT_CARDINALITY_JOBS);
    assert!(n_jobs >= 2, "JOB_ARCHIVER_CARDINALITY_JOBS={n_jobs}: use at least 2");
    let dirs = TestDirs::new();
    let mut config = dirs.config();
    // Acknowledging without a disk sync is fine here: the test is about series, not durability.
    config.store.durability = Durability::OsBuffers;
    let server = support::start_server(config).await;

    let (status, reply) = server.post_json("/api/jobs/archive", &fast_failing_job(1)).await;
    assert_eq!(status, 202, "status of the first trigger: {reply}");
    wait_for_failed_count(&server, 1, Duration::from_secs(30)).await;
    let after_one = series(&scrape(&server).await);

    let mut next_id = 2;
    while next_id <= n_jobs {
        let last_id = (next_id + CARDINALITY_BATCH - 1).min(n_jobs);
        let batch: Vec<Value> = (next_id..=last_id).map(fast_failing_job).collect();
        let (status, reply) = server.post_json("/api/jobs/archive", &Value::from(batch)).await;
        assert_eq!(status, 202, "status of the trigger of jobs {next_id}..={last_id}: {reply}");
        next_id = last_id + 1;
    }
    let bound = Duration::from_secs(120) + Duration::from_millis(10) * n_jobs as u32;
    wait_for_failed_count(&server, n_jobs as u64, bound).await;
    let text = scrape(&server).await;
    let after_many = series(&text);

    let added: Vec<&String> = after_many.difference(&after_one).collect();
    let removed: Vec<&String> = after_one.difference(&after_many).collect();
    assert_eq!(added, Vec::<&String>::new(), "series added between 1 and {n_jobs} jobs");
    assert_eq!(removed, Vec::<&String>::new(), "series removed between 1 and {n_jobs} jobs");
    assert_eq!(after_many.len(), after_one.len(), "series count after 1 and {n_jobs} jobs");
    let failed = sample_value(&text, "job_archiver_jobs_failed_total{step=\"cluster\"}");
    assert_eq!(failed, Some(n_jobs as f64), "failed job count after {n_jobs} jobs");
    server.stop().await;
}

/// After a restart with jobs left in the queue, the queue gauges come from the store, while the
/// counters of the new process start at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_survive_restart_with_backlog() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    fake.set_mode(Mode::Hang);
    let dirs = TestDirs::new();
    let mut config = dirs.config_with_source(MetricSourceConfig::CcMetricStore {
        url: fake.url(),
        token_file: None,
        timeout: Duration::from_secs(120),
    });
    config.worker.shutdown_timeout = Duration::from_millis(200);
    let jobs: Vec<Value> = (1..=5).map(support::synthetic_job).collect();

    // The worker takes job 1 and hangs on the metric store; jobs 2 to 5 stay queued.
    let first = support::start_server(config.clone()).await;
    let (status, reply) = first.post_json("/api/jobs/archive", &Value::from(jobs)).await;
    assert_eq!(status, 202, "status of the trigger of five jobs: {reply}");
    wait_for_counts(&first, 4, 1).await;
    let before = scrape(&first).await;
    let oldest_before = sample_value(&before, "job_archiver_oldest_queued_job_timestamp_seconds");
    assert!(
        oldest_before.is_some_and(|seconds| seconds > 0.0),
        "oldest queued timestamp before the restart: {oldest_before:?}"
    );
    first.stop().await;

    // The restarted worker takes job 1 again and hangs again.
    let second = support::start_server(config).await;
    wait_for_counts(&second, 4, 1).await;
    // The worker sets its busy gauge just after it claims the job, so a scrape right after the
    // claim may still see 0; wait for the gauge before comparing everything at once.
    let mut after = scrape(&second).await;
    for _ in 0..200 {
        if sample_value(&after, "job_archiver_worker_busy") == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape(&second).await;
    }

    let expected = [
        ("job_archiver_queued_jobs", 4.0),
        ("job_archiver_jobs{state=\"queued\"}", 4.0),
        ("job_archiver_jobs{state=\"archiving\"}", 1.0),
        ("job_archiver_jobs{state=\"archived\"}", 0.0),
        ("job_archiver_jobs{state=\"failed\"}", 0.0),
        ("job_archiver_worker_busy", 1.0),
        ("job_archiver_jobs_accepted_total", 0.0),
    ];
    for (series, value) in expected {
        assert_eq!(sample_value(&after, series), Some(value), "{series} after the restart");
    }
    assert_eq!(
        sample_value(&after, "job_archiver_oldest_queued_job_timestamp_seconds"),
        oldest_before,
        "oldest queued timestamp after the restart"
    );
    second.stop().await;
    fake.stop().await;
}

/// Every request of the cc-metric-store client is counted once, under the outcome it had.
#[tokio::test]
async fn metric_store_requests_counted_by_outcome() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let counter = IntCounterVec::new(Opts::new("requests_total", "test"), &["outcome"])
        .expect("a valid counter");
    let store = CcMetricStore::new(&fake.url(), None, Duration::from_millis(500))
        .expect("a valid client")
        .with_request_counter(counter.clone());

    for outcome in ["ok", "partial", "error_status", "invalid_reply", "timeout"] {
        match outcome {
            "ok" => fake.set_mode(Mode::Normal),
            "partial" => fake.set_metric_error("cpu_load", "no data for this metric"),
            "error_status" => fake.set_mode(Mode::Status500),
            "invalid_reply" => fake.set_mode(Mode::Garbage),
            _ => fake.set_mode(Mode::Hang),
        }
        let _ = load_fritz(&store).await;
        let count = counter.with_label_values(&[outcome]).get();
        assert_eq!(count, 1, "requests counted as {outcome}");
    }
    fake.stop().await;

    let closed_port = format!("http://127.0.0.1:{}", support::free_port());
    let unreachable = CcMetricStore::new(&closed_port, None, Duration::from_secs(5))
        .expect("a valid client")
        .with_request_counter(counter.clone());
    let result = load_fritz(&unreachable).await;
    assert!(result.is_err(), "a load from a closed port succeeded");
    assert_eq!(
        counter.with_label_values(&["unreachable"]).get(),
        1,
        "requests counted unreachable"
    );
    let total: u64 = ["ok", "partial", "error_status", "invalid_reply", "timeout", "unreachable"]
        .iter()
        .map(|outcome| counter.with_label_values(&[outcome]).get())
        .sum();
    assert_eq!(total, 6, "requests counted in all, for six loads");
}

/// The service hands its counter to the cc-metric-store client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_counts_metric_store_requests() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let dirs = TestDirs::new();
    let config = dirs.config_with_source(MetricSourceConfig::CcMetricStore {
        url: fake.url(),
        token_file: None,
        timeout: Duration::from_secs(10),
    });
    let server = support::start_server(config).await;
    let (status, reply) =
        server.post_json("/api/jobs/archive", &support::example_job("fritz-398764")).await;
    assert_eq!(status, 202, "status of the fritz trigger: {reply}");
    server.wait_for_state(FRITZ_ID, "archived").await;

    let text = scrape(&server).await;

    let ok = sample_value(&text, "job_archiver_metric_store_requests_total{outcome=\"ok\"}");
    assert_eq!(ok, Some(1.0), "successful metric store requests in:\n{text}");
    server.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_use_exported_metrics() {
    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(support::repo_path("deploy/grafana/job-archiver.json"))
            .expect("reading deploy/grafana/job-archiver.json"),
    )
    .expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);
    let exported = exported_names().await;

    assert!(exprs.len() >= 10, "the dashboard has only {} queries: {exprs:?}", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "dashboard query names no job_archiver or process metric: {expr}"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "dashboard query uses {name}, not in /metrics: {expr}"
            );
            used.insert(name);
        }
    }
    let required = [
        "job_archiver_jobs",
        "job_archiver_queued_jobs",
        "job_archiver_archive_duration_seconds_bucket",
        "job_archiver_archive_lag_seconds_bucket",
        "job_archiver_jobs_archived_total",
        "job_archiver_jobs_failed_total",
        "job_archiver_oldest_queued_job_timestamp_seconds",
        "job_archiver_worker_busy",
        "process_resident_memory_bytes",
    ];
    for name in required {
        assert!(used.contains(name), "no dashboard panel shows {name}");
    }
    assert_eq!(dashboard["schemaVersion"], 39, "schemaVersion of the dashboard");
    let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
    let data_source = variables.iter().find(|variable| variable["name"] == "DS_PROMETHEUS");
    assert_eq!(
        data_source.map(|variable| variable["type"].clone()),
        Some(Value::from("datasource")),
        "type of the DS_PROMETHEUS template variable"
    );
    for panel in panels(&dashboard) {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "data source of panel {}",
                panel["title"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_use_exported_metrics() {
    let rules = std::fs::read_to_string(support::repo_path("deploy/prometheus/alerts.yml"))
        .expect("reading deploy/prometheus/alerts.yml");
    let exported = exported_names().await;

    let names = metric_names(&rules);

    assert!(names.len() >= 5, "alerts.yml names only {names:?}");
    for name in names {
        assert!(exported.contains(&name), "alerts.yml uses {name}, which /metrics lacks");
    }
    for alert in [
        "JobArchiverDown",
        "JobArchiverBacklogGrowing",
        "JobArchiverOldestQueuedJobTooOld",
        "JobArchiverJobsFailed",
        "JobArchiverHighFailureRate",
        "JobArchiverSlowArchiving",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "alerts.yml lacks {alert}");
    }
}

/// `--log-format json` writes one JSON object per line, and every line about a job carries its
/// id from the `job` span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_job_id() {
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", "");
    let port = support::free_port();
    let log_path = dirs.root.path().join("json.log");
    let child = binary_command(&[("RUST_LOG", "warn,job_archiver=debug")])
        .arg("--config")
        .arg(&config)
        .arg("--log-format")
        .arg("json")
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dirs.root.path())
        .stdout(Stdio::null())
        .stderr(File::create(&log_path).expect("creating the log file"))
        .spawn()
        .expect("starting the job-archiver binary");
    let url = format!("http://127.0.0.1:{port}");
    let mut server = ServerProcess { child, url: url.clone(), stderr_path: log_path };
    let client = reqwest::Client::new();
    let ready = support::wait_until(Duration::from_secs(30), || async {
        let response = client.get(format!("{url}/readyz")).send().await;
        response.is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(ready, "server not ready within 30 s; log:\n{}", server.log());

    let failing_id = "fritz/77/1675954353";
    for job in [support::example_job("fritz-398764"), support::synthetic_job(77)] {
        let response = client
            .post(format!("{url}/api/jobs/archive"))
            .json(&job)
            .send()
            .await
            .expect("the trigger is sent");
        assert_eq!(response.status(), 202, "status of the trigger of {job}");
    }
    for (id, state) in [(FRITZ_ID, "archived"), (failing_id, "failed")] {
        let reached = support::wait_until(Duration::from_secs(30), || async {
            let response = client.get(format!("{url}/api/jobs/{id}")).send().await;
            match response {
                Ok(response) => {
                    response.json::<Value>().await.is_ok_and(|job| job["state"] == state)
                }
                Err(_) => false,
            }
        })
        .await;
        assert!(reached, "job {id} did not reach {state} within 30 s; log:\n{}", server.log());
    }
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(60)));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM; log:\n{}", server.log());

    let log = server.log();
    let events = parse_json_lines(&log);
    assert!(!log.contains('\u{1b}'), "the JSON log holds ANSI escapes:\n{log}");
    let started = find_event(&events, "starting job-archiver", &log);
    assert!(started["version"].is_string(), "version in the start event: {started}");
    let listening = find_event(&events, "listening", &log);
    assert_eq!(listening["address"], format!("127.0.0.1:{port}"), "listen address: {listening}");
    let recovered = find_event(&events, "recovered the backlog", &log);
    assert_eq!(recovered["queued"], 0, "queued jobs at start: {recovered}");

    let archived = find_event(&events, "archived job", &log);
    assert_eq!(archived["level"], "INFO", "level of the archived event: {archived}");
    assert_eq!(archived["span"]["job_id"], FRITZ_ID, "job id of the archived event: {archived}");
    assert!(archived["duration_ms"].is_u64(), "duration of the archived event: {archived}");
    assert!(archived["bytes"].as_u64().is_some_and(|bytes| bytes > 0), "bytes: {archived}");

    let failed = events
        .iter()
        .find(|event| event["message"].as_str().is_some_and(|text| text.starts_with("job failed")))
        .unwrap_or_else(|| panic!("no job failed event; log:\n{log}"));
    assert_eq!(failed["level"], "ERROR", "level of the failed event: {failed}");
    assert_eq!(failed["span"]["job_id"], failing_id, "job id of the failed event: {failed}");
    assert_eq!(failed["step"], "load", "step of the failed event: {failed}");
    assert!(failed["error"].as_str().is_some_and(|error| !error.is_empty()), "error: {failed}");

    // Every event inside a job span names the job, debug step timings included.
    let job_events: Vec<&Value> =
        events.iter().filter(|event| event["span"]["name"] == "job").collect();
    let debug_events = job_events.iter().filter(|event| event["level"] == "DEBUG").count();
    assert!(debug_events >= 2, "debug events in job spans: {debug_events}; log:\n{log}");
    for event in job_events {
        let id = event["span"]["job_id"].as_str().unwrap_or_default();
        assert!(id == FRITZ_ID || id == failing_id, "job id of an event in a job span: {event}");
    }
    let stopped = find_event(&events, "stopped; 0 jobs remain queued", &log);
    assert_eq!(stopped["queued"], 0, "queued jobs at the stop: {stopped}");
}

/// `RUST_LOG` sets the level; an invalid value is reported and the default applies. Text lines
/// written to a file carry no color codes.
#[test]
fn rust_log_sets_level() {
    let job = support::repo_path("examples/jobs/fritz-398764-meta.json");
    // Each run gets its own store, so that each one archives the job.
    let run = |rust_log: Option<&str>, format: &str| {
        let dirs = TestDirs::new();
        let config = dirs.write_config_file("127.0.0.1:0", "");
        let env: Vec<(&str, &str)> =
            rust_log.map(|value| ("RUST_LOG", value)).into_iter().collect();
        let output = binary_command(&env)
            .arg("--config")
            .arg(&config)
            .arg("--log-format")
            .arg(format)
            .arg("archive")
            .arg(&job)
            .current_dir(dirs.root.path())
            .output()
            .expect("running job-archiver archive");
        assert_eq!(output.status.code(), Some(0), "exit status of archive: {}", describe(&output));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    let default_level = run(None, "json");
    let events = parse_json_lines(&default_level);
    let archived = find_event(&events, "archived job", &default_level);
    assert_eq!(archived["span"]["job_id"], FRITZ_ID, "job id of the archived event: {archived}");
    assert!(
        events.iter().all(|event| event["level"] != "DEBUG"),
        "debug events without RUST_LOG:\n{default_level}"
    );

    let warn_level = run(Some("job_archiver=warn"), "json");
    assert_eq!(warn_level, "", "log lines with RUST_LOG=job_archiver=warn");

    let debug_level = run(Some("job_archiver=debug"), "json");
    let events = parse_json_lines(&debug_level);
    assert!(
        events.iter().any(|event| event["level"] == "DEBUG" && event["span"]["job_id"] == FRITZ_ID),
        "no debug event of the job with RUST_LOG=job_archiver=debug:\n{debug_level}"
    );

    let invalid = run(Some("job_archiver=loudest"), "json");
    let events = parse_json_lines(&invalid);
    let warning = events
        .iter()
        .find(|event| {
            event["message"].as_str().is_some_and(|text| text.starts_with("RUST_LOG is invalid"))
        })
        .unwrap_or_else(|| panic!("no warning about the invalid RUST_LOG:\n{invalid}"));
    assert_eq!(warning["rust_log"], "job_archiver=loudest", "value in the warning: {warning}");

    let text = run(Some("job_archiver=info"), "text");
    assert!(text.contains("archived job"), "no archived job line in the text log:\n{text}");
    assert!(!text.contains('\u{1b}'), "the text log written to a file has ANSI escapes:\n{text}");
}

/// The start-up log names the metric source without its credentials or token.
#[test]
fn startup_log_hides_secrets() {
    let dirs = TestDirs::new();
    let token_file = dirs.root.path().join("token.jwt");
    std::fs::write(&token_file, "token-text-never-logged\n").expect("writing the token file");
    let port = support::free_port();
    let extra = format!(
        "[metric_source]\nkind = \"cc-metric-store\"\n\
         url = \"http://operator:password-never-logged@127.0.0.1:{port}\"\n\
         token_file = \"{}\"\n",
        token_file.display()
    );
    let config = dirs.write_config_file("127.0.0.1:0", &extra);

    // The URL with credentials is rejected after the start-up event is logged.
    let output = binary_command(&[])
        .arg("--config")
        .arg(&config)
        .arg("--log-format")
        .arg("json")
        .arg("serve")
        .current_dir(dirs.root.path())
        .output()
        .expect("running job-archiver serve");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "exit status with credentials in the URL: {stderr}");
    assert!(
        stderr.contains("\"starting job-archiver\""),
        "no start-up event before the URL was rejected:\n{stderr}"
    );
    for secret in ["password-never-logged", "token-text-never-logged"] {
        assert!(!stderr.contains(secret), "stderr shows the secret {secret:?}:\n{stderr}");
    }
}

/// `status --watch` prints the status again at each interval until SIGINT, and writes no ANSI
/// escapes when stdout is not a terminal.
#[test]
fn status_watch_refreshes_until_sigint() {
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", "");
    let server = ServerProcess::start(&config, dirs.root.path(), "watch-server");
    let stdout_path = dirs.root.path().join("watch.stdout");
    let mut child = binary_command(&[])
        .args(["--server", &server.url, "status", "--watch", "--interval", "1"])
        .current_dir(dirs.root.path())
        .stdout(File::create(&stdout_path).expect("creating the stdout file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("starting job-archiver status --watch");
    let read_stdout = || std::fs::read_to_string(&stdout_path).unwrap_or_default();

    let refreshed = wait_for_condition(Duration::from_secs(30), || {
        read_stdout().matches("status of ").count() >= 2
    });
    assert!(refreshed, "fewer than two refreshes within 30 s:\n{}", read_stdout());
    support::send_signal(child.id(), "INT");
    let status = wait_for_exit(&mut child, Duration::from_secs(30));

    let stdout = read_stdout();
    assert_eq!(status.code(), Some(0), "exit status after SIGINT:\n{stdout}");
    assert!(!stdout.contains('\u{1b}'), "ANSI escapes in stdout that is a file:\n{stdout}");
    let queued_lines = stdout.lines().filter(|line| line.starts_with("queued ")).count();
    assert!(queued_lines >= 2, "queued lines in {queued_lines} refreshes:\n{stdout}");
}

/// `trigger` and `archive` end with their summary lines and leave no progress bar in output that
/// is not a terminal.
#[test]
fn trigger_and_archive_print_summaries() {
    let dirs = TestDirs::new();
    let jobs = dirs.root.path().join("jobs");
    std::fs::create_dir(&jobs).expect("creating the jobs folder");
    std::fs::copy(
        support::repo_path("examples/jobs/fritz-398764-meta.json"),
        jobs.join("a-fritz.json"),
    )
    .expect("copying the fritz example job");
    let synthetic = serde_json::to_vec(&support::synthetic_job(88)).expect("encoding a job");
    std::fs::write(jobs.join("b-synthetic.json"), synthetic).expect("writing a synthetic job");
    let mut broken = File::create(jobs.join("c-broken.json")).expect("creating a broken job file");
    broken.write_all(b"{\"jobId\": ").expect("writing a broken job file");

    // archive: one archived, one failed in the load step, one file rejected.
    let config = dirs.write_config_file("127.0.0.1:0", "");
    let archive = binary_command(&[])
        .arg("--config")
        .arg(&config)
        .arg("archive")
        .arg(&jobs)
        .current_dir(dirs.root.path())
        .output()
        .expect("running job-archiver archive");
    let stdout = String::from_utf8_lossy(&archive.stdout);
    assert_eq!(archive.status.code(), Some(1), "exit status of archive: {}", describe(&archive));
    assert!(
        stdout.lines().any(|line| line
            == "summary: 1 archived, 1 failed, 0 already archived, 1 rejected, 0 left queued"),
        "summary of archive: {}",
        describe(&archive)
    );
    assert!(
        stdout.lines().any(|line| line == "failed by step: load: 1"),
        "failures by step of archive: {}",
        describe(&archive)
    );
    assert!(stdout.contains("\ntook "), "no rate line from archive: {}", describe(&archive));
    assert_no_progress_bar(&archive);

    // trigger, on a fresh store: two jobs accepted and one file rejected with its status.
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", "");
    let server = ServerProcess::start(&config, dirs.root.path(), "trigger-server");
    let trigger = binary_command(&[])
        .args(["--server", &server.url, "trigger"])
        .arg(&jobs)
        .current_dir(dirs.root.path())
        .output()
        .expect("running job-archiver trigger");
    let stdout = String::from_utf8_lossy(&trigger.stdout);
    assert_eq!(trigger.status.code(), Some(1), "exit status of trigger: {}", describe(&trigger));
    assert!(
        stdout.lines().any(|line| line == "summary: 2 accepted, 0 already known, 1 rejected"),
        "summary of trigger: {}",
        describe(&trigger)
    );
    assert!(
        stdout.lines().any(|line| line == "rejected by status: 400 Bad Request: 1"),
        "rejections by status of trigger: {}",
        describe(&trigger)
    );
    assert_no_progress_bar(&trigger);
}

/// Returns a valid job of a cluster that the archive does not hold, which the worker fails in
/// the `cluster` step without reading any file but the missing `cluster.json`.
fn fast_failing_job(job_id: usize) -> Value {
    let mut job = support::synthetic_job(job_id as i64);
    job["cluster"] = Value::from("nosuch");
    job
}

/// Archives the fritz example and fails a synthetic job in the `load` step.
async fn archive_fritz_and_fail_one(server: &TestServer) {
    let jobs = Value::from(vec![support::example_job("fritz-398764"), support::synthetic_job(5)]);
    let (status, reply) = server.post_json("/api/jobs/archive", &jobs).await;
    assert_eq!(status, 202, "status of the trigger of two jobs: {reply}");
    server.wait_for_state(FRITZ_ID, "archived").await;
    server.wait_for_state("fritz/5/1675954353", "failed").await;
}

/// Returns the text of `GET /metrics`.
async fn scrape(server: &TestServer) -> String {
    let response =
        server.client.get(format!("{}/metrics", server.url)).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200, "status of GET /metrics");
    response.text().await.expect("the /metrics body is text")
}

/// Returns the sample names of the metrics text of a server that archived and failed a job.
async fn exported_names() -> BTreeSet<String> {
    let dirs = TestDirs::new();
    let server = support::start_server(dirs.config()).await;
    archive_fritz_and_fail_one(&server).await;
    let text = scrape(&server).await;
    server.stop().await;
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// Returns each series of a metrics text, its name and labels without the value.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.rsplit_once(' ').map_or(line, |(series, _)| series).to_owned())
        .collect()
}

/// Returns the value of one series, written as in the text format (`name{label="value"}`).
fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Returns the names of job-archiver and process metrics in a PromQL expression or any text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (start, _) in text.char_indices() {
        let rest = &text[start..];
        if !(rest.starts_with("job_archiver_") || rest.starts_with("process_")) {
            continue;
        }
        if text[..start].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        let end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        names.insert(rest[..end].to_owned());
    }
    names
}

/// Returns every panel of a dashboard, with the panels inside rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn collect<'a>(list: &'a Value, acc: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            acc.push(panel);
            collect(&panel["panels"], acc);
        }
    }
    let mut acc = Vec::new();
    collect(&dashboard["panels"], &mut acc);
    acc
}

/// Returns every query of a dashboard: the panels' target expressions and the template
/// variables' queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_owned());
            }
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    exprs
}

/// Parses every line of a log as a JSON object, and fails on a line that is not one.
fn parse_json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("log line is not JSON ({err}): {line}"));
            assert!(event.is_object(), "log line is not a JSON object: {line}");
            for key in ["timestamp", "level", "message"] {
                assert!(event.get(key).is_some(), "log line lacks {key}: {line}");
            }
            event
        })
        .collect()
}

fn find_event<'a>(events: &'a [Value], message: &str, log: &str) -> &'a Value {
    events
        .iter()
        .find(|event| event["message"] == message)
        .unwrap_or_else(|| panic!("no log event {message:?}; log:\n{log}"))
}

/// Waits until the store counts `failed` jobs, polling `GET /api/queue`.
async fn wait_for_failed_count(server: &TestServer, failed: u64, bound: Duration) {
    let last = poll_queue(server, bound, |queue| queue["failed"] == failed).await;
    assert_eq!(last["failed"], failed, "failed jobs after waiting {bound:?}: {last}");
}

/// Waits until the store counts `queued` queued jobs and `archiving` archiving ones.
async fn wait_for_counts(server: &TestServer, queued: u64, archiving: u64) {
    let bound = Duration::from_secs(30);
    let last = poll_queue(server, bound, |queue| {
        queue["queued"] == queued && queue["archiving"] == archiving
    })
    .await;
    assert_eq!(last["queued"], queued, "queued jobs after waiting {bound:?}: {last}");
    assert_eq!(last["archiving"], archiving, "archiving jobs after waiting {bound:?}: {last}");
}

/// Polls `GET /api/queue` every 50 ms until `done` accepts the reply or `bound` passes, and
/// returns the last reply.
async fn poll_queue(server: &TestServer, bound: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let (_, queue) = server.get_json("/api/queue").await;
        if done(&queue) || tokio::time::Instant::now() >= deadline {
            return queue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loads every metric of the fritz example job from `store`.
async fn load_fritz(store: &CcMetricStore) -> Result<(), String> {
    let cluster_path = support::repo_path("examples/archive/fritz/cluster.json");
    let cluster = Cluster::from_json(&std::fs::read(cluster_path).expect("reading cluster.json"))
        .expect("a valid cluster.json");
    let job = JobMeta::from_json(support::example_job("fritz-398764")).expect("a valid job");
    let sub_cluster = cluster.sub_cluster_for(&job).map(|sub_cluster| sub_cluster.name.clone());
    let metrics: Vec<String> = cluster
        .metrics_for(sub_cluster.as_deref())
        .iter()
        .map(|metric| metric.name.clone())
        .collect();
    let scopes = archive_scopes(&job, 8);
    let request = LoadRequest {
        job: &job,
        cluster: &cluster,
        metrics: &metrics,
        scopes: &scopes,
        resolution: 0,
    };
    let loaded = tokio::time::timeout(Duration::from_secs(20), store.load(&request))
        .await
        .expect("the load ends within 20 s");
    loaded.map(|_| ()).map_err(|err| err.to_string())
}

/// The binary with `env` and without the `RUST_LOG` and `JOB_ARCHIVER_*` variables of the test's
/// own environment.
fn binary_command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(support::binary());
    command.stdin(Stdio::null()).env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("JOB_ARCHIVER_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// Runs `command` with `input` on stdin and returns its output.
fn run_with_stdin(command: &mut Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("starting {command:?} failed: {err}; install prometheus"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("writing the metrics to promtool");
    child.wait_with_output().expect("waiting for promtool")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_progress_bar(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}') && !stderr.contains(" jobs, "),
        "a progress bar in stderr that is not a terminal: {}",
        describe(output)
    );
}

fn wait_for_condition(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

fn wait_for_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("reading the exit status") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a number from the environment, or returns `default`.
fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}
