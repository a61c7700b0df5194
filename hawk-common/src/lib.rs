//! Types and names shared by Hawk's BPF programs (`hawk-ebpf`) and its userspace
//! (`hawk-userspace`).
//!
//! Everything here is `#[repr(C)]` with explicit fields and no hidden padding:
//! the kernel hashes map keys byte for byte, so a padding byte with garbage in
//! it would split one stack into many. The `const` assertions at the bottom
//! keep the layouts honest.
//!
//! Feature `user` adds the `aya::Pod` impls userspace needs to read the maps.
//! Feature `shim` adds [`shim`], the calling side of the trace-context
//! contract that instrumented applications link (it needs `std`).
#![no_std]

#[cfg(feature = "shim")]
extern crate std;

#[cfg(feature = "shim")]
pub mod shim;

/// Deepest stack the kernel records (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Names of the BPF maps, as the loader looks them up.
pub mod maps {
    /// `BPF_MAP_TYPE_STACK_TRACE`: stack id → up to 127 instruction pointers.
    pub const STACKS: &str = "STACKS";
    /// Hash map `SampleKey` → `SampleValue`: CPU samples aggregated in the kernel.
    pub const CPU_COUNTS: &str = "CPU_COUNTS";
    /// Hash map tgid → 1: the processes to sample when `FILTER_PIDS` is set.
    pub const PIDS: &str = "PIDS";
    /// LRU hash `pid_tgid` (u64) → `TraceContext`: the span each thread serves.
    /// Same layout as the OpenTelemetry eBPF instrumentation's `traces_ctx_v1`.
    pub const TRACE_CTX: &str = "TRACE_CTX";
    /// Per-CPU array of u64 counters, indexed by [`crate::stats`].
    pub const STATS: &str = "STATS";
    /// Ring buffer of pids (u32) that just exec'd.
    pub const EXEC_EVENTS: &str = "EXEC_EVENTS";
    /// Ring buffer of pids (u32), one per new `CPU_COUNTS` key.
    pub const PID_EVENTS: &str = "PID_EVENTS";
}

/// Names of the BPF programs in the object.
pub mod programs {
    /// perf_event program sampling on-CPU stacks.
    pub const CPU_SAMPLE: &str = "hawk_cpu_sample";
    /// uprobe on the shim's `hawk_trace_context_set` marker.
    pub const TRACE_CONTEXT_SET: &str = "hawk_trace_context_set";
    /// Tracepoint `sched/sched_process_exec`.
    pub const SCHED_EXEC: &str = "hawk_sched_exec";
    /// Tracepoint `task/task_newtask`: follows the processes targets fork.
    pub const TASK_NEWTASK: &str = "hawk_task_newtask";
}

/// The exported marker symbols of the shim ([`shim`] defines them; Hawk
/// looks them up in binaries and attaches uprobes to them).
pub mod shim_symbols {
    /// `hawk_trace_context_set(trace_id_hi, trace_id_lo, span_id, flags)`.
    pub const TRACE_CONTEXT_SET: &str = "hawk_trace_context_set";
    /// `hawk_alloc_sample(ptr, size, weight)`, called by the sampled allocator.
    pub const ALLOC_SAMPLE: &str = "hawk_alloc_sample";
    /// `hawk_free_sample(ptr)`, called by the sampled allocator.
    pub const FREE_SAMPLE: &str = "hawk_free_sample";
}

/// Names of the global variables the loader sets before loading.
pub mod globals {
    /// u8: when non-zero only tgids present in `PIDS` are sampled.
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    /// u8: bit set of [`crate::STACK_USER`] and [`crate::STACK_KERNEL`].
    pub const STACK_MODE: &str = "STACK_MODE";
    /// u8: when non-zero only threads with a trace context are sampled.
    pub const TRACED_ONLY: &str = "TRACED_ONLY";
    /// u32: offset of `pid` in a `task/task_newtask` record.
    pub const NEWTASK_PID_OFFSET: &str = "NEWTASK_PID_OFFSET";
    /// u32: offset of `clone_flags` in a `task/task_newtask` record.
    pub const NEWTASK_FLAGS_OFFSET: &str = "NEWTASK_FLAGS_OFFSET";
}

