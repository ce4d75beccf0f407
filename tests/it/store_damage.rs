//! A store in use, damaged or written by another format, with the real binary: `serve`,
//! `archive` and `check` must reject it with a message that names the store or the job, exit 1
//! and print no panic. `check` on a sound store prints the counts the service reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use job_archiver::job::JobId;
use job_archiver::store::Store;
use serde_json::Value;

use crate::fake_metric_store::{FakeMetricStore, FakeStoreConfig, Mode};
use crate::soak::{self, RunOutput};
use crate::support::{self, TestDirs};

const START_TIME: i64 = 1_675_954_353;

/// Bound on one run of the binary that is expected to exit on its own.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn second_process_on_used_store_exits() {
    let dirs = TestDirs::new();
    let log_dir = dirs.root.path();
    let config = dirs.write_config_file("127.0.0.1:0", "[log]\nformat = \"json\"\n");
    let mut server = soak::start_server(&config, log_dir, "first");
    let jobs = support::repo_path("examples/jobs/fritz-398764-meta.json");
    let jobs = jobs.to_str().unwrap();

    let commands: [&[&str]; 3] =
        [&["serve", "--listen", "127.0.0.1:0"], &["archive", jobs], &["check"]];
    for (index, args) in commands.into_iter().enumerate() {
        let started = Instant::now();
        let run = soak::run_binary(&config, args, log_dir, &format!("second-{index}"), RUN_TIMEOUT);
        let took = started.elapsed();

        assert_eq!(run.status.code(), Some(1), "exit code of {args:?}; {}", run.describe());
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?} to give up");
        let expected = format!("store {}: locked by another process", dirs.store.display());
        assert!(run.stderr.contains(&expected), "stderr of {args:?}; {}", run.describe());
        assert!(!run.stderr.contains("panicked"), "panic in {args:?}; {}", run.describe());
    }

    let health = support::http_get_status(&format!("{}/healthz", server.url));
    assert_eq!(health, Some(200), "/healthz of the first server after the refused ones");
    let exit = server.terminate(RUN_TIMEOUT);
    assert!(exit.success(), "exit status of the first server after SIGTERM: {exit}");
}

/// Damage done to a store folder.
type Damage = fn(&Path);

#[test]
fn damaged_store_refused_without_panic() {
    let dirs = TestDirs::new();
    fill_store(&dirs.store, &[1, 2, 3]);
    reopen_store(&dirs.store);
    let cases: [(&str, Damage); 4] = [
        ("garbage over db", |store| overwrite_with_noise(&store.join("db"))),
        ("db cut to 5 bytes", |store| truncate(&store.join("db"), 5)),
        ("empty db", |store| truncate(&store.join("db"), 0)),
        ("db deleted", |store| std::fs::remove_file(store.join("db")).unwrap()),
    ];

    for (index, (case, damage)) in cases.into_iter().enumerate() {
        let case_dir = dirs.root.path().join(format!("case-{index}"));
        let store = case_dir.join("store");
        copy_folder(&dirs.store, &store);
        damage(&store);
        let config = write_config(&case_dir, &store, &dirs.archive);

        for args in [&["check"][..], &["serve", "--listen", "127.0.0.1:0"]] {
            let name = format!("{}-{index}", args[0]);
            let run = soak::run_binary(&config, args, &case_dir, &name, RUN_TIMEOUT);
            assert_eq!(run.status.code(), Some(1), "{args:?} with {case}; {}", run.describe());
            let expected = format!("store {}: cannot open: ", store.display());
            assert!(run.stderr.contains(&expected), "{args:?} with {case}; {}", run.describe());
            assert!(!run.stderr.contains("panicked"), "{args:?} with {case}; {}", run.describe());
            assert!(!run.stderr.contains("listening"), "{args:?} with {case}; {}", run.describe());
        }
    }
}

