//! The binary's commands as an operator runs them: `archive` in one process, the client
//! commands against a running server, config validation, and the precedence of flags,
//! environment variables and the config file.
//!
//! Every run gets `--config` with a test config and the test's temporary folder as working
//! folder, so nothing is written into the repository.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::crash::{log_events, start_server_process};
use crate::support::{self, ServerProcess, TestDirs};

const EMMY_ID: &str = "emmy/1403244/1608923076";
const FRITZ_ID: &str = "fritz/398764/1675954353";

/// Maximum run time of one command. The slowest, `archive` of both examples, takes a few
/// seconds.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn archive_command_archives_examples() {
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", "");
    let jobs = support::repo_path("examples/jobs");
    let args = [arg("--config"), config.clone(), arg("archive"), jobs];

    let first = run_cli(&dirs, "archive-first", &args, &[]);

    assert_eq!(first.code(), Some(0), "exit code of the first archive run: {first}");
    let archived = first.lines_starting_with("archived ");
    assert_eq!(archived.len(), 2, "archived lines of the first run: {first}");
    for id in [EMMY_ID, FRITZ_ID] {
        let found = archived.iter().any(|line| line.starts_with(&format!("archived {id} -> ")));
        assert!(found, "no archived line for {id}: {first}");
    }
    assert_eq!(
        first.summary(),
        "summary: 2 archived, 0 failed, 0 already archived, 0 rejected, 0 left queued",
        "summary of the first run: {first}"
    );
    for folder in ["emmy/1403/244/1608923076", "fritz/398/764/1675954353"] {
        let meta = dirs.archive.join(folder).join("meta.json");
        assert!(meta.is_file(), "{} is missing after the first run", meta.display());
    }

    let second = run_cli(&dirs, "archive-second", &args, &[]);

    assert_eq!(second.code(), Some(0), "exit code of the second archive run: {second}");
    assert_eq!(second.lines_starting_with("archived ").len(), 0, "archived lines: {second}");
    for id in [EMMY_ID, FRITZ_ID] {
        let skipped =
            second.stdout.lines().any(|line| line == format!("skipped  {id}: already archived"));
        assert!(skipped, "no skipped line for {id}: {second}");
    }
    assert_eq!(
        second.summary(),
        "summary: 0 archived, 0 failed, 2 already archived, 0 rejected, 0 left queued",
        "summary of the second run: {second}"
    );
}

#[test]
fn archive_command_names_bad_file() {
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", "");
    let jobs = dirs.root.path().join("jobs");
    std::fs::create_dir(&jobs).expect("creating the jobs folder");
    std::fs::copy(
        support::repo_path("examples/jobs/fritz-398764-meta.json"),
        jobs.join("good.json"),
    )
    .expect("copying the fritz example job");
    let bad = jobs.join("broken.json");
    std::fs::write(&bad, "{\"jobId\": 1, \"cluster\": ").expect("writing the malformed job file");

    let output =
        run_cli(&dirs, "archive-bad", &[arg("--config"), config, arg("archive"), jobs], &[]);

    assert_eq!(output.code(), Some(1), "exit code with a malformed job file: {output}");
    let rejected = output.lines_starting_with(&format!("rejected {}: ", bad.display()));
    assert_eq!(rejected.len(), 1, "rejected line naming {}: {output}", bad.display());
    assert!(rejected[0].contains("invalid JSON"), "reason for the malformed file: {output}");
    let archived = output.lines_starting_with(&format!("archived {FRITZ_ID} -> "));
    assert_eq!(archived.len(), 1, "the good job is archived beside the bad file: {output}");
    assert_eq!(
        output.summary(),
        "summary: 1 archived, 0 failed, 0 already archived, 1 rejected, 0 left queued",
        "summary with a malformed job file: {output}"
    );
}

