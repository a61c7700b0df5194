//! Memory profiling: uprobes on the allocator of the C library.
//!
//! - Entry uprobes on `malloc`, `calloc`, `realloc`, `reallocarray`,
//!   `memalign`/`aligned_alloc`, `valloc`/`pvalloc` and `posix_memalign`
//!   store the request in `MEM_PENDING[pid_tgid]`.
//! - One uretprobe (`hawk_mem_alloc_return`) on all of them reads the
//!   result, records the user stack (taken at the return: the instruction
//!   pointer is then the call site in the caller and `rbp` the caller's frame,
//!   so a frame-pointer walk misses nothing even though glibc itself has no
//!   frame pointers), adds the bytes to `MEM_TOTALS` and the allocation to
//!   `MEM_LIVE`.
//! - `hawk_mem_free` removes an address from `MEM_LIVE`; addresses it does not
//!   know (allocated before the probes) are counted, not errors.
//!
//! Calls the allocator makes to itself (glibc's `realloc(NULL, n)` jumps to
//! `malloc`, `realloc(p, 0)` calls `free`, `reallocarray` jumps to
//! `realloc`) are nested in the pending outer call: their stack pointer is
//! not above the outer call's, and the outer call accounts for them. When a
//! tail call returns, both uretprobes fire at the same place; the first
//! takes the pending entry.
//!
//! The shim's sampled allocator (`SampledAlloc`) reports one allocation per
//! mean interval of bytes through two markers: `hawk_mem_alloc_sample`
//! (uprobe on `hawk_alloc_sample(ptr, size, weight)`) records it like an
//! allocator return, with `weight` bytes (and `weight / size` calls) standing
//! for the unsampled ones, and `hawk_mem_free_sample` (uprobe on
//! `hawk_free_sample(ptr)`) releases it.
//!
//! Anonymous `mmap`s made outside the allocator (the `syscalls` tracepoints;
//! an mmap inside a pending allocator call is the allocator's own and is
//! skipped) are recorded as allocations of kind `MMAP`; a `munmap` of the
//! exact start address releases them (partial unmaps are not followed).
//!
//! With `TRACED_ONLY` set, only allocations made while the thread serves a
//! trace are recorded (frees are always looked at).
//!
//! A full `MEM_LIVE` drops the new allocation (counted in `LIVE_FULL`): the
//! oldest entries stay, since leaks are the old ones.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext, TracePointContext, tracing::StackIdContext},
};
use hawk_common::mem::{
    MemLiveKey, MemLiveValue, MemPending, MemTotalKey, MemTotalValue, kind, stats as mstats,
};

use crate::{FILTER_PIDS, PIDS, STACKS, TRACE_CTX, TRACED_ONLY};

/// A nested call comes within this long of the outer call's entry; an older
/// pending entry is left over from a call whose return was never seen.
const NESTED_WINDOW_NS: u64 = 1_000_000_000;

#[map]
static MEM_LIVE: HashMap<MemLiveKey, MemLiveValue> =
    HashMap::with_max_entries(262_144, BPF_F_NO_PREALLOC);

#[map]
static MEM_TOTALS: HashMap<MemTotalKey, MemTotalValue> =
    HashMap::with_max_entries(32_768, BPF_F_NO_PREALLOC);

/// One entry per thread, written in place and marked done (`kind` 0) at the
/// return rather than deleted: a map update or delete per call costs more
/// than the rest of the entry program. LRU, so exited threads' entries go.
#[map]
static MEM_PENDING: LruHashMap<u64, MemPending> = LruHashMap::with_max_entries(16_384, 0);

#[map]
static MEM_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(mstats::LEN, 0);

#[inline(always)]
fn count(stat: u32) {
    if let Some(ptr) = MEM_STATS.get_ptr_mut(stat) {
        // Per-CPU slot; uprobe programs do not nest on a CPU.
        unsafe { *ptr += 1 };
    }
}

#[inline(always)]
fn wanted(pid: u32) -> bool {
    FILTER_PIDS.load() == 0 || unsafe { PIDS.get(&pid) }.is_some()
}

