//! The `job-archiver serve` child process: its run folder and configuration, start, readiness,
//! and stop by SIGTERM. Also the stalled metric store that keeps the worker idle while triggers
//! are measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The example data folder of this repository, for `cluster.json` and the job templates.
pub const EXAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

/// Behaviour of the service's worker with the jobs that the load generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerMode {
    /// Jobs name a known cluster, and the metric source never replies: the worker takes one job
    /// and waits on it, so only the trigger path uses the store.
    Stalled,
    /// Jobs name a cluster without `cluster.json`: the worker claims each job and records it
    /// failed at the `cluster` step, the shortest full trip through the queue.
    Failing,
}

impl WorkerMode {
    /// Returns the cluster named in the jobs sent for this mode.
    pub fn cluster(self) -> &'static str {
        match self {
            WorkerMode::Stalled => "fritz",
            WorkerMode::Failing => "nocluster",
        }
    }
}

/// Store durability, as `store.durability` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDurability {
    Fsync,
    Os,
}

impl StoreDurability {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreDurability::Fsync => "fsync",
            StoreDurability::Os => "os",
        }
    }
}

/// A run folder: `store/`, `archive/`, `config.toml` and `server.log`.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// Creates the folder with an archive root that contains the fritz `cluster.json`.
    pub fn create(root: PathBuf) -> anyhow::Result<RunDir> {
        let cluster_dir = root.join("archive/fritz");
        std::fs::create_dir_all(&cluster_dir)
            .with_context(|| format!("{}: cannot create", cluster_dir.display()))?;
        std::fs::create_dir_all(root.join("store"))?;
        // The job-archive format version that cc-backend and the service expect.
        std::fs::write(root.join("archive/version.txt"), "3\n")?;
        let cluster_json = Path::new(EXAMPLES_DIR).join("archive/fritz/cluster.json");
        std::fs::copy(&cluster_json, cluster_dir.join("cluster.json"))
            .with_context(|| format!("{}: cannot copy", cluster_json.display()))?;
        Ok(RunDir { root })
    }

    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Writes `config.toml` for a server with this durability and worker mode. `stall_port` is
    /// the stalled metric store for [`WorkerMode::Stalled`].
    pub fn write_config(
        &self,
        durability: StoreDurability,
        worker: WorkerMode,
        stall_port: Option<u16>,
    ) -> anyhow::Result<PathBuf> {
        let source = match (worker, stall_port) {
            (WorkerMode::Stalled, Some(port)) => format!(
                "kind = \"cc-metric-store\"\nurl = \"http://127.0.0.1:{port}\"\ntimeout = \"1h\"\n"
            ),
            (WorkerMode::Stalled, None) => anyhow::bail!("the stalled worker needs a stall port"),
            (WorkerMode::Failing, _) => {
                format!("kind = \"archive\"\npath = {:?}\n", self.root.join("archive"))
            }
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n\
             [store]\npath = {store:?}\ndurability = \"{durability}\"\n\n\
             [archive]\npath = {archive:?}\n\n\
             [worker]\nshutdown_timeout = \"1s\"\n\n\
             [metric_source]\n{source}\n\
             [log]\nformat = \"json\"\n",
            store = self.store(),
            durability = durability.as_str(),
            archive = self.root.join("archive"),
        );
        let path = self.root.join("config.toml");
        std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(path)
    }
}

/// A running `job-archiver serve`, killed on drop if it was not stopped.
pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    pub url: String,
    /// When the process was spawned, for the time to readiness.
    pub spawned: Instant,
    log_path: PathBuf,
}

impl Server {
    /// Spawns `binary --config <config> serve`, logging JSON to `server.log` beside the config,
    /// and waits for the `listening` event to learn the port.
    pub async fn start(binary: &Path, config: &Path) -> anyhow::Result<Server> {
        let log_path = config.with_file_name("server.log");
        let log = std::fs::File::create(&log_path)?;
        let spawned = Instant::now();
        let child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .arg("serve")
            // Per-job lines of the failing worker would dominate the log and its cost.
            .env("RUST_LOG", "info,job_archiver::worker=off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("{}: cannot start; build it with cargo build --release", binary.display())
            })?;
        let pid = child.id();
        let mut server = Server { child: Some(child), pid, url: String::new(), spawned, log_path };
        let address = server.wait_for_listening(Duration::from_secs(120)).await?;
        server.url = format!("http://{address}");
        Ok(server)
    }

    async fn wait_for_listening(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            for line in log.lines() {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                if event["message"] == "listening" {
                    if let Some(address) = event["address"].as_str() {
                        return Ok(address.to_owned());
                    }
                }
            }
            if let Some(status) =
                self.child.as_mut().and_then(|child| child.try_wait().ok().flatten())
            {
                anyhow::bail!("server exited with {status} before listening; log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::bail!(
            "server did not log its address within {timeout:?}; see {}",
            self.log_path.display()
        )
    }

    /// Polls `/readyz` every 2 ms until it returns 200 and returns the time since the spawn.
    pub async fn wait_ready(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/readyz", self.url);
        let mut last_reply = String::from("no reply");
        while Instant::now() < deadline {
            if let Ok(response) = client.get(&url).send().await {
                if response.status() == reqwest::StatusCode::OK {
                    return Ok(self.spawned.elapsed());
                }
                last_reply = format!(
                    "HTTP {}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::bail!("{url}: not ready within {timeout:?}; last reply {}", last_reply.trim())
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit, then sends SIGKILL.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        // The `kill` command keeps this program free of unsafe code.
        let status = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                anyhow::ensure!(
                    status.success(),
                    "server exited with {status}; see {}",
                    self.log_path.display()
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("server did not exit within {timeout:?} of SIGTERM and was killed")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP server on 127.0.0.1 that accepts connections and never replies, standing in for a
/// metric store that hangs. Aborted on drop.
pub struct StalledMetricStore {
    pub port: u16,
    task: JoinHandle<()>,
}

impl StalledMetricStore {
    /// Most connections kept open; the worker opens one per job it takes, normally one.
    const MAX_CONNECTIONS: usize = 64;

    pub async fn start() -> anyhow::Result<StalledMetricStore> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while open.len() < Self::MAX_CONNECTIONS {
                match listener.accept().await {
                    Ok((socket, _)) => open.push(socket),
                    Err(_) => return,
                }
            }
            // Keep the accepted connections open until aborted.
            std::future::pending::<()>().await;
        });
        Ok(StalledMetricStore { port, task })
    }
}

impl Drop for StalledMetricStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}
