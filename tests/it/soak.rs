//! Long runs of the real binary under SIGKILL, and a job that kills it on every attempt.
//!
//! - Kill soak: in each round, concurrent clients send unique jobs while the service archives,
//!   and SIGKILL ends the round at a random moment, some rounds right after a job started
//!   archiving. After a restart the next round begins. At the end every acknowledged job must
//!   be archived exactly once, and `job-archiver check` must find no problem in the store.
//! - The `archive` command, killed a few times and then run to completion, archives every job
//!   of its files exactly once.
//! - A poison job, whose metric query kills the service, ends `failed` in step `interrupted`
//!   after `retry.max_attempts` attempts, and the jobs queued behind it are archived.
//!
//! `JOB_ARCHIVER_SOAK_ROUNDS` sets the number of kill rounds (default 20), and
//! `JOB_ARCHIVER_SOAK_SEED` replays the random choices of an earlier run.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::fake_metric_store::{FakeMetricStore, FakeStoreConfig};
use crate::support::{self, ServerProcess, TestDirs};
use crate::trigger_load::{join_clients, Ledger, ReplaySource, RoundLoad, SYNTHETIC_START_TIME};

/// First `jobId` of the kill soak. Round `r` uses the [`JOBS_PER_ROUND`] ids from
/// `SOAK_FIRST_JOB_ID + r * JOBS_PER_ROUND`.
const SOAK_FIRST_JOB_ID: i64 = 700_000;

/// Maximum number of jobs sent in one round. A fritz job took about 50 ms to archive in a
/// debug build on a 2-CPU VM, so 20 rounds give the worker at most about 25 s of work.
const JOBS_PER_ROUND: i64 = 24;

/// Concurrent trigger clients per round.
const CLIENTS: usize = 3;

/// Maximum number of jobs in one trigger body.
const MAX_BATCH: usize = 4;

/// Share of the rounds whose kill waits for a job to start archiving.
const ARCHIVING_KILL_SHARE: f64 = 0.3;

/// Jobs in the files of the `archive` command test.
const BATCH_JOBS: i64 = 30;

/// First `jobId` of the `archive` command test.
const BATCH_FIRST_JOB_ID: i64 = 900_000;

/// Host of the poison job: a query for it kills the service.
const POISON_HOST: &str = "f9999";

