//! Command line of the `hawk-ebpf` binary (clap derive). Parsing only: what
//! each subcommand does lives in [`crate::commands`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::collector::mem::SourceChoice;
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
    /// Profile the whole node continuously, keep a rolling window and the
    /// samples of each trace, and serve profiles over HTTP.
    Daemon(DaemonArgs),
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
    /// Capture the allocations the trace made instead of its CPU time:
    /// bytes it allocated and did not free by the end (`hwk_mem_…_trace-…`)
    /// and all bytes it allocated (`…_alloc`). Without --pid, every process
    /// running a shimmed binary is traced.
    #[arg(long)]
    pub mem: bool,
    /// With --mem: `auto` (the sampled allocator when the program links
    /// it, else libc), `libc` or `sampled`.
    #[arg(long, value_name = "SOURCE", default_value = "auto", value_parser = parse_mem_source, requires = "mem")]
    pub mem_source: SourceChoice,
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
    /// Profile memory instead of CPU. Writes the bytes still outstanding at
    /// the end by stack (`hwk_mem_…`) and the bytes allocated by stack
    /// (`hwk_mem_…_alloc`). Programs linking the shim's sampled allocator
    /// report sampled allocations (cheap); for the others Hawk probes the C
    /// library's allocator and anonymous mmaps (every allocator call costs
    /// a few microseconds more).
    #[arg(long, conflicts_with_all = ["user_only", "kernel_only"])]
    pub mem: bool,
    /// With --mem: where allocation events come from: `auto` (the sampled
    /// allocator when the program links it, else libc), `libc` or `sampled`.
    #[arg(long, value_name = "SOURCE", default_value = "auto", value_parser = parse_mem_source, requires = "mem")]
    pub mem_source: SourceChoice,
    /// With --mem: leave allocations younger than this out of the
    /// outstanding profile (like memleak's -o), to show leaks rather than
    /// buffers in flight.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_age, requires = "mem")]
    pub min_age: Duration,
    /// With --mem: frames kept per stack, nearest to the allocation first
    /// (the kernel records up to 127).
    #[arg(long, value_name = "N", default_value_t = 127, value_parser = parse_frames, requires = "mem")]
    pub frames: usize,
    #[command(flatten)]
    pub output: OutputArgs,
    /// A command to start and profile until it exits or the window ends.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// A duration that may be zero (`0`, `0s`, `0ms`…), unlike `--duration`.
pub(crate) fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.parse::<f64>() == Ok(0.0) && crate::util::parse_duration(&format!("1{unit}")).is_ok()
    {
        return Ok(Duration::ZERO);
    }
    crate::util::parse_duration(s).map_err(|e| format!("invalid --min-age: {e}"))
}

fn parse_mem_source(s: &str) -> Result<SourceChoice, String> {
    match s {
        "auto" => Ok(SourceChoice::Auto),
        "libc" => Ok(SourceChoice::Libc),
        "sampled" => Ok(SourceChoice::Sampled),
        other => Err(format!(
            "unknown memory source {other:?}: expected auto, libc or sampled"
        )),
    }
}

fn parse_frames(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=hawk_common::MAX_STACK_DEPTH).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid frame count {s:?}: expected 1 to {}",
            hawk_common::MAX_STACK_DEPTH
        )),
    }
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

fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &t[digits.len()..];
    let scale: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => 0,
    };
    match digits.parse::<usize>() {
        Ok(n) if scale > 0 && n > 0 => n
            .checked_mul(scale)
            .filter(|b| *b >= 1 << 20)
            .ok_or_else(|| format!("invalid size {s:?}: at least 1MiB")),
        _ => Err(format!(
            "invalid size {s:?}: expected a number with an optional unit, e.g. 256MiB, 1G"
        )),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    parse_top(s)
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Address to serve HTTP on. A non-loopback address requires
    /// --auth-token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6061")]
    pub listen: std::net::SocketAddr,
    /// Samples per second on each CPU.
    #[arg(long, short = 'F', value_name = "HZ", default_value_t = 19, value_parser = parse_freq)]
    pub freq: u64,
    /// How long samples are kept.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub retention: Duration,
    /// Memory the window and the traces may hold together (e.g. 256MiB);
    /// the oldest samples are dropped first.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_bytes)]
    pub max_memory: usize,
    /// Traces whose samples are held at most (least recently active evicted
    /// first).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = parse_positive)]
    pub max_traces: usize,
    /// Bearer token required on every endpoint but /healthz.
    #[arg(long, value_name = "TOKEN", conflicts_with = "auth_token_file")]
    pub auth_token: Option<String>,
    /// Read the bearer token from this file (first line), so that it does
    /// not show in the process list.
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,
    /// Profile requests served at once; more get 429.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = parse_positive)]
    pub max_concurrent: usize,
    /// Longest `seconds` a profile request may ask for.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = parse_positive)]
    pub max_seconds: usize,
    /// Close a connection that has not sent a request's complete headers
    /// this long after it opened or its last response ended (slow or idle
    /// clients).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Attach to this binary even if it is not running yet (repeatable);
    /// running and newly started shimmed programs are found without it.
    #[arg(long, value_name = "PATH")]
    pub attach: Vec<PathBuf>,
    /// Write every finished trace's profile into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Formats of the files --out writes, comma separated.
    #[arg(long, value_name = "LIST", default_value = "json", value_parser = parse_formats)]
    pub format: Formats,
    /// With --out, write only traces that lasted at least this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_trace_duration: Option<Duration>,
    /// How long a trace must be quiet before --out writes it.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub trace_grace: Duration,
    /// OTLP/gRPC endpoint for the profiling spans (default: the standard
    /// OTEL_EXPORTER_OTLP_ENDPOINT variable; none: nothing is exported).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
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
    fn record_mem_flags() {
        let Command::Record(r) = parse(&["record"]).unwrap().command else {
            panic!("not record")
        };
        assert!(!r.mem);
        assert_eq!((r.min_age, r.frames), (Duration::ZERO, 127));
        let Command::Record(r) = parse(&[
            "record",
            "--mem",
            "--pid",
            "7",
            "--min-age",
            "5s",
            "--frames",
            "16",
        ])
        .unwrap()
        .command
        else {
            panic!("not record")
        };
        assert!(r.mem);
        assert_eq!(r.pid, vec![7]);
        assert_eq!((r.min_age, r.frames), (Duration::from_secs(5), 16));
        for zero in ["0", "0s", "0ms"] {
            let Command::Record(r) = parse(&["record", "--mem", "--min-age", zero])
                .unwrap()
                .command
            else {
                panic!("not record")
            };
            assert_eq!(r.min_age, Duration::ZERO);
        }
        for (args, needle) in [
            (
                &["record", "--mem", "--min-age", "old"][..],
                "invalid --min-age",
            ),
            (
                &["record", "--mem", "--frames", "0"][..],
                "invalid frame count",
            ),
            (
                &["record", "--mem", "--frames", "128"][..],
                "invalid frame count",
            ),
            (&["record", "--min-age", "1s"][..], "--mem"),
            (&["record", "--frames", "8"][..], "--mem"),
            (
                &["record", "--mem", "--user-only"][..],
                "cannot be used with",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn daemon_defaults_and_flags() {
        let Command::Daemon(d) = parse(&["daemon"]).unwrap().command else {
            panic!("not daemon")
        };
        assert_eq!(d.listen.to_string(), "127.0.0.1:6061");
        assert_eq!((d.freq, d.max_memory), (19, 256 << 20));
        assert_eq!(d.retention, Duration::from_secs(600));
        assert_eq!(
            (d.max_traces, d.max_concurrent, d.max_seconds),
            (10_000, 4, 300)
        );
        assert!(d.auth_token.is_none() && d.out.is_none() && d.otlp_endpoint.is_none());
        let Command::Daemon(d) = parse(&[
            "daemon",
            "--listen",
            "0.0.0.0:9000",
            "--auth-token",
            "s3cret",
            "--retention",
            "2m",
            "--max-memory",
            "64M",
            "--out",
            "/tmp",
            "--format",
            "svg,json",
            "--otlp-endpoint",
            "http://127.0.0.1:4317",
        ])
        .unwrap()
        .command
        else {
            panic!("not daemon")
        };
        assert_eq!(d.listen.port(), 9000);
        assert_eq!(d.auth_token.as_deref(), Some("s3cret"));
        assert_eq!(
            (d.retention, d.max_memory),
            (Duration::from_secs(120), 64 << 20)
        );
        assert_eq!(d.format.0, vec![Format::Svg, Format::Json]);
        for (args, needle) in [
            (&["daemon", "--max-memory", "lots"][..], "invalid size"),
            (&["daemon", "--max-memory", "10k"][..], "at least 1MiB"),
            (&["daemon", "--listen", "localhost"][..], "--listen"),
            (&["daemon", "--freq", "0"][..], "invalid frequency"),
            (&["daemon", "--max-concurrent", "0"][..], "invalid count"),
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
