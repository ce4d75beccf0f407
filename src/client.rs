//! CLI commands that talk to a running server over its HTTP API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;

use crate::api::dto::{ErrorReply, JobPage, JobStatus, QueueReply, RetryReply, TriggerReply};
use crate::service::read_job_files;

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
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

/// Posts each job file to the server and prints each job's id and state. Exits non-zero if
/// any file or job was rejected.
pub async fn trigger(server: &str, paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let client = http_client()?;
    let url = format!("{server}/api/jobs/archive");
    let mut files = Vec::new();
    for file in read_job_files(paths)? {
        files.push(file.path);
    }
    let (mut accepted, mut existing, mut rejected) = (0usize, 0usize, 0usize);
    for path in files {
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
        if !status.is_success() {
            let message =
                serde_json::from_str::<ErrorReply>(&text).map(|reply| reply.error).unwrap_or(text);
            println!("rejected {}: {status}: {message}", path.display());
            rejected += 1;
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
            println!("{:<9} {}", reply.state, reply.id);
        }
    }
    println!("summary: {accepted} accepted, {existing} already known, {rejected} rejected");
    Ok(if rejected == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints queue counts and the last failures, or one job's state.
pub async fn status(server: &str, id: Option<&str>) -> anyhow::Result<ExitCode> {
    let client = http_client()?;
    if let Some(id) = id {
        let url = format!("{server}/api/jobs/{}", id.trim_matches('/'));
        let response = client.get(&url).send().await.map_err(connect_error(&url))?;
        let job: JobStatus = check(response).await?.json().await?;
        print_job(&job);
        return Ok(ExitCode::SUCCESS);
    }
    let url = format!("{server}/api/queue");
    let response = client.get(&url).send().await.map_err(connect_error(&url))?;
    let queue: QueueReply = check(response).await?.json().await?;
    println!("queued     {}", queue.queued);
    println!("archiving  {}", queue.archiving);
    println!("archived   {}", queue.archived);
    println!("failed     {}", queue.failed);
    match queue.oldest_queued_age_seconds {
        Some(age) => println!(
            "oldest queued job waits {}",
            humantime::format_duration(Duration::from_secs(age as u64))
        ),
        None => println!("queue is empty"),
    }
    if queue.failed > 0 {
        let url = format!("{server}/api/jobs?state=failed&limit=5");
        let response = client.get(&url).send().await.map_err(connect_error(&url))?;
        let page: JobPage = check(response).await?.json().await?;
        println!("failures (first {} by id):", page.jobs.len());
        for job in &page.jobs {
            println!("  {}  {}", job.id, job.error.as_deref().unwrap_or("-"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists failed jobs with their errors.
pub async fn failed(server: &str, limit: usize) -> anyhow::Result<ExitCode> {
    let client = http_client()?;
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
            println!(
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
        println!("no failed jobs");
    }
    Ok(ExitCode::SUCCESS)
}

/// Queues one failed job again, or every failed job.
pub async fn retry(server: &str, id: Option<&str>, all_failed: bool) -> anyhow::Result<ExitCode> {
    let client = http_client()?;
    if all_failed {
        let url = format!("{server}/api/jobs/retry?state=failed");
        let response = client.post(&url).send().await.map_err(connect_error(&url))?;
        let reply: RetryReply = check(response).await?.json().await?;
        println!("queued again: {} jobs", reply.retried);
        return Ok(ExitCode::SUCCESS);
    }
    let id = id.context("retry needs a job id or --all-failed")?;
    let url = format!("{server}/api/jobs/{}/retry", id.trim_matches('/'));
    let response = client.post(&url).send().await.map_err(connect_error(&url))?;
    let job: JobStatus = check(response).await?.json().await?;
    println!("{:<9} {}", job.state, job.id);
    Ok(ExitCode::SUCCESS)
}

fn print_job(job: &JobStatus) {
    println!("id           {}", job.id);
    println!("state        {}", job.state);
    println!("attempts     {}", job.attempts);
    println!("enqueuedAt   {}", job.enqueued_at);
    if let Some(at) = &job.started_at {
        println!("startedAt    {at}");
    }
    if let Some(at) = &job.archived_at {
        println!("archivedAt   {at}");
    }
    if let Some(path) = &job.archive_path {
        println!("archivePath  {path}");
    }
    if let Some(error) = &job.error {
        println!("error        {} ({})", error, job.failed_step.as_deref().unwrap_or("-"));
    }
    for (idx, line) in job.error_history.iter().enumerate() {
        println!("  attempt error {}: {line}", idx + 1);
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
