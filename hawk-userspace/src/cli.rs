//! Command line of the `hawk-ebpf` binary (clap derive). Parsing only: what
//! each subcommand does lives in [`crate::commands`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::profile::{IdError, SpanId, TraceId};
use crate::render::Format;

#[derive(Debug, Parser)]
#[command(
    name = "hawk-ebpf",
    version,
    about = "System-wide continuous profiler on eBPF, linked to OpenTelemetry traces"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile on-CPU stacks for a window of time, system-wide or for some
    /// processes, and write the profile files.
    Record(RecordArgs),
    /// Profile exactly one trace: wait for it, collect every sample of every
    /// thread and process that served it, write the files when it ends.
    Capture(CaptureArgs),
    /// Report what this kernel and these privileges allow; exit non-zero when
    /// `record` cannot work.
    Check,
    /// Compare two profiles (Hawk JSON or folded stacks) as a differential
    /// flamegraph and a table of the functions whose share grew most.
    Diff(DiffArgs),
}

/// Flags every profiling command shares.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output formats, comma separated: svg, speedscope, json, folded.
    #[arg(long, value_name = "LIST", default_value = "svg,speedscope,json,folded", value_parser = parse_formats)]
    pub format: Formats,
    /// Directory to write the files into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
}

/// A parsed `--format` list.
#[derive(Clone, Debug)]
pub struct Formats(pub Vec<Format>);

fn parse_formats(s: &str) -> Result<Formats, String> {
    crate::render::parse_formats(s)
        .map(Formats)
        .map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::util::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_freq(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(hz) if (1..=100_000).contains(&hz) => Ok(hz),
        _ => Err(format!(
            "invalid frequency {s:?}: expected samples per second per CPU, 1 to 100000"
        )),
    }
}

fn parse_pid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!("invalid pid {s:?}: expected a positive process id")),
    }
}

fn parse_trace_id(s: &str) -> Result<TraceId, String> {
    s.parse().map_err(|e: IdError| e.to_string())
}