#[test]
fn damaged_store_never_reopened_is_refused() {
    let dirs = TestDirs::new();
    // A store written by one process only has no `snap.*` file: sled writes one when it opens
    // an existing store. Without it, sled rebuilds the store from the valid part of the log.
    fill_store(&dirs.store, &[1, 2, 3]);
    let snapshots = soak::entry_names(&dirs.store);
    assert!(
        !snapshots.iter().any(|name| name.starts_with("snap.")),
        "store files before the damage: {snapshots:?}"
    );
    overwrite_with_noise(&dirs.store.join("db"));
    let config = write_config(dirs.root.path(), &dirs.store, &dirs.archive);

    let run = soak::run_binary(&config, &["check"], dirs.root.path(), "check", RUN_TIMEOUT);

    // sled finds no valid log segment and would open an empty store; the store's marker
    // record is then missing, so the damage is reported instead of losing the queued jobs.
    assert_eq!(run.status.code(), Some(1), "exit code of check; {}", run.describe());
    assert!(run.stderr.contains("marker record is missing"), "stderr of check; {}", run.describe());
    let serve = soak::run_binary(
        &config,
        &["serve", "--listen", "127.0.0.1:0"],
        dirs.root.path(),
        "serve",
        RUN_TIMEOUT,
    );
    assert_eq!(serve.status.code(), Some(1), "exit code of serve; {}", serve.describe());
    assert!(
        !serve.stderr.contains("listening"),
        "serve started on a damaged store; {}",
        serve.describe()
    );
}

#[test]
fn truncated_multi_segment_store_refused() {
    let dirs = TestDirs::new();
    // 64 records of about 30 KB each after deflate fill several of sled's 512 KiB segments.
    let ids: Vec<i64> = (1..=64).collect();
    fill_store_with_padding(&dirs.store, &ids, 60_000);
    reopen_store(&dirs.store);
    let db = dirs.store.join("db");
    let length = std::fs::metadata(&db).unwrap().len();
    // The size depends on when sled's background flush ran; more than two segments suffice.
    assert!(length > 1 << 20, "data file of {length} bytes spans too few segments");
    // Only a cut that removes every record is certain damage: which segments hold live data
    // depends on sled's timing, so a cut further in may remove only unused ones.
    truncate(&db, 5);
    let config = write_config(dirs.root.path(), &dirs.store, &dirs.archive);

    for args in [&["check"][..], &["serve", "--listen", "127.0.0.1:0"]] {
        let run = soak::run_binary(&config, args, dirs.root.path(), args[0], RUN_TIMEOUT);
        assert_eq!(run.status.code(), Some(1), "exit code of {args:?}; {}", run.describe());
        let expected = format!("store {}: cannot open: ", dirs.store.display());
        assert!(run.stderr.contains(&expected), "stderr of {args:?}; {}", run.describe());
        assert!(!run.stderr.contains("listening"), "stderr of {args:?}; {}", run.describe());
        // Depending on the segment layout sled panics on such a file; Store::open catches
        // the panic with the default hook silenced, so nothing looks like a crash.
        assert!(!run.stderr.contains("panicked at"), "stderr of {args:?}; {}", run.describe());
    }
}

#[test]
fn lost_conf_keeps_jobs() {
    let dirs = TestDirs::new();
    fill_store(&dirs.store, &[1, 2, 3]);
    // sled rebuilds a missing `conf` with its defaults, which are the ones the store uses.
    std::fs::remove_file(dirs.store.join("conf")).unwrap();
    let config = write_config(dirs.root.path(), &dirs.store, &dirs.archive);

    let run = soak::run_binary(&config, &["check"], dirs.root.path(), "check", RUN_TIMEOUT);

    assert_eq!(run.status.code(), Some(0), "exit code of check; {}", run.describe());
    let counts = check_counts(&run);
    assert_eq!(counts["records"], 3, "records after losing conf; {}", run.describe());
    assert_eq!(counts["queued"], 3, "queued jobs after losing conf; {}", run.describe());
}

