//! `hawk-ebpf record`: sample on-CPU stacks for a window (system-wide, some
//! pids, or a command Hawk starts), then write the profile files.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use super::launch::GatedChild;
use crate::cli::RecordArgs;
use crate::collector::cpu::{CpuConfig, CpuSampler};
use crate::collector::procs::{self, ProcessTable};
use crate::correlate::build_profile;
use crate::output;
use crate::profile::{Metadata, Profile, ProfileKind};
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
    let formats = args.output.format.0.clone();
    let (profile, reason) = record(&args).await?;
    let written = output::write_profile(&args.output.out, &profile, &formats)?;
    let samples = profile.total_weight();
    eprintln!(
        "hawk-ebpf: {samples} samples from {} processes in {:.1} s ({}){}",
        profile.pids().len(),
        profile.metadata.duration().as_secs_f64(),
        match reason {
            EndReason::Duration => "window ended",
            EndReason::Interrupted => "interrupted",
            EndReason::CommandExited => "command exited",
            EndReason::TargetsExited => "all target processes exited",
        },
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
    let mut pids = args.pid.clone();
    for pid in &pids {
        if !procs::exists(*pid) {
            bail!("no such process: {pid}");
        }
    }
    let mut child = match args.command.as_slice() {
        [] => None,
        [program, rest @ ..] => {
            let child = GatedChild::spawn(program, rest)?;
            pids.push(child.pid());
            Some(child)
        }
    };
    let config = CpuConfig {
        frequency_hz: args.freq,
        pids: pids.clone(),
        user_stacks: !args.kernel_only,
        kernel_stacks: !args.user_only,
        traced_only: false,
    };
    let mut sampler = match CpuSampler::start(&config) {
        Ok(sampler) => sampler,
        Err(e) => {
            if let Some(child) = child.as_mut() {
                child.finish();
            }
            return Err(e.into());
        }
    };
    let mut symbolizer = Symbolizer::new();
    let mut procs = ProcessTable::default();
    if let Some(child) = child.as_mut() {
        child.release()?;
    }

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let deadline = tokio::time::sleep(args.duration);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let reason = loop {
        tokio::select! {
            _ = &mut deadline => break EndReason::Duration,
            _ = sigint.recv() => break EndReason::Interrupted,
            _ = sigterm.recv() => break EndReason::Interrupted,
            _ = tick.tick() => {
                sampler.poll(&mut procs, &mut symbolizer, |_| true)?;
                if let Some(child) = child.as_mut() {
                    if child.exited() {
                        break EndReason::CommandExited;
                    }
                } else if !pids.is_empty() && !pids.iter().any(|p| procs::is_alive(*p)) {
                    break EndReason::TargetsExited;
                }
            }
        }
    };
    let end = SystemTime::now();
    sampler.stop();
    // One last look, for processes that appeared since the last tick.
    sampler.poll(&mut procs, &mut symbolizer, |_| true)?;
    if let Some(mut child) = child {
        let status = child.finish();
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
            eprintln!(
                "hawk-ebpf: the command exited with status {}",
                libc::WEXITSTATUS(status)
            );
        }
    }

    let raw = sampler.read_samples()?;
    let kstats = sampler.kernel_stats()?;
    let mut metadata = Metadata::new(ProfileKind::Cpu, sampler.started(), end);
    metadata.frequency_hz = Some(sampler.frequency_hz());
    metadata.target_pids = pids;
    metadata.stats.samples = kstats.samples;
    metadata.stats.lost_stacks = kstats.stack_errors;
    metadata.stats.dropped_samples = kstats.counts_full;
    metadata.stats.unmapped_processes = sampler.unmapped_processes() as u64;
    let profile = build_profile(&raw, &mut symbolizer, &procs, metadata, |_| true);
    Ok((profile, reason))
}
