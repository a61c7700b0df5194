//! Memory records → the two memory [`Profile`]s of a window: bytes still
//! outstanding at its end, and bytes allocated during it. Shared by
//! `record --mem`, `capture --mem` and the daemon's memory endpoint.

use std::time::Duration;

use crate::collector::CollectorError;
use crate::collector::cpu::RawSample;
use crate::collector::mem::{MemKernelStats, MemRecords, MemTracer};
use crate::collector::procs::ProcessTable;
use crate::profile::{Frame, FrameKind, MemInfo, MemSource, MemView, Metadata, Profile};
use crate::symbolize::Symbolizer;

use super::build_profile;

/// What a window keeps of the allocations.
#[derive(Clone, Copy, Debug)]
pub struct MemOptions {
    /// Frames kept per stack (`--frames`).
    pub max_frames: usize,
    /// Allocations younger than this are left out of the outstanding view.
    pub min_age: Duration,
}

/// How the records were collected.
#[derive(Clone, Copy, Debug)]
struct MemSettings {
    source: MemSource,
    options: MemOptions,
}

/// The outstanding and allocated profiles of one window.
#[derive(Clone, Debug)]
pub struct MemProfiles {
    /// Bytes not freed at the end of the window (older than `min_age`), by stack.
    pub outstanding: Profile,
    /// Bytes allocated during the window, by stack.
    pub allocated: Profile,
}

/// Reads what `tracer` (stopped now) collected in the window that ended at
/// `end_ns` (CLOCK_MONOTONIC, [`crate::collector::mem::monotonic_ns`]) and
/// builds both profiles, keeping the records `keep` accepts (e.g. those of
/// one trace). `metadata`
/// gives the window, the targets and the trace (kind mem); the counters and
/// the memory settings are filled in here. Returns the kernel's counters too.
pub fn mem_profiles(
    tracer: &MemTracer,
    end_ns: u64,
    options: MemOptions,
    symbolizer: &mut Symbolizer,
    procs: &ProcessTable,
    metadata: Metadata,
    keep: impl FnMut(&RawSample) -> bool,
) -> Result<(MemProfiles, MemKernelStats), CollectorError> {
    let records = tracer.read(options.min_age, end_ns, options.max_frames)?;
    let kstats = tracer.kernel_stats()?;
    let mut metadata = metadata;
    metadata.stats.unmapped_processes = tracer.unmapped_processes() as u64;
    let settings = MemSettings {
        source: tracer.source(),
        options,
    };
    let profiles = build_mem_profiles(
        &records, &kstats, settings, symbolizer, procs, metadata, keep,
    );
    Ok((profiles, kstats))
}

/// Builds both profiles from `records`.
fn build_mem_profiles(
    records: &MemRecords,
    kstats: &MemKernelStats,
    settings: MemSettings,
    symbolizer: &mut Symbolizer,
    procs: &ProcessTable,
    metadata: Metadata,
    mut keep: impl FnMut(&RawSample) -> bool,
) -> MemProfiles {
    let mut metadata = metadata;
    metadata.stats.samples = kstats.allocations;
    metadata.stats.lost_stacks = kstats.stack_errors;
    metadata.stats.dropped_samples = kstats.live_full + kstats.totals_full;
    metadata.heap_current_bytes = Some(records.heap_current_bytes);
    let info = |view| MemInfo {
        source: settings.source,
        view,
        allocations: records.allocation_calls,
        frees: kstats.frees,
        unknown_frees: kstats.unknown_frees,
        live_allocations: records.live_allocations,
        max_frames: settings.options.max_frames,
        min_age: settings.options.min_age,
    };
    let mut build = |raw: &[(RawSample, u32)], view: MemView| {
        let kept: Vec<&(RawSample, u32)> = raw.iter().filter(|(s, _)| keep(s)).collect();
        let samples: Vec<RawSample> = kept.iter().map(|(s, _)| s.clone()).collect();
        let mut md = metadata.clone();
        md.mem = Some(info(view));
        let mut profile = build_profile(&samples, symbolizer, procs, md, |_| true);
        // The allocator function as the leaf under its call site (a sampled
        // allocation's stack already ends in the shim's marker).
        for (sample, (_, kind)) in profile.samples.iter_mut().zip(kept) {
            if *kind != hawk_common::mem::kind::SAMPLED {
                sample.frames.push(Frame::new(
                    hawk_common::mem::kind::name(*kind),
                    FrameKind::User,
                ));
            }
        }
        // Frames without a name, counted once per stack (not per byte).
        profile.metadata.stats.unsymbolized_frames = profile
            .samples
            .iter()
            .map(|s| s.frames.iter().filter(|f| f.name.contains("+0x")).count() as u64)
            .sum();
        profile
    };
    MemProfiles {
        outstanding: build(&records.outstanding, MemView::Outstanding),
        allocated: build(&records.allocated, MemView::Allocated),
    }
}
