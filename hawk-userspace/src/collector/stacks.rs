//! The user stacks a collector has already handed to the symbolizer, so
//! each (process, stack id) is normalized once, while the process lives, and
//! the processes whose maps came too late are counted.

use std::collections::HashSet;

use aya::maps::{MapData, StackTraceMap};

use crate::symbolize::Symbolizer;

#[derive(Default)]
pub(crate) struct SeenStacks {
    seen: HashSet<(u32, i32)>,
    /// Processes found gone when normalized, not yet forgotten.
    unmapped: HashSet<u32>,
    /// Processes found gone when normalized, ever.
    unmapped_count: usize,
}

impl SeenStacks {
    /// True the first time (pid, stack id) is offered; ids below zero
    /// (no stack, or a lost one) never are.
    pub(crate) fn is_new(&mut self, pid: u32, stack_id: i32) -> bool {
        stack_id >= 0 && self.seen.insert((pid, stack_id))
    }

    /// Normalizes `ips` (leaf first) of `pid`, remembering a process that is
    /// already gone.
    pub(crate) fn normalize(&mut self, symbolizer: &mut Symbolizer, pid: u32, ips: &[u64]) {
        if !symbolizer.normalize(pid, ips) && self.unmapped.insert(pid) {
            self.unmapped_count += 1;
        }
    }

    /// Reads each (pid, stack id) of `fresh` from `stacks` and normalizes it.
    pub(crate) fn normalize_from(
        &mut self,
        stacks: &StackTraceMap<&MapData>,
        symbolizer: &mut Symbolizer,
        fresh: Vec<(u32, i32)>,
    ) {
        for (pid, id) in fresh {
            if let Ok(trace) = stacks.get(&(id as u32), 0) {
                let ips: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
                self.normalize(symbolizer, pid, &ips);
            }
        }
    }

    /// Forgets stack ids the kernel freed (they may be reused for others).
    pub(crate) fn forget(&mut self, gone: &HashSet<i32>) {
        self.seen.retain(|(_, id)| !gone.contains(id));
    }

    /// Forgets the processes `gone` says are gone (the daemon's periodic
    /// cleanup): a reused pid is normalized afresh.
    pub(crate) fn forget_processes(&mut self, mut gone: impl FnMut(u32) -> bool) {
        self.seen.retain(|(pid, _)| !gone(*pid));
        self.unmapped.retain(|pid| !gone(*pid));
    }

    /// Processes that exited before their memory maps could be read.
    pub(crate) fn unmapped_processes(&self) -> usize {
        self.unmapped_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stack_once_and_never_negative_ids() {
        let mut s = SeenStacks::default();
        assert!(s.is_new(1, 5));
        assert!(!s.is_new(1, 5));
        assert!(s.is_new(2, 5));
        assert!(!s.is_new(1, -14));
        s.forget(&HashSet::from([5]));
        assert!(s.is_new(1, 5));
    }

    #[test]
    fn a_gone_process_is_counted_once() {
        let mut s = SeenStacks::default();
        let mut symbolizer = Symbolizer::new();
        s.normalize(&mut symbolizer, u32::MAX, &[0x1000]);
        s.normalize(&mut symbolizer, u32::MAX, &[0x2000]);
        assert_eq!(s.unmapped_processes(), 1);
    }

    #[test]
    fn gone_processes_are_forgotten_but_still_counted() {
        let mut s = SeenStacks::default();
        let mut symbolizer = Symbolizer::new();
        assert!(s.is_new(u32::MAX, 1));
        assert!(s.is_new(7, 1));
        s.normalize(&mut symbolizer, u32::MAX, &[0x1000]);
        s.forget_processes(|pid| pid == u32::MAX);
        assert_eq!(s.seen.len(), 1);
        assert!(!s.is_new(7, 1));
        assert!(s.is_new(u32::MAX, 1), "a reused pid is new");
        assert_eq!(s.unmapped_processes(), 1);
    }
}
