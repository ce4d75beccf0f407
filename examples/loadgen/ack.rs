//! The `ack` mode: trigger throughput and acknowledgement latency at several client counts,
//! once with `store.durability = "fsync"` and once with `"os"` in the same run, next to the
//! disk's raw fsync latency measured in the store's folder.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::http::{self, JobTemplate, Limit, LoadResult};
use crate::probe::{self, FsyncLatency};
use crate::server::{RunDir, Server, StalledMetricStore, StoreDurability, WorkerMode};

/// Options of the `ack` mode.
pub struct AckOptions {
    pub binary: PathBuf,
    pub work_dir: PathBuf,
    /// A running server to target instead of starting the binary.
    pub url: Option<String>,
    pub clients: Vec<usize>,
    pub limit: Limit,
    pub durabilities: Vec<StoreDurability>,
    pub worker: WorkerMode,
    pub fsync_samples: usize,
    /// Folder for the raw fsync probe when a running server is targeted.
    pub fsync_dir: Option<PathBuf>,
    /// Jobs sent at 16 clients before the measured levels.
    pub warmup: u64,
    /// Rounds of the paired single-client measurement; 0 skips it.
    pub pairs: usize,
}

/// Raw fsync and single-client acknowledgements measured in alternating short rounds, so both
/// see the same disk load on a shared machine.
#[derive(Debug, Serialize)]
pub struct PairedResult {
    pub rounds: usize,
    /// Raw fsync samples (4 KiB append + fdatasync) per round.
    pub fsync_samples_per_round: usize,
    /// Seconds of single-client triggers per round.
    pub ack_seconds_per_round: f64,
    /// Median over the rounds of each round's p50.
    pub fsync_append_p50_us: u64,
    pub ack_p50_us: u64,
    /// Median over the rounds of (ack p50 / raw fsync p50) in the same round.
    pub ratio_median: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
}

/// Results of one server: its durability, the raw fsync latency next to its store, and one
/// result per client count.
#[derive(Debug, Serialize)]
pub struct AckRun {
    pub durability: Option<StoreDurability>,
    pub fsync: Option<FsyncLatency>,
    pub levels: Vec<LoadResult>,
    pub paired: Option<PairedResult>,
    pub store_bytes: Option<probe::FolderSize>,
}

pub async fn run(options: &AckOptions) -> anyhow::Result<Vec<AckRun>> {
    if let Some(url) = &options.url {
        let fsync = match &options.fsync_dir {
            Some(dir) => Some(probe::measure_fsync(dir, options.fsync_samples)?),
            None => None,
        };
        let template = Arc::new(JobTemplate::load(options.worker.cluster())?);
        let next_id = Arc::new(AtomicU64::new(first_job_id()));
        let levels = run_levels(options, url, None, template, next_id).await?;
        return Ok(vec![AckRun {
            durability: None,
            fsync,
            levels,
            paired: None,
            store_bytes: None,
        }]);
    }
    let mut runs = Vec::new();
    for &durability in &options.durabilities {
        runs.push(run_server(options, durability).await?);
    }
    Ok(runs)
}

/// Starts a server with a fresh store, measures raw fsync in its store folder, and runs the
/// levels against it.
async fn run_server(options: &AckOptions, durability: StoreDurability) -> anyhow::Result<AckRun> {
    let dir = RunDir::create(options.work_dir.join(format!("ack-{}", durability.as_str())))?;
    let stall = StalledMetricStore::start().await?;
    let config = dir.write_config(durability, options.worker, Some(stall.port))?;
    let fsync = probe::measure_fsync(&dir.store(), options.fsync_samples)?;
    let server = Server::start(&options.binary, &config).await?;
    let client = reqwest::Client::new();
    server.wait_ready(&client, Duration::from_secs(60)).await?;

    let template = Arc::new(JobTemplate::load(options.worker.cluster())?);
    let next_id = Arc::new(AtomicU64::new(first_job_id()));
    let levels = run_levels(
        options,
        &server.url,
        Some(server.pid),
        Arc::clone(&template),
        Arc::clone(&next_id),
    )
    .await;
    let paired = if durability == StoreDurability::Fsync && options.pairs > 0 && levels.is_ok() {
        Some(run_pairs(options, &server, &dir, template, next_id).await)
    } else {
        None
    };
    server.stop(Duration::from_secs(30)).await?;
    let store_bytes = Some(probe::folder_size(&dir.store()));
    Ok(AckRun {
        durability: Some(durability),
        fsync: Some(fsync),
        levels: levels?,
        paired: paired.transpose()?,
        store_bytes,
    })
}

/// Alternates raw fsync samples in the store's folder with one second of single-client
/// triggers, `options.pairs` times.
async fn run_pairs(
    options: &AckOptions,
    server: &Server,
    dir: &RunDir,
    template: Arc<JobTemplate>,
    next_id: Arc<AtomicU64>,
) -> anyhow::Result<PairedResult> {
    const FSYNC_SAMPLES: usize = 200;
    const ACK_SECONDS: f64 = 1.0;
    let mut fsync_p50s = Vec::new();
    let mut ack_p50s = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..options.pairs {
        let store = dir.store();
        let samples =
            tokio::task::spawn_blocking(move || probe::fsync_append_samples(&store, FSYNC_SAMPLES))
                .await??;
        let fsync_p50 = probe::percentile(&samples, 50.0);
        let limit = Limit::Duration(Duration::from_secs_f64(ACK_SECONDS));
        let level = http::run_level(
            &server.url,
            1,
            limit,
            Arc::clone(&template),
            Arc::clone(&next_id),
            Some(server.pid),
            None,
        )
        .await?;
        fsync_p50s.push(fsync_p50);
        ack_p50s.push(level.p50_us);
        ratios.push(level.p50_us as f64 / fsync_p50.max(1) as f64);
    }
    fsync_p50s.sort_unstable();
    ack_p50s.sort_unstable();
    ratios.sort_by(f64::total_cmp);
    Ok(PairedResult {
        rounds: options.pairs,
        fsync_samples_per_round: FSYNC_SAMPLES,
        ack_seconds_per_round: ACK_SECONDS,
        fsync_append_p50_us: fsync_p50s[fsync_p50s.len() / 2],
        ack_p50_us: ack_p50s[ack_p50s.len() / 2],
        ratio_median: ratios[ratios.len() / 2],
        ratio_min: ratios[0],
        ratio_max: ratios[ratios.len() - 1],
    })
}

async fn run_levels(
    options: &AckOptions,
    url: &str,
    pid: Option<u32>,
    template: Arc<JobTemplate>,
    next_id: Arc<AtomicU64>,
) -> anyhow::Result<Vec<LoadResult>> {
    if options.warmup > 0 {
        let warmup = Limit::Count(options.warmup);
        http::run_level(url, 16, warmup, Arc::clone(&template), Arc::clone(&next_id), pid, None)
            .await?;
    }
    let mut levels = Vec::new();
    for &clients in &options.clients {
        let level = http::run_level(
            url,
            clients,
            options.limit,
            Arc::clone(&template),
            Arc::clone(&next_id),
            pid,
            None,
        )
        .await?;
        levels.push(level);
    }
    Ok(levels)
}

/// Returns a job id base taken from the clock, so runs against a long-lived server do not
/// collide.
fn first_job_id() -> u64 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    seconds * 1_000_000_000
}