#[inline(always)]
fn stack_pointer(regs: *mut aya_ebpf::bindings::pt_regs) -> u64 {
    unsafe { (*regs).rsp }
}

/// True when the thread is inside another allocator call that will account
/// for this one (entered less than a second ago, higher up the stack, or at
/// the same height for a tail call such as glibc's `realloc(NULL, n)` →
/// `malloc`).
#[inline(always)]
fn nested(pid_tgid: u64, sp: u64, now: u64) -> bool {
    match unsafe { MEM_PENDING.get(&pid_tgid) } {
        Some(outer) => {
            outer.kind != 0
                && outer.sp >= sp
                && now.wrapping_sub(outer.timestamp_ns) < NESTED_WINDOW_NS
        }
        None => false,
    }
}

#[inline(always)]
fn begin(ctx: &ProbeContext, kind: u32, size: u64, arg: u64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return 0;
    }
    let sp = stack_pointer(ctx.regs);
    let now = unsafe { bpf_ktime_get_ns() };
    if nested(pid_tgid, sp, now) {
        return 0;
    }
    let pending = MemPending {
        size,
        arg,
        sp,
        timestamp_ns: now,
        kind,
        _pad: 0,
    };
    match MEM_PENDING.get_ptr_mut(&pid_tgid) {
        // Only this thread writes its entry.
        Some(entry) => unsafe { *entry = pending },
        None => {
            let _ = MEM_PENDING.insert(&pid_tgid, &pending, BPF_ANY as u64);
        }
    }
    0
}

/// `n * size`. On overflow the call fails and nothing is recorded, so a
/// wrapping product is enough (and BPF has no 128-bit multiply for a check).
#[inline(always)]
fn product(n: u64, size: u64) -> u64 {
    n.wrapping_mul(size)
}

#[uprobe]
pub fn hawk_mem_malloc(ctx: ProbeContext) -> u32 {
    let size: u64 = ctx.arg(0).unwrap_or(0);
    begin(&ctx, kind::MALLOC, size, 0)
}

#[uprobe]
pub fn hawk_mem_calloc(ctx: ProbeContext) -> u32 {
    let n: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    begin(&ctx, kind::CALLOC, product(n, size), 0)
}

#[uprobe]
pub fn hawk_mem_realloc(ctx: ProbeContext) -> u32 {
    let old: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    begin(&ctx, kind::REALLOC, size, old)
}

#[uprobe]
pub fn hawk_mem_reallocarray(ctx: ProbeContext) -> u32 {
    let old: u64 = ctx.arg(0).unwrap_or(0);
    let n: u64 = ctx.arg(1).unwrap_or(0);
    let size: u64 = ctx.arg(2).unwrap_or(0);
    begin(&ctx, kind::REALLOC, product(n, size), old)
}

#[uprobe]
pub fn hawk_mem_memalign(ctx: ProbeContext) -> u32 {
    let size: u64 = ctx.arg(1).unwrap_or(0);
    begin(&ctx, kind::MEMALIGN, size, 0)
}

#[uprobe]
pub fn hawk_mem_valloc(ctx: ProbeContext) -> u32 {
    let size: u64 = ctx.arg(0).unwrap_or(0);
    begin(&ctx, kind::VALLOC, size, 0)
}

#[uprobe]
pub fn hawk_mem_posix_memalign(ctx: ProbeContext) -> u32 {
    let memptr: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(2).unwrap_or(0);
    begin(&ctx, kind::POSIX_MEMALIGN, size, memptr)
}

