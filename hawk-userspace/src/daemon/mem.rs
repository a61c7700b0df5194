//! Memory profiles on request (`GET /debug/prof/mem/ebpf/`).
//!
//! Unlike CPU samples, allocations are not collected all the time: uprobes
//! on the C library slow every process they are attached to, so a window
//! traces only the processes it names, only while it lasts. Each window has
//! a [`MemTracer`] of its own (its own BPF object; probes on the C library
//! each target maps, or on the shim's sampled allocator when it links it,
//! for those processes only) and runs on a blocking
//! thread with its own symbolizer and process table, polling as
//! `record --mem` does. It ends when its time is up, when every target has
//! exited (the profile is still built: stacks were normalized while the
//! targets lived), or when it is cancelled (the daemon stops, the client
//! went away). Nothing outlives it: the probes go with the tracer, the
//! caches with the thread.

use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::collector::CollectorError;
use crate::collector::mem::{MemConfig, MemTracer, monotonic_ns};
use crate::collector::procs::{self, ProcessTable};
use crate::correlate::mem::{MemOptions, MemProfiles, mem_profiles};
use crate::profile::{MemView, Metadata, Profile, ProfileKind};
use crate::symbolize::Symbolizer;

/// How often a window polls the tracer (new processes and stacks, while
/// they live) and looks at its targets.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What a memory window traces and which profile it returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemWindow {
    /// The processes traced (at least one).
    pub pids: Vec<u32>,
    pub duration: Duration,
    /// Allocations younger than this stay out of the outstanding view.
    pub min_age: Duration,
    /// Frames kept per stack, nearest to the allocation.
    pub frames: usize,
    pub view: MemView,
}

/// Why a window gave no profile.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// Something about the targets (gone, no C library to probe): the
    /// request's fault.
    #[error("{0}")]
    Target(String),
    /// The daemon's side failed (loading, attaching, reading maps).
    #[error("{0}")]
    Collector(CollectorError),
}

/// Starting the tracer: a target that is gone, maps no C library or whose
/// maps cannot be read is the request's fault; failing to load or attach is
/// the daemon's.
impl From<CollectorError> for MemError {
    fn from(e: CollectorError) -> Self {
        match e {
            CollectorError::NoSuchProcess(_) | CollectorError::Io(_) => {
                MemError::Target(e.to_string())
            }
            e => MemError::Collector(e),
        }
    }
}

/// Traces `window`, then builds its profile. Blocks for the window: call it
/// on a blocking thread. `attached` is called once the probes are in place;
/// `cancelled` is asked at every poll.
pub fn run(
    window: &MemWindow,
    attached: impl FnOnce(),
    cancelled: impl Fn() -> bool,
) -> Result<Profile, MemError> {
    // The source is chosen per process (the sampled allocator when the
    // program links it); children are followed as in `record --mem`.
    let config = MemConfig {
        pids: window.pids.clone(),
        ..Default::default()
    };
    let mut tracer = MemTracer::start(&config)?;
    let mut symbolizer = Symbolizer::new();
    let mut procs = ProcessTable::default();
    for pid in &window.pids {
        procs.observe(*pid);
    }
    attached();
    let deadline = Instant::now() + window.duration;
    loop {
        tracer.follow_children();
        tracer
            .poll(&mut procs, &mut symbolizer, |_| true)
            .map_err(MemError::Collector)?;
        let now = Instant::now();
        if now >= deadline || cancelled() || !window.pids.iter().any(|pid| procs::is_alive(*pid)) {
            break;
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
    let end = SystemTime::now();
    let end_ns = monotonic_ns();
    tracer.stop();
    // One last look, for what appeared since the last poll.
    tracer
        .poll(&mut procs, &mut symbolizer, |_| true)
        .map_err(MemError::Collector)?;
    let mut metadata = Metadata::new(ProfileKind::Mem, tracer.started(), end);
    metadata.target_pids = window.pids.clone();
    let options = MemOptions {
        max_frames: window.frames,
        min_age: window.min_age,
    };
    let (
        MemProfiles {
            outstanding,
            allocated,
        },
        _,
    ) = mem_profiles(
        &tracer,
        end_ns,
        options,
        &mut symbolizer,
        &procs,
        metadata,
        |_| true,
    )
    .map_err(MemError::Collector)?;
    Ok(match window.view {
        MemView::Outstanding => outstanding,
        MemView::Allocated => allocated,
    })
}
