//! `hawk-ebpf capture --trace ID`: the flamegraph of exactly one trace.
//!
//! Samples only threads that serve a trace (in-kernel filter), attaches the
//! trace-context uprobe to every shimmed binary, opens the window when the
//! trace is first seen, and closes it when the last thread has cleared it for
//! the grace period (see [`crate::correlate::window`]). Samples of other
//! traces, or of no trace, never enter the profile.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::CaptureArgs;
use crate::collector::cpu::{CpuConfig, CpuSampler};
use crate::collector::procs::{self, ProcessTable};
use crate::collector::shim::ShimAttacher;
use crate::correlate::build_profile;
use crate::correlate::window::{CloseReason, TraceWindow, WindowConfig, WindowState};
use crate::output;
use crate::profile::{Metadata, Profile, ProfileKind, SpanId, TraceIds};
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

/// Captures the trace `args` names and returns its profile.
pub async fn capture(args: &CaptureArgs) -> anyhow::Result<Profile> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    for pid in &args.pid {
        if !procs::exists(*pid) {
            anyhow::bail!("no such process: {pid}");
        }
    }
    let target = args.trace.0;
    let wanted_span = args.span.map(|s| s.0);
    let mut sampler = CpuSampler::start(&CpuConfig {
        frequency_hz: args.freq,
        pids: args.pid.clone(),
        user_stacks: true,
        kernel_stacks: true,
        traced_only: true,
    })?;
    let mut shims = ShimAttacher::new(sampler.ebpf_mut())?;
    for path in &args.attach {
        shims.attach_path(sampler.ebpf_mut(), path)?;
    }
    shims.scan_all(sampler.ebpf_mut());
    if shims.attached() == 0 {
        eprintln!(
            "hawk-ebpf: no running program exports hawk_trace_context_set yet; waiting for one to start"
        );
    }
    eprintln!(
        "hawk-ebpf: waiting for trace {} (timeout {:.0} s)",
        args.trace,
        args.timeout.as_secs_f64()
    );

    let mut symbolizer = Symbolizer::new();
    let mut procs = ProcessTable::default();
    let mut window = TraceWindow::new(
        WindowConfig {
            grace: args.grace,
            timeout: args.timeout,
        },
        Instant::now(),
    );
    let mut first_span: Option<[u8; 8]> = wanted_span;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let mut rescan = Instant::now();
    let reason = loop {
        tokio::select! {
            _ = sigint.recv() => window.interrupt(),
            _ = sigterm.recv() => window.interrupt(),
            _ = tick.tick() => {
                shims.poll_exec_events(sampler.ebpf_mut());
                if rescan.elapsed() >= Duration::from_secs(2) {
                    // Safety net for exec events the ring buffer lost.
                    shims.scan_new_processes(sampler.ebpf_mut());
                    rescan = Instant::now();
                }
                let samples = sampler.poll(&mut procs, &mut symbolizer, |k| {
                    k.trace.trace_id == target
                        && wanted_span.is_none_or(|s| k.trace.span_id == s)
                })?;
                let threads = sampler.traced_threads(|ctx| ctx.trace_id == target)?;
                if first_span.is_none() {
                    first_span = threads.first().map(|(_, _, ctx)| ctx.span_id);
                }
                window.observe(Instant::now(), threads.len(), samples);
            }
        }
        if let WindowState::Closed(reason) = window.state() {
            break reason;
        }
    };
    sampler.stop();
    let samples = sampler.poll(&mut procs, &mut symbolizer, |k| {
        k.trace.trace_id == target && wanted_span.is_none_or(|s| k.trace.span_id == s)
    })?;
    if samples == 0 {
        let why = match (reason, window.opened()) {
            (CloseReason::Timeout, None) => format!(
                "trace {} did not appear within {:.0} s ({} shimmed binaries attached)",
                args.trace,
                args.timeout.as_secs_f64(),
                shims.attached()
            ),
            (CloseReason::Interrupted, None) => {
                format!("interrupted before trace {} appeared", args.trace)
            }
            _ => format!(
                "trace {} ran but no CPU sample hit it at {} Hz; try a higher --freq",
                args.trace, args.freq
            ),
        };
        return Err(NoSamples(why).into());
    }
    if reason == CloseReason::Timeout {
        eprintln!(
            "hawk-ebpf: the trace was still running at the timeout; writing what was collected"
        );
    }

    let raw = sampler.read_samples()?;
    if first_span.is_none() {
        first_span = raw
            .iter()
            .find(|s| s.trace.trace_id == target)
            .map(|s| s.trace.span_id);
    }
    let now = (Instant::now(), SystemTime::now());
    let wall = |at: Option<Instant>| at.map_or(now.1, |t| now.1 - now.0.duration_since(t));
    let kstats = sampler.kernel_stats()?;
    let mut metadata = Metadata::new(
        ProfileKind::Cpu,
        wall(window.opened()),
        wall(window.last_active()),
    );
    metadata.frequency_hz = Some(sampler.frequency_hz());
    metadata.target_pids = args.pid.clone();
    metadata.trace = Some(TraceIds {
        trace_id: args.trace,
        span_id: SpanId(first_span.unwrap_or_default()),
    });
    metadata.stats.samples = samples;
    metadata.stats.lost_stacks = kstats.stack_errors;
    metadata.stats.dropped_samples = kstats.counts_full;
    metadata.stats.unmapped_processes = sampler.unmapped_processes() as u64;
    Ok(build_profile(
        &raw,
        &mut symbolizer,
        &procs,
        metadata,
        |s| s.trace.trace_id == target && wanted_span.is_none_or(|span| s.trace.span_id == span),
    ))
}