fn parse_span_id(s: &str) -> Result<SpanId, String> {
    s.parse().map_err(|e: IdError| e.to_string())
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The W3C trace id to profile (32 hex digits).
    #[arg(long, value_name = "TRACE_ID", value_parser = parse_trace_id)]
    pub trace: TraceId,
    /// Keep only samples taken while this span (16 hex digits) was the
    /// thread's current span.
    #[arg(long, value_name = "SPAN_ID", value_parser = parse_span_id)]
    pub span: Option<SpanId>,
    /// Give up when the trace has not ended this long after the start.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long no thread may serve the trace before the window closes.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    pub grace: Duration,
    /// Look for the trace only in this process (repeatable).
    #[arg(long, short = 'p', value_name = "PID", value_parser = parse_pid)]
    pub pid: Vec<u32>,
    /// Samples per second on each CPU. Higher than `record`'s default:
    /// requests are short.
    #[arg(long, short = 'F', value_name = "HZ", default_value_t = 999, value_parser = parse_freq)]
    pub freq: u64,
    /// Attach to this binary even if it is not running yet (repeatable);
    /// running shimmed programs are found without it.
    #[arg(long, value_name = "PATH")]
    pub attach: Vec<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Profile only this process (repeatable). Default: the whole system.
    #[arg(long, short = 'p', value_name = "PID", value_parser = parse_pid)]
    pub pid: Vec<u32>,
    /// Length of the window: 10, 10s, 500ms, 2m. With `-- COMMAND`, the
    /// window also ends when the command exits.
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Samples per second on each CPU.
    #[arg(long, short = 'F', value_name = "HZ", default_value_t = 99, value_parser = parse_freq)]
    pub freq: u64,
    /// Record user stacks only.
    #[arg(long, conflicts_with = "kernel_only")]
    pub user_only: bool,
    /// Record kernel stacks only.
    #[arg(long)]
    pub kernel_only: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    /// A command to start and profile until it exits or the window ends.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_top(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("invalid count {s:?}: expected a positive number")),
    }
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The baseline profile: Hawk JSON or folded stacks (told apart by content).
    #[arg(value_name = "BASE")]
    pub base: PathBuf,
    /// The profile to compare with BASE, in either format.
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
    /// Directory to write the SVG into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// How many grown functions the table lists.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = parse_top)]
    pub top: usize,
    /// Title of the flamegraph.
    #[arg(long, value_name = "TITLE")]
    pub title: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hawk-ebpf").chain(args.iter().copied()))
    }

    #[test]
    fn record_defaults() {
        let Command::Record(r) = parse(&["record"]).unwrap().command else {
            panic!("not record")
        };
        assert_eq!(r.freq, 99);
        assert_eq!(r.duration, Duration::from_secs(10));
        assert_eq!(r.output.format.0, Format::ALL.to_vec());
        assert!(r.pid.is_empty() && r.command.is_empty());
    }

    #[test]
    fn record_flags_and_command() {
        let cli = parse(&[
            "record",
            "--pid",
            "12",
            "-p",
            "13",
            "--duration",
            "2m",
            "--freq",
            "999",
            "--format",
            "svg,json",
            "--out",
            "/tmp",
            "--",
            "sleep",
            "1",
        ])
        .unwrap();
        let Command::Record(r) = cli.command else {
            panic!("not record")
        };
        assert_eq!(r.pid, vec![12, 13]);
        assert_eq!(r.duration, Duration::from_secs(120));
        assert_eq!(r.freq, 999);
        assert_eq!(r.output.format.0, vec![Format::Svg, Format::Json]);
        assert_eq!(r.command, vec!["sleep", "1"]);
    }

    #[test]
    fn capture_ids_are_validated_by_the_parser() {
        let Command::Capture(c) =
            parse(&["capture", "--trace", "4bf92f3577b34da6a3ce929d0e0e4736"])
                .unwrap()
                .command
        else {
            panic!("not capture")
        };
        assert_eq!(c.trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.freq, 999);
        assert_eq!(c.timeout, Duration::from_secs(60));
        assert!(c.span.is_none());
        for (args, needle) in [
            (&["capture", "--trace", "xyz"][..], "32 hex digits"),
            (
                &["capture", "--trace", "00000000000000000000000000000000"][..],
                "all zeros",
            ),
            (
                &[
                    "capture",
                    "--trace",
                    "4bf92f3577b34da6a3ce929d0e0e4736",
                    "--span",
                    "12",
                ][..],
                "16 hex digits",
            ),
            (&["capture"][..], "--trace"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn bad_values_are_rejected_with_the_reason() {
        for (args, needle) in [
            (&["record", "--pid", "abc"][..], "invalid pid"),
            (&["record", "--pid", "0"][..], "invalid pid"),
            (&["record", "--duration", "soon"][..], "invalid duration"),
            (&["record", "--freq", "0"][..], "invalid frequency"),
            (&["record", "--format", "svg,png"][..], "png"),
            (
                &["record", "--user-only", "--kernel-only"][..],
                "cannot be used with",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn diff_args() {
        let Command::Diff(d) = parse(&["diff", "a.json", "b.folded"]).unwrap().command else {
            panic!("not diff")
        };
        assert_eq!(d.base, PathBuf::from("a.json"));
        assert_eq!(d.new, PathBuf::from("b.folded"));
        assert_eq!((d.out, d.top, d.title), (PathBuf::from("."), 10, None));
        let Command::Diff(d) = parse(&[
            "diff", "a", "b", "--out", "/tmp", "--top", "3", "--title", "T",
        ])
        .unwrap()
        .command
        else {
            panic!("not diff")
        };
        assert_eq!((d.out, d.top), (PathBuf::from("/tmp"), 3));
        assert_eq!(d.title.as_deref(), Some("T"));
        assert!(parse(&["diff", "a"]).is_err());
        let err = parse(&["diff", "a", "b", "--top", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid count"), "{err}");
    }
}
