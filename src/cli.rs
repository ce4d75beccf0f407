//! The command line: clap definitions and the commands that run in this process (`serve`,
//! `archive`) or talk to a running server (`trigger`, `status`, `failed`, `retry`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, LogFormat};
use crate::service::{self, Components};
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
    /// Run the HTTP API and the worker until SIGINT or SIGTERM.
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
    },
    /// List failed jobs with their errors.
    Failed {
        /// Most jobs to list.
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

/// The log format a config asks for.
pub fn log_format(config: &Config) -> LogFormat {
    config.log.format
}

/// Runs the parsed command.
pub async fn run(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { .. } => serve(&config).await,
        Command::Archive { paths } => archive(&config, &paths).await,
        Command::Trigger { paths } => client::trigger(&config.server.url, &paths).await,
        Command::Status { id } => client::status(&config.server.url, id.as_deref()).await,
        Command::Failed { limit } => client::failed(&config.server.url, limit).await,
        Command::Retry { id, all_failed } => {
            client::retry(&config.server.url, id.as_deref(), all_failed).await
        }
    }
}

async fn serve(config: &Config) -> anyhow::Result<ExitCode> {
    tracing::info!(
        listen = %config.server.listen,
        store = %config.store.path.display(),
        archive = %config.archive.path.display(),
        metric_source = ?config.metric_source,
        durability = ?config.store.durability,
        shutdown_timeout = ?config.worker.shutdown_timeout,
        version = env!("CARGO_PKG_VERSION"),
        "starting job-archiver"
    );
    let components = Components::open(config)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("server.listen {}: cannot listen", config.server.listen))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    service::serve(config, components, listener, shutdown::signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn archive(config: &Config, paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let files = service::read_job_files(paths)?;
    let components = Components::open(config)?;
    let report = service::archive_batch(config, components, files, shutdown::signal(), |outcome| {
        match outcome {
            Outcome::Archived { key, job, duration } => println!(
                "archived {key} -> {} ({} bytes, {:.2} s)",
                job.written.path.display(),
                job.written.bytes,
                duration.as_secs_f64()
            ),
            Outcome::Failed { key, failure } => println!("failed   {key}: {failure}"),
        }
    })
    .await?;

    for (path, reason) in &report.rejected {
        println!("rejected {}: {reason}", path.display());
    }
    for key in &report.already_archived {
        println!("skipped  {key}: already archived");
    }
    println!(
        "summary: {} archived, {} failed, {} already archived, {} rejected, {} left queued",
        report.archived.len(),
        report.failed.len(),
        report.already_archived.len(),
        report.rejected.len(),
        report.left_queued
    );
    let clean = report.failed.is_empty() && report.rejected.is_empty() && report.left_queued == 0;
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