/// Record user stacks.
pub const STACK_USER: u8 = 1;
/// Record kernel stacks.
pub const STACK_KERNEL: u8 = 2;

/// A stack id field that was not recorded (mode excluded it).
pub const STACK_ID_NONE: i32 = -1_000;

/// Indexes into the `STATS` per-CPU array.
pub mod stats {
    /// Samples taken (after pid filtering).
    pub const SAMPLES: u32 = 0;
    /// Samples whose user or kernel stack was lost: the stack map was full or
    /// its bucket held another stack (`-EEXIST` / `-ENOMEM`).
    pub const STACK_ERRORS: u32 = 1;
    /// Samples dropped because the counts map was full.
    pub const COUNTS_FULL: u32 = 2;
    /// Samples that carried a trace context.
    pub const TRACED_SAMPLES: u32 = 3;
    /// Exec events lost because the ring buffer was full.
    pub const EXEC_EVENTS_LOST: u32 = 4;
    /// Forked children of targets not followed because `PIDS` was full.
    pub const PIDS_FULL: u32 = 5;
    /// New-key pid events lost because the ring buffer was full.
    pub const PID_EVENTS_LOST: u32 = 6;
    /// Number of counters.
    pub const LEN: u32 = 7;
}

/// The trace context of a thread: W3C ids in network byte order.
///
/// This is the value layout of OpenTelemetry's eBPF `traces_ctx_v1` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl TraceContext {
    /// Builds the context from the marker's arguments (`hi`, `lo`, `span`),
    /// mapping them big-endian onto the W3C ids.
    pub const fn from_args(trace_id_hi: u64, trace_id_lo: u64, span_id: u64) -> Self {
        let hi = trace_id_hi.to_be_bytes();
        let lo = trace_id_lo.to_be_bytes();
        let mut trace_id = [0u8; 16];
        let mut i = 0;
        while i < 8 {
            trace_id[i] = hi[i];
            trace_id[8 + i] = lo[i];
            i += 1;
        }
        Self {
            trace_id,
            span_id: span_id.to_be_bytes(),
        }
    }

    /// True when no trace is set (all-zero trace id).
    pub fn is_empty(&self) -> bool {
        self.trace_id == [0; 16]
    }
}

/// Key of the in-kernel CPU sample aggregation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Id in `STACKS`, or a negative errno / [`STACK_ID_NONE`].
    pub user_stack_id: i32,
    /// Id in `STACKS`, or a negative errno / [`STACK_ID_NONE`].
    pub kernel_stack_id: i32,
    /// The thread's trace context at the time of the sample (zero: none).
    pub trace: TraceContext,
}

/// Value of the in-kernel CPU sample aggregation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleValue {
    /// Samples seen for the key.
    pub count: u64,
    /// The thread's `comm` when the key was first seen.
    pub comm: [u8; 16],
}

// No hidden padding: sizes are the sums of the fields.
const _: () = assert!(core::mem::size_of::<TraceContext>() == 24);
const _: () = assert!(core::mem::size_of::<SampleKey>() == 4 * 4 + 24);
const _: () = assert!(core::mem::size_of::<SampleValue>() == 8 + 16);

/// Memory profiling (`record --mem`): the allocator uprobes' names, maps,
/// counters and map types. Kept apart from the CPU items above.
pub mod mem {
    /// Names of the memory maps.
    pub mod maps {
        /// Hash `MemLiveKey` → `MemLiveValue`: allocations not freed yet.
        pub const LIVE: &str = "MEM_LIVE";
        /// Hash `MemTotalKey` → `MemTotalValue`: bytes and calls allocated per stack.
        pub const TOTALS: &str = "MEM_TOTALS";
        /// LRU hash `pid_tgid` → `MemPending`: the allocator call a thread is
        /// in (one entry per thread, reused).
        pub const PENDING: &str = "MEM_PENDING";
        /// Per-CPU array of u64 counters, indexed by [`super::stats`].
        pub const STATS: &str = "MEM_STATS";
    }