/// `[retry]` section of the poison job test: 3 attempts, backoffs of 50 to 200 ms.
const SHORT_RETRY: &str =
    "[retry]\nmax_attempts = 3\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_soak_loses_no_job() {
    let rounds: i64 = env_number("JOB_ARCHIVER_SOAK_ROUNDS").unwrap_or(20);
    let seed: u64 = env_number("JOB_ARCHIVER_SOAK_SEED").unwrap_or_else(rand::random);
    println!("soak: seed {seed}, {rounds} rounds; rerun with JOB_ARCHIVER_SOAK_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let dirs = TestDirs::new();
    let source = ReplaySource::create(&dirs.root.path().join("replay-source"));
    let config = dirs.write_config_file("127.0.0.1:0", &replay_config(&source.root, rounds));
    let log_dir = dirs.root.path();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let client = http_client();

    let mut server = tokio::task::block_in_place(|| start_server(&config, log_dir, "soak-start"));
    let mut archiving_kills = 0;
    let load = RoundLoad {
        clients: CLIENTS,
        jobs_per_round: JOBS_PER_ROUND,
        max_batch: MAX_BATCH,
        max_pause: Duration::from_millis(60),
    };
    for round in 0..rounds {
        let first = SOAK_FIRST_JOB_ID + round * JOBS_PER_ROUND;
        let clients = load.start(&source, first, &client, &server.url, &ledger, &mut rng);

        let wait_for_archiving = rng.random_bool(ARCHIVING_KILL_SHARE);
        let delay = Duration::from_millis(rng.random_range(10..=300));
        if wait_for_archiving {
            // Kills within a few ms of an "archiving started" event, while the job, which
            // takes about 50 ms, is still being archived.
            tokio::task::block_in_place(|| wait_for_next_archiving_start(&server));
        } else {
            tokio::time::sleep(delay).await;
        }
        tokio::task::block_in_place(|| server.kill());
        join_clients(clients).await;
        let name = format!("soak-round-{round}");
        server = tokio::task::block_in_place(|| start_server(&config, log_dir, &name));
        if recovered_archiving_jobs(&server.log()) > 0 {
            archiving_kills += 1;
        }
    }

    let drain_timeout = Duration::from_secs(60).max(Duration::from_secs(3) * rounds as u32);
    let drained = support::wait_until(drain_timeout, || async {
        match get_json(&client, &format!("{}/api/queue", server.url)).await {
            Some((200, queue)) => queue["queued"] == 0 && queue["archiving"] == 0,
            _ => false,
        }
    })
    .await;
    assert!(drained, "queue not drained within {drain_timeout:?}; log:\n{}", server.log());

    let ledger = ledger.lock().expect("no client panicked holding the ledger").clone();
    let mut states = BTreeMap::new();
    for job_id in &ledger.acknowledged {
        states.insert(*job_id, job_status(&client, &server.url, &job_key(*job_id)).await);
    }
    let cluster_dir = dirs.archive.join("fritz");
    let report = ArchiveReport::new(&cluster_dir, &ledger.acknowledged, &states);
    let (status, queue) = get_json(&client, &format!("{}/api/queue", server.url))
        .await
        .expect("GET /api/queue answered after the drain");
    assert_eq!(status, 200, "status of GET /api/queue: {queue}");
    let exit = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(30)));
    assert!(exit.success(), "exit status of the last server after SIGTERM: {exit}");
    let check = tokio::task::block_in_place(|| {
        run_binary(&config, &["check"], log_dir, "soak-check", Duration::from_secs(60))
    });

    println!(
        "soak: seed {seed}, kills while archiving {archiving_kills}, sent {}, cut off {}, \
         failed {}",
        ledger.sent.len(),
        ledger.cut_off.len(),
        report.failed.len()
    );
    println!(
        "soak: rounds={rounds} acknowledged={} archived={} lost={} duplicated={} stuck={}",
        ledger.acknowledged.len(),
        report.archived.len(),
        report.lost.len(),
        report.duplicated.len(),
        report.stuck.len()
    );
    assert!(ledger.unexpected.is_empty(), "unexpected trigger replies: {:?}", ledger.unexpected);
    assert!(!ledger.acknowledged.is_empty(), "no trigger acknowledged in {rounds} rounds");
    assert!(report.lost.is_empty(), "acknowledged jobs lost (id, status): {:?}", report.lost);
    assert!(report.duplicated.is_empty(), "jobs archived twice: {:?}", report.duplicated);
    assert!(report.stuck.is_empty(), "jobs still queued or archiving: {:?}", report.stuck);
    assert!(report.failed.is_empty(), "acknowledged jobs failed: {:?}", report.failed);
    assert!(report.incomplete.is_empty(), "incomplete job folders: {:?}", report.incomplete);
    assert!(report.leftovers.is_empty(), "dot-folders left: {:?}", report.leftovers);
    let unsent: Vec<&i64> = report
        .folders
        .iter()
        .filter(|id| !ledger.acknowledged.contains(id) && !ledger.cut_off.contains(id))
        .collect();
    assert!(
        unsent.is_empty(),
        "folders of jobs whose trigger never reached the server: {unsent:?}"
    );
    assert_eq!(queue["archived"], report.folders.len(), "archived count against folders: {queue}");
    if rounds >= 10 {
        assert!(archiving_kills > 0, "no kill in {rounds} rounds hit a job while archiving");
    }
    assert_eq!(check.status.code(), Some(0), "exit code of check; {}", check.describe());
    assert!(check.stdout.contains("ok: "), "check output; {}", check.describe());
    let archived_line = format!("archived   {}", report.folders.len());
    assert!(check.stdout.contains(&archived_line), "check counts; {}", check.describe());
}

