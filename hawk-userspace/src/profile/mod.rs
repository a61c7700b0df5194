//! The one profile model every source produces and every renderer consumes.
//!
//! A [`Profile`] is a list of [`Sample`]s (a stack of named [`Frame`]s, root
//! first, and a weight) plus [`Metadata`] (kind, frequency, window, pids,
//! trace context, counters). Nothing here knows about BPF or output formats.

mod trace;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

pub use trace::{IdError, SpanId, TraceId, TraceIds};

/// What a profile measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProfileKind {
    /// On-CPU time; weights are sample counts.
    Cpu,
    /// Allocations; weights are bytes.
    Mem,
}

impl ProfileKind {
    /// `cpu` or `mem`: the word used in file names and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "cpu",
            ProfileKind::Mem => "mem",
        }
    }

    /// The unit of a weight: `samples` or `bytes`.
    pub fn unit(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "samples",
            ProfileKind::Mem => "bytes",
        }
    }
}

/// Where a frame comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// The synthetic root frame naming the process (`comm (pid)`).
    Process,
    /// A user-space function.
    User,
    /// A kernel function.
    Kernel,
}

/// One named frame of a stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// Demangled function name, or `module+0xoffset` when it has no symbol.
    pub name: String,
    pub kind: FrameKind,
}

impl Frame {
    pub fn new(name: impl Into<String>, kind: FrameKind) -> Self {
        Self {
            name: name.into(),
            kind,
        }
    }

    /// The root frame of a process's stacks, e.g. `cpu_split (4242)`.
    pub fn process(comm: &str, pid: u32) -> Self {
        Self::new(format!("{comm} ({pid})"), FrameKind::Process)
    }
}

/// A stack and how much of the measured quantity it accounts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The process's name.
    pub comm: String,
    /// Frames from the root (the process frame) to the leaf.
    pub frames: Vec<Frame>,
    /// Sample count (cpu) or bytes (mem).
    pub weight: u64,
    /// The trace the thread was serving, if any.
    pub trace: Option<TraceIds>,
}

/// Counters about how a profile was collected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Samples taken by the kernel (cpu) or events seen (mem).
    pub samples: u64,
    /// Samples whose user or kernel stack could not be recorded.
    pub lost_stacks: u64,
    /// Samples dropped because a kernel map was full.
    pub dropped_samples: u64,
    /// Frames that could not be given a symbol name.
    pub unsymbolized_frames: u64,
    /// Processes that exited before Hawk could read their memory maps.
    pub unmapped_processes: u64,
}

/// What a profile is about.
#[derive(Clone, Debug, PartialEq)]
pub struct Metadata {
    pub kind: ProfileKind,
    /// Sampling frequency in Hz (cpu).
    pub frequency_hz: Option<u64>,
    /// Window start and end (wall clock).
    pub start: SystemTime,
    pub end: SystemTime,
    /// Processes the profile was restricted to (empty: the whole system).
    pub target_pids: Vec<u32>,
    /// The trace the profile belongs to (trace captures only).
    pub trace: Option<TraceIds>,
    pub stats: Stats,
    /// Live heap bytes at the end of the window (mem).
    pub heap_current_bytes: Option<u64>,
    /// How a memory profile was collected (mem).
    pub mem: Option<MemInfo>,
}

/// Where allocation events come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemSource {
    /// uprobes on the C library's allocator: every call, exact bytes.
    Libc,
    /// The shim's sampled allocator: about one allocation per mean interval
    /// of bytes, each weighted by the bytes it stands for (estimates).
    Sampled,
}

impl MemSource {
    /// `libc` or `sampled`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemSource::Libc => "libc",
            MemSource::Sampled => "sampled",
        }
    }
}

/// Which view of the allocations a memory profile weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemView {
    /// Bytes not freed at the end of the window (older than `min_age`).
    Outstanding,
    /// Bytes allocated during the window, freed or not.
    Allocated,
}

impl MemView {
    /// `outstanding` or `allocated`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemView::Outstanding => "outstanding",
            MemView::Allocated => "allocated",
        }
    }
}