    /// Names of the memory programs.
    pub mod programs {
        /// uprobe on `malloc(size)`.
        pub const MALLOC: &str = "hawk_mem_malloc";
        /// uprobe on `calloc(nmemb, size)`.
        pub const CALLOC: &str = "hawk_mem_calloc";
        /// uprobe on `realloc(ptr, size)`.
        pub const REALLOC: &str = "hawk_mem_realloc";
        /// uprobe on `reallocarray(ptr, nmemb, size)`.
        pub const REALLOCARRAY: &str = "hawk_mem_reallocarray";
        /// uprobe on `memalign(align, size)` and `aligned_alloc(align, size)`.
        pub const MEMALIGN: &str = "hawk_mem_memalign";
        /// uprobe on `valloc(size)` and `pvalloc(size)`.
        pub const VALLOC: &str = "hawk_mem_valloc";
        /// uprobe on `posix_memalign(memptr, align, size)`.
        pub const POSIX_MEMALIGN: &str = "hawk_mem_posix_memalign";
        /// uretprobe on every allocation function above.
        pub const ALLOC_RETURN: &str = "hawk_mem_alloc_return";
        /// uprobe on `free(ptr)` (may sit a few instructions into it).
        pub const FREE: &str = "hawk_mem_free";
        /// uprobe on the shim's `hawk_alloc_sample(ptr, size, weight)` marker.
        pub const ALLOC_SAMPLE: &str = "hawk_mem_alloc_sample";
        /// uprobe on the shim's `hawk_free_sample(ptr)` marker.
        pub const FREE_SAMPLE: &str = "hawk_mem_free_sample";
        /// Tracepoint `syscalls/sys_enter_mmap`.
        pub const MMAP_ENTER: &str = "hawk_mem_mmap_enter";
        /// Tracepoint `syscalls/sys_exit_mmap`.
        pub const MMAP_EXIT: &str = "hawk_mem_mmap_exit";
        /// Tracepoint `syscalls/sys_enter_munmap`.
        pub const MUNMAP: &str = "hawk_mem_munmap";
    }

    /// Which allocation function a record came from.
    pub mod kind {
        pub const MALLOC: u32 = 1;
        pub const CALLOC: u32 = 2;
        pub const REALLOC: u32 = 3;
        pub const MEMALIGN: u32 = 4;
        pub const VALLOC: u32 = 5;
        pub const POSIX_MEMALIGN: u32 = 6;
        /// An allocation the shim's sampled allocator reported; its bytes
        /// are the weight it stands for.
        pub const SAMPLED: u32 = 7;
        /// An anonymous `mmap` made outside the allocator.
        pub const MMAP: u32 = 8;

