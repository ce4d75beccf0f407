//! CLI commands that talk to a running server over its HTTP API.
//!
//! Results go to stdout, one line per job and a `summary:` line, in a stable format that
//! scripts parse. Progress bars go to stderr and only when stderr is a terminal.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;

use crate::api::dto::{ErrorReply, JobPage, JobStatus, QueueReply, RetryReply, TriggerReply};
use crate::service::read_job_files;

/// ANSI sequence that clears the terminal and moves the cursor to the top left corner.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

fn http_client(server: &Server) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &server.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("client.token_file: the token is not a valid HTTP header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// The server a CLI command talks to: its base URL and the bearer token to send, if any.
/// Displays as the URL, without the token.
pub struct Server {
    pub url: String,
    pub token: Option<String>,
}

impl Server {
    /// The server of a config, with the token read from `client.token_file`.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Server> {
        let token = match &config.client.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("client.token_file {}: cannot read", path.display())
                })?;
                Some(text.trim().to_owned()).filter(|token| !token.is_empty())
            }
            None => None,
        };
        Ok(Server { url: config.server.url.clone(), token })
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Turns a non-success reply into an error carrying the server's message.
async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message =
        serde_json::from_str::<ErrorReply>(&body).map(|reply| reply.error).unwrap_or(body);
    anyhow::bail!("server replied {status}: {message}")
}

fn connect_error(url: &str) -> impl FnOnce(reqwest::Error) -> anyhow::Error + '_ {
    move |err| {
        anyhow::format_err!("{url}: request failed: {err}; is `job-archiver serve` running there?")
    }
}

/// Posts each job file to the server and prints each job's id and state, then a summary.
/// Shows a progress bar on stderr when it is a terminal. Exits non-zero if any file or job was
/// rejected.
pub async fn trigger(server: &Server, paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let client = http_client(server)?;
    let url = format!("{server}/api/jobs/archive");
    let mut files = Vec::new();
    for file in read_job_files(paths, usize::MAX)? {
        // A file that does not parse is still sent, and counts as one job, so that the server's
        // reply names the problem.
        let n_jobs = file.jobs.as_ref().map_or(1, |jobs| jobs.len().max(1));
        files.push((file.path, n_jobs));
    }

    let progress = progress_bar(files.iter().map(|(_, n_jobs)| *n_jobs as u64).sum());
    let started = tokio::time::Instant::now();
    let (mut accepted, mut existing, mut rejected) = (0usize, 0usize, 0usize);
    let mut rejected_by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (path, n_jobs) in files {
        let body =
            std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let response = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(connect_error(&url))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        progress.inc(n_jobs as u64);

        if !status.is_success() {
            let message =
                serde_json::from_str::<ErrorReply>(&text).map(|reply| reply.error).unwrap_or(text);
            progress.suspend(|| out!("rejected {}: {status}: {message}", path.display()));
            rejected += 1;
            *rejected_by_status.entry(status.to_string()).or_default() += 1;
            continue;
        }

        let replies: Vec<TriggerReply> = match serde_json::from_str::<Vec<TriggerReply>>(&text) {
            Ok(replies) => replies,
            Err(_) => vec![serde_json::from_str(&text)
                .with_context(|| format!("{}: unexpected reply {text:?}", path.display()))?],
        };
        for reply in replies {
            if status == StatusCode::ACCEPTED && reply.state == "queued" {
                accepted += 1;
            } else {
                existing += 1;
            }
            progress.suspend(|| out!("{:<9} {}", reply.state, reply.id));
        }
    }
    finish_progress_bar(&progress);

    out!("summary: {accepted} accepted, {existing} already known, {rejected} rejected");
    if !rejected_by_status.is_empty() {
        out!("rejected by status: {}", format_counts(&rejected_by_status));
    }
    print_rate(accepted + existing, started.elapsed());
    Ok(if rejected == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Returns a progress bar over `len` jobs with rate and ETA, drawn on stderr, or a hidden one
/// when stderr is not a terminal, so that logs and test output stay free of it. Log lines are
/// printed above the bar until [`finish_progress_bar`].
pub fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} jobs, {per_sec}, ETA {eta}",
    )
    .expect("the progress template is valid")
    .progress_chars("=> ");
    let bar = ProgressBar::new(len).with_style(style);
    crate::telemetry::set_progress_bar(&bar);
    bar
}

/// Removes a bar of [`progress_bar`] from the screen; later log lines go to stderr directly.
pub fn finish_progress_bar(bar: &ProgressBar) {
    bar.finish_and_clear();
    crate::telemetry::clear_progress_bar();
}

/// Formats counts as `key: n, key: n`, in key order.
pub fn format_counts(counts: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = counts.iter().map(|(key, count)| format!("{key}: {count}")).collect();
    parts.join(", ")
}

/// Prints how long a command took for `n_jobs` jobs, and the rate.
pub fn print_rate(n_jobs: usize, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { n_jobs as f64 / seconds } else { 0.0 };
    out!("took {seconds:.2} s for {n_jobs} jobs ({rate:.1} jobs/s)");
}

