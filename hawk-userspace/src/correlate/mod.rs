//! Raw kernel samples → [`Profile`]: names every frame (through the
//! [`Symbolizer`]), roots each stack at its process, and attaches the trace
//! context the thread was serving. [`window`] decides when a trace-triggered
//! window opens and closes.

pub mod mem;
pub mod window;

use std::collections::HashMap;

use crate::collector::cpu::RawSample;
use crate::collector::procs::ProcessTable;
use crate::profile::{Frame, Metadata, Profile, Sample, TraceIds};
use crate::symbolize::Symbolizer;

/// Builds a profile from `raw`, keeping the samples `keep` accepts.
pub fn build_profile(
    raw: &[RawSample],
    symbolizer: &mut Symbolizer,
    procs: &ProcessTable,
    metadata: Metadata,
    mut keep: impl FnMut(&RawSample) -> bool,
) -> Profile {
    // A process's name: from /proc when it was seen alive, else the name of
    // its main thread, else of any of its threads.
    let mut main_thread: HashMap<u32, &str> = HashMap::new();
    for s in raw {
        if s.pid == s.tid || !main_thread.contains_key(&s.pid) {
            main_thread.insert(s.pid, &s.comm);
        }
    }
    let mut profile = Profile::new(metadata);
    let mut unsymbolized = 0;
    for s in raw.iter().filter(|s| keep(s)) {
        let comm = procs
            .name(s.pid)
            .or_else(|| main_thread.get(&s.pid).copied())
            .unwrap_or(&s.comm)
            .to_string();
        let mut frames = Vec::with_capacity(1 + s.user_stack.len() + s.kernel_stack.len());
        frames.push(Frame::process(&comm, s.pid));
        if !s.user_stack.is_empty() {
            frames.extend(
                symbolizer
                    .user_frames(s.pid, &s.user_stack)
                    .into_iter()
                    .rev(),
            );
        }
        if !s.kernel_stack.is_empty() {
            frames.extend(symbolizer.kernel_frames(&s.kernel_stack).into_iter().rev());
        }
        unsymbolized += frames.iter().filter(|f| f.name.contains("+0x")).count() as u64 * s.count;
        profile.samples.push(Sample {
            pid: s.pid,
            tid: s.tid,
            comm,
            frames,
            weight: s.count,
            trace: TraceIds::from_kernel(&s.trace),
        });
    }
    profile.metadata.stats.unsymbolized_frames = unsymbolized;
    profile
}