#[uretprobe]
pub fn hawk_mem_alloc_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(entry) = MEM_PENDING.get_ptr_mut(&pid_tgid) else {
        return 0;
    };
    let pending = unsafe { *entry };
    // After `ret` the stack pointer is above the entry's; a nested call
    // returning into the allocator is below it and leaves the entry alone.
    if pending.kind == 0 || stack_pointer(ctx.regs) <= pending.sp {
        return 0;
    }
    // Done: the entry stays for the thread's next call.
    unsafe { (*entry).kind = 0 };
    let pid = (pid_tgid >> 32) as u32;
    let ret: u64 = ctx.ret();
    let addr = match pending.kind {
        kind::POSIX_MEMALIGN => {
            // Returns 0 on success and stores the pointer at `memptr`.
            if ret as u32 != 0 || pending.arg == 0 {
                count(mstats::FAILED);
                return 0;
            }
            match unsafe { bpf_probe_read_user(pending.arg as *const u64) } {
                Ok(addr) => addr,
                Err(_) => return 0,
            }
        }
        kind::REALLOC => {
            // The old block is gone when the call succeeded, or when it was
            // a realloc(p, 0) (which frees p and may return NULL).
            if pending.arg != 0 && (ret != 0 || pending.size == 0) {
                release(pid, pending.arg);
            }
            ret
        }
        _ => ret,
    };
    if addr == 0 {
        if pending.size != 0 {
            count(mstats::FAILED);
        }
        return 0;
    }
    allocated(&ctx, pid_tgid, addr, pending.kind, pending.size, 1);
    0
}

/// Records an allocation of `bytes` at `addr` standing for `calls` calls.
#[inline(always)]
fn allocated<C: StackIdContext>(
    ctx: &C,
    pid_tgid: u64,
    addr: u64,
    kind: u32,
    bytes: u64,
    calls: u64,
) {
    let trace = unsafe { TRACE_CTX.get(&pid_tgid) }
        .copied()
        .unwrap_or_default();
    if TRACED_ONLY.load() != 0 && trace.is_empty() {
        return;
    }
    count(mstats::ALLOCS);
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let stack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => id as i32,
        Err(err) => {
            count(mstats::STACK_ERRORS);
            err
        }
    };
    let key = MemTotalKey {
        pid,
        tid,
        stack_id,
        kind,
        trace,
    };
    add_total(&key, bytes, calls);
    let live = MemLiveValue {
        size: bytes,
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
        kind,
        tid,
        _pad: 0,
        trace,
    };
    let live_key = MemLiveKey { pid, _pad: 0, addr };
    if MEM_LIVE.insert(&live_key, &live, BPF_ANY as u64).is_err() {
        count(mstats::LIVE_FULL);
    }
}

#[inline(always)]
fn add_total(key: &MemTotalKey, size: u64, calls: u64) {
    // The key holds the thread id, and a thread runs on one CPU at a time:
    // no two CPUs update the same value at once.
    if let Some(value) = MEM_TOTALS.get_ptr_mut(key) {
        unsafe {
            (*value).bytes += size;
            (*value).count += calls;
        }
        return;
    }
    let value = MemTotalValue {
        bytes: size,
        count: calls,
    };
    if MEM_TOTALS.insert(key, &value, BPF_NOEXIST as u64).is_err() {
        count(mstats::TOTALS_FULL);
    }
}

#[inline(always)]
fn release(pid: u32, addr: u64) {
    count(mstats::FREES);
    let key = MemLiveKey { pid, _pad: 0, addr };
    if MEM_LIVE.remove(&key).is_err() {
        count(mstats::FREES_UNKNOWN);
    }
}

/// The shim's `hawk_alloc_sample(ptr, size, weight)`: one sampled
/// allocation standing for `weight` bytes.
#[uprobe]
pub fn hawk_mem_alloc_sample(ctx: ProbeContext) -> u32 {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    let weight: u64 = ctx.arg(2).unwrap_or(0);
    let pid_tgid = bpf_get_current_pid_tgid();
    if ptr == 0 || !wanted((pid_tgid >> 32) as u32) {
        return 0;
    }
    count(mstats::SAMPLED);
    // The calls it stands for: weight / size, rounded, at least one.
    let calls = if size == 0 || weight <= size {
        1
    } else {
        (weight + size / 2) / size
    };
    allocated(&ctx, pid_tgid, ptr, kind::SAMPLED, weight, calls);
    0
}

