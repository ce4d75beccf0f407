//! Shared test harness: temporary store and archive folders, configs, an in-process server on
//! 127.0.0.1:0, and helpers to run the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use job_archiver::config::{self, Config, MetricSourceConfig};
use job_archiver::service::{self, Components};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The built `job-archiver` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_job-archiver"))
}

/// A test's own folders: the store, the archive (with both example clusters) and room for
/// anything else.
pub struct TestDirs {
    pub root: tempfile::TempDir,
    pub store: PathBuf,
    pub archive: PathBuf,
}

impl TestDirs {
    pub fn new() -> TestDirs {
        let root = tempfile::tempdir().expect("creating a temporary folder");
        let store = root.path().join("store");
        let archive = root.path().join("job-archive");
        for cluster in ["emmy", "fritz"] {
            std::fs::create_dir_all(archive.join(cluster)).unwrap();
            std::fs::copy(
                repo_path(&format!("examples/archive/{cluster}/cluster.json")),
                archive.join(cluster).join("cluster.json"),
            )
            .unwrap();
        }
        std::fs::write(archive.join("version.txt"), "3\n").unwrap();
        TestDirs { root, store, archive }
    }

    /// A config on these folders that replays `examples/archive`.
    pub fn config(&self) -> Config {
        self.config_with_source(MetricSourceConfig::Archive { path: repo_path("examples/archive") })
    }

    pub fn config_with_source(&self, metric_source: MetricSourceConfig) -> Config {
        let no_env = |_: &str| None;
        let sources = config::Sources { file: None, env: &no_env, flags: &[] };
        let mut config = config::load(&sources).expect("the defaults are valid");
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.url = "http://127.0.0.1:0".to_owned();
        config.store.path = self.store.clone();
        config.store.cache_bytes = 8 << 20;
        config.archive.path = self.archive.clone();
        config.retry.initial_backoff = Duration::from_millis(100);
        config.retry.max_backoff = Duration::from_millis(400);
        config.metric_source = metric_source;
        config
    }

    /// Writes a config file for the binary: these folders, port 0 unless `listen` is given,
    /// and `extra` TOML appended (it may not repeat a section header written here).
    pub fn write_config_file(&self, listen: &str, extra: &str) -> PathBuf {
        let path = self.root.path().join("config.toml");
        let text = format!(
            "[server]\nlisten = \"{listen}\"\n\n[store]\npath = \"{}\"\ncache_bytes = 8388608\n\n\
             [archive]\npath = \"{}\"\n\n{extra}\n",
            self.store.display(),
            self.archive.display(),
        );
        let text = if extra.contains("[metric_source]") {
            text
        } else {
            format!(
                "{text}\n[metric_source]\nkind = \"archive\"\npath = \"{}\"\n",
                repo_path("examples/archive").display()
            )
        };
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// The example job `name` (`fritz-398764` or `emmy-1403244`) as a trigger body.
pub fn example_job(name: &str) -> Value {
    let path = repo_path(&format!("examples/jobs/{name}-meta.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A small valid fritz job with its own `jobId`. The archive replay has no data for it, so
/// it fails in the `load` step unless the metric source serves it.
pub fn synthetic_job(job_id: i64) -> Value {
    serde_json::json!({
        "jobId": job_id, "cluster": "fritz", "subCluster": "main", "startTime": 1_675_954_353,
        "numNodes": 1, "duration": 177, "user": "u", "project": "p", "shared": "none",
        "jobState": "completed", "resources": [{"hostname": "f0649"}]
    })
}

/// A server running in this process on 127.0.0.1:0.
pub struct TestServer {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    pub client: reqwest::Client,
}

/// Starts the real router and worker on 127.0.0.1:0 with `config`.
pub async fn start_server(config: Config) -> TestServer {
    let components = Components::open(&config).expect("opening the store and archive");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        service::serve(&config, components, listener, async move {
            let _ = stop_rx.await;
            "test stop"
        })
        .await
    });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let server = TestServer { url, stop: Some(stop_tx), task, client };
    server.wait_ready().await;
    server
}

impl TestServer {
    async fn wait_ready(&self) {
        let ready = wait_until(Duration::from_secs(10), || async {
            match self.client.get(format!("{}/readyz", self.url)).send().await {
                Ok(response) => response.status() == 200,
                Err(_) => false,
            }
        })
        .await;
        assert!(ready, "server at {} did not become ready within 10 s", self.url);
    }

    /// Stops the server as a signal would and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("server stopped within 60 s")
            .expect("server task joined")
            .expect("server stopped cleanly");
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_bytes(path, serde_json::to_vec(body).unwrap()).await
    }

    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response =
            self.client.get(format!("{}{path}", self.url)).send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Waits until the job reaches `state` and returns its status body.
    pub async fn wait_for_state(&self, id: &str, state: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..600 {
            let (status, body) = self.get_json(&format!("/api/jobs/{id}")).await;
            if status == 200 && body["state"] == state {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not reach state {state} within 30 s; last status: {last}");
    }
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `job-archiver serve` child process, killed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub stderr_path: PathBuf,
}

impl ServerProcess {
    /// Starts `job-archiver --config <config> serve` on a free port and waits for `/readyz`.
    pub fn start(config: &Path, log_dir: &Path, name: &str) -> ServerProcess {
        let port = free_port();
        let stderr_path = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child = Command::new(binary())
            .arg("--config")
            .arg(config)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "job_archiver=debug,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting the job-archiver binary");
        let url = format!("http://127.0.0.1:{port}");
        let mut process = ServerProcess { child, url, stderr_path };
        process.wait_ready(Duration::from_secs(30));
        process
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("server exited early with {status}; log:\n{}", self.log());
            }
            if http_get_status(&format!("{}/readyz", self.url)) == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server not ready within {timeout:?}; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        send_signal(self.child.id(), "TERM");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                self.kill();
                panic!("server did not exit within {timeout:?} of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal by name with the `kill` command, which keeps the tests free of unsafe code.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `GET` over a plain TCP socket; returns the status code.
pub fn http_get_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) =
        rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