#[test]
fn client_commands_against_server() {
    let dirs = TestDirs::new();
    let config = dirs.write_config_file("127.0.0.1:0", "");
    let server = start_server_process(&config, dirs.root.path(), "client-commands");
    let client = Client { dirs: &dirs, config: &config, url: &server.url };

    // trigger: both example jobs are queued.
    let triggered = client.run("trigger", &[support::repo_path("examples/jobs")]);
    assert_eq!(triggered.code(), Some(0), "exit code of trigger: {triggered}");
    for id in [EMMY_ID, FRITZ_ID] {
        let line = triggered.stdout.lines().find(|line| line.ends_with(id)).unwrap_or_default();
        assert_eq!(words(line), ["queued", id], "trigger line of {id}: {triggered}");
    }
    assert_eq!(
        triggered.summary(),
        "summary: 2 accepted, 0 already known, 0 rejected",
        "summary of trigger: {triggered}"
    );

    // status: the counts once both jobs are archived.
    let status = client.wait_for_status(|status| status.stdout.contains("archived   2\n"));
    for (label, count) in [("queued", "0"), ("archiving", "0"), ("archived", "2"), ("failed", "0")]
    {
        let line = status.stdout.lines().find(|line| line.starts_with(label)).unwrap_or_default();
        assert_eq!(words(line), [label, count], "status line {label}: {status}");
    }
    assert!(status.stdout.contains("queue is empty\n"), "status of an empty queue: {status}");

    // status <id>: one job.
    let job = client.run_args(&["status", EMMY_ID]);
    assert_eq!(job.code(), Some(0), "exit code of status {EMMY_ID}: {job}");
    assert_eq!(job.field("id"), EMMY_ID, "id line of status {EMMY_ID}: {job}");
    assert_eq!(job.field("state"), "archived", "state line of status {EMMY_ID}: {job}");
    assert_eq!(job.field("attempts"), "1", "attempts line of status {EMMY_ID}: {job}");
    let path = job.field("archivePath");
    assert!(path.ends_with("emmy/1403/244/1608923076"), "archivePath of {EMMY_ID}: {job}");

    let none_failed = client.run_args(&["failed"]);
    assert_eq!(none_failed.code(), Some(0), "exit code of failed: {none_failed}");
    assert_eq!(none_failed.stdout, "no failed jobs\n", "failed without failures: {none_failed}");

    // A job without metric data fails in step load.
    let synthetic = dirs.root.path().join("synthetic.json");
    let body = serde_json::to_vec(&support::synthetic_job(4711)).expect("encoding the job");
    std::fs::write(&synthetic, body).expect("writing the synthetic job file");
    let synthetic_id = "fritz/4711/1675954353";
    let triggered = client.run("trigger", &[synthetic]);
    assert_eq!(triggered.code(), Some(0), "exit code of trigger for {synthetic_id}: {triggered}");
    client.wait_for_status_of(synthetic_id, |job| job.field("state") == "failed");

    let failed = client.run_args(&["failed"]);
    assert_eq!(failed.code(), Some(0), "exit code of failed: {failed}");
    let line = failed.stdout.lines().next().unwrap_or_default();
    let prefix = format!("{synthetic_id}  attempts=1  step=load  ");
    assert!(line.starts_with(&prefix), "failed line of {synthetic_id}: {failed}");
    assert_eq!(failed.stdout.lines().count(), 1, "failed lists one job: {failed}");

    let status = client.run_args(&["status"]);
    assert!(status.stdout.contains("failed     1\n"), "failed count in status: {status}");
    assert!(
        status.stdout.contains(&format!("failures (first 1 by id):\n  {synthetic_id}  ")),
        "failure list in status: {status}"
    );

    // retry --all-failed queues it again; it fails again with a second history entry.
    let retried = client.run_args(&["retry", "--all-failed"]);
    assert_eq!(retried.code(), Some(0), "exit code of retry --all-failed: {retried}");
    assert_eq!(retried.stdout, "queued again: 1 jobs\n", "output of retry --all-failed: {retried}");
    let job = client.wait_for_status_of(synthetic_id, |job| {
        job.field("state") == "failed" && job.stdout.contains("attempt error 2: ")
    });
    assert_eq!(job.field("attempts"), "1", "attempts count since the retry: {job}");

    // retry <id> queues one job; a job that has not failed cannot be retried.
    let retried = client.run_args(&["retry", synthetic_id]);
    assert_eq!(retried.code(), Some(0), "exit code of retry {synthetic_id}: {retried}");
    assert_eq!(words(&retried.stdout), ["queued", synthetic_id], "output of retry: {retried}");
    let conflict = client.run_args(&["retry", EMMY_ID]);
    assert_eq!(conflict.code(), Some(1), "exit code of retry of an archived job: {conflict}");
    assert!(conflict.stderr.contains("409"), "error of retry of an archived job: {conflict}");

    let unknown = client.run_args(&["status", "fritz/1/1675954353"]);
    assert_eq!(unknown.code(), Some(1), "exit code of status of an unknown job: {unknown}");
    assert!(unknown.stderr.contains("404"), "error of status of an unknown job: {unknown}");
}

