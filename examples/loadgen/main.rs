//! Load generator and resource probe for job-archiver.
//!
//! Each mode measures one thing and prints a table; `--json FILE` also writes the results.
//! - `ack`: HTTP triggers at 1, 16 and 64 clients against `serve`, with `store.durability`
//!   `fsync` and `os` in the same run, next to the disk's raw fsync latency.
//! - `queue`: the queue alone, in this process, with a worker whose source and writer do no I/O.
//! - `restart`: time to `/readyz` after a restart with a large backlog, and memory while draining.
//! - `soak`: memory and store size over a long run of triggers through `serve`.
//! - `fsync`: the raw fsync latency of a folder.
//!
//! Run with `cargo run --release --example loadgen -- MODE [OPTIONS]`. Modes that start the
//! server use `target/release/job-archiver`; build it first with `cargo build --release`. All
//! traffic goes to 127.0.0.1.

mod ack;
mod http;
mod probe;
mod queue;
mod restart;
mod server;
mod soak;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::http::{Limit, LoadResult};
use crate::probe::mib;
use crate::server::{StoreDurability, WorkerMode};

/// The release build of the service in this repository.
const DEFAULT_BINARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/job-archiver");

#[derive(Parser)]
#[command(about = "Measure job-archiver's throughput, latency and memory on 127.0.0.1")]
struct Cli {
    /// The job-archiver binary to start.
    #[arg(long, global = true, default_value = DEFAULT_BINARY)]
    binary: PathBuf,
    /// Folder in which each run creates its own temporary folder (stores, logs, configs).
    #[arg(long, global = true, default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// Keep the run's temporary folder instead of removing it at the end.
    #[arg(long, global = true)]
    keep: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Trigger throughput and acknowledgement latency, with fsync and without.
    Ack {
        /// Target this running server instead of starting the binary. One run, with the server's
        /// own durability setting.
        #[arg(long)]
        url: Option<String>,
        /// Numbers of concurrent keep-alive clients, one load level each.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Seconds per load level.
        #[arg(long, default_value_t = 10.0, conflicts_with = "count")]
        duration: f64,
        /// Jobs per load level, instead of a duration.
        #[arg(long)]
        count: Option<u64>,
        /// Store durability settings to run, each on a fresh server.
        #[arg(long, value_enum, default_value_t = DurabilityChoice::Both)]
        durability: DurabilityChoice,
        /// Behaviour of the started server's worker; with --url it only picks the jobs' cluster.
        #[arg(long, value_enum, default_value_t = WorkerMode::Stalled)]
        worker: WorkerMode,
        /// Raw fsync samples (4 KiB + fdatasync) in the store's folder.
        #[arg(long, default_value_t = 1000)]
        fsync_samples: usize,
        /// Folder for the raw fsync probe when --url is given.
        #[arg(long)]
        fsync_dir: Option<PathBuf>,
        /// Jobs sent at 16 clients before the measured levels.
        #[arg(long, default_value_t = 2000)]
        warmup: u64,
        /// Rounds that alternate raw fsync samples with single-client triggers, for a ratio
        /// measured under the same disk load; 0 skips them.
        #[arg(long, default_value_t = 10)]
        pairs: usize,
    },
    /// The queue alone: fill, then drain with the worker loop and with bare claim and finish.
    Queue {
        #[arg(long, default_value_t = 100_000)]
        jobs: u64,
        /// Jobs per enqueue call while filling.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Restart with a large backlog: time to ready and memory while draining.
    Restart {
        #[arg(long, default_value_t = 1_000_000)]
        jobs: u64,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Maximum time to watch the drain, in seconds.
        #[arg(long, default_value_t = 900)]
        drain_limit: u64,
    },
    /// A long run of triggers through the server: memory and store size every N jobs.
    Soak {
        #[arg(long, default_value_t = 1_000_000)]
        jobs: u64,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
        durability: DurabilityArg,
        #[arg(long, default_value_t = 50_000)]
        sample_every: u64,
    },
    /// Raw fsync latency of a folder: 4 KiB appends and overwrites, each with fdatasync.
    Fsync {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        samples: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DurabilityChoice {
    Both,
    Fsync,
    Os,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Fsync,
    Os,
}

impl From<DurabilityArg> for StoreDurability {
    fn from(arg: DurabilityArg) -> StoreDurability {
        match arg {
            DurabilityArg::Fsync => StoreDurability::Fsync,
            DurabilityArg::Os => StoreDurability::Os,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let run_dir = tempfile::Builder::new().prefix("loadgen-").tempdir_in(&cli.work_dir)?;
    println!(
        "job-archiver loadgen: {} (run folder {})",
        mode_name(&cli.mode),
        run_dir.path().display()
    );
    let result = run(&cli, run_dir.path()).await;
    if cli.keep {
        println!("kept {}", run_dir.keep().display());
    }
    let report = result?;
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn mode_name(mode: &Mode) -> &'static str {
    match mode {
        Mode::Ack { .. } => "ack",
        Mode::Queue { .. } => "queue",
        Mode::Restart { .. } => "restart",
        Mode::Soak { .. } => "soak",
        Mode::Fsync { .. } => "fsync",
    }
}

/// Runs the chosen mode in `work_dir`, prints its table, and returns its results as JSON.
async fn run(cli: &Cli, work_dir: &Path) -> anyhow::Result<serde_json::Value> {
    match &cli.mode {
        Mode::Ack {
            url,
            clients,
            duration,
            count,
            durability,
            worker,
            fsync_samples,
            fsync_dir,
            warmup,
            pairs,
        } => {
            if url.is_none() {
                probe::require_file(&cli.binary)?;
            }
            let durabilities = match durability {
                DurabilityChoice::Both => vec![StoreDurability::Fsync, StoreDurability::Os],
                DurabilityChoice::Fsync => vec![StoreDurability::Fsync],
                DurabilityChoice::Os => vec![StoreDurability::Os],
            };
            let limit = match count {
                Some(count) => Limit::Count(*count),
                None => Limit::Duration(Duration::from_secs_f64(*duration)),
            };
            let options = ack::AckOptions {
                binary: cli.binary.clone(),
                work_dir: work_dir.to_owned(),
                url: url.clone(),
                clients: clients.clone(),
                limit,
                durabilities,
                worker: *worker,
                fsync_samples: *fsync_samples,
                fsync_dir: fsync_dir.clone(),
                warmup: *warmup,
                pairs: *pairs,
            };
            let runs = ack::run(&options).await?;
            print_ack(&runs, *worker, url.is_some());
            Ok(json!({ "mode": "ack", "worker": worker, "runs": runs }))
        }
        Mode::Queue { jobs, batch } => {
            let options =
                queue::QueueOptions { work_dir: work_dir.to_owned(), jobs: *jobs, batch: *batch };
            let result = queue::run(&options).await?;
            print_queue(&result);
            Ok(json!({ "mode": "queue", "result": result }))
        }
        Mode::Restart { jobs, batch, drain_limit } => {
            probe::require_file(&cli.binary)?;
            let options = restart::RestartOptions {
                binary: cli.binary.clone(),
                work_dir: work_dir.to_owned(),
                jobs: *jobs,
                batch: *batch,
                drain_limit: Duration::from_secs(*drain_limit),
                sample_every: Duration::from_secs(1),
            };
            let result = restart::run(&options).await?;
            print_restart(&result);
            Ok(json!({ "mode": "restart", "result": result }))
        }
        Mode::Soak { jobs, clients, durability, sample_every } => {
            probe::require_file(&cli.binary)?;
            let options = soak::SoakOptions {
                binary: cli.binary.clone(),
                work_dir: work_dir.to_owned(),
                jobs: *jobs,
                clients: *clients,
                durability: (*durability).into(),
                sample_every_jobs: *sample_every,
            };
            let result = soak::run(&options).await?;
            print_soak(&result);
            Ok(json!({ "mode": "soak", "result": result }))
        }
        Mode::Fsync { dir, samples } => {
            let latency = probe::measure_fsync(dir, *samples)?;
            println!(
                "raw fsync in {} ({} samples of 4 KiB + fdatasync): append p50 {} us, p99 {} us; \
                 overwrite p50 {} us",
                dir.display(),
                latency.samples,
                latency.append_p50_us,
                latency.append_p99_us,
                latency.overwrite_p50_us
            );
            Ok(json!({ "mode": "fsync", "result": latency }))
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// CPU use over a level as a percentage of one core; the machine's cores add up to more.
fn cpu_percent(cpu_seconds: Option<f64>, seconds: f64) -> String {
    cpu_seconds.map(|cpu| format!("{:.0}", cpu / seconds * 100.0)).unwrap_or_else(|| "-".to_owned())
}

fn print_ack(runs: &[ack::AckRun], worker: WorkerMode, external: bool) {
    if external {
        println!(
            "\nHTTP triggers to a running server, one job per request, cluster {}",
            worker.cluster()
        );
    } else {
        println!("\nHTTP triggers, one job per request, worker {worker:?}");
    }
    for run in runs {
        if let Some(fsync) = &run.fsync {
            println!(
                "raw fsync beside the {} store ({} samples, 4 KiB + fdatasync): append p50 \
                 {:.3} ms, p99 {:.3} ms; overwrite p50 {:.3} ms",
                run.durability.map(StoreDurability::as_str).unwrap_or("target"),
                fsync.samples,
                ms(fsync.append_p50_us),
                ms(fsync.append_p99_us),
                ms(fsync.overwrite_p50_us)
            );
        }
    }
    println!(
        "\n{:<10} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>11} {:>12}",
        "durability",
        "clients",
        "acks",
        "acks/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "server CPU%",
        "loadgen CPU%"
    );
    for run in runs {
        let name = run.durability.map(StoreDurability::as_str).unwrap_or("target");
        for level in &run.levels {
            print_level(name, level);
        }
    }
    let at = |durability: StoreDurability, clients: usize| {
        runs.iter()
            .find(|run| run.durability == Some(durability))
            .and_then(|run| run.levels.iter().find(|level| level.clients == clients))
    };
    let max_clients = runs.iter().flat_map(|run| &run.levels).map(|level| level.clients).max();
    if let (Some(clients), Some(fsync_run)) =
        (max_clients, runs.iter().find(|run| run.durability == Some(StoreDurability::Fsync)))
    {
        if let (Some(fsync), Some(os)) =
            (at(StoreDurability::Fsync, clients), at(StoreDurability::Os, clients))
        {
            println!(
                "durability cost at {clients} clients: os / fsync throughput = {:.2}",
                os.acks_per_second / fsync.acks_per_second
            );
        }
        if let (Some(single), Some(raw)) = (at(StoreDurability::Fsync, 1), &fsync_run.fsync) {
            println!(
                "single-client p50 ack / raw fsync append p50 = {:.2} (overwrite: {:.2})",
                single.p50_us as f64 / raw.append_p50_us as f64,
                single.p50_us as f64 / raw.overwrite_p50_us as f64
            );
        }
    }
    for paired in runs.iter().filter_map(|run| run.paired.as_ref()) {
        println!(
            "paired rounds ({} x {} raw fsyncs, then {:.0} s of 1 client): raw fsync p50 {:.3} ms, \
             ack p50 {:.3} ms; ack / fsync per round: median {:.2}, min {:.2}, max {:.2}",
            paired.rounds,
            paired.fsync_samples_per_round,
            paired.ack_seconds_per_round,
            ms(paired.fsync_append_p50_us),
            ms(paired.ack_p50_us),
            paired.ratio_median,
            paired.ratio_min,
            paired.ratio_max
        );
    }
    for run in runs {
        if let Some(level) = run.levels.iter().find(|level| level.first_error.is_some()) {
            println!("first error: {}", level.first_error.as_deref().unwrap_or_default());
        }
    }
}

fn print_level(name: &str, level: &LoadResult) {
    println!(
        "{:<10} {:>7} {:>9} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>7} {:>11} {:>12}",
        name,
        level.clients,
        level.acks,
        level.acks_per_second,
        ms(level.p50_us),
        ms(level.p99_us),
        ms(level.max_us),
        level.errors,
        cpu_percent(level.server_cpu_seconds, level.seconds),
        cpu_percent(level.client_cpu_seconds, level.seconds)
    );
}

fn print_queue(result: &queue::QueueResult) {
    println!("\nqueue alone, {} jobs, store durability os", result.jobs);
    println!("{:<48} {:>10}", "step", "jobs/s");
    println!(
        "{:<48} {:>10.0}",
        format!("fill: enqueue in batches of {}", result.batch),
        result.fill_jobs_per_second
    );
    println!(
        "{:<48} {:>10.0}",
        "drain: worker loop, no-op source and writer", result.worker_jobs_per_second
    );
    println!(
        "{:<48} {:>10.0}",
        "drain: bare claim_next + finish_archived", result.bare_jobs_per_second
    );
    println!(
        "archived by the worker: {}; store after the worker drain: {:.1} MiB",
        result.worker_archived,
        result.store_bytes.apparent_bytes as f64 / 1048576.0
    );
}

fn print_restart(result: &restart::RestartResult) {
    println!("\nrestart with {} queued jobs (filled in {:.1} s)", result.jobs, result.fill_seconds);
    println!(
        "store after fill: {:.1} MiB (allocated {:.1} MiB)",
        result.store_after_fill.apparent_bytes as f64 / 1048576.0,
        result.store_after_fill.allocated_bytes as f64 / 1048576.0
    );
    println!("store open + counts in-process: {:.0} ms", result.store_open_ms);
    println!("spawn to /readyz 200: {:.0} ms", result.ready_ms);
    println!("RSS at ready: {:.1} MiB", mib(result.rss_at_ready_kib));
    println!(
        "drained {} jobs in {:.1} s ({:.0} jobs/s); peak RSS (VmHWM) {:.1} MiB",
        result.drained,
        result.drain_seconds,
        result.drain_jobs_per_second,
        mib(result.peak_rss_kib)
    );
    println!("{:>9} {:>10} {:>10} {:>9}", "seconds", "backlog", "done", "RSS MiB");
    let step = (result.samples.len() / 20).max(1);
    for (index, sample) in result.samples.iter().enumerate() {
        if index % step == 0 || index + 1 == result.samples.len() {
            println!(
                "{:>9.0} {:>10} {:>10} {:>9.1}",
                sample.seconds,
                sample.queued,
                sample.done,
                mib(sample.rss_kib)
            );
        }
    }
    println!(
        "store after drain: {:.1} MiB",
        result.store_after_drain.apparent_bytes as f64 / 1048576.0
    );
}

fn print_soak(result: &soak::SoakResult) {
    let load = &result.load;
    println!(
        "\nsoak: {} acks at {} clients, durability {}, in {:.0} s ({:.0} acks/s, p50 {:.3} ms, \
         p99 {:.3} ms, {} errors)",
        load.acks,
        load.clients,
        result.durability.as_str(),
        load.seconds,
        load.acks_per_second,
        ms(load.p50_us),
        ms(load.p99_us),
        load.errors
    );
    println!("RSS at start: {:.1} MiB", mib(result.rss_at_start_kib));
    println!(
        "{:>9} {:>8} {:>9} {:>10} {:>10}",
        "acked", "seconds", "RSS MiB", "store MiB", "backlog"
    );
    for sample in &result.samples {
        println!(
            "{:>9} {:>8.0} {:>9.1} {:>10.1} {:>10}",
            sample.acked,
            sample.seconds,
            mib(sample.rss_kib),
            sample.store.apparent_bytes as f64 / 1048576.0,
            sample.backlog
        );
    }
    let rss: Vec<u64> = result.samples.iter().map(|sample| sample.rss_kib).collect();
    if let (Some(first), Some(last), Some(max)) = (rss.first(), rss.last(), rss.iter().max()) {
        println!(
            "RSS first {:.1} MiB, last {:.1} MiB, max {:.1} MiB, last / first = {:.2}; \
             VmHWM {:.1} MiB",
            mib(*first),
            mib(*last),
            mib(*max),
            *last as f64 / *first as f64,
            mib(result.peak_rss_kib)
        );
    }
}
