//! The command line: clap definitions and the commands that run in this process (`serve`,
//! `archive`) or talk to a running server (`trigger`, `status`, `failed`, `retry`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, LogFormat, MetricSourceConfig};
use crate::job::JobState;
use crate::queue::JobQueue;
use crate::service::{self, Components, JobFile};
use crate::worker::Outcome;
use crate::{client, shutdown};

/// Crash-safe archiving of finished HPC jobs into a ClusterCockpit job-archive.
#[derive(Debug, Parser)]
#[command(name = "job-archiver", version, about)]
pub struct Cli {
    /// Config file. Without it, ./config.toml is read when it exists, else the defaults.
    #[arg(long, global = true, env = "JOB_ARCHIVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format; overrides log.format.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    /// Base URL of the running server for CLI commands; overrides server.url.
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify the store while no other process uses it: every record decodes, the counts agree,
    /// and no job is in two states. Exits 1 when it finds a problem.
    Check,
    /// Run the HTTP API and the worker until SIGINT, SIGTERM or SIGHUP.
    Serve {
        /// Address and port to listen on; overrides server.listen.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Queue job files and archive them in this process, without HTTP, until the queue is
    /// empty. Run again after a crash, it resumes where it stopped.
    Archive {
        /// Job files (`meta.json` format, one job or an array) or folders searched for *.json.
        #[arg(required = true, value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
    },
    /// Send job files to a running server and print each job's id and state.
    Trigger {
        /// Job files (`meta.json` format, one job or an array) or folders searched for *.json.
        #[arg(required = true, value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
    },
    /// Print queue counts and recent failures, or one job's state.
    Status {
        /// Job id `<cluster>/<jobId>/<startTime>`.
        id: Option<String>,
        /// Print the status again every --interval seconds until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Seconds between two refreshes of --watch.
        #[arg(
            long,
            default_value_t = 2,
            requires = "watch",
            value_name = "SECONDS",
            value_parser = clap::value_parser!(u64).range(1..=86_400)
        )]
        interval: u64,
    },
    /// List failed jobs with their errors.
    Failed {
        /// Maximum number of jobs to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queue a failed job again, or every failed job.
    Retry {
        /// Job id `<cluster>/<jobId>/<startTime>`.
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        id: Option<String>,
        /// Retry every failed job.
        #[arg(long)]
        all_failed: bool,
    },
}

impl Cli {
    /// Loads the configuration with this command line's overrides. The environment is read
    /// through `env`.
    pub fn load_config(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, config::ConfigError> {
        let default_file = Path::new("config.toml");
        let file = match &self.config {
            Some(path) => Some(path.as_path()),
            None if default_file.exists() => Some(default_file),
            None => None,
        };
        let mut flags: Vec<(&'static str, String)> = Vec::new();
        if let Some(format) = self.log_format {
            let value = match format {
                LogFormatArg::Text => "text",
                LogFormatArg::Json => "json",
            };
            flags.push(("log.format", value.to_owned()));
        }
        if let Some(server) = &self.server {
            flags.push(("server.url", server.clone()));
        }
        if let Command::Serve { listen: Some(listen) } = &self.command {
            flags.push(("server.listen", listen.clone()));
        }
        config::load(&config::Sources { file, env, flags: &flags })
    }
}

/// Writes one line to standard output; see the `out!` macro. Exits with 141 when standard
/// output is a closed pipe, and ignores other write errors as `println!` cannot report them.
pub fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = writeln!(stdout, "{line}") {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
    }
}

/// The log format a config asks for.
pub fn log_format(config: &Config) -> LogFormat {
    config.log.format
}

/// Runs the parsed command.
pub async fn run(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { .. } => serve(&config).await,
        Command::Archive { paths } => archive(&config, &paths).await,
        Command::Trigger { paths } => {
            client::trigger(&client::Server::from_config(&config)?, &paths).await
        }
        Command::Status { id, watch: false, .. } => {
            client::status(&client::Server::from_config(&config)?, id.as_deref()).await
        }
        Command::Status { id, watch: true, interval } => {
            let interval = Duration::from_secs(interval);
            client::watch_status(&client::Server::from_config(&config)?, id.as_deref(), interval)
                .await
        }
        Command::Failed { limit } => {
            client::failed(&client::Server::from_config(&config)?, limit).await
        }
        Command::Retry { id, all_failed } => {
            client::retry(&client::Server::from_config(&config)?, id.as_deref(), all_failed).await
        }
        Command::Check => check(&config),
    }
}

fn check(config: &Config) -> anyhow::Result<ExitCode> {
    let has_files = std::fs::read_dir(&config.store.path)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if !has_files {
        anyhow::bail!(
            "store {}: no store here; point store.path (or --config) at the store to check",
            config.store.path.display()
        );
    }
    let store = crate::store::Store::open(&config.store.path, config.store.cache_bytes)?;
    let report = store.check()?;
    out!("store      {}", config.store.path.display());
    out!("records    {}", report.records);
    for state in crate::job::JobState::ALL {
        out!("{:<10} {}", state.as_str(), report.counts.get(state));
    }
    if report.problems.is_empty() {
        out!("ok: every record decodes, the counts agree, and no job is in two states");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        out!("problem: {problem}");
    }
    let count = report.problems.len();
    out!("{count} {} found", if count == 1 { "problem" } else { "problems" });
    Ok(ExitCode::FAILURE)
}

