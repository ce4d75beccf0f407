//! The `soak` mode: a long run of HTTP triggers through `serve`, with the worker taking every
//! job through the queue, sampling the server's resident memory and the store's size every N
//! acknowledged jobs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::http::{self, JobTemplate, Limit, LoadResult};
use crate::probe::{self, FolderSize};
use crate::server::{RunDir, Server, StoreDurability, WorkerMode};

/// Options of the `soak` mode.
pub struct SoakOptions {
    pub binary: PathBuf,
    pub work_dir: PathBuf,
    pub jobs: u64,
    pub clients: usize,
    pub durability: StoreDurability,
    pub sample_every_jobs: u64,
}

/// One sample, taken when the acknowledged jobs passed a multiple of the sampling interval.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    pub acked: u64,
    pub seconds: f64,
    pub rss_kib: u64,
    pub store: FolderSize,
    /// Jobs still queued or archiving, so not yet taken through by the worker.
    pub backlog: u64,
}

#[derive(Debug, Serialize)]
pub struct SoakResult {
    pub durability: StoreDurability,
    pub load: LoadResult,
    pub rss_at_start_kib: u64,
    pub samples: Vec<SoakSample>,
    pub peak_rss_kib: u64,
}

pub async fn run(options: &SoakOptions) -> anyhow::Result<SoakResult> {
    let dir = RunDir::create(options.work_dir.join("soak"))?;
    let worker = WorkerMode::Failing;
    let config = dir.write_config(options.durability, worker, None)?;
    let server = Server::start(&options.binary, &config).await?;
    let client = reqwest::Client::new();
    server.wait_ready(&client, Duration::from_secs(60)).await?;
    let rss_at_start_kib = probe::status_kib(server.pid, "VmRSS").unwrap_or(0);

    let template = Arc::new(JobTemplate::load(worker.cluster())?);
    let progress = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let url = server.url.clone();
        let progress = Arc::clone(&progress);
        let (jobs, clients, pid) = (options.jobs, options.clients, server.pid);
        async move {
            let next_id = Arc::new(AtomicU64::new(1));
            let limit = Limit::Count(jobs);
            http::run_level(&url, clients, limit, template, next_id, Some(pid), Some(progress))
                .await
        }
    });

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = options.sample_every_jobs;
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let acked = progress.load(Ordering::Relaxed);
        if acked >= next_sample {
            samples.push(take_sample(&client, &server, &dir, acked, started).await?);
            next_sample += options.sample_every_jobs;
        }
    }
    let load = load.await??;
    samples.push(
        take_sample(&client, &server, &dir, progress.load(Ordering::Relaxed), started).await?,
    );
    let peak_rss_kib = probe::status_kib(server.pid, "VmHWM").unwrap_or(0);
    server.stop(Duration::from_secs(30)).await?;
    Ok(SoakResult { durability: options.durability, load, rss_at_start_kib, samples, peak_rss_kib })
}

async fn take_sample(
    client: &reqwest::Client,
    server: &Server,
    dir: &RunDir,
    acked: u64,
    started: Instant,
) -> anyhow::Result<SoakSample> {
    let reply: serde_json::Value =
        client.get(format!("{}/api/queue", server.url)).send().await?.json().await?;
    let count = |state: &str| reply[state].as_u64().unwrap_or(0);
    Ok(SoakSample {
        acked,
        seconds: started.elapsed().as_secs_f64(),
        rss_kib: probe::status_kib(server.pid, "VmRSS").unwrap_or(0),
        store: probe::folder_size(&dir.store()),
        backlog: count("queued") + count("archiving"),
    })
}
