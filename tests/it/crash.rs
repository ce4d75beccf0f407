//! Crash safety of the real binary: SIGKILL at random moments while clients send triggers and
//! the worker archives, then a restart on the same store and archive. Every acknowledged job
//! must end archived exactly once, and the archive must hold nothing for jobs never sent.
//!
//! `JOB_ARCHIVER_CRASH_ROUNDS` sets the number of kill rounds (default 5), and
//! `JOB_ARCHIVER_CRASH_SEED` replays the kill delays and trigger sizes of an earlier run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::support::{self, ServerProcess, TestDirs};
use crate::trigger_load::{join_clients, Ledger, ReplaySource, RoundLoad, SYNTHETIC_START_TIME};

/// First `jobId` of the synthetic jobs. Round `r` uses the [`JOBS_PER_ROUND`] ids that start at
/// `FIRST_JOB_ID + r * JOBS_PER_ROUND`.
const FIRST_JOB_ID: i64 = 500_000;

/// Maximum number of jobs the clients send in one round. A fritz job takes about 40 ms to
/// archive in a debug build (an estimate from one machine), so the default 5 rounds stay well
/// below a minute of worker time.
const JOBS_PER_ROUND: i64 = 60;

/// Concurrent trigger clients per round.
const CLIENTS: usize = 4;

/// Maximum number of jobs in one trigger body.
const MAX_BATCH: usize = 4;