/// The counters and settings of a memory profile.
#[derive(Clone, Debug, PartialEq)]
pub struct MemInfo {
    pub source: MemSource,
    pub view: MemView,
    /// Allocation calls in the window (estimated from the samples when
    /// `source` is sampled).
    pub allocations: u64,
    /// Frees of tracked allocations (sampled: of sampled allocations).
    pub frees: u64,
    /// Frees of blocks allocated before tracing began (counted, not errors).
    pub unknown_frees: u64,
    /// Allocations still live at the end of the window.
    pub live_allocations: u64,
    /// The most frames kept per stack (`--frames`; `hawk.frames`).
    pub max_frames: usize,
    /// Allocations younger than this are left out of the outstanding view.
    pub min_age: Duration,
}

impl Metadata {
    pub fn new(kind: ProfileKind, start: SystemTime, end: SystemTime) -> Self {
        Self {
            kind,
            frequency_hz: None,
            start,
            end,
            target_pids: Vec::new(),
            trace: None,
            stats: Stats::default(),
            heap_current_bytes: None,
            mem: None,
        }
    }

    /// Length of the window.
    pub fn duration(&self) -> Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }

    /// Seconds between two samples (cpu), the `hawk.interval` of the seed.
    pub fn interval_secs(&self) -> Option<f64> {
        self.frequency_hz
            .filter(|hz| *hz > 0)
            .map(|hz| 1.0 / hz as f64)
    }
}

/// Stacks with weights, plus what they are about.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub metadata: Metadata,
    pub samples: Vec<Sample>,
}

impl Profile {
    pub fn new(metadata: Metadata) -> Self {
        Self {
            metadata,
            samples: Vec::new(),
        }
    }

    /// Sum of all weights.
    pub fn total_weight(&self) -> u64 {
        self.samples.iter().map(|s| s.weight).sum()
    }

    /// The distinct pids that have samples, ascending.
    pub fn pids(&self) -> Vec<u32> {
        self.samples
            .iter()
            .map(|s| s.pid)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Samples merged by (pid, stack) and sorted by weight, heaviest first
    /// (ties by stack, so the order is stable). Thread ids and trace ids are
    /// dropped: this is the view flamegraphs and stats tables want.
    pub fn merged_by_stack(&self) -> Vec<(u32, &str, &[Frame], u64)> {
        let mut merged: std::collections::HashMap<(u32, &[Frame]), (&str, u64)> =
            std::collections::HashMap::new();
        for s in &self.samples {
            let entry = merged
                .entry((s.pid, s.frames.as_slice()))
                .or_insert((s.comm.as_str(), 0));
            entry.1 += s.weight;
        }
        let mut out: Vec<_> = merged
            .into_iter()
            .map(|((pid, frames), (comm, w))| (pid, comm, frames, w))
            .collect();
        out.sort_by(|a, b| b.3.cmp(&a.3).then_with(|| a.2.cmp(b.2)).then(a.0.cmp(&b.0)));
        out
    }

    /// Keeps only the samples `keep` accepts.
    pub fn retain(&mut self, keep: impl FnMut(&Sample) -> bool) {
        self.samples.retain(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, tid: u32, names: &[&str], weight: u64) -> Sample {
        let mut frames = vec![Frame::process("w", pid)];
        frames.extend(names.iter().map(|n| Frame::new(*n, FrameKind::User)));
        Sample {
            pid,
            tid,
            comm: "w".into(),
            frames,
            weight,
            trace: None,
        }
    }

    #[test]
    fn merges_threads_of_a_process_and_sorts_by_weight() {
        let mut p = Profile::new(Metadata::new(
            ProfileKind::Cpu,
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_secs(10),
        ));
        p.samples = vec![
            sample(1, 1, &["main", "a"], 3),
            sample(1, 2, &["main", "a"], 4),
            sample(1, 1, &["main", "b"], 5),
            sample(2, 2, &["main", "a"], 1),
        ];
        let merged = p.merged_by_stack();
        let view: Vec<_> = merged
            .iter()
            .map(|(pid, _, f, w)| (*pid, f.last().unwrap().name.as_str(), *w))
            .collect();
        assert_eq!(view, vec![(1, "a", 7), (1, "b", 5), (2, "a", 1)]);
        assert_eq!(p.total_weight(), 13);
        assert_eq!(p.pids(), vec![1, 2]);
        assert_eq!(p.metadata.duration(), Duration::from_secs(10));
    }

    #[test]
    fn interval_is_the_inverse_of_the_frequency() {
        let mut m = Metadata::new(
            ProfileKind::Cpu,
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(m.interval_secs(), None);
        m.frequency_hz = Some(100);
        assert_eq!(m.interval_secs(), Some(0.01));
    }
}
