//! `hawk-ebpf`: the command line. Errors end as one line on stderr and a
//! non-zero exit code.

use std::process::ExitCode;

use clap::Parser as _;
use hawk_userspace::cli::{Cli, Command};
use hawk_userspace::commands;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HAWK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(args) => commands::record::run(args).await.map(|_| ExitCode::SUCCESS),
        Command::Check => Ok(if commands::check::run() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("hawk-ebpf: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
