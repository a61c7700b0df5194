//! `hawk-ebpf record`: sample on-CPU stacks for a window (system-wide, some
//! pids, or a command Hawk starts), then write the profile files.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::launch::GatedChild;
use crate::cli::RecordArgs;
use crate::collector::cpu::{CpuConfig, CpuSampler};
use crate::collector::mem::{Attachment, MemConfig, MemKernelStats, MemTracer, monotonic_ns};
use crate::collector::procs::{self, ProcessTable};
use crate::correlate::build_profile;
use crate::correlate::mem::{MemOptions, mem_profiles};
use crate::output;
use crate::profile::{MemSource, Metadata, Profile, ProfileKind};
use crate::render::{self, Format};
use crate::symbolize::Symbolizer;

/// How often the window is polled for new processes and stacks.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Why a window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Duration,
    Interrupted,
    CommandExited,
    TargetsExited,
}

/// Runs `record` and returns the files written.
pub async fn run(args: RecordArgs) -> anyhow::Result<Vec<PathBuf>> {
    output::check_writable(&args.output.out)?;
    if args.mem {
        return run_mem(args).await;
    }
    let formats = args.output.format.0.clone();
    let (profile, reason) = record(&args).await?;
    let written = crate::telemetry::write_profile(&args.output.out, &profile, &formats)?;
    let latency = SystemTime::now()
        .duration_since(profile.metadata.end)
        .unwrap_or_default();
    let samples = profile.total_weight();
    eprintln!(
        "hawk-ebpf: {samples} samples from {} processes in {:.1} s ({}); files written {:.3} s after the window{}",
        profile.pids().len(),
        profile.metadata.duration().as_secs_f64(),
        match reason {
            EndReason::Duration => "window ended",
            EndReason::Interrupted => "interrupted",
            EndReason::CommandExited => "command exited",
            EndReason::TargetsExited => "all target processes exited",
        },
        latency.as_secs_f64(),
        if samples == 0 {
            "; no samples: the targets did not run on a CPU"
        } else {
            ""
        }
    );
    for path in &written {
        println!("{}", path.display());
    }
    Ok(written)
}

