//! The `job-archiver` binary: parses the command line, loads and validates the configuration,
//! sets up logging, and runs the command. Exit codes: 0 success, 1 a failed command or job,
//! 2 an invalid command line or configuration.

use std::process::ExitCode;

use clap::Parser;

use job_archiver::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.load_config(&|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("job-archiver: {err}");
            return ExitCode::from(2);
        }
    };
    job_archiver::telemetry::init(cli::log_format(&config));

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("job-archiver: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli, config)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("job-archiver: {err:#}");
            ExitCode::FAILURE
        }
    }
}