/// Prints queue counts and the last failures, or one job's state.
pub async fn status(server: &Server, id: Option<&str>) -> anyhow::Result<ExitCode> {
    let client = http_client(server)?;
    print_status(&client, server, id).await?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the status every `interval` until SIGINT (Ctrl-C) or SIGTERM, then exits 0.
/// Each refresh starts with a header line, and clears the screen first when stdout is a
/// terminal. A failed request is printed and retried at the next refresh.
pub async fn watch_status(
    server: &Server,
    id: Option<&str>,
    interval: Duration,
) -> anyhow::Result<ExitCode> {
    let client = http_client(server)?;
    let clear_screen = std::io::stdout().is_terminal();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signals =
        crate::shutdown::install().context("installing the SIGTERM and SIGINT handlers")?;
    let stopped = signals.recv();
    tokio::pin!(stopped);
    loop {
        // The signal future comes first, so that its handlers are installed before the first
        // refresh.
        tokio::select! {
            biased;
            _ = &mut stopped => return Ok(ExitCode::SUCCESS),
            _ = ticks.tick() => (),
        }
        if clear_screen {
            print!("{CLEAR_SCREEN}");
        }
        out!(
            "status of {server} at {}, every {}; Ctrl-C stops",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            humantime::format_duration(interval)
        );
        if let Err(err) = print_status(&client, server, id).await {
            out!("error: {err:#}");
        }
        if !clear_screen {
            out!();
        }
        std::io::stdout().flush().context("writing to stdout")?;
    }
}

async fn print_status(
    client: &reqwest::Client,
    server: &Server,
    id: Option<&str>,
) -> anyhow::Result<()> {
    if let Some(id) = id {
        let url = format!("{server}/api/jobs/{}", id.trim_matches('/'));
        let response = client.get(&url).send().await.map_err(connect_error(&url))?;
        let job: JobStatus = check(response).await?.json().await?;
        print_job(&job);
        return Ok(());
    }
    let url = format!("{server}/api/queue");
    let response = client.get(&url).send().await.map_err(connect_error(&url))?;
    let queue: QueueReply = check(response).await?.json().await?;
    out!("queued     {}", queue.queued);
    out!("archiving  {}", queue.archiving);
    out!("archived   {}", queue.archived);
    out!("failed     {}", queue.failed);
    match queue.oldest_queued_age_seconds {
        Some(age) => out!(
            "oldest queued job waits {}",
            humantime::format_duration(Duration::from_secs(age as u64))
        ),
        None => out!("queue is empty"),
    }
    if queue.failed > 0 {
        let url = format!("{server}/api/jobs?state=failed&limit=5");
        let response = client.get(&url).send().await.map_err(connect_error(&url))?;
        let page: JobPage = check(response).await?.json().await?;
        out!("failures (first {} by id):", page.jobs.len());
        for job in &page.jobs {
            out!("  {}  {}", job.id, job.error.as_deref().unwrap_or("-"));
        }
    }
    Ok(())
}

/// Lists failed jobs with their errors.
pub async fn failed(server: &Server, limit: usize) -> anyhow::Result<ExitCode> {
    let client = http_client(server)?;
    let mut after: Option<String> = None;
    let mut printed = 0usize;
    while printed < limit {
        let page_size = (limit - printed).min(1000);
        let mut url = format!("{server}/api/jobs?state=failed&limit={page_size}");
        if let Some(after) = &after {
            url.push_str(&format!("&after={}", urlencode(after)));
        }
        let response = client.get(&url).send().await.map_err(connect_error(&url))?;
        let page: JobPage = check(response).await?.json().await?;
        for job in &page.jobs {
            out!(
                "{}  attempts={}  step={}  {}",
                job.id,
                job.attempts,
                job.failed_step.as_deref().unwrap_or("-"),
                job.error.as_deref().unwrap_or("-")
            );
            printed += 1;
        }
        match page.next {
            Some(next) if !page.jobs.is_empty() => after = Some(next),
            _ => break,
        }
    }
    if printed == 0 {
        out!("no failed jobs");
    }
    Ok(ExitCode::SUCCESS)
}

/// Queues one failed job again, or every failed job.
pub async fn retry(
    server: &Server,
    id: Option<&str>,
    all_failed: bool,
) -> anyhow::Result<ExitCode> {
    let client = http_client(server)?;
    if all_failed {
        let url = format!("{server}/api/jobs/retry?state=failed");
        let response = client.post(&url).send().await.map_err(connect_error(&url))?;
        let reply: RetryReply = check(response).await?.json().await?;
        out!("queued again: {} jobs", reply.retried);
        return Ok(ExitCode::SUCCESS);
    }
    let id = id.context("retry needs a job id or --all-failed")?;
    let url = format!("{server}/api/jobs/{}/retry", id.trim_matches('/'));
    let response = client.post(&url).send().await.map_err(connect_error(&url))?;
    let job: JobStatus = check(response).await?.json().await?;
    out!("{:<9} {}", job.state, job.id);
    Ok(ExitCode::SUCCESS)
}

fn print_job(job: &JobStatus) {
    out!("id           {}", job.id);
    out!("state        {}", job.state);
    out!("attempts     {}", job.attempts);
    out!("enqueuedAt   {}", job.enqueued_at);
    if let Some(at) = &job.started_at {
        out!("startedAt    {at}");
    }
    if let Some(at) = &job.archived_at {
        out!("archivedAt   {at}");
    }
    if let Some(path) = &job.archive_path {
        out!("archivePath  {path}");
    }
    if let Some(error) = &job.error {
        out!("error        {} ({})", error, job.failed_step.as_deref().unwrap_or("-"));
    }
    for (idx, line) in job.error_history.iter().enumerate() {
        out!("  attempt error {}: {line}", idx + 1);
    }
}

/// Percent-encodes a job id for a query string.
fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
