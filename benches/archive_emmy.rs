//! Benchmarks archiving the 32-node emmy example job (9 metrics x 32 nodes x 1441 samples,
//! about 2.6 MB of compact `data.json`): statistics, `data.json` encoding and parsing, gzip, and
//! the whole encode and atomic write into a temporary job-archive.
//!
//! Run with `cargo bench --bench archive_emmy`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

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

fn archive_emmy(c: &mut Criterion) {
    let (job, cluster, raw_data) = load_emmy();
    let mut data = raw_data.clone();
    stats::fill_series_stats(&mut data);
    stats::add_statistics_series(&mut data);
    let statistics = stats::job_statistics(&data, job.num_nodes, &cluster);
    let data_json = format::encode_data_json(&data);
    let temp = tempfile::tempdir().expect("temp dir");
    let archive = FsArchive::open(temp.path()).expect("the temp archive opens");

    let mut group = c.benchmark_group("archive_emmy");
    group.sample_size(10);
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
    group.bench_function("parse_data_json", |b| {
        b.iter(|| format::parse_data_json(black_box(&data_json)).expect("own output parses"))
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