#[test]
fn invalid_config_lists_every_problem() {
    let dirs = TestDirs::new();
    let config = write_raw_config(
        &dirs,
        "[server]\nlisten = \"nowhere\"\ncolour = \"blue\"\n\n[worker]\nshutdown_timeout = \"soon\"\n",
    );

    let output = run_cli(&dirs, "invalid", &[arg("--config"), config, arg("serve")], &[]);

    assert_eq!(output.code(), Some(2), "exit code of an invalid config: {output}");
    for problem in [
        "server.listen",
        "\"nowhere\"",
        "unknown key server.colour",
        "worker.shutdown_timeout",
        "\"soon\"",
    ] {
        assert!(output.stderr.contains(problem), "stderr does not name {problem}: {output}");
    }
    assert!(!dirs.store.exists(), "an invalid config opened the store at {}", dirs.store.display());
}

#[test]
fn invalid_config_binds_no_port() {
    let dirs = TestDirs::new();
    // The test keeps the port bound, so a bind by the binary would fail with "cannot listen".
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port for the test");
    let port = listener.local_addr().expect("address of the bound port").port();
    let config = write_raw_config(
        &dirs,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[worker]\nshutdown_timeout = \"soon\"\n"
        ),
    );

    let output =
        run_cli(&dirs, "invalid-bound-port", &[arg("--config"), config, arg("serve")], &[]);

    assert_eq!(output.code(), Some(2), "exit code of an invalid config: {output}");
    assert!(
        output.stderr.contains("worker.shutdown_timeout"),
        "stderr lacks the problem: {output}"
    );
    assert!(!output.stderr.contains("cannot listen"), "the binary tried to bind: {output}");
    assert!(!dirs.store.exists(), "an invalid config opened the store at {}", dirs.store.display());
    drop(listener);
}

#[test]
fn listen_precedence_flag_env_file() {
    let dirs = TestDirs::new();
    let [file_port, env_port, flag_port] = distinct_free_ports();
    let config =
        dirs.write_config_file(&format!("127.0.0.1:{file_port}"), "[log]\nformat = \"json\"\n");
    let env_listen = format!("127.0.0.1:{env_port}");
    let env = [("JOB_ARCHIVER_SERVER_LISTEN", env_listen.as_str())];
    let serve = [arg("--config"), config.clone(), arg("serve")];

    // The file alone.
    let mut server = spawn_server(&dirs, "listen-file", &serve, &[], file_port);
    assert_eq!(listening_address(&server), format!("127.0.0.1:{file_port}"), "file value");
    assert_eq!(server.terminate(Duration::from_secs(30)).code(), Some(0), "exit code, file value");

    // The environment beats the file, for serve and for client commands.
    let mut server = spawn_server(&dirs, "listen-env", &serve, &env, env_port);
    assert_eq!(listening_address(&server), env_listen, "environment value");
    let status =
        run_cli(&dirs, "status-env", &[arg("--config"), config.clone(), arg("status")], &env);
    assert_eq!(
        status.code(),
        Some(0),
        "status through server.listen from the environment: {status}"
    );
    assert_eq!(server.terminate(Duration::from_secs(30)).code(), Some(0), "exit code, env value");

    // The flag beats the environment.
    let flag_listen = format!("127.0.0.1:{flag_port}");
    let args =
        [arg("--config"), config, arg("serve"), arg("--listen"), PathBuf::from(&flag_listen)];
    let mut server = spawn_server(&dirs, "listen-flag", &args, &env, flag_port);
    assert_eq!(listening_address(&server), flag_listen, "flag value");
    assert_eq!(server.terminate(Duration::from_secs(30)).code(), Some(0), "exit code, flag value");
}

/// Runs the client commands with `--config` and `--server` against one server.
struct Client<'a> {
    dirs: &'a TestDirs,
    config: &'a Path,
    url: &'a str,
}

