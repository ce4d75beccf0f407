//! The `restart` mode: a store filled with a large backlog, then `serve` started on it. It
//! measures the time from spawning the process to `/readyz` returning 200, and the memory of
//! the process while its worker drains the backlog.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use job_archiver::commit::Durability;
use job_archiver::store::Store;

use crate::http::JobTemplate;
use crate::probe::{self, FolderSize};
use crate::queue::{fill, open_queue, CACHE_BYTES};
use crate::server::{RunDir, Server, StoreDurability, WorkerMode};

/// Options of the `restart` mode.
pub struct RestartOptions {
    pub binary: PathBuf,
    pub work_dir: PathBuf,
    pub jobs: u64,
    pub batch: usize,
    /// Maximum time to watch the drain. The run reports how many jobs were drained by then.
    pub drain_limit: Duration,
    pub sample_every: Duration,
}

/// One sample of the server while it drains.
#[derive(Debug, Clone, Serialize)]
pub struct DrainSample {
    pub seconds: f64,
    pub queued: u64,
    pub done: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

#[derive(Debug, Serialize)]
pub struct RestartResult {
    pub jobs: u64,
    pub fill_seconds: f64,
    pub store_after_fill: FolderSize,
    /// Opening the filled store in this process and reading its counts.
    pub store_open_ms: f64,
    /// From spawning `serve` to the first 200 of `/readyz`.
    pub ready_ms: f64,
    pub rss_at_ready_kib: u64,
    pub drained: u64,
    pub drain_seconds: f64,
    pub drain_jobs_per_second: f64,
    /// Peak resident memory of the server (VmHWM) at the end of the drain.
    pub peak_rss_kib: u64,
    pub samples: Vec<DrainSample>,
    pub store_after_drain: FolderSize,
}

pub async fn run(options: &RestartOptions) -> anyhow::Result<RestartResult> {
    let dir = RunDir::create(options.work_dir.join("restart"))?;
    let worker = WorkerMode::Failing;
    let template = JobTemplate::load(worker.cluster())?;
    let queue = open_queue(&dir.store(), Durability::OsBuffers)?;
    let fill_seconds = fill(&queue, &template, 1, options.jobs, options.batch).await?;
    queue.store().sync()?;
    drop(queue);
    let store_after_fill = probe::folder_size(&dir.store());

    let started = Instant::now();
    let store = Store::open(&dir.store(), CACHE_BYTES)?;
    let counts = store.counts()?;
    let store_open_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        counts.queued == options.jobs,
        "filled store: expected {} queued jobs, found {}",
        options.jobs,
        counts.queued
    );
    drop(store);

    let config = dir.write_config(StoreDurability::Fsync, worker, None)?;
    let server = Server::start(&options.binary, &config).await?;
    let client = reqwest::Client::new();
    let ready = server.wait_ready(&client, Duration::from_secs(600)).await?;
    let rss_at_ready_kib = probe::status_kib(server.pid, "VmRSS").unwrap_or(0);

    let drain_started = Instant::now();
    let mut samples = Vec::new();
    while drain_started.elapsed() < options.drain_limit {
        tokio::time::sleep(options.sample_every).await;
        let sample = sample(&client, &server, drain_started).await?;
        let finished = sample.queued == 0;
        samples.push(sample);
        if finished {
            break;
        }
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    let peak_rss_kib = probe::status_kib(server.pid, "VmHWM").unwrap_or(0);
    let drained = samples.last().map(|sample| sample.done).unwrap_or(0);
    server.stop(Duration::from_secs(30)).await?;

    Ok(RestartResult {
        jobs: options.jobs,
        fill_seconds,
        store_after_fill,
        store_open_ms,
        ready_ms: ready.as_secs_f64() * 1000.0,
        rss_at_ready_kib,
        drained,
        drain_seconds,
        drain_jobs_per_second: drained as f64 / drain_seconds,
        peak_rss_kib,
        samples,
        store_after_drain: probe::folder_size(&dir.store()),
    })
}

/// Reads `/api/queue` and the server's memory.
pub async fn sample(
    client: &reqwest::Client,
    server: &Server,
    since: Instant,
) -> anyhow::Result<DrainSample> {
    let reply: serde_json::Value =
        client.get(format!("{}/api/queue", server.url)).send().await?.json().await?;
    let count = |state: &str| reply[state].as_u64().unwrap_or(0);
    Ok(DrainSample {
        seconds: since.elapsed().as_secs_f64(),
        queued: count("queued") + count("archiving"),
        done: count("archived") + count("failed"),
        rss_kib: probe::status_kib(server.pid, "VmRSS").unwrap_or(0),
        hwm_kib: probe::status_kib(server.pid, "VmHWM").unwrap_or(0),
    })
}
