//! Hawk's BPF programs.
//!
//! - `hawk_cpu_sample` (perf_event, software CPU clock on every CPU): records
//!   the user and kernel stack of the running thread and counts it in
//!   `CPU_COUNTS`, keyed by (pid, tid, stacks, trace context).
//! - `hawk_trace_context_set` (uprobe on the shim's marker): stores the
//!   calling thread's trace context in `TRACE_CTX`.
//! - `hawk_sched_exec` (tracepoint sched/sched_process_exec): tells userspace
//!   which process just exec'd, so it can look for the shim's marker in it.
//! - `hawk_task_newtask` ([`forks`]): adds the processes targets fork to `PIDS`.
//! - The memory programs ([`mem`]).
//!
//! The programs know nothing about output formats; userspace reads the maps.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, perf_event, tracepoint, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{PerfEventContext, ProbeContext, TracePointContext, tracing::StackIdContext},
};
use hawk_common::{
    STACK_ID_NONE, STACK_KERNEL, STACK_USER, SampleKey, SampleValue, TraceContext, stats,
};

mod forks;
mod mem;

const EFAULT: i32 = 14;
const EEXIST: i32 = 17;
const ENOMEM: i32 = 12;

#[unsafe(no_mangle)]
static FILTER_PIDS: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static STACK_MODE: Global<u8> = Global::new(STACK_USER | STACK_KERNEL);
#[unsafe(no_mangle)]
static TRACED_ONLY: Global<u8> = Global::new(0);

#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16_384, 0);

#[map]
static CPU_COUNTS: HashMap<SampleKey, SampleValue> = HashMap::with_max_entries(32_768, 0);

#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(4_096, 0);

#[map]
static TRACE_CTX: LruHashMap<u64, TraceContext> = LruHashMap::with_max_entries(16_384, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::LEN, 0);

#[map]
static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// The pid (u32) of each new `CPU_COUNTS` key: a process sampled for the
/// first time, or one running new code (a library it just loaded), so that
/// userspace reads its memory maps at once, before a short-lived process is
/// gone.
#[map]
static PID_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[inline(always)]
fn count(stat: u32) {
    if let Some(ptr) = STATS.get_ptr_mut(stat) {
        // Per-CPU slot: no other CPU writes it, and perf_event programs do not nest.
        unsafe { *ptr += 1 };
    }
}

#[inline(always)]
fn stack_id(ctx: &PerfEventContext, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            // -EFAULT just means "no stack of that kind" (a kernel thread has
            // no user stack; a sample in user mode has no kernel stack).
            if err == -EEXIST || err == -ENOMEM {
                count(stats::STACK_ERRORS);
            }
            err
        }
    }
}

/// True when the sample interrupted user mode, read from the saved
/// registers as the kernel's `user_mode(regs)` does. False where the
/// architecture is not known here: then the kernel stack is always asked for.
#[inline(always)]
fn interrupted_user_mode(ctx: &PerfEventContext) -> bool {
    // SAFETY: the context of a perf_event program points at its
    // `bpf_perf_event_data`; the verifier allows reading its registers.
    #[cfg(bpf_target_arch = "x86_64")]
    return unsafe { (*ctx.ctx).regs.cs } & 3 == 3;
    // PSR_MODE_MASK / PSR_MODE_EL0t.
    #[cfg(bpf_target_arch = "aarch64")]
    return unsafe { (*ctx.ctx).regs.pstate } & 0xf == 0;
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    {
        let _ = ctx;
        false
    }
}

#[perf_event]
pub fn hawk_cpu_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if tid == 0 {
        // The idle task: not work anybody asked for.
        return 0;
    }
    if FILTER_PIDS.load() != 0 && unsafe { PIDS.get(&pid) }.is_none() {
        return 0;
    }
    let trace = unsafe { TRACE_CTX.get(&pid_tgid) }.copied();
    if trace.is_none() && TRACED_ONLY.load() != 0 {
        return 0;
    }
    count(stats::SAMPLES);

    let mode = STACK_MODE.load();
    let user_stack_id = if mode & STACK_USER != 0 {
        stack_id(&ctx, BPF_F_USER_STACK as u64)
    } else {
        STACK_ID_NONE
    };
    let kernel_stack_id = if mode & STACK_KERNEL == 0 {
        STACK_ID_NONE
    } else if interrupted_user_mode(&ctx) {
        // No kernel stack. The helper would answer -EFAULT too, but only
        // after ≈0.2 µs, ≈0.6 µs at 99 Hz (BENCHMARKS.md, section 2).
        -EFAULT
    } else {
        stack_id(&ctx, 0)
    };
    let trace = match trace {
        Some(trace) => {
            count(stats::TRACED_SAMPLES);
            trace
        }
        None => TraceContext::default(),
    };
    let key = SampleKey {
        pid,
        tid,
        user_stack_id,
        kernel_stack_id,
        trace,
    };
    add_sample(&key);
    0
}

#[inline(always)]
fn add_sample(key: &SampleKey) {
    if let Some(value) = CPU_COUNTS.get_ptr_mut(key) {
        bump(value);
        return;
    }
    let value = SampleValue {
        count: 1,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if CPU_COUNTS.insert(key, &value, BPF_NOEXIST as u64).is_err() {
        // Either another CPU inserted the key first, or the map is full.
        match CPU_COUNTS.get_ptr_mut(key) {
            Some(value) => bump(value),
            None => count(stats::COUNTS_FULL),
        }
        return;
    }
    // A new key (the slow path already): a new process, or new code.
    if PID_EVENTS.output::<u32>(&key.pid, 0).is_err() {
        count(stats::PID_EVENTS_LOST);
    }
}

#[inline(always)]
fn bump(value: *mut SampleValue) {
    // No atomics needed: the key holds the thread id, and a thread runs on
    // one CPU at a time, so two CPUs never count the same key at once.
    unsafe { (*value).count += 1 };
}

/// `hawk_trace_context_set(trace_id_hi, trace_id_lo, span_id, flags)`:
/// flags bit 0 set → the thread now serves that span; clear → no span.
#[uprobe]
pub fn hawk_trace_context_set(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (Some(hi), Some(lo), Some(span), Some(flags)) = (
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1),
        ctx.arg::<u64>(2),
        ctx.arg::<u64>(3),
    ) else {
        return 0;
    };
    if flags & 1 == 0 || (hi == 0 && lo == 0) {
        let _ = TRACE_CTX.remove(&pid_tgid);
    } else {
        let _ = TRACE_CTX.insert(&pid_tgid, &TraceContext::from_args(hi, lo, span), 0);
    }
    0
}

/// A process replaced its image: send its pid to userspace.
#[tracepoint]
pub fn hawk_sched_exec(_ctx: TracePointContext) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if EXEC_EVENTS.output::<u32>(&pid, 0).is_err() {
        count(stats::EXEC_EVENTS_LOST);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