#[test]
fn unknown_format_version_reported() {
    let dirs = TestDirs::new();
    let log_dir = dirs.root.path();
    let fritz = std::fs::read(support::repo_path("examples/jobs/fritz-398764-meta.json")).unwrap();
    let fritz_id = JobId::new("fritz", 398_764, START_TIME).unwrap();
    let store = Store::open(&dirs.store, 8 << 20).expect("creating the store");
    let mut jobs = vec![(fritz_id, START_TIME + 177, fritz)];
    jobs.extend(synthetic_entries(&[1, 2]));
    store.enqueue(&jobs, store_now_ms(), u64::MAX).expect("queueing the jobs");
    store.sync().expect("syncing the store");
    drop(store);
    // The second job's record as a later build might write it: format version 9.
    let poisoned = format!("fritz/1/{START_TIME}");
    let db = sled::Config::new().path(&dirs.store).open().expect("opening the store with sled");
    let records = db.open_tree("jobs").expect("opening the jobs tree");
    records.insert(poisoned.as_bytes(), &[9u8, 1, 2, 3][..]).expect("writing the record");
    db.flush().expect("flushing sled");
    drop(records);
    drop(db);
    let config = dirs.write_config_file("127.0.0.1:0", "[log]\nformat = \"json\"\n");

    let check = soak::run_binary(&config, &["check"], log_dir, "check", RUN_TIMEOUT);
    assert_eq!(check.status.code(), Some(1), "exit code of check; {}", check.describe());
    let problem = format!("problem: job {poisoned}: stored record has format version 9");
    assert!(check.stdout.contains(&problem), "check output; {}", check.describe());
    // The record exists, only its format is unknown: one problem, not a cascade of missing
    // records and wrong counts.
    assert!(check.stdout.contains("1 problem found"), "check output; {}", check.describe());

    let serve = soak::run_binary(
        &config,
        &["serve", "--listen", "127.0.0.1:0"],
        log_dir,
        "serve",
        RUN_TIMEOUT,
    );
    assert_eq!(serve.status.code(), Some(1), "exit code of serve; {}", serve.describe());
    let message = format!("job {poisoned}: stored record has format version 9");
    assert!(serve.stderr.contains(&message), "stderr of serve; {}", serve.describe());
    assert!(!serve.stderr.contains("panicked"), "stderr of serve; {}", serve.describe());
    // The worker reached the record after archiving the job in front of it.
    let folder = dirs.archive.join("fritz/398/764/1675954353");
    assert!(folder.join("meta.json").is_file(), "the job before the record was not archived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_counts_match_queue_after_mixed_run() {
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let dirs = TestDirs::new();
    let log_dir = dirs.root.path();
    // Retries wait an hour, so a job that failed transiently stays waiting. A hanging query
    // times out only after an hour, so the job in hand stays archiving until the stop.
    let extra = format!(
        "[metric_source]\nkind = \"cc-metric-store\"\nurl = \"{}\"\ntimeout = \"1h\"\n\n\
         [retry]\nmax_attempts = 3\ninitial_backoff = \"1h\"\nmax_backoff = \"1h\"\n\n\
         [worker]\nshutdown_timeout = \"1s\"\n\n[log]\nformat = \"json\"\n",
        fake.url()
    );
    let config = dirs.write_config_file("127.0.0.1:0", &extra);
    let client = soak::http_client();
    let mut server = tokio::task::block_in_place(|| soak::start_server(&config, log_dir, "mixed"));
    let url = server.url.clone();

    trigger(&client, &url, &support::example_job("fritz-398764")).await;
    soak::wait_for_state(&client, &url, "fritz/398764/1675954353", "archived").await;
    fake.set_mode(Mode::Fixed { status: 400, body: "{\"error\":\"bad query\"}".to_owned() });
    trigger(&client, &url, &support::synthetic_job(1)).await;
    soak::wait_for_state(&client, &url, &job_key(1), "failed").await;
    fake.set_mode(Mode::Status500);
    trigger(&client, &url, &support::synthetic_job(2)).await;
    wait_for_retry_wait(&client, &url, &job_key(2)).await;
    fake.set_mode(Mode::Hang);
    trigger(&client, &url, &support::synthetic_job(3)).await;
    soak::wait_for_state(&client, &url, &job_key(3), "archiving").await;
    let batch = Value::Array(vec![support::synthetic_job(4), support::synthetic_job(5)]);
    trigger(&client, &url, &batch).await;

    let (status, queue) = soak::get_json(&client, &format!("{url}/api/queue"))
        .await
        .expect("GET /api/queue answered");
    assert_eq!(status, 200, "status of GET /api/queue: {queue}");
    let expected = [("queued", 3), ("archiving", 1), ("archived", 1), ("failed", 1)];
    for (state, count) in expected {
        assert_eq!(queue[state], count, "{state} jobs before the stop: {queue}");
    }
    let exit = tokio::task::block_in_place(|| server.terminate(RUN_TIMEOUT));
    assert!(exit.success(), "exit status after SIGTERM: {exit}");
    let check = tokio::task::block_in_place(|| {
        soak::run_binary(&config, &["check"], log_dir, "check", RUN_TIMEOUT)
    });

    assert_eq!(check.status.code(), Some(0), "exit code of check; {}", check.describe());
    let counts = check_counts(&check);
    let count = |state: &str| queue[state].as_u64().expect("a count per state");
    assert_eq!(counts["records"], 6, "records; {}", check.describe());
    // The stop cancelled the job in hand, which went back to the queue.
    let queued = count("queued") + count("archiving");
    assert_eq!(counts["queued"], queued, "queued jobs; {}", check.describe());
    assert_eq!(counts["archiving"], 0, "archiving jobs; {}", check.describe());
    assert_eq!(counts["archived"], count("archived"), "archived jobs; {}", check.describe());
    assert_eq!(counts["failed"], count("failed"), "failed jobs; {}", check.describe());
    fake.stop().await;
}

fn job_key(job_id: i64) -> String {
    format!("fritz/{job_id}/{START_TIME}")
}

async fn trigger(client: &reqwest::Client, url: &str, body: &Value) {
    let (status, reply) = soak::post_json(client, url, body).await.expect("trigger answered");
    assert_eq!(status, 202, "status of the trigger: {reply}");
}

/// Waits until the job is `queued` after one failed attempt, waiting for its retry.
async fn wait_for_retry_wait(client: &reqwest::Client, url: &str, id: &str) {
    let waiting = support::wait_until(RUN_TIMEOUT, || async {
        let job = soak::job_status(client, url, id).await;
        job["state"] == "queued" && job["attempts"] == 1
    })
    .await;
    let job = soak::job_status(client, url, id).await;
    assert!(waiting, "job {id} not waiting for a retry within {RUN_TIMEOUT:?}: {job}");
}

/// Parses the `name  count` lines of `check`'s output.
fn check_counts(run: &RunOutput) -> BTreeMap<String, u64> {
    run.stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let count = words.next()?.parse().ok()?;
            words.next().is_none().then(|| (name.to_owned(), count))
        })
        .collect()
}