#[test]
fn archive_command_survives_kills() {
    const KILLS: usize = 4;
    let seed: u64 = env_number("JOB_ARCHIVER_SOAK_SEED").unwrap_or_else(rand::random);
    println!("archive under SIGKILL: seed {seed}; rerun with JOB_ARCHIVER_SOAK_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);

    let dirs = TestDirs::new();
    let log_dir = dirs.root.path();
    let source = ReplaySource::create(&log_dir.join("replay-source"));
    let jobs_dir = log_dir.join("jobs");
    std::fs::create_dir_all(&jobs_dir).unwrap();
    let ids: Vec<i64> = (BATCH_FIRST_JOB_ID..BATCH_FIRST_JOB_ID + BATCH_JOBS).collect();
    let mut rest = ids.as_slice();
    let mut file_index = 0;
    while !rest.is_empty() {
        // One job per file as an object, or two or three as an array.
        let size = rng.random_range(1..=3).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let jobs: Vec<Value> = chunk.iter().map(|id| support::synthetic_job(*id)).collect();
        let body = if size == 1 { jobs[0].clone() } else { Value::Array(jobs) };
        let path = jobs_dir.join(format!("jobs-{file_index:02}.json"));
        std::fs::write(path, serde_json::to_vec(&body).unwrap()).unwrap();
        file_index += 1;
    }
    for id in &ids {
        source.add_job(*id);
    }
    let config = dirs.write_config_file("127.0.0.1:0", &replay_config(&source.root, KILLS as i64));
    let jobs_arg = jobs_dir.to_str().unwrap();

    let mut killed = 0;
    for run in 0..KILLS {
        let mut child = binary_command(&config, log_dir)
            .args(["archive", jobs_arg])
            .stdout(log_file(log_dir, &format!("archive-{run}.out")))
            .stderr(log_file(log_dir, &format!("archive-{run}.log")))
            .spawn()
            .expect("starting job-archiver archive");
        std::thread::sleep(Duration::from_millis(rng.random_range(30..=400)));
        if child.try_wait().expect("reading the exit status").is_none() {
            child.kill().expect("sending SIGKILL to job-archiver archive");
            killed += 1;
        }
        child.wait().expect("reaping job-archiver archive");
    }
    let last = run_binary(&config, &["archive", jobs_arg], log_dir, "archive-last", secs(60));
    println!("archive under SIGKILL: {killed} of {KILLS} runs killed before they finished");

    assert_eq!(last.status.code(), Some(0), "exit code of the last run; {}", last.describe());
    let summary = last
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("summary: "))
        .unwrap_or_else(|| panic!("no summary line; {}", last.describe()));
    let counts = parse_summary(summary);
    assert_eq!(counts["failed"], 0, "failed jobs in the summary: {summary}");
    assert_eq!(counts["rejected"], 0, "rejected files in the summary: {summary}");
    assert_eq!(counts["left queued"], 0, "jobs left queued in the summary: {summary}");
    assert_eq!(
        counts["archived"] + counts["already archived"],
        BATCH_JOBS as u64,
        "archived and already archived jobs in the summary: {summary}"
    );
    let mut reported = BTreeMap::new();
    for line in last.stdout.lines() {
        let key = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["archived", key, "->", ..] => key.to_string(),
            ["skipped", key, ..] => key.trim_end_matches(':').to_owned(),
            _ => continue,
        };
        *reported.entry(key).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, i32> = ids.iter().map(|id| (job_key(*id), 1)).collect();
    assert_eq!(reported, expected, "jobs reported archived or skipped by the last run");

    let acknowledged: BTreeSet<i64> = ids.iter().copied().collect();
    let states: BTreeMap<i64, Value> =
        ids.iter().map(|id| (*id, json!({"state": "archived"}))).collect();
    let report = ArchiveReport::new(&dirs.archive.join("fritz"), &acknowledged, &states);
    assert_eq!(report.folders, acknowledged, "job folders in the archive");
    assert!(report.lost.is_empty(), "jobs without a folder: {:?}", report.lost);
    assert!(report.duplicated.is_empty(), "jobs archived twice: {:?}", report.duplicated);
    assert!(report.incomplete.is_empty(), "incomplete job folders: {:?}", report.incomplete);
    assert!(report.leftovers.is_empty(), "dot-folders left: {:?}", report.leftovers);

    let check = run_binary(&config, &["check"], log_dir, "archive-check", secs(60));
    assert_eq!(check.status.code(), Some(0), "exit code of check; {}", check.describe());
    let archived_line = format!("archived   {BATCH_JOBS}");
    assert!(check.stdout.contains(&archived_line), "check counts; {}", check.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_job_ends_interrupted() {
    /// Bound on the starts of the service: one per attempt of the poison job, one that marks
    /// it failed, and room for a wrong count to show in the asserts instead of a hang.
    const MAX_STARTS: usize = 6;
    let fake = FakeMetricStore::start(FakeStoreConfig::fritz()).await;
    let dirs = TestDirs::new();
    let log_dir = dirs.root.path();
    let extra = format!(
        "[metric_source]\nkind = \"cc-metric-store\"\nurl = \"{}\"\n\n{SHORT_RETRY}\n\
         [log]\nformat = \"json\"\n",
        fake.url()
    );
    let config = dirs.write_config_file("127.0.0.1:0", &extra);
    let client = http_client();
    let mut poison = support::synthetic_job(1);
    poison["resources"] = json!([{"hostname": POISON_HOST}]);
    let poison_id = job_key(1);
    let mut batch = vec![poison];
    batch.extend((2..=4).map(support::synthetic_job));

    let mut deaths: Vec<ExitStatus> = Vec::new();
    let mut starts = 0;
    let mut server = loop {
        assert!(starts < MAX_STARTS, "the service still dies after {starts} starts: {deaths:?}");
        let mut server = spawn_server(&config, log_dir, &format!("poison-{starts}"));
        starts += 1;
        // The service needs tens of ms to start, so the process id is set before the service
        // can claim the poison job.
        fake.set_kill_pid_on_host(Some((POISON_HOST, server.child.id())));
        if let Err(status) = tokio::task::block_in_place(|| wait_ready(&mut server, secs(30))) {
            deaths.push(status);
            continue;
        }
        if starts == 1 {
            let (status, reply) = post_json(&client, &server.url, &Value::Array(batch.clone()))
                .await
                .expect("trigger of the poison batch answered");
            assert_eq!(status, 202, "status of the poison batch trigger: {reply}");
        }
        match wait_for_exit_or_failed(&mut server, &client, &poison_id).await {
            Some(status) => deaths.push(status),
            None => break server,
        }
    };
    fake.set_kill_pid_on_host(None);

    assert_eq!(deaths.len(), 3, "deaths of the service, one per attempt: {deaths:?}");
    for status in &deaths {
        assert_eq!(status.signal(), Some(9), "each death is the SIGKILL of the poison query");
    }
    let failed = job_status(&client, &server.url, &poison_id).await;
    assert_eq!(failed["state"], "failed", "state of the poison job: {failed}");
    assert_eq!(failed["failedStep"], "interrupted", "failedStep of the poison job: {failed}");
    assert_eq!(failed["attempts"], 4, "attempts of the poison job, the last not run: {failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("gave up: the last 3 attempts ended without an outcome"),
        "error of the poison job: {error}"
    );
    let history = failed["errorHistory"].as_array().cloned().unwrap_or_default();
    assert_eq!(history.len(), 1, "errorHistory of the poison job: {failed}");
    let entry = history[0].as_str().unwrap_or_default();
    assert!(entry.starts_with("interrupted: gave up"), "errorHistory entry: {entry}");
    for job_id in 2..=4 {
        let key = job_key(job_id);
        let archived = wait_for_state(&client, &server.url, &key, "archived").await;
        assert_eq!(archived["attempts"], 1, "attempts of job {key} behind the poison: {archived}");
    }
    let poison_queries = fake
        .requests()
        .iter()
        .filter(|request| request.json()["queries"][0]["host"] == POISON_HOST)
        .count();
    assert_eq!(poison_queries, 3, "queries for the poison host");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let alive = server.child.try_wait().expect("reading the exit status");
    assert!(alive.is_none(), "the service died after the poison job failed: {alive:?}");
    let gave_up = log_events(&server.log()).into_iter().any(|event| {
        event["level"] == "ERROR"
            && event["step"] == "interrupted"
            && event["span"]["job_id"] == poison_id
    });
    assert!(gave_up, "no error event for the interrupted poison job; log:\n{}", server.log());
    let exit = tokio::task::block_in_place(|| server.terminate(secs(30)));
    assert!(exit.success(), "exit status after SIGTERM: {exit}");
    fake.stop().await;
}

/// Returns the `[metric_source]`, `[retry]` and `[log]` sections for an archive replay of
/// `source`.
///
/// Each kill may hit the job that the previous kill hit, because recovery puts that job back
/// at the head of the queue. Once such kills in a row reach `retry.max_attempts`, the job is
/// marked failed in step `interrupted`, so the config allows more attempts than `kills`.
fn replay_config(source: &Path, kills: i64) -> String {
    format!(
        "[metric_source]\nkind = \"archive\"\npath = \"{}\"\n\n[retry]\nmax_attempts = {}\n\
         initial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n\n[log]\nformat = \"json\"\n",
        source.display(),
        kills + 2
    )
}

/// Job id of the synthetic fritz job `job_id`.
fn job_key(job_id: i64) -> String {
    format!("fritz/{job_id}/{SYNTHETIC_START_TIME}")
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// The archive checked against the jobs that should be in it.
#[derive(Debug, Default)]
struct ArchiveReport {
    archived: Vec<i64>,
    /// Jobs unknown to the store, or archived without a job folder.
    lost: Vec<(i64, String)>,
    /// Jobs whose parent folder contains more than one job folder.
    duplicated: Vec<(i64, Vec<String>)>,
    /// Jobs still `queued` or `archiving`.
    stuck: Vec<(i64, String)>,
    failed: Vec<(i64, String)>,
    /// Job folders without `meta.json` and exactly one data file.
    incomplete: Vec<(i64, Vec<String>)>,
    /// Names starting with `.` anywhere below the cluster folder.
    leftovers: Vec<PathBuf>,
    /// Every job with a job folder in the archive.
    folders: BTreeSet<i64>,
}

impl ArchiveReport {
    /// Checks the jobs `expected`, whose states are `states`, against the job folders below
    /// `cluster_dir`, which is `{archive}/fritz`.
    fn new(
        cluster_dir: &Path,
        expected: &BTreeSet<i64>,
        states: &BTreeMap<i64, Value>,
    ) -> ArchiveReport {
        let mut report = ArchiveReport::default();
        let mut parents: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for thousands in entry_names(cluster_dir) {
            let thousands_dir = cluster_dir.join(&thousands);
            if thousands.starts_with('.') {
                report.leftovers.push(thousands_dir);
                continue;
            }
            if !thousands_dir.is_dir() {
                continue; // cluster.json
            }
            for rest in entry_names(&thousands_dir) {
                let parent = thousands_dir.join(&rest);
                let job_id: i64 = format!("{thousands}{rest}").parse().unwrap_or_else(|_| {
                    panic!("unexpected folder in the archive: {}", parent.display())
                });
                let entries = entry_names(&parent);
                for name in &entries {
                    if name.starts_with('.') {
                        report.leftovers.push(parent.join(name));
                    }
                }
                if entries.iter().any(|name| !name.starts_with('.')) {
                    report.folders.insert(job_id);
                }
                parents.insert(job_id, entries);
            }
        }

        let start_time = SYNTHETIC_START_TIME.to_string();
        for job_id in expected {
            let status = &states[job_id];
            let entries = parents.get(job_id).cloned().unwrap_or_default();
            let job_folders: Vec<String> =
                entries.iter().filter(|name| !name.starts_with('.')).cloned().collect();
            if job_folders.len() > 1 {
                report.duplicated.push((*job_id, entries.clone()));
            }
            match status["state"].as_str() {
                Some("archived") if job_folders.contains(&start_time) => {
                    report.archived.push(*job_id);
                    let dir = cluster_dir.join(format!(
                        "{}/{:03}/{start_time}",
                        job_id / 1000,
                        job_id % 1000
                    ));
                    let files = entry_names(&dir);
                    if !is_complete_job_folder(&files) {
                        report.incomplete.push((*job_id, files));
                    }
                }
                Some("archived") => {
                    report.lost.push((*job_id, "archived without a job folder".to_owned()))
                }
                Some(state @ ("queued" | "archiving")) => {
                    report.stuck.push((*job_id, state.to_owned()))
                }
                Some("failed") => report.failed.push((*job_id, status["error"].to_string())),
                _ => report.lost.push((*job_id, status.to_string())),
            }
        }
        report
    }
}

/// Returns true if and only if `files` are `meta.json` and exactly one of `data.json` and
/// `data.json.gz`.
fn is_complete_job_folder(files: &[String]) -> bool {
    let has = |name: &str| files.iter().any(|file| file == name);
    files.len() == 2 && has("meta.json") && (has("data.json") != has("data.json.gz"))
}

/// Lists the names in a folder, sorted, or none when it does not exist.
pub(crate) fn entry_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|entry| {
            entry.expect("readable folder entry").file_name().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Parses `N archived, N failed, N already archived, N rejected, N left queued` into counts
/// keyed by the words after each number.
fn parse_summary(summary: &str) -> BTreeMap<String, u64> {
    summary
        .split(", ")
        .filter_map(|part| {
            let (count, name) = part.split_once(' ')?;
            Some((name.to_owned(), count.parse().ok()?))
        })
        .collect()
}

/// Returns a command that runs the binary with `--config config` in `log_dir`, without the
/// `JOB_ARCHIVER_*` variables of the test's environment, which would override the config.
fn binary_command(config: &Path, log_dir: &Path) -> Command {
    let mut command = Command::new(support::binary());
    command.arg("--config").arg(config).current_dir(log_dir).stdin(Stdio::null());
    command.env("RUST_LOG", "job_archiver=debug,warn");
    for (variable, _) in std::env::vars_os() {
        if variable.to_string_lossy().starts_with("JOB_ARCHIVER_") {
            command.env_remove(variable);
        }
    }
    command
}

fn log_file(log_dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(log_dir.join(name)).expect("creating a log file")
}

/// Starts `job-archiver --log-format json serve --listen 127.0.0.1:0` with its log in
/// `{log_dir}/{name}.log`, without waiting for it to be ready.
fn spawn_server(config: &Path, log_dir: &Path, name: &str) -> ServerProcess {
    let stderr_path = log_dir.join(format!("{name}.log"));
    let child = binary_command(config, log_dir)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(log_file(log_dir, &format!("{name}.log")))
        .spawn()
        .expect("starting the job-archiver binary");
    ServerProcess { child, url: String::new(), stderr_path }
}

/// Waits until the server logs `listening` and `ready`, and sets its URL from the logged
/// address. Returns the exit status instead when the process exits first.
///
/// The address comes from the log because a port picked in advance and freed again can be
/// taken by a concurrent test.
fn wait_ready(server: &mut ServerProcess, timeout: Duration) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let events = log_events(&server.log());
        let address = events
            .iter()
            .find(|event| event["message"] == "listening")
            .and_then(|event| event["address"].as_str());
        let ready = events.iter().any(|event| event["message"] == "ready");
        if let (Some(address), true) = (address, ready) {
            server.url = format!("http://{address}");
            return Ok(());
        }
        if let Some(status) = server.child.try_wait().expect("reading the exit status") {
            return Err(status);
        }
        assert!(
            Instant::now() < deadline,
            "server not ready within {timeout:?}; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the server and waits until it is ready. Panics with its log when it exits first.
pub(crate) fn start_server(config: &Path, log_dir: &Path, name: &str) -> ServerProcess {
    let mut server = spawn_server(config, log_dir, name);
    if let Err(status) = wait_ready(&mut server, secs(30)) {
        panic!("server {name} exited early with {status}; log:\n{}", server.log());
    }
    server
}

/// Waits for the next `archiving started` event in the server's log, up to 3 s.
fn wait_for_next_archiving_start(server: &ServerProcess) {
    const EVENT: &str = "\"message\":\"archiving started\"";
    let before = server.log().matches(EVENT).count();
    let deadline = Instant::now() + secs(3);
    while Instant::now() < deadline && server.log().matches(EVENT).count() == before {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls every 20 ms until the server exits, returning its exit status, or until the job `id`
/// is `failed`, returning `None`. Panics after 30 s.
async fn wait_for_exit_or_failed(
    server: &mut ServerProcess,
    client: &reqwest::Client,
    id: &str,
) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + secs(30);
    loop {
        if let Some(status) = server.child.try_wait().expect("reading the exit status") {
            return Some(status);
        }
        if let Some((200, job)) = get_json(client, &format!("{}/api/jobs/{id}", server.url)).await {
            if job["state"] == "failed" {
                return None;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server neither died nor failed job {id} within 30 s; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Output of one bounded run of the binary.
pub(crate) struct RunOutput {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl RunOutput {
    /// Describes the run for an assert message.
    pub(crate) fn describe(&self) -> String {
        format!("status {}\nstdout:\n{}\nstderr:\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs the binary with `--config config` and `args` in `log_dir`, its output in
/// `{log_dir}/{name}.out` and `.log`. Kills it and panics when it runs past `timeout`.
pub(crate) fn run_binary(
    config: &Path,
    args: &[&str],
    log_dir: &Path,
    name: &str,
    timeout: Duration,
) -> RunOutput {
    let stdout_path = log_dir.join(format!("{name}.out"));
    let stderr_path = log_dir.join(format!("{name}.log"));
    let mut child = binary_command(config, log_dir)
        .args(args)
        .stdout(log_file(log_dir, &format!("{name}.out")))
        .stderr(log_file(log_dir, &format!("{name}.log")))
        .spawn()
        .expect("starting the job-archiver binary");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("reading the exit status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("job-archiver {args:?} still running after {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    RunOutput {
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// Parses the events of a JSON-format log, one per line, skipping other lines, such as a line
/// still being written.
fn log_events(log: &str) -> Vec<Value> {
    log.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// Returns `recovered_archiving` of the server's `recovered the backlog` event, or 0.
fn recovered_archiving_jobs(log: &str) -> u64 {
    log_events(log)
        .iter()
        .find(|event| event["message"] == "recovered the backlog")
        .and_then(|event| event["recovered_archiving"].as_u64())
        .unwrap_or(0)
}

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(secs(10)).build().expect("building the HTTP client")
}

/// Sends `GET url` and returns the status and the body as JSON, or as a string. Returns
/// `None` when no reply came.
pub(crate) async fn get_json(client: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Posts a trigger body and returns the status and the body, or `None` when no reply came.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Option<(u16, Value)> {
    let response = client.post(format!("{url}/api/jobs/archive")).json(body).send().await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Returns the body of `GET /api/jobs/{id}`, or `{"httpStatus": ...}` for another reply.
pub(crate) async fn job_status(client: &reqwest::Client, url: &str, id: &str) -> Value {
    match get_json(client, &format!("{url}/api/jobs/{id}")).await {
        Some((200, body)) => body,
        Some((status, body)) => json!({ "httpStatus": status, "body": body }),
        None => json!({ "httpStatus": null }),
    }
}

/// Polls the job every 20 ms until it reaches `state`, and returns its status. Panics after
/// 30 s.
pub(crate) async fn wait_for_state(
    client: &reqwest::Client,
    url: &str,
    id: &str,
    state: &str,
) -> Value {
    let deadline = tokio::time::Instant::now() + secs(30);
    loop {
        let job = job_status(client, url, id).await;
        if job["state"] == state {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} not {state} within 30 s; last status: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let text = std::env::var(name).ok()?;
    let value = text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number"));
    Some(value)
}