/// Samples for the window `args` describe and returns the profile.
pub async fn record(args: &RecordArgs) -> anyhow::Result<(Profile, EndReason)> {
    let mut interrupts = Interrupts::install()?;
    let mut targets = Targets::new(args)?;
    let config = CpuConfig {
        frequency_hz: args.freq,
        pids: targets.pids.clone(),
        user_stacks: !args.kernel_only,
        kernel_stacks: !args.user_only,
        traced_only: false,
    };
    let mut sampler = match CpuSampler::start(&config) {
        Ok(sampler) => sampler,
        Err(e) => {
            targets.finish();
            return Err(e.into());
        }
    };
    let mut symbolizer = Symbolizer::new();
    let mut procs = ProcessTable::default();
    targets.release()?;
    eprintln!(
        "hawk-ebpf: sampling {} at {} Hz for {:.1} s (Ctrl-C ends the window early)",
        if targets.pids.is_empty() {
            "every process".to_string()
        } else {
            format!(
                "pid {}",
                targets
                    .pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        args.freq,
        args.duration.as_secs_f64()
    );
    let reason = run_window(args.duration, &mut interrupts, &mut targets, || {
        sampler.poll(&mut procs, &mut symbolizer, |_| true)?;
        Ok(())
    })
    .await?;
    let end = SystemTime::now();
    sampler.stop();
    // One last look, for processes that appeared since the last tick.
    sampler.poll(&mut procs, &mut symbolizer, |_| true)?;
    targets.finish();

    let raw = sampler.read_samples()?;
    let kstats = sampler.kernel_stats()?;
    let mut metadata = Metadata::new(ProfileKind::Cpu, sampler.started(), end);
    metadata.frequency_hz = Some(sampler.frequency_hz());
    metadata.target_pids = targets.pids;
    metadata.stats.samples = kstats.samples;
    metadata.stats.lost_stacks = kstats.stack_errors;
    metadata.stats.dropped_samples = kstats.counts_full;
    metadata.stats.unmapped_processes = sampler.unmapped_processes() as u64;
    let profile = build_profile(&raw, &mut symbolizer, &procs, metadata, |_| true);
    Ok((profile, reason))
}

/// The two profiles of a `record --mem` window.
pub struct MemRecording {
    /// Bytes not freed at the end of the window (older than `--min-age`), by stack.
    pub outstanding: Profile,
    /// Bytes allocated during the window, by stack.
    pub allocated: Profile,
    /// The kernel's counters (allocations, frees, drops).
    pub stats: MemKernelStats,
    /// Live allocations at the end of the window.
    pub live_allocations: u64,
    pub reason: EndReason,
}

/// Suffix of the allocated-bytes profile's files.
pub const ALLOC_SUFFIX: &str = "_alloc";

/// `record --mem`: writes the outstanding profile under the usual name and
/// the allocated one with [`ALLOC_SUFFIX`].
async fn run_mem(args: RecordArgs) -> anyhow::Result<Vec<PathBuf>> {
    let formats = args.output.format.0.clone();
    let rec = record_mem(&args).await?;
    let written = write_mem_profiles(&args.output.out, &rec.outstanding, &rec.allocated, &formats)?;
    let s = &rec.stats;
    let sampled = rec
        .allocated
        .metadata
        .mem
        .as_ref()
        .is_some_and(|m| m.source == MemSource::Sampled);
    let allocations = rec
        .allocated
        .metadata
        .mem
        .as_ref()
        .map_or(s.allocations, |m| m.allocations);
    eprintln!(
        "hawk-ebpf: {}{allocations} allocations ({} bytes) and {} frees ({} of unknown blocks) in {:.1} s ({}); \
         {} bytes in {} blocks live at the end, {} bytes outstanding in the profile{}{}",
        if sampled { "≈" } else { "" },
        rec.allocated.total_weight(),
        s.frees,
        s.unknown_frees,
        rec.outstanding.metadata.duration().as_secs_f64(),
        match rec.reason {
            EndReason::Duration => "window ended",
            EndReason::Interrupted => "interrupted",
            EndReason::CommandExited => "command exited",
            EndReason::TargetsExited => "all target processes exited",
        },
        rec.outstanding.metadata.heap_current_bytes.unwrap_or(0),
        rec.live_allocations,
        rec.outstanding.total_weight(),
        if sampled {
            format!(
                "; estimated from {} sampled allocations ({} frees are of sampled blocks)",
                s.sampled, s.frees
            )
        } else if s.mmaps > 0 {
            format!("; {} anonymous mmaps, {} unmapped", s.mmaps, s.munmaps)
        } else {
            String::new()
        },
        if s.live_full + s.totals_full > 0 {
            format!(
                "; {} allocations not tracked (maps full)",
                s.live_full + s.totals_full
            )
        } else {
            String::new()
        }
    );
    for path in &written {
        println!("{}", path.display());
    }
    Ok(written)
}

/// Writes the outstanding profile under the usual name and the allocated one
/// with [`ALLOC_SUFFIX`], each announced as a profile span.
pub fn write_mem_profiles(
    dir: &std::path::Path,
    outstanding: &Profile,
    allocated: &Profile,
    formats: &[Format],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = crate::telemetry::write_profile(dir, outstanding, formats)?;
    written.extend(write_suffixed(dir, allocated, formats, ALLOC_SUFFIX)?);
    Ok(written)
}

/// Writes `profile` in `formats` as `<stem><suffix>.<ext>`, announced as a
/// profile span like every other profile.
fn write_suffixed(
    dir: &std::path::Path,
    profile: &Profile,
    formats: &[Format],
    suffix: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    let span = crate::telemetry::ProfileSpan::start(
        profile,
        formats,
        None,
        &opentelemetry::Context::current(),
    );
    let written = write_suffixed_files(dir, profile, formats, suffix);
    if let Err(e) = &written {
        span.error(format!("{e:#}"));
    }
    written
}

fn write_suffixed_files(
    dir: &std::path::Path,
    profile: &Profile,
    formats: &[Format],
    suffix: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    let m = &profile.metadata;
    let stem = output::file_stem(m.kind, m.start, m.trace.as_ref());
    let rendered = formats
        .iter()
        .map(|&format| {
            render::render(profile, format)
                .map(|bytes| (format, bytes))
                .with_context(|| format!("cannot render the {format} output"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    rendered
        .into_iter()
        .map(|(format, bytes)| {
            let name = format!("{stem}{suffix}.{}", format.extension());
            output::write_atomic(dir, &name, &bytes)
                .with_context(|| format!("cannot write {}", dir.join(&name).display()))
        })
        .collect()
}

/// Traces allocations for the window `args` describe.
pub async fn record_mem(args: &RecordArgs) -> anyhow::Result<MemRecording> {
    let mut interrupts = Interrupts::install()?;
    let mut targets = Targets::new(args)?;
    let pids = targets.pids.clone();
    let config = MemConfig {
        pids: pids.clone(),
        executables: targets.executables(),
        source: args.mem_source,
        traced_only: false,
        targets_only: false,
    };
    let mut tracer = match MemTracer::start(&config) {
        Ok(tracer) => tracer,
        Err(e) => {
            targets.finish();
            return Err(e.into());
        }
    };
    describe_attachments(tracer.attachments());
    if pids.is_empty() {
        eprintln!(
            "hawk-ebpf: warning: --mem without --pid or a command traces every process using this C library; \
             each of their allocator calls costs a few microseconds more"
        );
    }
    let mut symbolizer = Symbolizer::new();
    let mut procs = ProcessTable::default();
    targets.release()?;
    eprintln!("hawk-ebpf: tracing allocations");
    let reason = run_window(args.duration, &mut interrupts, &mut targets, || {
        if !pids.is_empty() {
            for child in tracer.follow_children() {
                eprintln!("hawk-ebpf: following child process {child}");
            }
        }
        tracer.poll(&mut procs, &mut symbolizer, |_| true)?;
        Ok(())
    })
    .await?;
    let end = SystemTime::now();
    let end_ns = monotonic_ns();
    tracer.stop();
    tracer.poll(&mut procs, &mut symbolizer, |_| true)?;
    targets.finish();

    let mut metadata = Metadata::new(ProfileKind::Mem, tracer.started(), end);
    metadata.target_pids = pids;
    let options = MemOptions {
        max_frames: args.frames,
        min_age: args.min_age,
    };
    let (profiles, kstats) = mem_profiles(
        &tracer,
        end_ns,
        options,
        &mut symbolizer,
        &procs,
        metadata,
        |_| true,
    )?;
    let live_allocations = profiles
        .outstanding
        .metadata
        .mem
        .as_ref()
        .map_or(0, |m| m.live_allocations);
    Ok(MemRecording {
        outstanding: profiles.outstanding,
        allocated: profiles.allocated,
        stats: kstats,
        live_allocations,
        reason,
    })
}

/// Says on stderr how each target is traced.
pub fn describe_attachments(attachments: &[Attachment]) {
    for attachment in attachments {
        match attachment {
            Attachment::Libc { library, points } => {
                let stepped: Vec<&str> = points
                    .iter()
                    .filter(|p| !p.emulated)
                    .map(|p| p.function)
                    .collect();
                eprintln!(
                    "hawk-ebpf: probing {} allocator functions in {} and anonymous mmaps{}",
                    points.len(),
                    library.display(),
                    if stepped.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} single-stepped: ≈15 µs a call)", stepped.join(", "))
                    }
                );
            }
            Attachment::Sampled { binary } => eprintln!(
                "hawk-ebpf: {} links the sampled allocator: tracing its sampled allocations \
                 (bytes are estimates scaled from the samples)",
                binary.display()
            ),
        }
    }
}

/// What a window watches: the `--pid` targets and the command Hawk started,
/// if any. Shared by the CPU and memory windows.
struct Targets {
    pids: Vec<u32>,
    child: Option<GatedChild>,
}

impl Targets {
    /// Checks the pids exist and starts the command, held before `exec`.
    fn new(args: &RecordArgs) -> anyhow::Result<Self> {
        let mut pids = args.pid.clone();
        for pid in &pids {
            if !procs::exists(*pid) {
                bail!("no such process: {pid}");
            }
        }
        let child = match args.command.as_slice() {
            [] => None,
            [program, rest @ ..] => {
                let child = GatedChild::spawn(program, rest)?;
                pids.push(child.pid());
                Some(child)
            }
        };
        Ok(Self { pids, child })
    }

    /// The command Hawk holds before `exec`, with the program it will run.
    fn executables(&self) -> Vec<(u32, PathBuf)> {
        self.child
            .iter()
            .map(|c| (c.pid(), c.program().to_path_buf()))
            .collect()
    }

    /// Lets the command run (once the probes are attached).
    fn release(&mut self) -> anyhow::Result<()> {
        match self.child.as_mut() {
            Some(child) => child.release(),
            None => Ok(()),
        }
    }

    /// Why the window should end because of its targets, if it should.
    fn ended(&mut self) -> Option<EndReason> {
        if let Some(child) = self.child.as_mut() {
            child.exited().then_some(EndReason::CommandExited)
        } else if !self.pids.is_empty() && !self.pids.iter().any(|p| procs::is_alive(*p)) {
            Some(EndReason::TargetsExited)
        } else {
            None
        }
    }

    /// Ends the command if it still runs and reports a failing exit.
    fn finish(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = child.finish();
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
                eprintln!(
                    "hawk-ebpf: the command exited with status {}",
                    libc::WEXITSTATUS(status)
                );
            }
        }
    }
}

/// Ctrl-C and SIGTERM, installed before anything is loaded so that an
/// interrupt during start-up still ends in files.
struct Interrupts {
    sigint: Signal,
    sigterm: Signal,
}

impl Interrupts {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }
}

/// Runs a window: calls `poll` every [`POLL_INTERVAL`] until `duration`
/// passes, an interrupt comes, or the targets are gone.
async fn run_window(
    duration: Duration,
    interrupts: &mut Interrupts,
    targets: &mut Targets,
    mut poll: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<EndReason> {
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    Ok(loop {
        tokio::select! {
            _ = &mut deadline => break EndReason::Duration,
            _ = interrupts.sigint.recv() => break EndReason::Interrupted,
            _ = interrupts.sigterm.recv() => break EndReason::Interrupted,
            _ = tick.tick() => {
                poll()?;
                if let Some(reason) = targets.ended() {
                    break reason;
                }
            }
        }
    })
}
