//! Benchmarks of the durable queue through `SledQueue`, on a store in a temporary folder on the
//! same filesystem as the system's temporary folder:
//! - `round_trip/{os,fsync}`: one job enqueued, claimed and finished, with store durability
//!   `os` (no disk sync) and `fsync` (the service's default);
//! - `group_commit/{1,16,64}`: that many writers enqueue one job each at the same time with
//!   durability `fsync`, so their acknowledgements share group-committed syncs;
//! - `one_transaction/{16,64}`: one writer enqueues that many jobs in one call, so they share one
//!   store transaction as well as the sync. The gap to `group_commit` is the cost of one sled
//!   transaction per job.
//!
//! Run with `cargo bench --bench queue`. The numbers depend on the disk's sync latency, so
//! compare them with `cargo run --release --example loadgen -- fsync` on the same machine.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

use job_archiver::commit::Durability;
use job_archiver::job::JobMeta;
use job_archiver::queue::{JobQueue, QueueLimits, SledQueue};
use job_archiver::store::Store;

/// Page cache of the store, the service's default `store.cache_bytes`.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Job ids for the whole benchmark process, so no enqueue finds an existing job.
static NEXT_JOB_ID: AtomicI64 = AtomicI64::new(1);

/// Returns a small valid job with a fresh id.
fn next_job() -> JobMeta {
    let job_id = NEXT_JOB_ID.fetch_add(1, Ordering::Relaxed);
    let value = json!({
        "cluster": "fritz",
        "jobId": job_id,
        "startTime": 1_675_954_353,
        "duration": 3600,
        "numNodes": 1,
        "user": "bench",
        "project": "bench",
        "jobState": "completed",
        "resources": [{ "hostname": "f0101" }],
    });
    JobMeta::from_json(value).expect("the benchmark job is valid")
}

fn open_queue(dir: &tempfile::TempDir, durability: Durability) -> Arc<SledQueue> {
    let store = Store::open(&dir.path().join("store"), CACHE_BYTES).expect("the store opens");
    Arc::new(SledQueue::new(Arc::new(store), durability, QueueLimits::NONE))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime")
}

fn round_trip(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("round_trip");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    for (name, durability) in [("os", Durability::OsBuffers), ("fsync", Durability::Fsync)] {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let queue = open_queue(&dir, durability);
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    queue.enqueue(&[next_job()]).await.expect("enqueue");
                    let job = queue.claim_next().await.expect("claim").expect("a queued job");
                    queue.finish_archived(&job.key, String::new(), 0, 0).await.expect("finish");
                })
            })
        });
    }
    group.finish();
}

fn group_commit(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let queue = open_queue(&dir, Durability::Fsync);
    let mut group = c.benchmark_group("group_commit");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for writers in [1u64, 16, 64] {
        group.throughput(Throughput::Elements(writers));
        group.bench_function(writers.to_string(), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..writers)
                        .map(|_| {
                            let queue = Arc::clone(&queue);
                            tokio::spawn(async move { queue.enqueue(&[next_job()]).await })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("the writer task ends").expect("enqueue");
                    }
                })
            })
        });
    }
    group.finish();
}

fn one_transaction(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let queue = open_queue(&dir, Durability::Fsync);
    let mut group = c.benchmark_group("one_transaction");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for jobs in [16u64, 64] {
        group.throughput(Throughput::Elements(jobs));
        group.bench_function(jobs.to_string(), |b| {
            b.iter(|| {
                let batch: Vec<JobMeta> = (0..jobs).map(|_| next_job()).collect();
                runtime.block_on(queue.enqueue(&batch)).expect("enqueue");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_trip, group_commit, one_transaction);
criterion_main!(benches);