/// Writes a config file in `dir` on `store` and `archive`, replaying `examples/archive`.
fn write_config(dir: &Path, store: &Path, archive: &Path) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[store]\npath = \"{}\"\ncache_bytes = 8388608\n\n[archive]\npath = \"{}\"\n\n\
         [metric_source]\nkind = \"archive\"\npath = \"{}\"\n\n[log]\nformat = \"json\"\n",
        store.display(),
        archive.display(),
        support::repo_path("examples/archive").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Queues the synthetic fritz jobs `job_ids` in a new store at `path`, syncs and closes it.
fn fill_store(path: &Path, job_ids: &[i64]) {
    let store = Store::open(path, 8 << 20).expect("creating the store");
    store.enqueue(&synthetic_entries(job_ids), store_now_ms(), u64::MAX).expect("queueing jobs");
    store.sync().expect("syncing the store");
}

/// Opens and closes the store once more: sled then writes a `snap.*` file, as it does on
/// every start of the service after the first.
fn reopen_store(path: &Path) {
    drop(Store::open(path, 8 << 20).expect("reopening the store"));
    let names = soak::entry_names(path);
    assert!(names.iter().any(|name| name.starts_with("snap.")), "store files: {names:?}");
}

/// Like [`fill_store`], with a `metaData.padding` of `padding` random hexadecimal digits in
/// each job, so the records take room in the store.
fn fill_store_with_padding(path: &Path, job_ids: &[i64], padding: usize) {
    let store = Store::open(path, 8 << 20).expect("creating the store");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for job_id in job_ids {
        let digits: String = (0..padding)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from_digit((state >> 60) as u32, 16).unwrap()
            })
            .collect();
        let mut job = support::synthetic_job(*job_id);
        job["metaData"] = serde_json::json!({ "padding": digits });
        let entry = (fritz_id(*job_id), START_TIME + 177, serde_json::to_vec(&job).unwrap());
        store.enqueue(&[entry], store_now_ms(), u64::MAX).expect("queueing a job");
    }
    store.sync().expect("syncing the store");
}

/// Store entries (id, end time, `meta.json` body) of the synthetic fritz jobs `job_ids`.
fn synthetic_entries(job_ids: &[i64]) -> Vec<(JobId, i64, Vec<u8>)> {
    job_ids
        .iter()
        .map(|job_id| {
            let meta = serde_json::to_vec(&support::synthetic_job(*job_id)).unwrap();
            (fritz_id(*job_id), START_TIME + 177, meta)
        })
        .collect()
}

fn fritz_id(job_id: i64) -> JobId {
    JobId::new("fritz", job_id, START_TIME).unwrap()
}

fn store_now_ms() -> i64 {
    job_archiver::store::now_ms()
}

/// Overwrites the whole file with bytes from a fixed xorshift sequence.
fn overwrite_with_noise(path: &Path) {
    let length = std::fs::metadata(path).unwrap().len() as usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    std::fs::write(path, noise).unwrap();
}

fn truncate(path: &Path, length: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(length).unwrap();
}

/// Copies the files and folders of `from` into a new folder `to`.
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
