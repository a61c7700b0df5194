//! `hawk-ebpf daemon`: turns the flags into a [`DaemonConfig`] and runs
//! [`crate::daemon::run`] until SIGTERM or SIGINT.

use anyhow::Context as _;

use crate::cli::DaemonArgs;
use crate::daemon::store::StoreConfig;
use crate::daemon::{self, DaemonConfig};

/// The daemon's configuration from its flags (reads `--auth-token-file`).
pub fn config(args: DaemonArgs) -> anyhow::Result<DaemonConfig> {
    let auth_token = match (&args.auth_token, &args.auth_token_file) {
        (Some(token), _) => Some(token.trim().to_string()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --auth-token-file {}", path.display()))?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        (None, None) => None,
    };
    if auth_token.as_deref() == Some("") {
        anyhow::bail!("the auth token is empty");
    }
    Ok(DaemonConfig {
        listen: args.listen,
        frequency_hz: args.freq,
        store: StoreConfig {
            retention: args.retention,
            max_bytes: args.max_memory,
            max_traces: args.max_traces,
        },
        auth_token,
        max_concurrent: args.max_concurrent,
        header_timeout: args.header_timeout,
        max_seconds: args.max_seconds as u64,
        attach: args.attach,
        out: args.out,
        out_formats: args.format.0,
        min_trace_duration: args.min_trace_duration.unwrap_or_default(),
        trace_grace: args.trace_grace,
    })
}

/// Runs the daemon.
pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    daemon::run(config(args)?).await
}