/// The shim's `hawk_free_sample(ptr)`: a sampled block is being freed.
#[uprobe]
pub fn hawk_mem_free_sample(ctx: ProbeContext) -> u32 {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if ptr == 0 || !wanted(pid) {
        return 0;
    }
    release(pid, ptr);
    0
}

/// Offsets of the arguments in a `syscalls/sys_enter_*` record (after the
/// common fields and the syscall number), and of the result in
/// `sys_exit_*`.
const SYSCALL_ARG0: usize = 16;
const SYSCALL_RET: usize = 16;
const MAP_ANONYMOUS: u64 = 0x20;
/// Results above this are `-errno`.
const MAX_ERRNO_RESULT: u64 = -4096i64 as u64;

/// `mmap(addr, len, prot, flags, fd, off)`: remembers an anonymous mapping
/// made outside the allocator until the syscall returns.
#[tracepoint]
pub fn hawk_mem_mmap_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return 0;
    }
    let (Ok(len), Ok(flags)) = (unsafe { ctx.read_at::<u64>(SYSCALL_ARG0 + 8) }, unsafe {
        ctx.read_at::<u64>(SYSCALL_ARG0 + 24)
    }) else {
        return 0;
    };
    if flags & MAP_ANONYMOUS == 0 || len == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(outer) = unsafe { MEM_PENDING.get(&pid_tgid) }
        && outer.kind != 0
        && now.wrapping_sub(outer.timestamp_ns) < NESTED_WINDOW_NS
    {
        // Inside malloc & co.: the allocator's own mapping.
        return 0;
    }
    let pending = MemPending {
        size: len,
        arg: 0,
        sp: 0,
        timestamp_ns: now,
        kind: kind::MMAP,
        _pad: 0,
    };
    match MEM_PENDING.get_ptr_mut(&pid_tgid) {
        Some(entry) => unsafe { *entry = pending },
        None => {
            let _ = MEM_PENDING.insert(&pid_tgid, &pending, BPF_ANY as u64);
        }
    }
    0
}

/// The result of an `mmap` remembered by `hawk_mem_mmap_enter`.
#[tracepoint]
pub fn hawk_mem_mmap_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(entry) = MEM_PENDING.get_ptr_mut(&pid_tgid) else {
        return 0;
    };
    let pending = unsafe { *entry };
    if pending.kind != kind::MMAP {
        return 0;
    }
    unsafe { (*entry).kind = 0 };
    let Ok(addr) = (unsafe { ctx.read_at::<u64>(SYSCALL_RET) }) else {
        return 0;
    };
    if addr >= MAX_ERRNO_RESULT {
        count(mstats::FAILED);
        return 0;
    }
    count(mstats::MMAPS);
    allocated(&ctx, pid_tgid, addr, kind::MMAP, pending.size, 1);
    0
}

/// `munmap(addr, len)`: releases a recorded mapping that starts at `addr`.
/// Unmaps of anything else (files, the allocator's own arenas, part of a
/// mapping) are not frees Hawk tracks and are not counted.
#[tracepoint]
pub fn hawk_mem_munmap(ctx: TracePointContext) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !wanted(pid) {
        return 0;
    }
    let Ok(addr) = (unsafe { ctx.read_at::<u64>(SYSCALL_ARG0) }) else {
        return 0;
    };
    let key = MemLiveKey { pid, _pad: 0, addr };
    let is_mapping = unsafe { MEM_LIVE.get(&key) }.is_some_and(|live| live.kind == kind::MMAP);
    if is_mapping && MEM_LIVE.remove(&key).is_ok() {
        count(mstats::FREES);
        count(mstats::MUNMAPS);
    }
    0
}

#[uprobe]
pub fn hawk_mem_free(ctx: ProbeContext) -> u32 {
    let addr: u64 = ctx.arg(0).unwrap_or(0);
    if addr == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if !wanted(pid) {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if nested(pid_tgid, stack_pointer(ctx.regs), now) {
        return 0;
    }
    release(pid, addr);
    0
}
