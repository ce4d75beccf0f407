//! A real Prometheus server (Debian's `prometheus` package) scrapes the service, loads
//! `deploy/prometheus/alerts.yml`, and returns the values of the jobs the test archived.
//! `promtool` checks the files in `deploy/prometheus`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{self, TestServer};

/// How long the test waits for scraped values to show up in queries. With a scrape and rule
/// evaluation interval of 1 s, values arrive within 2 s or so.
const QUERY_WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_job_metrics() {
    let dirs = support::TestDirs::new();
    let server = support::start_server(dirs.config()).await;
    let prometheus = PrometheusServer::start(dirs.root.path(), &server.url);
    let client = &server.client;
    prometheus.wait_ready(client).await;

    archive_examples_and_fail_one(&server).await;

    // Poll until every expected value has been scraped and evaluated, then check each.
    let deadline = tokio::time::Instant::now() + QUERY_WAIT;
    let values = loop {
        let values = QueryValues::read(client, &prometheus).await;
        if values.all_as_expected() || tokio::time::Instant::now() >= deadline {
            break values;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = prometheus.log();
    assert_eq!(values.up, Some(1.0), "up of the job-archiver target; Prometheus log:\n{log}");
    assert_eq!(values.queued, Some(0.0), "job_archiver_queued_jobs; Prometheus log:\n{log}");
    assert_eq!(values.archived_jobs, Some(2.0), "archived jobs in the store; log:\n{log}");
    assert_eq!(values.failed_jobs, Some(1.0), "failed jobs in the store; log:\n{log}");
    assert!(
        values.archive_count.is_some_and(|count| count >= 2.0),
        "archive_duration_seconds_count of archived jobs: {:?}; log:\n{log}",
        values.archive_count
    );
    assert_eq!(
        values.failed_alert.as_deref(),
        Some("pending"),
        "state of the JobArchiverJobsFailed alert, which waits 1 min before it fires"
    );

    // Every dashboard query is valid PromQL for this Prometheus.
    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(support::repo_path("deploy/grafana/job-archiver.json"))
            .expect("reading the dashboard"),
    )
    .expect("the dashboard is JSON");
    for expr in dashboard_exprs(&dashboard) {
        let concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*");
        let reply = prometheus.query(client, &concrete).await;
        assert_eq!(reply["status"], "success", "dashboard query {expr}: {reply}");
    }

    // Every alert rule loaded and evaluated without error.
    let rules = prometheus.get(client, "/api/v1/rules").await;
    let rules: Vec<Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(rules.len(), 7, "rules loaded from alerts.yml: {rules:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "health of rule {}: {rule}", rule["name"]);
    }
    drop(prometheus);
    server.stop().await;
}

#[test]
fn promtool_accepts_deploy_files() {
    let folder = support::repo_path("deploy/prometheus");
    let checks: [&[&str]; 3] = [
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts_test.yml"],
        &["check", "config", "scrape.yml"],
    ];
    for args in checks {
        let output = promtool(&folder, args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "exit status of promtool {}: stdout:\n{}\nstderr:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The values the test reads back from Prometheus; `None` where a query returned no sample.
#[derive(Debug)]
struct QueryValues {
    up: Option<f64>,
    queued: Option<f64>,
    archived_jobs: Option<f64>,
    failed_jobs: Option<f64>,
    archive_count: Option<f64>,
    /// State of the `JobArchiverJobsFailed` alert: `pending` or `firing`.
    failed_alert: Option<String>,
}

impl QueryValues {
    async fn read(client: &reqwest::Client, prometheus: &PrometheusServer) -> QueryValues {
        let value = |expr: &'static str| async move {
            let reply = prometheus.query(client, expr).await;
            reply["data"]["result"][0]["value"][1].as_str().and_then(|text| text.parse().ok())
        };
        let alerts = prometheus.get(client, "/api/v1/alerts").await;
        let failed_alert = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|alert| alert["labels"]["alertname"] == "JobArchiverJobsFailed")
            .and_then(|alert| alert["state"].as_str().map(str::to_owned));
        QueryValues {
            up: value("up{job=\"job-archiver\"}").await,
            queued: value("job_archiver_queued_jobs").await,
            archived_jobs: value("job_archiver_jobs{state=\"archived\"}").await,
            failed_jobs: value("job_archiver_jobs{state=\"failed\"}").await,
            archive_count: value(
                "job_archiver_archive_duration_seconds_count{outcome=\"archived\"}",
            )
            .await,
            failed_alert,
        }
    }

    fn all_as_expected(&self) -> bool {
        self.up == Some(1.0)
            && self.queued == Some(0.0)
            && self.archived_jobs == Some(2.0)
            && self.failed_jobs == Some(1.0)
            && self.archive_count.is_some_and(|count| count >= 2.0)
            && self.failed_alert.is_some()
    }
}

/// A Prometheus server on 127.0.0.1 with its storage in a test folder, killed on drop.
struct PrometheusServer {
    child: Child,
    url: String,
    log_path: PathBuf,
}

impl PrometheusServer {
    /// Starts Prometheus on a free port, scraping `target_url` every second and evaluating
    /// `deploy/prometheus/alerts.yml` every second.
    fn start(folder: &Path, target_url: &str) -> PrometheusServer {
        let target = target_url.strip_prefix("http://").expect("an http:// URL");
        let config_path = folder.join("prometheus.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: job-archiver\n    static_configs:\n      \
             - targets: [\"{target}\"]\n",
            support::repo_path("deploy/prometheus/alerts.yml").display()
        );
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let port = support::free_port();
        let log_path = folder.join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("creating the Prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", folder.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(folder)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("starting prometheus failed: {err}; install it: apt-get install prometheus")
            });
        PrometheusServer { child, url: format!("http://127.0.0.1:{port}"), log_path }
    }

    /// Waits up to 30 s for `/-/ready`.
    async fn wait_ready(&self, client: &reqwest::Client) {
        let ready = support::wait_until(Duration::from_secs(30), || async {
            let response = client.get(format!("{}/-/ready", self.url)).send().await;
            response.is_ok_and(|response| response.status() == 200)
        })
        .await;
        assert!(ready, "Prometheus not ready within 30 s; log:\n{}", self.log());
    }

    async fn query(&self, client: &reqwest::Client, expr: &str) -> Value {
        let response = client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap_or_else(|err| panic!("query {expr} failed: {err}; log:\n{}", self.log()));
        response.json().await.expect("the query reply is JSON")
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> Value {
        let response = client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path} failed: {err}; log:\n{}", self.log()));
        response.json().await.expect("the reply is JSON")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Archives both example jobs and fails a synthetic one in the `load` step.
async fn archive_examples_and_fail_one(server: &TestServer) {
    let jobs = Value::from(vec![
        support::example_job("fritz-398764"),
        support::example_job("emmy-1403244"),
        support::synthetic_job(6),
    ]);
    let (status, reply) = server.post_json("/api/jobs/archive", &jobs).await;
    assert_eq!(status, 202, "status of the trigger of three jobs: {reply}");
    server.wait_for_state("fritz/398764/1675954353", "archived").await;
    server.wait_for_state("emmy/1403244/1608923076", "archived").await;
    server.wait_for_state("fritz/6/1675954353", "failed").await;
}

/// Returns the target expressions of every panel of a dashboard, rows included.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn collect(panels: &Value, exprs: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    exprs.push(expr.to_owned());
                }
            }
            collect(&panel["panels"], exprs);
        }
    }
    let mut exprs = Vec::new();
    collect(&dashboard["panels"], &mut exprs);
    exprs
}

fn promtool(folder: &Path, args: &[&str]) -> Output {
    Command::new("promtool").args(args).current_dir(folder).output().unwrap_or_else(|err| {
        panic!("running promtool failed: {err}; install it: apt-get install prometheus")
    })
}
