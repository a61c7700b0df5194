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
    let otlp_flag = match &cli.command {
        Command::Daemon(args) => args.otlp_endpoint.clone(),
        _ => None,
    };
    let telemetry = match hawk_userspace::telemetry::init(otlp_flag.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hawk-ebpf: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Record(args) => commands::record::run(args).await.map(|_| ExitCode::SUCCESS),
        Command::Capture(args) => commands::capture::run(args)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Check => Ok(if commands::check::run() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Diff(args) => commands::diff::run(args).map(|_| ExitCode::SUCCESS),
        Command::Daemon(args) => commands::daemon::run(args).await.map(|_| ExitCode::SUCCESS),
    };
    // The last spans leave before the exit.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("hawk-ebpf: error: {e:#}");
            if e.is::<commands::capture::NoSamples>() {
                ExitCode::from(commands::capture::EXIT_NO_SAMPLES)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