async fn serve(config: &Config) -> anyhow::Result<ExitCode> {
    let signals = shutdown::install().context("installing the SIGTERM and SIGINT handlers")?;
    tracing::info!(
        listen = %config.server.listen,
        store = %config.store.path.display(),
        archive = %config.archive.path.display(),
        metric_source = %metric_source_summary(&config.metric_source),
        durability = ?config.store.durability,
        shutdown_timeout = ?config.worker.shutdown_timeout,
        version = env!("CARGO_PKG_VERSION"),
        "starting job-archiver"
    );
    // A token file or key that cannot be used is a configuration error: report it before any
    // port is bound or the store is opened.
    if let Err(err) = crate::auth::Authenticator::from_config(&config.server.auth) {
        eprintln!("job-archiver: invalid configuration:\n  {err:#}");
        return Ok(ExitCode::from(2));
    }
    let components = Components::open(config)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("server.listen {}: cannot listen", config.server.listen))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    service::serve(config, components, listener, signals.recv()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Describes the metric source for the start-up log: its kind and where it reads from, with
/// no credentials. The token file's path is logged, never its content.
fn metric_source_summary(source: &MetricSourceConfig) -> String {
    match source {
        MetricSourceConfig::Archive { path } => format!("archive replay of {}", path.display()),
        MetricSourceConfig::CcMetricStore { url, token_file, timeout } => {
            let token = match token_file {
                Some(path) => format!("token from {}", path.display()),
                None => "no token".to_owned(),
            };
            let timeout = humantime::format_duration(*timeout);
            format!("cc-metric-store at {}, {token}, timeout {timeout}", url_without_userinfo(url))
        }
    }
}

/// Returns `url` without a user name or password, which would be secrets in a log.
fn url_without_userinfo(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            // Both setters fail only for URLs that cannot have credentials.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "(invalid URL)".to_owned(),
    }
}

async fn archive(config: &Config, paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let files = service::read_job_files(paths, config.server.max_batch_jobs)?;
    let signals = shutdown::install().context("installing the SIGTERM and SIGINT handlers")?;
    let components = Components::open(config)?;
    let progress = client::progress_bar(count_jobs_to_archive(&components, &files)?);
    let started = tokio::time::Instant::now();
    let mut failed_by_step: BTreeMap<String, usize> = BTreeMap::new();
    let on_outcome = |outcome: &Outcome| {
        progress.inc(1);
        match outcome {
            Outcome::Archived { key, job, duration } => progress.suspend(|| {
                out!(
                    "archived {key} -> {} ({} bytes, {:.2} s)",
                    job.written.path.display(),
                    job.written.bytes,
                    duration.as_secs_f64()
                )
            }),
            Outcome::Failed { key, failure } => {
                *failed_by_step.entry(failure.step.as_str().to_owned()).or_default() += 1;
                progress.suspend(|| out!("failed   {key}: {failure}"));
            }
        }
    };
    let report =
        service::archive_batch(config, components, files, signals.recv(), on_outcome).await?;
    client::finish_progress_bar(&progress);

    for (path, reason) in &report.rejected {
        out!("rejected {}: {reason}", path.display());
    }
    for key in &report.already_archived {
        out!("skipped  {key}: already archived");
    }
    out!(
        "summary: {} archived, {} failed, {} already archived, {} rejected, {} left queued",
        report.archived.len(),
        report.failed.len(),
        report.already_archived.len(),
        report.rejected.len(),
        report.left_queued
    );
    if !failed_by_step.is_empty() {
        out!("failed by step: {}", client::format_counts(&failed_by_step));
    }
    client::print_rate(report.archived.len() + report.failed.len(), started.elapsed());
    let clean = report.failed.is_empty() && report.rejected.is_empty() && report.left_queued == 0;
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Counts the jobs an `archive` run will archive, for its progress bar: those left queued or
/// archiving by an earlier run, and those of `files` that are new or failed. An estimate when
/// another process changes the store at the same time.
fn count_jobs_to_archive(components: &Components, files: &[JobFile]) -> anyhow::Result<u64> {
    let stats = components.queue.stats()?;
    let mut total = stats.counts.queued + stats.counts.archiving;
    let mut seen = HashSet::new();
    for job in files.iter().filter_map(|file| file.jobs.as_ref().ok()).flatten() {
        if !seen.insert(job.id.clone()) {
            continue;
        }
        let will_be_queued = match components.queue.get(&job.id)? {
            None => true,
            Some(record) => record.state == JobState::Failed,
        };
        if will_be_queued {
            total += 1;
        }
    }
    Ok(total)
}
