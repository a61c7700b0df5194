//! `hawk-ebpf capture --trace ID`: the flamegraph of exactly one trace.
//!
//! Samples only threads that serve a trace (in-kernel filter), attaches the
//! trace-context uprobe to every shimmed binary, opens the window when the
//! trace is first seen, and closes it when the last thread has cleared it for
//! the grace period (see [`crate::correlate::window`]). Samples of other
//! traces, or of no trace, never enter the profile.
//!
//! With `--mem` the same window collects the trace's allocations instead
//! (the memory tracer with its in-kernel "traced threads only" filter).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use aya::Ebpf;
use hawk_common::TraceContext;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::CaptureArgs;
use crate::collector::cpu::{CpuConfig, CpuSampler};
use crate::collector::mem::{MemConfig, MemTracer, monotonic_ns};
use crate::collector::procs::{self, ProcessTable};
use crate::collector::shim::{self, ShimAttacher};
use crate::correlate::build_profile;
use crate::correlate::mem::{MemOptions, MemProfiles, mem_profiles};
use crate::correlate::window::{CloseReason, TraceWindow, WindowConfig, WindowState};
use crate::output;
use crate::profile::{MemSource, Metadata, Profile, ProfileKind, SpanId, TraceIds};
use crate::symbolize::Symbolizer;

/// How often the window is polled. Short: traces are short.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Exit code when no sample of the trace was collected.
pub const EXIT_NO_SAMPLES: u8 = 3;

/// The capture ended without a single sample of the trace.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoSamples(String);

/// Runs `capture` and returns the files written.
pub async fn run(args: CaptureArgs) -> anyhow::Result<Vec<PathBuf>> {
    output::check_writable(&args.output.out)?;
    if args.mem {
        return run_mem(args).await;
    }
    let profile = capture(&args).await?;
    let written =
        crate::telemetry::write_profile(&args.output.out, &profile, &args.output.format.0)?;
    eprintln!(
        "hawk-ebpf: trace {}: {} samples from {} processes in {:.3} s",
        args.trace,
        profile.total_weight(),
        profile.pids().len(),
        profile.metadata.duration().as_secs_f64(),
    );
    for path in &written {
        println!("{}", path.display());
    }
    Ok(written)
}

/// `capture --mem`: writes the trace's outstanding and allocated profiles.
async fn run_mem(args: CaptureArgs) -> anyhow::Result<Vec<PathBuf>> {
    let profiles = capture_mem(&args).await?;
    let written = super::record::write_mem_profiles(
        &args.output.out,
        &profiles.outstanding,
        &profiles.allocated,
        &args.output.format.0,
    )?;
    eprintln!(
        "hawk-ebpf: trace {}: {} bytes allocated, {} of them not freed by the end, in {:.3} s",
        args.trace,
        profiles.allocated.total_weight(),
        profiles.outstanding.total_weight(),
        profiles.outstanding.metadata.duration().as_secs_f64(),
    );
    for path in &written {
        println!("{}", path.display());
    }
    Ok(written)
}

/// What one poll of a trace window saw.
struct Seen {
    /// Threads serving the trace right now.
    threads: usize,
    /// Samples (cpu) or allocation calls (mem) of the trace so far.
    events: u64,
    /// The span of one of those threads, if any.
    span: Option<[u8; 8]>,
}

/// How a trace window went.
struct WindowRun {
    window: TraceWindow,
    reason: CloseReason,
    /// The first span seen serving the trace (or the one asked for).
    span: Option<[u8; 8]>,
}

/// Polls every [`POLL_INTERVAL`] until the trace window closes (the trace
/// ended, the timeout, or an interrupt). `poll` also keeps the shim
/// discovery going.
async fn run_trace_window(
    args: &CaptureArgs,
    mut poll: impl FnMut() -> anyhow::Result<Seen>,
) -> anyhow::Result<WindowRun> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut window = TraceWindow::new(
        WindowConfig {
            grace: args.grace,
            timeout: args.timeout,
        },
        Instant::now(),
    );
    let mut span = args.span.map(|s| s.0);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let reason = loop {
        tokio::select! {
            _ = sigint.recv() => window.interrupt(),
            _ = sigterm.recv() => window.interrupt(),
            _ = tick.tick() => {
                let seen = poll()?;
                span = span.or(seen.span);
                window.observe(Instant::now(), seen.threads, seen.events);
            }
        }
        if let WindowState::Closed(reason) = window.state() {
            break reason;
        }
    };
    Ok(WindowRun {
        window,
        reason,
        span,
    })
}

