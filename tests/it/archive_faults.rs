//! Archive faults against the in-process service: a full archive filesystem, a read-only one,
//! an archive root that is missing at start, and a `cluster.json` that cannot be read.
//!
//! The filesystem faults are real where the test may mount: a tmpfs of 64 KiB that a job does
//! not fit in, and a tmpfs remounted read-only. Without the right to mount (not root, no
//! CAP_SYS_ADMIN), an [`ArchiveWriter`] wrapper returns the same errors (ENOSPC, EROFS) from
//! its writes. Each test prints which of the two ran. `JOB_ARCHIVER_TEST_INJECT_FAULTS=1`
//! chooses the wrapper even where mounting works.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use job_archiver::archive::fs::FsArchive;
use job_archiver::archive::{ArchiveError, ArchiveWriter, JobFiles, WrittenJob};
use job_archiver::config::{Config, RetryConfig};
use job_archiver::job::JobId;
use job_archiver::service::{self, Components};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::faults::sample;
use crate::support::{example_job, repo_path, synthetic_job, TestDirs};

const FRITZ_ID: &str = "fritz/398764/1675954353";

/// Bound on the wait for a job's outcome. Each test needs a few seconds, so this only stops a
/// hung test.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// Linux error numbers of the injected faults.
const ENOSPC: i32 = 28;
const EROFS: i32 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_archive_retried_then_archived() {
    let dirs = TestDirs::new();
    let mut config = short_retry_config(&dirs);
    // The plain fritz data.json takes 58 KB, more than the 24 KiB that the fritz cluster.json
    // and version.txt leave free on the 64 KiB filesystem. Gzipped, it would fit.
    config.archive.compress_threshold_bytes = 1 << 30;
    let fault = match mount_allowed() {
        true => {
            let mount = TmpfsMount::new(&dirs.root.path().join("small-archive"), "size=64k");
            seed_archive(mount.path());
            config.archive.path = mount.path().to_owned();
            println!("archive faults: full disk from a tmpfs of 64 KiB");
            Fault::Mounted(mount)
        }
        false => {
            println!("archive faults: full disk injected as ENOSPC; {}", no_mount_reason());
            Fault::injected(&dirs.archive, ENOSPC)
        }
    };
    let archive = config.archive.path.clone();
    let service = Service::start(config, fault.writer()).await;

    service.trigger(&example_job("fritz-398764")).await;
    let failed = service.wait_retried_then_failed(FRITZ_ID, "write").await;

    let error = failed["error"].as_str().unwrap_or_default();
    let parent = archive.join("fritz/398/764");
    assert!(error.contains(&parent.display().to_string()), "error lacks the job's path: {error}");
    assert!(error.contains("No space left on device"), "error lacks ENOSPC: {error}");
    service.assert_degraded("No space left on device").await;
    assert!(!parent.join("1675954353").exists(), "a job folder exists after the failed writes");
    // A failed write removes its temporary folder, so no partial job keeps the disk full.
    assert_eq!(entry_names(&parent), Vec::<String>::new(), "entries in {}", parent.display());

    fault.clear("size=1m");
    service.retry_failed_then_archived(FRITZ_ID).await;
    assert_eq!(entry_names(&parent), ["1675954353"], "entries in {}", parent.display());
    assert_eq!(
        entry_names(&parent.join("1675954353")),
        ["data.json", "meta.json"],
        "files of the job folder"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_archive_retried_then_archived() {
    let dirs = TestDirs::new();
    let mut config = short_retry_config(&dirs);
    let fault = match mount_allowed() {
        true => {
            let mount = TmpfsMount::new(&dirs.root.path().join("ro-archive"), "size=1m");
            seed_archive(mount.path());
            mount.remount("ro");
            config.archive.path = mount.path().to_owned();
            println!("archive faults: read-only archive from a tmpfs remounted read-only");
            Fault::Mounted(mount)
        }
        false => {
            println!("archive faults: read-only archive injected as EROFS; {}", no_mount_reason());
            Fault::injected(&dirs.archive, EROFS)
        }
    };
    let archive = config.archive.path.clone();
    let service = Service::start(config, fault.writer()).await;

    service.trigger(&example_job("fritz-398764")).await;
    let failed = service.wait_retried_then_failed(FRITZ_ID, "write").await;

    let error = failed["error"].as_str().unwrap_or_default();
    let cluster_dir = archive.join("fritz");
    assert!(error.contains(&cluster_dir.display().to_string()), "error lacks the path: {error}");
    assert!(error.contains("Read-only file system"), "error lacks EROFS: {error}");
    service.assert_degraded("Read-only file system").await;
    let leftovers: Vec<String> =
        entry_names(&cluster_dir).into_iter().filter(|name| name != "cluster.json").collect();
    assert!(leftovers.is_empty(), "entries left in {}: {leftovers:?}", cluster_dir.display());

    fault.clear("rw");
    service.retry_failed_then_archived(FRITZ_ID).await;
    let folder = archive.join("fritz/398/764/1675954353");
    assert_eq!(entry_names(&folder), ["data.json.gz", "meta.json"], "files of the job folder");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_archive_root_starts_degraded() {
    let dirs = TestDirs::new();
    let mut config = short_retry_config(&dirs);
    // The root cannot be created: it lies on a read-only filesystem, or below a plain file.
    let (mount, blocker) = match mount_allowed() {
        true => {
            let mount = TmpfsMount::new(&dirs.root.path().join("ro-mount"), "size=64k");
            mount.remount("ro");
            config.archive.path = mount.path().join("job-archive");
            println!("archive faults: archive root missing on a read-only tmpfs");
            (Some(mount), None)
        }
        false => {
            let blocker = dirs.root.path().join("plain-file");
            std::fs::write(&blocker, b"not a folder").unwrap();
            config.archive.path = blocker.join("job-archive");
            println!("archive faults: archive root below a plain file; {}", no_mount_reason());
            (None, Some(blocker))
        }
    };
    let root = config.archive.path.clone();
    let service = Service::start(config, None).await;

    let (status, health) = service.get("/healthz").await;
    assert_eq!(status, 200, "status of /healthz with a missing archive root: {health}");
    service.assert_degraded(&root.display().to_string()).await;
    service.trigger(&example_job("fritz-398764")).await;
    let failed = service.wait_retried_then_failed(FRITZ_ID, "cluster").await;
    for entry in failed["errorHistory"].as_array().cloned().unwrap_or_default() {
        let entry = entry.as_str().unwrap_or_default();
        assert!(entry.contains(&root.display().to_string()), "errorHistory entry: {entry}");
    }

    match (&mount, &blocker) {
        (Some(mount), _) => mount.remount("rw"),
        (_, Some(blocker)) => std::fs::remove_file(blocker).unwrap(),
        (None, None) => unreachable!("one of the two faults is set up"),
    }
    seed_archive(&root);
    service.retry_failed_then_archived(FRITZ_ID).await;
    assert!(root.join("fritz/398/764/1675954353/meta.json").is_file(), "meta.json not written");
    service.stop().await;
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_cluster_json_fails_at_once() {
    let dirs = TestDirs::new();
    std::fs::create_dir_all(dirs.archive.join("fritz2")).unwrap();
    std::fs::write(dirs.archive.join("fritz2/cluster.json"), b"{\"name\": \"fritz2\", \"metric")
        .unwrap();
    let service = Service::start(short_retry_config(&dirs), None).await;

    service.trigger(&fritz2_job()).await;
    let failed = service.wait_for_state("fritz2/1/1675954353", "failed").await;

    assert_eq!(failed["attempts"], 1, "attempts: {failed}");
    assert_eq!(failed["failedStep"], "cluster", "failedStep: {failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("cluster fritz2"), "error lacks the cluster: {error}");
    let (status, body) = service.get("/readyz").await;
    assert_eq!(status, 200, "/readyz after an invalid cluster.json: {body}");
    let metrics = service.scrape().await;
    assert_eq!(sample(&metrics, "job_archiver_retries_scheduled_total"), 0.0, "retries scheduled");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_cluster_json_is_retried() {
    let dirs = TestDirs::new();
    // Reading a folder fails with EISDIR, an I/O error other than NotFound.
    std::fs::create_dir_all(dirs.archive.join("fritz2/cluster.json")).unwrap();
    let service = Service::start(short_retry_config(&dirs), None).await;

    service.trigger(&fritz2_job()).await;
    let failed = service.wait_retried_then_failed("fritz2/1/1675954353", "cluster").await;

    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("fritz2/cluster.json"), "error lacks the path: {error}");
    assert!(error.contains("Is a directory"), "error lacks the cause: {error}");
    service.assert_degraded("Is a directory").await;
    service.stop().await;
}

/// Returns a config on `dirs` with 3 attempts and backoffs of 50 to 200 ms.
fn short_retry_config(dirs: &TestDirs) -> Config {
    let mut config = dirs.config();
    config.retry = RetryConfig {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    };
    config
}

/// Returns a job of cluster `fritz2`, whose `cluster.json` each test prepares.
fn fritz2_job() -> Value {
    let mut job = synthetic_job(1);
    job["cluster"] = json!("fritz2");
    job
}

/// Makes `root` a job-archive with `version.txt` and the fritz `cluster.json`.
fn seed_archive(root: &Path) {
    std::fs::create_dir_all(root.join("fritz")).unwrap();
    std::fs::write(root.join("version.txt"), "3\n").unwrap();
    let cluster = repo_path("examples/archive/fritz/cluster.json");
    std::fs::copy(cluster, root.join("fritz/cluster.json")).unwrap();
}

/// Lists the names in a folder, sorted, or none when it does not exist.
fn entry_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        entries.map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Returns true if and only if this process may mount a tmpfs, found out once by mounting one.
fn mount_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        if std::env::var("JOB_ARCHIVER_TEST_INJECT_FAULTS").is_ok_and(|value| value == "1") {
            return false;
        }
        let probe = tempfile::tempdir().expect("creating a temporary folder");
        let mounted = run_mount(&["-t", "tmpfs", "-o", "size=16k", "tmpfs"], probe.path());
        if mounted.is_ok() {
            let _ = Command::new("umount").arg(probe.path()).status();
        }
        mounted.is_ok()
    })
}

/// Says why the test runs without a tmpfs.
fn no_mount_reason() -> &'static str {
    if std::env::var("JOB_ARCHIVER_TEST_INJECT_FAULTS").is_ok_and(|value| value == "1") {
        "JOB_ARCHIVER_TEST_INJECT_FAULTS=1 is set"
    } else {
        "mounting a tmpfs is not permitted here"
    }
}

/// Runs `mount {args} {target}` and returns its stderr on failure.
fn run_mount(args: &[&str], target: &Path) -> Result<(), String> {
    let output = Command::new("mount").args(args).arg(target).output();
    match output {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
        Err(err) => Err(format!("running mount: {err}")),
    }
}

/// A tmpfs mounted for one test, unmounted on drop (lazily when it is still in use).
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs with `options` (such as `size=64k`) on `path`, creating the folder.
    fn new(path: &Path, options: &str) -> TmpfsMount {
        std::fs::create_dir_all(path).unwrap();
        run_mount(&["-t", "tmpfs", "-o", options, "tmpfs"], path)
            .unwrap_or_else(|err| panic!("mounting a tmpfs on {}: {err}", path.display()));
        TmpfsMount { path: path.to_owned() }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Remounts with `options`, such as `ro`, `rw` or `size=1m`.
    fn remount(&self, options: &str) {
        run_mount(&["-o", &format!("remount,{options}")], &self.path)
            .unwrap_or_else(|err| panic!("remounting {} {options}: {err}", self.path.display()));
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.path).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// The archive fault of one test: a real filesystem, or errors injected into the writes.
enum Fault {
    Mounted(TmpfsMount),
    Injected(Arc<FaultyArchive>),
}

impl Fault {
    fn injected(root: &Path, errno: i32) -> Fault {
        let writer = FaultyArchive { inner: FsArchive::new(root), errno: Mutex::new(Some(errno)) };
        Fault::Injected(Arc::new(writer))
    }

    /// The writer the service must use instead of its own, if any.
    fn writer(&self) -> Option<Arc<dyn ArchiveWriter>> {
        match self {
            Fault::Mounted(_) => None,
            Fault::Injected(writer) => Some(Arc::clone(writer) as Arc<dyn ArchiveWriter>),
        }
    }

    /// Ends the fault: remounts with `remount_options`, or stops injecting errors.
    fn clear(&self, remount_options: &str) {
        match self {
            Fault::Mounted(mount) => mount.remount(remount_options),
            Fault::Injected(writer) => *writer.errno.lock().unwrap() = None,
        }
    }
}

/// A filesystem archive whose writes fail with the I/O error `errno` while it is set, as a
/// full or read-only filesystem would make them fail.
struct FaultyArchive {
    inner: FsArchive,
    errno: Mutex<Option<i32>>,
}

impl ArchiveWriter for FaultyArchive {
    fn read_cluster_config(&self, cluster: &str) -> Result<Vec<u8>, ArchiveError> {
        self.inner.read_cluster_config(cluster)
    }

    fn write_job(&self, id: &JobId, files: &JobFiles) -> Result<WrittenJob, ArchiveError> {
        if let Some(errno) = *self.errno.lock().unwrap() {
            let source = io::Error::from_raw_os_error(errno);
            return Err(ArchiveError::Io { path: self.inner.job_dir(id), source });
        }
        self.inner.write_job(id, files)
    }
}

/// The service running in this process on 127.0.0.1:0. Unlike the shared harness, it does not
/// wait for `/readyz` to turn 200, because a degraded archive keeps it at 503.
struct Service {
    url: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Starts the real router and worker with `config`, writing through `writer` when given.
    async fn start(config: Config, writer: Option<Arc<dyn ArchiveWriter>>) -> Service {
        let mut components = Components::open(&config).expect("opening the store and archive");
        if let Some(writer) = writer {
            components.writer = writer;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
                "test stop"
            };
            service::serve(&config, components, listener, shutdown).await
        });
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let service = Service { url, client, stop: Some(stop_tx), task };
        let up = crate::support::wait_until(Duration::from_secs(10), || async {
            service.get("/healthz").await.0 == 200
        })
        .await;
        assert!(up, "service at {} did not answer /healthz within 10 s", service.url);
        service
    }

    /// Stops the service as a signal would, and checks that it stopped cleanly.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("service stopped within 60 s")
            .expect("service task joined")
            .expect("service stopped cleanly");
    }

    /// Sends `GET path` and returns the status and the body as JSON, or as a string.
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(format!("{}{path}", self.url)).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response =
            self.client.post(format!("{}{path}", self.url)).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn trigger(&self, job: &Value) {
        let (status, reply) = self.post("/api/jobs/archive", job).await;
        assert_eq!(status, 202, "status of the trigger: {reply}");
    }

    async fn scrape(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "status of GET /metrics");
        body.as_str().expect("/metrics is text").to_owned()
    }

    /// Polls the job every 10 ms until it reaches `state`, and returns its status.
    async fn wait_for_state(&self, id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + OUTCOME_TIMEOUT;
        loop {
            let (_, job) = self.get(&format!("/api/jobs/{id}")).await;
            if job["state"] == state {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} not {state} within {OUTCOME_TIMEOUT:?}; last status: {job}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the job fails and checks that it was retried: seen `queued` between
    /// attempts while `/readyz` reported the archive degraded, and failed in `step` after 3
    /// attempts, one `errorHistory` entry each. Returns the failed job's status.
    async fn wait_retried_then_failed(&self, id: &str, step: &str) -> Value {
        let deadline = tokio::time::Instant::now() + OUTCOME_TIMEOUT;
        let mut seen_waiting = false;
        let failed = loop {
            let (_, job) = self.get(&format!("/api/jobs/{id}")).await;
            if job["state"] == "failed" {
                break job;
            }
            let history = job["errorHistory"].as_array().map(Vec::len).unwrap_or(0);
            if job["state"] == "queued" && history >= 1 {
                seen_waiting = true;
                assert_eq!(job["failedStep"], step, "failedStep between attempts: {job}");
                let (status, body) = self.get("/readyz").await;
                assert_eq!(status, 503, "/readyz between attempts: {body}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} not failed within {OUTCOME_TIMEOUT:?}; last status: {job}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(seen_waiting, "job {id} was never seen queued between attempts");
        assert_eq!(failed["attempts"], 3, "attempts of the failed job: {failed}");
        assert_eq!(failed["failedStep"], step, "failedStep of the failed job: {failed}");
        let history = failed["errorHistory"].as_array().cloned().unwrap_or_default();
        assert_eq!(history.len(), 3, "errorHistory entries: {failed}");
        let metrics = self.scrape().await;
        assert_eq!(
            sample(&metrics, "job_archiver_retries_scheduled_total"),
            2.0,
            "job_archiver_retries_scheduled_total"
        );
        failed
    }

    /// Checks that `/readyz` returns 503 with "archive degraded" and `problem`, and that
    /// `job_archiver_archive_degraded` is 1.
    async fn assert_degraded(&self, problem: &str) {
        let (status, body) = self.get("/readyz").await;
        assert_eq!(status, 503, "status of /readyz with a faulty archive: {body}");
        let text = body.as_str().unwrap_or_default();
        assert!(text.starts_with("archive degraded: "), "/readyz body: {text}");
        assert!(text.contains(problem), "/readyz body lacks {problem:?}: {text}");
        let metrics = self.scrape().await;
        assert_eq!(sample(&metrics, "job_archiver_archive_degraded"), 1.0, "archive_degraded");
    }

    /// Queues every failed job again, waits until job `id` is archived, and checks that
    /// `/readyz` is 200 and `job_archiver_archive_degraded` 0 again.
    async fn retry_failed_then_archived(&self, id: &str) {
        let (status, reply) = self.post("/api/jobs/retry?state=failed", &Value::Null).await;
        assert_eq!(status, 202, "status of the retry request: {reply}");
        assert_eq!(reply["retried"], 1, "jobs queued again by the retry request: {reply}");
        let archived = self.wait_for_state(id, "archived").await;
        assert_eq!(archived["attempts"], 1, "attempts after the retry request: {archived}");
        let (status, body) = self.get("/readyz").await;
        assert_eq!(status, 200, "/readyz once the archive works again: {body}");
        let metrics = self.scrape().await;
        assert_eq!(sample(&metrics, "job_archiver_archive_degraded"), 0.0, "archive_degraded");
    }
}