impl Client<'_> {
    fn run(&self, command: &str, paths: &[PathBuf]) -> CliOutput {
        let mut args = vec![
            arg("--config"),
            self.config.to_path_buf(),
            arg("--server"),
            arg(self.url),
            arg(command),
        ];
        args.extend(paths.iter().cloned());
        run_cli(self.dirs, command, &args, &[])
    }

    fn run_args(&self, words: &[&str]) -> CliOutput {
        let (command, rest) = words.split_first().expect("a command");
        let rest: Vec<PathBuf> = rest.iter().map(|word| arg(word)).collect();
        self.run(command, &rest)
    }

    /// Runs `status` every 100 ms until `done` accepts its output, for up to 60 s.
    fn wait_for_status(&self, done: impl Fn(&CliOutput) -> bool) -> CliOutput {
        self.wait_for(&["status"], done)
    }

    /// Runs `status <id>` every 100 ms until `done` accepts its output, for up to 60 s.
    fn wait_for_status_of(&self, id: &str, done: impl Fn(&CliOutput) -> bool) -> CliOutput {
        self.wait_for(&["status", id], done)
    }

    fn wait_for(&self, words: &[&str], done: impl Fn(&CliOutput) -> bool) -> CliOutput {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.run_args(words);
            if done(&output) {
                return output;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "`{}` did not reach the expected output within 60 s: {output}",
                    words.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Exit status and output of one run of the binary.
struct CliOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl CliOutput {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn lines_starting_with(&self, prefix: &str) -> Vec<&str> {
        self.stdout.lines().filter(|line| line.starts_with(prefix)).collect()
    }

    /// Returns the `summary: ...` line of stdout, or an empty string.
    fn summary(&self) -> &str {
        self.stdout.lines().find(|line| line.starts_with("summary: ")).unwrap_or_default()
    }

    /// Returns the value of a `label   value` line of `status <id>`, or an empty string.
    fn field(&self, label: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(label).filter(|rest| rest.starts_with(' ')))
            .map(str::trim)
            .unwrap_or_default()
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- stdout\n{}--- stderr\n{}", self.status, self.stdout, self.stderr)
    }
}

fn arg(text: &str) -> PathBuf {
    PathBuf::from(text)
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// Builds the command for the binary in the test's folder, without the `JOB_ARCHIVER_*`
/// variables of the test's own environment, and with `env` added.
fn command(dirs: &TestDirs, args: &[PathBuf], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(support::binary());
    command.current_dir(dirs.root.path()).args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("JOB_ARCHIVER_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// Runs the binary to completion, with stdout and stderr in files named after `name`.
fn run_cli(dirs: &TestDirs, name: &str, args: &[PathBuf], env: &[(&str, &str)]) -> CliOutput {
    let stdout_path = dirs.root.path().join(format!("{name}.stdout"));
    let stderr_path = dirs.root.path().join(format!("{name}.stderr"));
    let mut child = command(dirs, args, env)
        .stdout(File::create(&stdout_path).expect("creating the stdout file"))
        .stderr(File::create(&stderr_path).expect("creating the stderr file"))
        .spawn()
        .expect("starting the job-archiver binary");
    let status = wait_with_timeout(&mut child, COMMAND_TIMEOUT, args);
    CliOutput {
        status,
        stdout: std::fs::read_to_string(&stdout_path).expect("reading stdout"),
        stderr: std::fs::read_to_string(&stderr_path).expect("reading stderr"),
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration, args: &[PathBuf]) -> ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("reading the exit status") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("job-archiver {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `serve` with `args` and `env` and waits until the process logs `ready`. The config
/// must set the JSON log format.
///
/// The process's own log is checked rather than `/readyz` on `port`, because a concurrent test
/// may have picked the same free port and serve requests there.
fn spawn_server(
    dirs: &TestDirs,
    name: &str,
    args: &[PathBuf],
    env: &[(&str, &str)],
    port: u16,
) -> ServerProcess {
    let stderr_path = dirs.root.path().join(format!("{name}.log"));
    let child = command(dirs, args, env)
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).expect("creating the log file"))
        .spawn()
        .expect("starting the job-archiver binary");
    let mut server = ServerProcess { child, url: format!("http://127.0.0.1:{port}"), stderr_path };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if log_events(&server.log()).iter().any(|event| event["message"] == "ready") {
            return server;
        }
        if let Some(status) = server.child.try_wait().expect("reading the exit status") {
            panic!("server exited early with {status}; log:\n{}", server.log());
        }
        if std::time::Instant::now() > deadline {
            panic!("server not ready on port {port} within 30 s; log:\n{}", server.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns the address of the `listening` event in a JSON-format server log.
fn listening_address(server: &ServerProcess) -> String {
    let log = server.log();
    let event = log_events(&log)
        .into_iter()
        .find(|event| event["message"] == "listening")
        .unwrap_or_else(|| panic!("no listening event; log:\n{log}"));
    event["address"].as_str().unwrap_or_default().to_owned()
}

/// Returns three different ports that were free a moment ago, bound at the same time.
fn distinct_free_ports() -> [u16; 3] {
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect();
    [ports[0], ports[1], ports[2]]
}

/// Writes a config file with `text` plus the test's store and archive folders.
fn write_raw_config(dirs: &TestDirs, text: &str) -> PathBuf {
    let path = dirs.root.path().join("config.toml");
    let folders = format!(
        "\n[store]\npath = \"{}\"\n\n[archive]\npath = \"{}\"\n",
        dirs.store.display(),
        dirs.archive.display()
    );
    std::fs::write(&path, format!("{text}{folders}")).expect("writing the config file");
    path
}