/// Keeps the shim discovery going: exec events, and a rescan of /proc every
/// two seconds as a safety net for lost events.
fn discover(shims: &mut ShimAttacher, ebpf: &mut Ebpf, rescan: &mut Instant) {
    shims.poll_exec_events(ebpf);
    if rescan.elapsed() >= Duration::from_secs(2) {
        shims.scan_new_processes(ebpf);
        *rescan = Instant::now();
    }
}

/// Attaches the `--attach` binaries and the running shimmed programs.
fn start_discovery(args: &CaptureArgs, ebpf: &mut Ebpf) -> anyhow::Result<ShimAttacher> {
    let mut shims = ShimAttacher::new(ebpf)?;
    for path in &args.attach {
        shims.attach_path(ebpf, path)?;
    }
    shims.scan_all(ebpf);
    if shims.attached() == 0 {
        eprintln!(
            "hawk-ebpf: no running program exports hawk_trace_context_set yet; waiting for one to start"
        );
    }
    Ok(shims)
}

/// Says the capture is ready: everything is attached.
fn announce(args: &CaptureArgs) {
    eprintln!(
        "hawk-ebpf: waiting for trace {} (timeout {:.0} s)",
        args.trace,
        args.timeout.as_secs_f64()
    );
}

/// Why a capture collected nothing.
fn nothing_collected(
    args: &CaptureArgs,
    run: &WindowRun,
    attached: usize,
    ran_but: String,
) -> NoSamples {
    NoSamples(match (run.reason, run.window.opened()) {
        (CloseReason::Timeout, None) => format!(
            "trace {} did not appear within {:.0} s ({attached} shimmed binaries attached)",
            args.trace,
            args.timeout.as_secs_f64(),
        ),
        (CloseReason::Interrupted, None) => {
            format!("interrupted before trace {} appeared", args.trace)
        }
        _ => ran_but,
    })
}

/// The metadata of a trace's profile: the window's wall-clock span and the
/// trace ids.
fn trace_metadata(kind: ProfileKind, args: &CaptureArgs, run: &WindowRun) -> Metadata {
    let now = (Instant::now(), SystemTime::now());
    let wall = |at: Option<Instant>| at.map_or(now.1, |t| now.1 - now.0.duration_since(t));
    let mut metadata = Metadata::new(
        kind,
        wall(run.window.opened()),
        wall(run.window.last_active()),
    );
    metadata.target_pids = args.pid.clone();
    metadata.trace = Some(TraceIds {
        trace_id: args.trace,
        span_id: SpanId(run.span.unwrap_or_default()),
    });
    metadata
}

/// Checks that the `--pid` targets exist and returns what a thread's or a
/// record's context must match: the trace, and the span with `--span`.
fn trace_filter(args: &CaptureArgs) -> anyhow::Result<impl Fn(&TraceContext) -> bool + Copy> {
    for pid in &args.pid {
        if !procs::exists(*pid) {
            anyhow::bail!("no such process: {pid}");
        }
    }
    let target = args.trace.0;
    let wanted_span = args.span.map(|s| s.0);
    Ok(move |ctx: &TraceContext| {
        ctx.trace_id == target && wanted_span.is_none_or(|s| ctx.span_id == s)
    })
}

/// Captures the trace `args` names and returns its profile.
pub async fn capture(args: &CaptureArgs) -> anyhow::Result<Profile> {
    let of_trace = trace_filter(args)?;
    let target = args.trace.0;
    let mut sampler = CpuSampler::start(&CpuConfig {
        frequency_hz: args.freq,
        pids: args.pid.clone(),
        user_stacks: true,
        kernel_stacks: true,
        traced_only: true,
    })?;
    let mut shims = start_discovery(args, sampler.ebpf_mut())?;
    announce(args);
    let mut symbolizer = Symbolizer::new();
    let mut procs = ProcessTable::default();
    let mut rescan = Instant::now();
    let mut run = run_trace_window(args, || {
        discover(&mut shims, sampler.ebpf_mut(), &mut rescan);
        let events = sampler.poll(&mut procs, &mut symbolizer, |k| of_trace(&k.trace))?;
        let threads = sampler.traced_threads(|ctx| ctx.trace_id == target)?;
        Ok(Seen {
            threads: threads.len(),
            events,
            span: threads.first().map(|(_, _, ctx)| ctx.span_id),
        })
    })
    .await?;
    sampler.stop();
    let samples = sampler.poll(&mut procs, &mut symbolizer, |k| of_trace(&k.trace))?;
    if samples == 0 {
        return Err(nothing_collected(
            args,
            &run,
            shims.attached(),
            format!(
                "trace {} ran but no CPU sample hit it at {} Hz; try a higher --freq",
                args.trace, args.freq
            ),
        )
        .into());
    }
    if run.reason == CloseReason::Timeout {
        eprintln!(
            "hawk-ebpf: the trace was still running at the timeout; writing what was collected"
        );
    }

    let raw = sampler.read_samples()?;
    if run.span.is_none() {
        run.span = raw
            .iter()
            .find(|s| s.trace.trace_id == target)
            .map(|s| s.trace.span_id);
    }
    let kstats = sampler.kernel_stats()?;
    let mut metadata = trace_metadata(ProfileKind::Cpu, args, &run);
    metadata.frequency_hz = Some(sampler.frequency_hz());
    metadata.stats.samples = samples;
    metadata.stats.lost_stacks = kstats.stack_errors;
    metadata.stats.dropped_samples = kstats.counts_full;
    metadata.stats.unmapped_processes = sampler.unmapped_processes() as u64;
    Ok(build_profile(
        &raw,
        &mut symbolizer,
        &procs,
        metadata,
        |s| of_trace(&s.trace),
    ))
}