/// How long the service may take per round to archive the backlog after the last restart: a
/// round's jobs take a few seconds of worker time, and a loaded CI machine may be slower.
const DRAIN_TIMEOUT_PER_ROUND: Duration = Duration::from_secs(9);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_lose_no_job() {
    let rounds = env_number("JOB_ARCHIVER_CRASH_ROUNDS").unwrap_or(5);
    let seed = env_number("JOB_ARCHIVER_CRASH_SEED").unwrap_or_else(rand::random);
    println!("crash test: seed {seed}, {rounds} rounds; rerun with JOB_ARCHIVER_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let dirs = TestDirs::new();
    let source = ReplaySource::create(&dirs.root.path().join("replay-source"));
    let extra = format!(
        "[metric_source]\nkind = \"archive\"\npath = \"{}\"\n\n[log]\nformat = \"json\"\n",
        source.root.display()
    );
    let config = dirs.write_config_file("127.0.0.1:0", &extra);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let client = http_client();

    let mut server = start_process(&config, dirs.root.path(), "crash-start");
    let mut kills_while_archiving = 0;
    let load = RoundLoad {
        clients: CLIENTS,
        jobs_per_round: JOBS_PER_ROUND,
        max_batch: MAX_BATCH,
        max_pause: Duration::from_millis(100),
    };
    for round in 0..rounds {
        let first = FIRST_JOB_ID + round as i64 * JOBS_PER_ROUND;
        let clients = load.start(&source, first, &client, &server.url, &ledger, &mut rng);

        let delay = Duration::from_millis(rng.random_range(20..=400));
        tokio::time::sleep(delay).await;
        tokio::task::block_in_place(|| server.kill());
        join_clients(clients).await;
        server = start_process(&config, dirs.root.path(), &format!("crash-round-{round}"));
        if recovered_archiving_job(&server.log()) {
            kills_while_archiving += 1;
        }
    }

    // The backlog left by the last kill is archived by the last process.
    let drain_timeout = DRAIN_TIMEOUT_PER_ROUND * rounds.max(5);
    let drained = support::wait_until(drain_timeout, || async {
        match get_json(&client, &format!("{}/api/queue", server.url)).await {
            Some((200, body)) => body["queued"] == 0 && body["archiving"] == 0,
            _ => false,
        }
    })
    .await;
    assert!(drained, "queue not drained within {drain_timeout:?}; log:\n{}", server.log());

    let ledger = ledger.lock().expect("no client panicked while holding the ledger").clone();
    let states = job_states(&client, &server.url, &ledger.acknowledged).await;
    let archive = ArchiveListing::read(&dirs.archive.join("fritz"));
    let report = CrashReport::new(&ledger, &states, &archive);
    println!(
        "crash test: seed {seed}, rounds {rounds}, kills while archiving {kills_while_archiving}, \
         sent {}, acknowledged {}, cut off {}, archived {}, lost {}, duplicated {}, stuck {}, \
         failed {}",
        ledger.sent.len(),
        ledger.acknowledged.len(),
        ledger.cut_off.len(),
        report.archived.len(),
        report.lost.len(),
        report.duplicated.len(),
        report.stuck.len(),
        report.failed.len(),
    );

    assert!(ledger.unexpected.is_empty(), "unexpected trigger replies: {:?}", ledger.unexpected);
    assert!(!ledger.acknowledged.is_empty(), "no trigger was acknowledged in {rounds} rounds");
    assert!(report.lost.is_empty(), "acknowledged jobs lost (id, state): {:?}", report.lost);
    assert!(report.stuck.is_empty(), "jobs stuck after the drain (id, state): {:?}", report.stuck);
    assert!(report.failed.is_empty(), "acknowledged jobs failed: {:?}", report.failed);
    assert!(
        report.duplicated.is_empty(),
        "archived jobs with more than one folder (id, entries): {:?}",
        report.duplicated
    );
    assert!(
        report.incomplete.is_empty(),
        "archived job folders without meta.json and exactly one data file (id, files): {:?}",
        report.incomplete
    );
    assert!(
        archive.leftovers.is_empty(),
        "temporary folders left in the archive: {:?}",
        archive.leftovers
    );
    // A job whose trigger never reached the server cannot have a folder.
    let never_sent: Vec<i64> = archive
        .folders
        .keys()
        .filter(|id| !ledger.acknowledged.contains(id) && !ledger.cut_off.contains(id))
        .copied()
        .collect();
    assert!(
        never_sent.is_empty(),
        "archive folders of jobs whose trigger never reached the server: {never_sent:?}"
    );

    // The store's counts must match the archive: an archived job without a folder, or a folder
    // without an archived job, means a state change got out of step with the write.
    let (status, queue) = get_json(&client, &format!("{}/api/queue", server.url))
        .await
        .expect("GET /api/queue after the drain");
    assert_eq!(status, 200, "status of GET /api/queue: {queue}");
    assert_eq!(queue["failed"], 0, "failed jobs in the store: {queue}");
    assert_eq!(
        queue["archived"],
        archive.folders.len(),
        "archived count of the store against job folders in the archive: {queue}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_while_archiving_counts_attempt() {
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", "");
    let client = http_client();
    let mut server = start_process(&config, dirs.root.path(), "kill-while-archiving");
    let id = "emmy/1403244/1608923076";

    let (status, reply) = post_json(&client, &server.url, &support::example_job("emmy-1403244"))
        .await
        .expect("trigger of the emmy job answered");
    assert_eq!(status, 202, "status of the emmy trigger: {reply}");

    // GET shows `archiving` as soon as the claim is in the store's memory, but the claim reaches
    // the OS only before the worker logs "archiving started", so the kill waits for that event.
    // The emmy job takes over a second to archive, so it is still running when the event shows.
    let started = support::wait_until(Duration::from_secs(30), || async {
        log_events(&server.log()).iter().any(|event| event["message"] == "archiving started")
    })
    .await;
    assert!(started, "no \"archiving started\" event within 30 s; log:\n{}", server.log());
    let seen = job_status(&client, &server.url, id).await;
    assert_eq!(seen["state"], "archiving", "state of the emmy job before the kill: {seen}");
    tokio::task::block_in_place(|| server.kill());

    let server = start_process(&config, dirs.root.path(), "kill-while-archiving-restart");
    let archived = wait_for_state(&client, &server.url, id, "archived", Duration::from_secs(60))
        .await
        .unwrap_or_else(|last| panic!("emmy job not archived after restart; last {last}"));
    let attempts = archived["attempts"].as_u64().expect("attempts is a number");
    assert!(attempts >= 2, "attempts of the emmy job, killed once while archiving: {archived}");
    let recovered = log_events(&server.log())
        .into_iter()
        .find(|event| event["message"] == "recovered the backlog")
        .expect("the restarted server logs its recovery");
    assert_eq!(recovered["recovered_archiving"], 1, "recovery after the kill: {recovered}");
    assert_eq!(archived["error"], Value::Null, "error of the archived emmy job: {archived}");

    let parent = dirs.archive.join("emmy/1403/244");
    assert_eq!(entry_names(&parent), ["1608923076"], "entries in {}", parent.display());
    let files = entry_names(&parent.join("1608923076"));
    assert!(is_complete_job_folder(&files), "files of the emmy job folder: {files:?}");
}

/// The job folders of one cluster in the archive, keyed by `jobId`.
#[derive(Debug, Default)]
struct ArchiveListing {
    /// Every `{jobId/1000}/{jobId%1000:03}` folder's entries, keyed by `jobId`.
    parents: BTreeMap<i64, Vec<String>>,
    /// Files of each final job folder `{startTime}`, keyed by `jobId`.
    folders: BTreeMap<i64, Vec<String>>,
    /// Paths of names starting with `.` anywhere below the cluster folder.
    leftovers: Vec<PathBuf>,
}

impl ArchiveListing {
    /// Lists `{cluster_dir}/{jobId/1000}/{jobId%1000:03}/{startTime}`.
    fn read(cluster_dir: &Path) -> ArchiveListing {
        let mut listing = ArchiveListing::default();
        for thousands in entry_names(cluster_dir) {
            let thousands_dir = cluster_dir.join(&thousands);
            if thousands.starts_with('.') {
                listing.leftovers.push(thousands_dir);
                continue;
            }
            if !thousands_dir.is_dir() {
                continue; // cluster.json
            }
            for rest in entry_names(&thousands_dir) {
                let parent = thousands_dir.join(&rest);
                let job_id = format!("{thousands}{rest}").parse::<i64>().unwrap_or_else(|_| {
                    panic!("unexpected folder in the archive: {}", parent.display())
                });
                let entries = entry_names(&parent);
                for name in &entries {
                    if name.starts_with('.') {
                        listing.leftovers.push(parent.join(name));
                    } else {
                        listing.folders.insert(job_id, entry_names(&parent.join(name)));
                    }
                }
                listing.parents.insert(job_id, entries);
            }
        }
        listing
    }
}

/// What the checks after the drain found, as lists of offending jobs.
#[derive(Debug, Default)]
struct CrashReport {
    archived: Vec<i64>,
    /// Acknowledged jobs that are unknown to the store, or archived without a job folder.
    lost: Vec<(i64, String)>,
    /// Archived jobs with more than one entry in their parent folder.
    duplicated: Vec<(i64, Vec<String>)>,
    /// Acknowledged jobs still `queued` or `archiving`.
    stuck: Vec<(i64, String)>,
    failed: Vec<(i64, String)>,
    /// Archived job folders without `meta.json` and exactly one data file.
    incomplete: Vec<(i64, Vec<String>)>,
}

impl CrashReport {
    fn new(
        ledger: &Ledger,
        states: &BTreeMap<i64, Value>,
        archive: &ArchiveListing,
    ) -> CrashReport {
        let mut report = CrashReport::default();
        for id in &ledger.acknowledged {
            let status = &states[id];
            match status["state"].as_str() {
                Some("archived") => match archive.folders.get(id) {
                    Some(files) => {
                        report.archived.push(*id);
                        if !is_complete_job_folder(files) {
                            report.incomplete.push((*id, files.clone()));
                        }
                    }
                    None => report.lost.push((*id, "archived without a folder".to_owned())),
                },
                Some(state @ ("queued" | "archiving")) => {
                    report.stuck.push((*id, state.to_owned()))
                }
                Some("failed") => report.failed.push((*id, status["error"].to_string())),
                _ => report.lost.push((*id, status.to_string())),
            }
            if let Some(entries) = archive.parents.get(id).filter(|entries| entries.len() > 1) {
                report.duplicated.push((*id, entries.clone()));
            }
        }
        report
    }
}

/// Returns true if and only if `files` has `meta.json` and exactly one of `data.json` and
/// `data.json.gz`.
fn is_complete_job_folder(files: &[String]) -> bool {
    let has = |name: &str| files.iter().any(|file| file == name);
    has("meta.json") && (has("data.json") != has("data.json.gz"))
}

/// Reads the state of every job in `ids` through `GET /api/jobs/{id}`.
async fn job_states(
    client: &reqwest::Client,
    url: &str,
    ids: &BTreeSet<i64>,
) -> BTreeMap<i64, Value> {
    let mut states = BTreeMap::new();
    for id in ids {
        let key = format!("fritz/{id}/{SYNTHETIC_START_TIME}");
        states.insert(*id, job_status(client, url, &key).await);
    }
    states
}

/// Returns the body of `GET /api/jobs/{id}`, or `{"httpStatus": <code>, ...}` for a non-200
/// reply.
async fn job_status(client: &reqwest::Client, url: &str, id: &str) -> Value {
    match get_json(client, &format!("{url}/api/jobs/{id}")).await {
        Some((200, body)) => body,
        Some((status, body)) => serde_json::json!({ "httpStatus": status, "body": body }),
        None => serde_json::json!({ "httpStatus": null }),
    }
}

/// Polls the job every 50 ms until it reaches `state`. On a timeout, returns the last status as
/// the error.
async fn wait_for_state(
    client: &reqwest::Client,
    url: &str,
    id: &str,
    state: &str,
    timeout: Duration,
) -> Result<Value, Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = job_status(client, url, id).await;
        if status["state"] == state {
            return Ok(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building the HTTP client")
}

/// Sends `GET url` and returns the status and the body as JSON (or as a string), or `None`
/// when no reply came.
async fn get_json(client: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Posts a trigger body and returns the status and the body, or `None` when no reply came.
async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> Option<(u16, Value)> {
    let response = client.post(format!("{url}/api/jobs/archive")).json(body).send().await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Starts the binary without blocking the other tasks of the test's runtime.
fn start_process(config: &Path, log_dir: &Path, name: &str) -> ServerProcess {
    tokio::task::block_in_place(|| start_server_process(config, log_dir, name))
}

/// Starts `job-archiver --config <config> --log-format json serve --listen 127.0.0.1:0` in
/// `log_dir`, with its log in `{log_dir}/{name}.log`, and waits until it logs `ready`.
///
/// The URL comes from the process's own `listening` event. A port picked in advance and freed
/// again can be picked by a concurrent test as well, and then a readiness probe on that port
/// may reach the other test's server.
pub(crate) fn start_server_process(config: &Path, log_dir: &Path, name: &str) -> ServerProcess {
    let stderr_path = log_dir.join(format!("{name}.log"));
    let stderr = std::fs::File::create(&stderr_path).expect("creating the server log file");
    let mut command = std::process::Command::new(support::binary());
    command
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .current_dir(log_dir)
        .env("RUST_LOG", "job_archiver=debug,warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (variable, _) in std::env::vars_os() {
        if variable.to_string_lossy().starts_with("JOB_ARCHIVER_") {
            command.env_remove(variable);
        }
    }
    let child = command.spawn().expect("starting the job-archiver binary");
    let mut server = ServerProcess { child, url: String::new(), stderr_path };

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = log_events(&server.log());
        let address = events
            .iter()
            .find(|event| event["message"] == "listening")
            .and_then(|event| event["address"].as_str());
        let ready = events.iter().any(|event| event["message"] == "ready");
        if let (Some(address), true) = (address, ready) {
            server.url = format!("http://{address}");
            return server;
        }
        if let Some(status) = server.child.try_wait().expect("reading the exit status") {
            panic!("server {name} exited early with {status}; log:\n{}", server.log());
        }
        if std::time::Instant::now() > deadline {
            panic!("server {name} not ready within 30 s; log:\n{}", server.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parses the events of a JSON-format log, one per line, and skips other lines, such as a
/// line still being written.
pub(crate) fn log_events(log: &str) -> Vec<Value> {
    log.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// Lists the names in a folder, sorted, or none when the folder does not exist.
fn entry_names(dir: &Path) -> Vec<String> {
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

/// Returns true if and only if a server log in the JSON format reports that start-up put a
/// job that was being archived back into the queue.
fn recovered_archiving_job(log: &str) -> bool {
    log_events(log).iter().any(|event| {
        event["message"] == "recovered the backlog" && event["recovered_archiving"] != 0
    })
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let text = std::env::var(name).ok()?;
    let value = text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number"));
    Some(value)
}
