//! Following forks: `hawk_task_newtask` (tracepoint task/task_newtask, in
//! the parent's context) adds each new process a target forks to `PIDS`, so
//! that its samples are kept from its first instruction on. New threads
//! (`CLONE_THREAD`) share their process's tgid and need nothing.
//!
//! The record's layout differs between kernels (`comm` became a
//! `__data_loc` string), so userspace reads the field offsets from the
//! event's format file and sets them before loading.

use aya_ebpf::{
    Global, helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use hawk_common::stats;

use crate::{FILTER_PIDS, PIDS, count};

#[unsafe(no_mangle)]
static NEWTASK_PID_OFFSET: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static NEWTASK_FLAGS_OFFSET: Global<u32> = Global::new(32);

const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint]
pub fn hawk_task_newtask(ctx: TracePointContext) -> u32 {
    if FILTER_PIDS.load() == 0 {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { PIDS.get(&parent) }.is_none() {
        return 0;
    }
    let Ok(flags) = (unsafe { ctx.read_at::<u64>(NEWTASK_FLAGS_OFFSET.load() as usize) }) else {
        return 0;
    };
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let Ok(child) = (unsafe { ctx.read_at::<u32>(NEWTASK_PID_OFFSET.load() as usize) }) else {
        return 0;
    };
    if PIDS.insert(&child, &1, 0).is_err() {
        count(stats::PIDS_FULL);
    }
    0
}