/// Captures the allocations of the trace `args` names: traces the `--pid`
/// processes (or every process running a shimmed binary, including those
/// that start during the capture), recording only allocations made while a
/// thread serves a trace, and keeps those of this one.
pub async fn capture_mem(args: &CaptureArgs) -> anyhow::Result<MemProfiles> {
    let of_trace = trace_filter(args)?;
    let target = args.trace.0;
    let mut tracer = MemTracer::start(&MemConfig {
        pids: args.pid.clone(),
        source: args.mem_source,
        traced_only: true,
        targets_only: true,
        ..Default::default()
    })?;
    let mut shims = start_discovery(args, tracer.ebpf_mut())?;
    // Without --pid: every process running a shimmed binary, as found.
    let mut traced: BTreeSet<u32> = args.pid.iter().copied().collect();
    let mut follow = |tracer: &mut MemTracer, shims: &mut ShimAttacher| {
        if !args.pid.is_empty() {
            return;
        }
        for pid in shims.shimmed_pids() {
            if traced.insert(pid)
                && let Err(e) = tracer.add_pid(pid)
            {
                eprintln!("hawk-ebpf: cannot trace the allocations of pid {pid}: {e}");
            }
        }
    };
    follow(&mut tracer, &mut shims);
    super::record::describe_attachments(tracer.attachments());
    announce(args);
    let mut symbolizer = Symbolizer::new();
    let mut procs = ProcessTable::default();
    let mut rescan = Instant::now();
    let run = run_trace_window(args, || {
        discover(&mut shims, tracer.ebpf_mut(), &mut rescan);
        follow(&mut tracer, &mut shims);
        let events = tracer.poll(&mut procs, &mut symbolizer, |k| of_trace(&k.trace))?;
        let threads = shim::traced_threads(tracer.ebpf_mut(), |ctx| ctx.trace_id == target)?;
        Ok(Seen {
            threads: threads.len(),
            events,
            span: threads.first().map(|(_, _, ctx)| ctx.span_id),
        })
    })
    .await?;
    let end_ns = monotonic_ns();
    tracer.stop();
    let calls = tracer.poll(&mut procs, &mut symbolizer, |k| of_trace(&k.trace))?;
    if calls == 0 {
        return Err(nothing_collected(
            args,
            &run,
            shims.attached(),
            format!(
                "trace {} ran but made no allocation Hawk saw{}",
                args.trace,
                if tracer.source() == MemSource::Sampled {
                    " (the sampled allocator reports about one allocation per mean interval of bytes)"
                } else {
                    ""
                }
            ),
        )
        .into());
    }
    if run.reason == CloseReason::Timeout {
        eprintln!(
            "hawk-ebpf: the trace was still running at the timeout; writing what was collected"
        );
    }
    let metadata = trace_metadata(ProfileKind::Mem, args, &run);
    let options = MemOptions {
        max_frames: hawk_common::MAX_STACK_DEPTH,
        min_age: Duration::ZERO,
    };
    let (mut profiles, _) = mem_profiles(
        &tracer,
        end_ns,
        options,
        &mut symbolizer,
        &procs,
        metadata,
        |s| of_trace(&s.trace),
    )?;
    if run.span.is_none() {
        // No thread was seen serving the trace: the span of an allocation.
        let span = profiles.allocated.samples.iter().find_map(|s| s.trace);
        for profile in [&mut profiles.outstanding, &mut profiles.allocated] {
            if let (Some(ids), Some(seen)) = (profile.metadata.trace.as_mut(), span) {
                ids.span_id = seen.span_id;
            }
        }
    }
    Ok(profiles)
}