        /// The function's name (`malloc`, …), `alloc` when unknown.
        pub fn name(kind: u32) -> &'static str {
            match kind {
                MALLOC => "malloc",
                CALLOC => "calloc",
                REALLOC => "realloc",
                MEMALIGN => "memalign",
                VALLOC => "valloc",
                POSIX_MEMALIGN => "posix_memalign",
                SAMPLED => "hawk_alloc_sample",
                MMAP => "mmap",
                _ => "alloc",
            }
        }
    }

    /// Indexes into `MEM_STATS`.
    pub mod stats {
        /// Allocations seen (successful calls).
        pub const ALLOCS: u32 = 0;
        /// Frees of non-NULL pointers seen (reallocs that moved count too).
        pub const FREES: u32 = 1;
        /// Frees of addresses not in the live map (allocated before the
        /// probes were attached, or dropped when it was full).
        pub const FREES_UNKNOWN: u32 = 2;
        /// Allocations not tracked as live because `MEM_LIVE` was full (the
        /// older entries stay: leaks are the old ones).
        pub const LIVE_FULL: u32 = 3;
        /// Allocations not added to the per-stack totals: `MEM_TOTALS` full.
        pub const TOTALS_FULL: u32 = 4;
        /// Allocations whose user stack could not be recorded.
        pub const STACK_ERRORS: u32 = 5;
        /// Allocation calls that failed (returned NULL).
        pub const FAILED: u32 = 6;
        /// Sampled allocations the shim reported (each stands for `weight`
        /// bytes; `ALLOCS` counts them too).
        pub const SAMPLED: u32 = 7;
        /// Anonymous mmaps recorded (`ALLOCS` counts them too).
        pub const MMAPS: u32 = 8;
        /// munmaps of a recorded mapping (`FREES` counts them too).
        pub const MUNMAPS: u32 = 9;
        /// Number of counters.
        pub const LEN: u32 = 10;
    }

    /// Key of `MEM_LIVE`: an address in a process.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct MemLiveKey {
        pub pid: u32,
        pub _pad: u32,
        pub addr: u64,
    }

    /// Value of `MEM_LIVE`: one allocation not freed yet.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MemLiveValue {
        /// Bytes requested.
        pub size: u64,
        /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the allocation.
        pub timestamp_ns: u64,
        /// Id in `STACKS`, or a negative errno.
        pub stack_id: i32,
        /// One of [`kind`].
        pub kind: u32,
        pub tid: u32,
        pub _pad: u32,
        /// The thread's trace context at the allocation (zero: none).
        pub trace: crate::TraceContext,
    }

    /// Key of `MEM_TOTALS`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct MemTotalKey {
        pub pid: u32,
        pub tid: u32,
        /// Id in `STACKS`, or a negative errno.
        pub stack_id: i32,
        /// One of [`kind`].
        pub kind: u32,
        pub trace: crate::TraceContext,
    }

    /// Value of `MEM_TOTALS`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MemTotalValue {
        /// Bytes allocated.
        pub bytes: u64,
        /// Allocation calls.
        pub count: u64,
    }

    /// Value of `MEM_PENDING`: an allocator call between entry and return.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MemPending {
        /// Bytes requested.
        pub size: u64,
        /// realloc: the old pointer; posix_memalign: where the result goes.
        pub arg: u64,
        /// The stack pointer at entry: tells nested calls and returns apart.
        pub sp: u64,
        /// `bpf_ktime_get_ns()` at entry.
        pub timestamp_ns: u64,
        /// One of [`kind`]; 0 once the call returned.
        pub kind: u32,
        pub _pad: u32,
    }

    const _: () = assert!(core::mem::size_of::<MemLiveKey>() == 16);
    const _: () = assert!(core::mem::size_of::<MemLiveValue>() == 8 * 2 + 4 * 4 + 24);
    const _: () = assert!(core::mem::size_of::<MemTotalKey>() == 4 * 4 + 24);
    const _: () = assert!(core::mem::size_of::<MemTotalValue>() == 16);
    const _: () = assert!(core::mem::size_of::<MemPending>() == 8 * 4 + 8);

    #[cfg(feature = "user")]
    mod pod {
        // SAFETY: plain-old-data, repr(C), no padding (asserted above).
        unsafe impl aya::Pod for super::MemLiveKey {}
        unsafe impl aya::Pod for super::MemLiveValue {}
        unsafe impl aya::Pod for super::MemTotalKey {}
        unsafe impl aya::Pod for super::MemTotalValue {}
        unsafe impl aya::Pod for super::MemPending {}
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), no padding (asserted above).
    unsafe impl aya::Pod for super::TraceContext {}
    unsafe impl aya::Pod for super::SampleKey {}
    unsafe impl aya::Pod for super::SampleValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_arguments_map_big_endian_onto_w3c_ids() {
        // DESIGN.md's example.
        let ctx =
            TraceContext::from_args(0x4bf92f3577b34da6, 0xa3ce929d0e0e4736, 0x00f067aa0ba902b7);
        assert_eq!(
            ctx.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(
            ctx.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(!ctx.is_empty());
        assert!(TraceContext::default().is_empty());
    }
}
