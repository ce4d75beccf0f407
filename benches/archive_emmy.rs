//! Benchmarks archiving the 32-node emmy example job (9 metrics x 32 nodes x 1441 samples,
//! about 2.6 MB of compact `data.json`): statistics, `data.json` encoding and parsing, gzip, and
//! the whole encode and atomic write into a temporary job-archive.
//!
//! `gzip` is compared with the system's `gzip -6` on the same bytes in the same run: the
//! `gzip_system_6` benchmark spawns `gzip -6 -c` on a temporary file, and a line before the
//! benchmarks prints the median throughput of both and their ratio. Both are skipped when no
//! `gzip` program is installed.
//!
//! Run with `cargo bench --bench archive_emmy`.

use std::hint::black_box;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use job_archiver::archive::format::{self, CC_COMPRESS_THRESHOLD_BYTES};
use job_archiver::archive::fs::FsArchive;
use job_archiver::archive::ArchiveWriter;
use job_archiver::cluster::Cluster;
use job_archiver::job::JobMeta;
use job_archiver::job_data::JobData;
use job_archiver::stats;

const EMMY_JOB: &str = "examples/jobs/emmy-1403244-meta.json";
const EMMY_CLUSTER: &str = "examples/archive/emmy/cluster.json";
const EMMY_DATA: &str = "examples/archive/emmy/1403/244/1608923076/data.json.gz";

fn read(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn load_emmy() -> (JobMeta, Cluster, JobData) {
    let job = JobMeta::from_json(serde_json::from_slice(&read(EMMY_JOB)).expect("valid JSON"))
        .expect("the emmy job is valid");
    let cluster = Cluster::from_json(&read(EMMY_CLUSTER)).expect("the emmy cluster is valid");
    let data = format::decode_data_file(&read(EMMY_DATA), true).expect("the emmy data is valid");
    (job, cluster, data)
}

/// Compresses `path` with the system's `gzip -6` and returns the compressed size, or `None`
/// when `gzip` cannot be run.
fn system_gzip(path: &Path) -> Option<usize> {
    let output = Command::new("gzip")
        .args(["-6", "-c"])
        .arg(path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then_some(output.stdout.len())
}

/// Median of `runs` timings of `work`.
fn median_time(runs: usize, mut work: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

/// Prints the throughput of this crate's gzip and of `gzip -6` on `data_json`, median of 7 runs
/// each, with the compressed sizes and the ratio of the two rates.
fn print_gzip_comparison(data_json: &[u8], data_path: &Path) {
    let Some(system_size) = system_gzip(data_path) else {
        println!("gzip comparison skipped: the gzip program cannot be run");
        return;
    };
    let crate_size = format::gzip(data_json).len();
    let crate_time = median_time(7, || {
        black_box(format::gzip(black_box(data_json)));
    });
    let system_time = median_time(7, || {
        black_box(system_gzip(data_path));
    });
    let megabytes = data_json.len() as f64 / 1e6;
    let crate_rate = megabytes / crate_time.as_secs_f64();
    let system_rate = megabytes / system_time.as_secs_f64();
    println!(
        "gzip level 6 of {:.2} MB data.json, median of 7: job_archiver::archive::format::gzip \
         {:.1} ms = {crate_rate:.1} MB/s -> {crate_size} bytes; gzip -6 {:.1} ms = \
         {system_rate:.1} MB/s -> {system_size} bytes; crate / system throughput = {:.2}",
        megabytes,
        crate_time.as_secs_f64() * 1000.0,
        system_time.as_secs_f64() * 1000.0,
        crate_rate / system_rate
    );
}

fn archive_emmy(c: &mut Criterion) {
    let (job, cluster, raw_data) = load_emmy();
    let mut data = raw_data.clone();
    stats::fill_series_stats(&mut data);
    stats::add_statistics_series(&mut data);
    let statistics = stats::job_statistics(&data, job.num_nodes, &cluster);
    let data_json = format::encode_data_json(&data);
    let temp = tempfile::tempdir().expect("temp dir");
    let archive = FsArchive::open(&temp.path().join("archive")).expect("the temp archive opens");
    let data_path = temp.path().join("data.json");
    std::fs::write(&data_path, &data_json).expect("the data.json copy is written");
    print_gzip_comparison(&data_json, &data_path);

    let mut group = c.benchmark_group("archive_emmy");
    group.sample_size(10);
    // Rates are given in bytes of the job's compact data.json.
    group.throughput(Throughput::Bytes(data_json.len() as u64));
    group.bench_function("stats", |b| {
        b.iter_batched(
            || raw_data.clone(),
            |mut data| {
                stats::fill_series_stats(&mut data);
                stats::add_statistics_series(&mut data);
                stats::job_statistics(&data, job.num_nodes, &cluster)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("encode_data_json", |b| {
        b.iter(|| format::encode_data_json(black_box(&data)))
    });
    group.bench_function("gzip", |b| b.iter(|| format::gzip(black_box(&data_json))));
    if system_gzip(&data_path).is_some() {
        group.bench_function("gzip_system_6", |b| b.iter(|| system_gzip(black_box(&data_path))));
    }
    group.bench_function("parse_data_json", |b| {
        b.iter(|| format::parse_data_json(black_box(&data_json)).expect("own output parses"))
    });
    group.bench_function("stats_encode_and_write_job", |b| {
        b.iter_batched(
            || raw_data.clone(),
            |mut data| {
                stats::fill_series_stats(&mut data);
                stats::add_statistics_series(&mut data);
                let statistics = stats::job_statistics(&data, job.num_nodes, &cluster);
                let files =
                    format::encode_job_files(&job, &data, &statistics, CC_COMPRESS_THRESHOLD_BYTES);
                archive.write_job(&job.id, &files).expect("the job is written")
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("encode_and_write_job", |b| {
        b.iter(|| {
            let files =
                format::encode_job_files(&job, &data, &statistics, CC_COMPRESS_THRESHOLD_BYTES);
            archive.write_job(&job.id, &files).expect("the job is written")
        })
    });
    group.finish();
}

criterion_group!(benches, archive_emmy);
criterion_main!(benches);
