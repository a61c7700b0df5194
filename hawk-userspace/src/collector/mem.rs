//! The memory tracer (`record --mem`, `capture --mem`, the daemon's memory
//! endpoint): aggregates in the kernel the bytes allocated per stack
//! (`MEM_TOTALS`) and the allocations not freed yet (`MEM_LIVE`), from one
//! of two sources per process:
//!
//! - **libc**: uprobes on the allocator of the C library the process really
//!   maps (every call, exact), plus the `mmap`/`munmap` tracepoints for
//!   anonymous mappings made outside the allocator;
//! - **sampled**: uprobes on the shim's `hawk_alloc_sample` /
//!   `hawk_free_sample` markers, for programs whose global allocator is the
//!   shim's `SampledAlloc` (about one call per 512 KiB, weights scaled up).
//!
//! [`SourceChoice::Auto`] takes the sampled source when the program links
//! the sampled allocator (its binary has the `hawk_alloc_sample` symbol:
//! the linker drops the marker when nothing calls it), libc otherwise.
//!
//! Where a probe sits matters: the kernel emulates a few instructions
//! (`push`, jumps, calls) at ≈450 ns a hit and single-steps every other one
//! at ≈14.5 µs. glibc's `free` starts with `test %rdi,%rdi; je …`, so its
//! probe goes on the `je` (same registers, emulated); [`probe_offset`] skips
//! such flag-only instructions at the start of every probed function. The
//! uretprobes sit on the same instruction (no stack change before it, so
//! `[rsp]` is still the return address) and share the breakpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::num::NonZeroU32;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, StackTraceMap};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{TracePoint, UProbe};
use blazesym::inspect::Inspector;
use blazesym::inspect::source::{Elf, Source};
use hawk_common::mem::{
    MemLiveKey, MemLiveValue, MemTotalKey, MemTotalValue, maps as mem_maps, programs, stats,
};
use hawk_common::{TraceContext, maps};

use super::bpf::{self, CollectorError, Globals};
use super::cpu::RawSample;
use super::procs::{self, ProcessTable};
use super::stacks::SeenStacks;
use crate::profile::MemSource;
use crate::symbolize::Symbolizer;

/// Which source of allocation events to use for a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceChoice {
    /// The sampled allocator when the program links it, else libc.
    #[default]
    Auto,
    /// uprobes on the C library's allocator, whatever the program links.
    Libc,
    /// The shim's sampled allocator; an error for programs without it.
    Sampled,
}

/// What to trace.
#[derive(Clone, Debug, Default)]
pub struct MemConfig {
    /// Processes to trace; empty means every process using the C library
    /// Hawk itself maps (libc source only).
    pub pids: Vec<u32>,
    /// Processes among `pids` that have not exec'd yet (commands Hawk
    /// started and holds), with the program they will run: their own maps
    /// still show Hawk.
    pub executables: Vec<(u32, PathBuf)>,
    pub source: SourceChoice,
    /// Record allocations only while the thread serves a trace.
    pub traced_only: bool,
    /// Trace only `pids` and the processes added later with
    /// [`MemTracer::add_pid`], even while there are none (no system-wide
    /// fallback).
    pub targets_only: bool,
}

/// How one process (or, system-wide, every process) is traced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// uprobes on the allocator functions of a C library.
    Libc {
        library: PathBuf,
        points: Vec<ProbePoint>,
    },
    /// uprobes on the sampled allocator's markers in a binary.
    Sampled { binary: PathBuf },
}

/// One allocator function and where its probes go in the library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// `malloc`, `free`, …
    pub function: &'static str,
    /// The entry program.
    pub program: &'static str,
    /// Whether the function returns a pointer Hawk needs (a uretprobe too).
    pub returns: bool,
    /// File offset of the function in the library.
    pub symbol_offset: u64,
    /// Bytes skipped to reach an emulated instruction (0: at the entry).
    pub skipped: u64,
    /// Whether the kernel emulates the probed instruction (cheap) or must
    /// single-step it (≈30 times dearer).
    pub emulated: bool,
}

impl ProbePoint {
    /// The file offset the probes are attached at.
    pub fn offset(&self) -> u64 {
        self.symbol_offset + self.skipped
    }
}

/// The allocator functions, their programs, and whether they need a uretprobe.
const FUNCTIONS: &[(&str, &str, bool)] = &[
    ("malloc", programs::MALLOC, true),
    ("calloc", programs::CALLOC, true),
    ("realloc", programs::REALLOC, true),
    ("reallocarray", programs::REALLOCARRAY, true),
    ("aligned_alloc", programs::MEMALIGN, true),
    ("memalign", programs::MEMALIGN, true),
    ("valloc", programs::VALLOC, true),
    ("pvalloc", programs::VALLOC, true),
    ("posix_memalign", programs::POSIX_MEMALIGN, true),
    ("free", programs::FREE, false),
];

/// Every uprobe program the tracer loads.
const PROGRAMS: &[&str] = &[
    programs::MALLOC,
    programs::CALLOC,
    programs::REALLOC,
    programs::REALLOCARRAY,
    programs::MEMALIGN,
    programs::VALLOC,
    programs::POSIX_MEMALIGN,
    programs::FREE,
    programs::ALLOC_RETURN,
    programs::ALLOC_SAMPLE,
    programs::FREE_SAMPLE,
];

/// The tracepoint programs of the libc source: (program, syscall event).
const TRACEPOINTS: &[(&str, &str)] = &[
    (programs::MMAP_ENTER, "sys_enter_mmap"),
    (programs::MMAP_EXIT, "sys_exit_mmap"),
    (programs::MUNMAP, "sys_enter_munmap"),
];

/// The binary `pid` runs (or a library it maps) that links the shim's
/// sampled allocator, as a path that reaches it from here. `exe` is the
/// program a process that has not exec'd yet will run.
pub fn find_sampled_allocator(pid: u32, exe: Option<&Path>) -> Option<PathBuf> {
    let inspector = Inspector::new();
    let has_marker = |path: &Path| {
        super::shim::exports_symbol(&inspector, path, hawk_common::shim_symbols::ALLOC_SAMPLE)
    };
    if let Some(exe) = exe {
        return has_marker(exe).then(|| exe.to_path_buf());
    }
    super::shim::executable_mappings(pid)
        .into_iter()
        .map(|path| in_root(pid, &path))
        .find(|path| has_marker(path))
}

/// `path` as process `pid` sees it, reached through `/proc/PID/root` (for
/// processes in other mount namespaces) when that exists.
fn in_root(pid: u32, path: &Path) -> PathBuf {
    let through_root = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(path.strip_prefix("/").unwrap_or(path));
    if through_root.exists() {
        through_root
    } else {
        path.to_path_buf()
    }
}

/// Where to probe code that starts with `code` (x86-64): the number of bytes
/// of flag-only instructions (`test reg,reg`, `cmp $imm8, disp32(%rip)`) to
/// skip so the probe lands on one the kernel emulates (`push`, `jcc`, `jmp`,
/// `call`), and whether it found one. Skipped instructions change neither
/// the argument registers nor the stack, so the probe sees the same
/// arguments and return address as at the entry.
pub fn probe_offset(code: &[u8]) -> (u64, bool) {
    let mut at = 0usize;
    for _ in 0..4 {
        let rest = &code[at.min(code.len())..];
        if is_emulated(rest) {
            return (at as u64, true);
        }
        match flag_only_len(rest) {
            Some(len) => at += len,
            None => break,
        }
    }
    (0, is_emulated(code))
}

/// `push reg`, `jcc`, `jmp`, `call`: what x86 uprobes emulate without a
/// single step.
fn is_emulated(code: &[u8]) -> bool {
    match code {
        // push %rax..%rdi; push %r8..%r15
        [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..] => true,
        // jcc rel8, jmp rel8/rel32, call rel32
        [0x70..=0x7f, ..] | [0xeb | 0xe9 | 0xe8, ..] => true,
        // jcc rel32
        [0x0f, 0x80..=0x8f, ..] => true,
        _ => false,
    }
}

/// Length of a flag-only instruction at the start of `code`, if it is one.
fn flag_only_len(code: &[u8]) -> Option<usize> {
    let (rex, rest) = match code {
        [0x40..=0x4f, rest @ ..] => (1, rest),
        _ => (0, code),
    };
    match rest {
        // test r/m, reg with a register operand (mod = 11)
        [0x84 | 0x85, modrm, ..] if modrm >> 6 == 3 => Some(rex + 2),
        // cmp $imm8, disp32(%rip): 80 /7 or 83 /7 with mod = 00, rm = 101
        [0x80 | 0x83, 0x3d, ..] => Some(rex + 7),
        _ => None,
    }
}

/// The C library `pid` maps, as a path that reaches it from here (through
/// `/proc/PID/root`, so processes in other mount namespaces work too).
pub fn find_libc(pid: u32) -> Result<PathBuf, CollectorError> {
    let maps_path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_path)
        .map_err(|e| CollectorError::Io(format!("reading {maps_path}: {e}")))?;
    let path = libc_in_maps(&maps).ok_or_else(|| {
        CollectorError::Io(format!(
            "process {pid} maps no shared C library (statically linked?): nothing to probe for --mem"
        ))
    })?;
    Ok(in_root(pid, &path))
}

/// The C library of every running process, as paths that reach them from
/// here (repeats included).
fn all_libcs() -> Vec<PathBuf> {
    procs::live_pids()
        .into_iter()
        .filter_map(|pid| find_libc(pid).ok())
        .collect()
}

/// Device and inode of a file.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The path of the C library in the text of a `/proc/PID/maps`.
fn libc_in_maps(maps: &str) -> Option<PathBuf> {
    maps.lines().find_map(|line| {
        let path = line.split_whitespace().nth(5)?;
        let name = Path::new(path).file_name()?.to_str()?;
        let is_libc = name.starts_with("libc.so")
            || (name.starts_with("libc-") && name.ends_with(".so"))
            || name.starts_with("ld-musl-");
        is_libc.then(|| PathBuf::from(path))
    })
}

/// Where each allocator function of `library` gets its probes. Functions the
/// library does not export are left out; aliases (glibc's `aligned_alloc` is
/// `memalign`) are probed once.
pub fn plan(library: &Path) -> Result<Vec<ProbePoint>, CollectorError> {
    let inspector = Inspector::new();
    // The library's own symbols (.dynsym): they carry file offsets, which
    // separate debug files do not.
    let mut elf = Elf::new(library);
    elf.debug_syms = false;
    let src = Source::Elf(elf);
    let names: Vec<&str> = FUNCTIONS.iter().map(|(name, _, _)| *name).collect();
    let found = inspector.lookup(&src, &names).map_err(|e| {
        CollectorError::Io(format!("reading the symbols of {}: {e}", library.display()))
    })?;
    let file = std::fs::File::open(library)
        .map_err(|e| CollectorError::Io(format!("opening {}: {e}", library.display())))?;
    // HAWK_MEM_PROBE_AT_ENTRY=1 puts every probe on the first instruction
    // (to measure what the placement saves).
    let at_entry = std::env::var_os("HAWK_MEM_PROBE_AT_ENTRY").is_some_and(|v| v == "1");
    let mut seen = HashSet::new();
    let mut points = Vec::new();
    for ((function, program, returns), syms) in FUNCTIONS.iter().zip(found) {
        let Some(symbol_offset) = syms.iter().find_map(|s| s.file_offset) else {
            continue;
        };
        if !seen.insert(symbol_offset) {
            continue;
        }
        let mut code = [0u8; 32];
        let n = file.read_at(&mut code, symbol_offset).unwrap_or(0);
        let (skipped, emulated) = if at_entry {
            (0, is_emulated(&code[..n]))
        } else {
            probe_offset(&code[..n])
        };
        points.push(ProbePoint {
            function,
            program,
            returns: *returns,
            symbol_offset,
            skipped,
            emulated,
        });
    }
    if !points.iter().any(|p| p.function == "malloc") {
        return Err(CollectorError::Io(format!(
            "{} exports no malloc: not a C library",
            library.display()
        )));
    }
    Ok(points)
}

/// Counters kept by the memory programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemKernelStats {
    pub allocations: u64,
    pub frees: u64,
    pub unknown_frees: u64,
    pub live_full: u64,
    pub totals_full: u64,
    pub stack_errors: u64,
    pub failed: u64,
    /// Allocations reported by the sampled allocator (in `allocations` too).
    pub sampled: u64,
    /// Anonymous mmaps recorded (in `allocations` too).
    pub mmaps: u64,
    /// munmaps of recorded mappings (in `frees` too).
    pub munmaps: u64,
}

/// Aggregated records read out of the maps, leaf first, plus the
/// allocator function of each.
#[derive(Clone, Debug, Default)]
pub struct MemRecords {
    /// Bytes allocated per (pid, tid, stack, function, trace); `count` is bytes.
    pub allocated: Vec<(RawSample, u32)>,
    /// Bytes not freed yet (and at least `min_age` old) per (pid, tid,
    /// stack, function, trace); `count` is bytes.
    pub outstanding: Vec<(RawSample, u32)>,
    /// Bytes of every live allocation, whatever its age.
    pub heap_current_bytes: u64,
    /// Number of live allocations.
    pub live_allocations: u64,
    /// Number of allocation calls in `allocated`.
    pub allocation_calls: u64,
}

/// A running memory tracer. Dropping it detaches the probes.
pub struct MemTracer {
    ebpf: Ebpf,
    started: SystemTime,
    choice: SourceChoice,
    /// How each traced process (or the whole system) is probed.
    attachments: Vec<Attachment>,
    /// Whether the mmap tracepoints are attached.
    mmap_attached: bool,
    /// The processes traced one by one (not system-wide).
    traced: BTreeSet<u32>,
    seen: SeenStacks,
}

impl MemTracer {
    /// Loads the programs and attaches them to each pid (or, with no pids,
    /// to the C library Hawk maps, for every process).
    pub fn start(config: &MemConfig) -> Result<Self, CollectorError> {
        for pid in &config.pids {
            if !procs::exists(*pid) {
                return Err(CollectorError::NoSuchProcess(*pid));
            }
        }
        let system_wide = config.pids.is_empty() && !config.targets_only;
        if system_wide && config.source == SourceChoice::Sampled {
            return Err(CollectorError::Io(
                "the sampled allocator source needs target processes (--pid or a command)"
                    .to_string(),
            ));
        }
        let ebpf = bpf::load(&Globals {
            filter_pids: !system_wide,
            stack_mode: 0,
            traced_only: config.traced_only,
        })?;
        let mut tracer = Self {
            ebpf,
            started: SystemTime::now(),
            choice: config.source,
            attachments: Vec::new(),
            mmap_attached: false,
            traced: BTreeSet::new(),
            seen: SeenStacks::default(),
        };
        for name in PROGRAMS {
            tracer
                .program(name)?
                .load()
                .map_err(|source| CollectorError::Program { name, source })?;
        }
        if system_wide {
            // Every C library some process maps (containers bring their
            // own), each file once; Hawk's own first, so that one failure
            // elsewhere does not stop the rest.
            let mine = find_libc(std::process::id())?;
            tracer.attach_libc(&mine, UProbeScope::AllProcesses)?;
            let mut done = HashSet::new();
            if let Some(id) = file_id(&mine) {
                done.insert(id);
            }
            for libc in all_libcs() {
                if file_id(&libc).is_some_and(|id| done.insert(id))
                    && let Err(e) = tracer.attach_libc(&libc, UProbeScope::AllProcesses)
                {
                    tracing::warn!("not probing {}: {e}", libc.display());
                }
            }
        }
        for pid in &config.pids {
            let exe = config
                .executables
                .iter()
                .find(|(p, _)| p == pid)
                .map(|(_, exe)| exe.as_path());
            tracer.add_pid_running(*pid, exe)?;
        }
        tracer.started = SystemTime::now();
        Ok(tracer)
    }

    fn program(&mut self, name: &'static str) -> Result<&mut UProbe, CollectorError> {
        bpf::program_mut(&mut self.ebpf, name)
    }

    /// Traces `pid` too: puts it in the pid filter and attaches the probes
    /// of its source, for that process only.
    pub fn add_pid(&mut self, pid: u32) -> Result<(), CollectorError> {
        self.add_pid_running(pid, None)
    }

    fn add_pid_running(&mut self, pid: u32, exe: Option<&Path>) -> Result<(), CollectorError> {
        if !self.traced.insert(pid) {
            return Ok(());
        }
        let mut pids: BpfHashMap<&mut MapData, u32, u8> = bpf::map_mut(&mut self.ebpf, maps::PIDS)?;
        pids.insert(pid, 1, 0)
            .map_err(|source| CollectorError::Map {
                name: maps::PIDS,
                source,
            })?;
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or(CollectorError::NoSuchProcess(pid))?,
        );
        let sampled = match self.choice {
            SourceChoice::Libc => None,
            SourceChoice::Auto => find_sampled_allocator(pid, exe),
            SourceChoice::Sampled => Some(find_sampled_allocator(pid, exe).ok_or_else(|| {
                CollectorError::Io(format!(
                    "process {pid} does not link the shim's sampled allocator (no {} symbol)",
                    hawk_common::shim_symbols::ALLOC_SAMPLE
                ))
            })?),
        };
        match sampled {
            Some(binary) => self.attach_sampled(&binary, scope),
            None => {
                let libc = find_libc(pid)?;
                self.attach_libc(&libc, scope)
            }
        }
    }

    /// Starts tracing the children the traced processes forked (and that
    /// are still alive), with the source each one's own program calls for.
    /// Returns the pids added. Allocations a child makes before this call
    /// are not seen; frees of blocks it inherited count as unknown frees.
    pub fn follow_children(&mut self) -> Vec<u32> {
        let parents: Vec<u32> = self.traced.iter().copied().collect();
        let mut added = Vec::new();
        for parent in parents {
            for child in procs::children(parent) {
                if self.traced.contains(&child) {
                    continue;
                }
                match self.add_pid(child) {
                    Ok(()) => added.push(child),
                    // Gone already, or statically linked: nothing to follow.
                    Err(e) => {
                        self.traced.insert(child);
                        tracing::debug!("not following child {child} of {parent}: {e}");
                    }
                }
            }
        }
        added
    }

    fn attach_sampled(&mut self, binary: &Path, scope: UProbeScope) -> Result<(), CollectorError> {
        for (name, symbol) in [
            (
                programs::ALLOC_SAMPLE,
                hawk_common::shim_symbols::ALLOC_SAMPLE,
            ),
            (
                programs::FREE_SAMPLE,
                hawk_common::shim_symbols::FREE_SAMPLE,
            ),
        ] {
            self.program(name)?
                .attach(symbol, binary, clone_scope(&scope))
                .map_err(|source| CollectorError::Program { name, source })?;
        }
        let attachment = Attachment::Sampled {
            binary: binary.to_path_buf(),
        };
        if !self.attachments.contains(&attachment) {
            self.attachments.push(attachment);
        }
        Ok(())
    }

    fn attach_libc(&mut self, libc: &Path, scope: UProbeScope) -> Result<(), CollectorError> {
        let points = plan(libc)?;
        for point in &points {
            // The return probe first: an entry seen without its return would
            // leave a pending call behind.
            if point.returns {
                let name = programs::ALLOC_RETURN;
                self.program(name)?
                    .attach(point.offset(), libc, clone_scope(&scope))
                    .map_err(|source| CollectorError::Program { name, source })?;
            }
            let name = point.program;
            self.program(name)?
                .attach(point.offset(), libc, clone_scope(&scope))
                .map_err(|source| CollectorError::Program { name, source })?;
        }
        self.attach_mmap()?;
        self.attachments.push(Attachment::Libc {
            library: libc.to_path_buf(),
            points,
        });
        Ok(())
    }

    /// The mmap/munmap tracepoints, once (they filter by pid in the kernel).
    fn attach_mmap(&mut self) -> Result<(), CollectorError> {
        if self.mmap_attached {
            return Ok(());
        }
        super::check::ensure_tracefs().map_err(CollectorError::Io)?;
        for (name, event) in TRACEPOINTS {
            let program: &mut TracePoint = bpf::program_mut(&mut self.ebpf, name)?;
            program
                .load()
                .map_err(|source| CollectorError::Program { name, source })?;
            program
                .attach("syscalls", event)
                .map_err(|source| CollectorError::Program { name, source })?;
        }
        self.mmap_attached = true;
        Ok(())
    }

    /// How each process is probed.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The source of the events: sampled when every attachment is the
    /// sampled allocator, libc otherwise.
    pub fn source(&self) -> MemSource {
        let all_sampled = !self.attachments.is_empty()
            && self
                .attachments
                .iter()
                .all(|a| matches!(a, Attachment::Sampled { .. }));
        if all_sampled {
            MemSource::Sampled
        } else {
            MemSource::Libc
        }
    }

    /// When tracing started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    fn totals(
        ebpf: &Ebpf,
    ) -> Result<BpfHashMap<&MapData, MemTotalKey, MemTotalValue>, CollectorError> {
        bpf::map(ebpf, mem_maps::TOTALS)
    }

    fn live(ebpf: &Ebpf) -> Result<BpfHashMap<&MapData, MemLiveKey, MemLiveValue>, CollectorError> {
        bpf::map(ebpf, mem_maps::LIVE)
    }

    fn stacks(ebpf: &Ebpf) -> Result<StackTraceMap<&MapData>, CollectorError> {
        bpf::map(ebpf, maps::STACKS)
    }

    /// Learns the processes and stacks that appeared since the last poll,
    /// while they are alive (names, where addresses are mapped). Returns the
    /// allocation calls seen so far in the totals `keep` accepts.
    pub fn poll(
        &mut self,
        procs: &mut ProcessTable,
        symbolizer: &mut Symbolizer,
        keep: impl Fn(&MemTotalKey) -> bool,
    ) -> Result<u64, CollectorError> {
        let mut calls = 0;
        let mut fresh = Vec::new();
        for (key, value) in Self::totals(&self.ebpf)?.iter().flatten() {
            if !keep(&key) {
                continue;
            }
            calls += value.count;
            procs.observe(key.pid);
            if self.seen.is_new(key.pid, key.stack_id) {
                fresh.push((key.pid, key.stack_id));
            }
        }
        let stacks = Self::stacks(&self.ebpf)?;
        self.seen.normalize_from(&stacks, symbolizer, fresh);
        Ok(calls)
    }

    /// Processes that exited before their memory maps could be read.
    pub fn unmapped_processes(&self) -> usize {
        self.seen.unmapped_processes()
    }

    /// The counters of the memory programs, summed over CPUs.
    pub fn kernel_stats(&self) -> Result<MemKernelStats, CollectorError> {
        let array: PerCpuArray<&MapData, u64> = bpf::map(&self.ebpf, mem_maps::STATS)?;
        let read = |i: u32| -> u64 {
            array
                .get(&i, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        Ok(MemKernelStats {
            allocations: read(stats::ALLOCS),
            frees: read(stats::FREES),
            unknown_frees: read(stats::FREES_UNKNOWN),
            live_full: read(stats::LIVE_FULL),
            totals_full: read(stats::TOTALS_FULL),
            stack_errors: read(stats::STACK_ERRORS),
            failed: read(stats::FAILED),
            sampled: read(stats::SAMPLED),
            mmaps: read(stats::MMAPS),
            munmaps: read(stats::MUNMAPS),
        })
    }

    /// Reads the totals and the live allocations. Outstanding allocations
    /// younger than `min_age` (at `now`, CLOCK_MONOTONIC ns) are left out
    /// of `outstanding` but counted in `heap_current_bytes`. Stacks keep
    /// their `max_frames` frames nearest to the allocation.
    pub fn read(
        &self,
        min_age: Duration,
        now_ns: u64,
        max_frames: usize,
    ) -> Result<MemRecords, CollectorError> {
        let stacks = Self::stacks(&self.ebpf)?;
        let mut stack_cache: HashMap<i32, Vec<u64>> = HashMap::new();
        let mut read_stack = |id: i32| -> Vec<u64> {
            if id < 0 {
                return Vec::new();
            }
            stack_cache
                .entry(id)
                .or_insert_with(|| {
                    stacks
                        .get(&(id as u32), 0)
                        .map(|t| t.frames().iter().map(|f| f.ip).collect())
                        .unwrap_or_default()
                })
                .iter()
                .take(max_frames)
                .copied()
                .collect()
        };
        let record = |pid, tid, stack: Vec<u64>, trace, bytes| RawSample {
            pid,
            tid,
            comm: String::new(),
            user_stack: stack,
            kernel_stack: Vec::new(),
            trace,
            count: bytes,
        };
        // System-wide, Hawk's own allocations (reading maps, symbolizing)
        // are probed too; they are not what anyone asked about.
        let me = std::process::id();
        let mut out = MemRecords::default();
        for (key, value) in Self::totals(&self.ebpf)?.iter().flatten() {
            if key.pid == me {
                continue;
            }
            out.allocation_calls += value.count;
            out.allocated.push((
                record(
                    key.pid,
                    key.tid,
                    read_stack(key.stack_id),
                    key.trace,
                    value.bytes,
                ),
                key.kind,
            ));
        }
        type LiveGroup = (u32, u32, i32, u32, TraceContext);
        let mut outstanding: BTreeMap<LiveGroup, u64> = BTreeMap::new();
        let min_age_ns = min_age.as_nanos().min(u64::MAX as u128) as u64;
        for (key, value) in Self::live(&self.ebpf)?.iter().flatten() {
            if key.pid == me {
                continue;
            }
            out.heap_current_bytes += value.size;
            out.live_allocations += 1;
            if now_ns.saturating_sub(value.timestamp_ns) < min_age_ns {
                continue;
            }
            *outstanding
                .entry((key.pid, value.tid, value.stack_id, value.kind, value.trace))
                .or_default() += value.size;
        }
        for ((pid, tid, stack_id, kind, trace), bytes) in outstanding {
            out.outstanding
                .push((record(pid, tid, read_stack(stack_id), trace, bytes), kind));
        }
        Ok(out)
    }

    /// The loaded object, for the other programs in it (the trace-context
    /// uprobe shares `TRACE_CTX` with the tracer).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Detaches the probes but keeps the maps readable.
    pub fn stop(&mut self) {
        for name in PROGRAMS {
            if let Ok(program) = self.program(name) {
                // Unloading detaches every link; the maps stay.
                let _ = program.unload();
            }
        }
        if self.mmap_attached {
            for (name, _) in TRACEPOINTS {
                if let Ok(program) = bpf::program_mut::<TracePoint>(&mut self.ebpf, name) {
                    let _ = program.unload();
                }
            }
        }
    }
}

fn clone_scope(scope: &UProbeScope) -> UProbeScope {
    match scope {
        UProbeScope::AllProcesses => UProbeScope::AllProcesses,
        UProbeScope::CallingProcess => UProbeScope::CallingProcess,
        UProbeScope::OneProcess(pid) => UProbeScope::OneProcess(*pid),
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_entries_get_probes_on_emulated_instructions() {
        // malloc: push %r12
        assert_eq!(probe_offset(&[0x41, 0x54, 0x55, 0x53]), (0, true));
        // free: test %rdi,%rdi; je rel32; push %rbp
        assert_eq!(
            probe_offset(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55]),
            (3, true)
        );
        // posix_memalign: cmpb $0x0,disp32(%rip); push %r12
        assert_eq!(
            probe_offset(&[0x80, 0x3d, 1, 2, 3, 4, 0, 0x41, 0x54]),
            (7, true)
        );
        // aligned_alloc: cmpb $0x0,disp32(%rip); je rel8
        assert_eq!(
            probe_offset(&[0x80, 0x3d, 1, 2, 3, 4, 0, 0x74, 0x07]),
            (7, true)
        );
        // reallocarray: mov %rsi,%rax — single-stepped at the entry
        assert_eq!(probe_offset(&[0x48, 0x89, 0xf0, 0x48, 0xf7]), (0, false));
        // test + something else: back to the entry
        assert_eq!(
            probe_offset(&[0x48, 0x85, 0xff, 0x48, 0x89, 0xf0]),
            (0, false)
        );
        assert_eq!(probe_offset(&[]), (0, false));
    }

    #[test]
    fn finds_libc_in_maps() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 1 /usr/bin/cat
7fb71da66000-7fb71da8c000 r--p 00000000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7fb71da8c000-7fb71dbe2000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
";
        assert_eq!(
            libc_in_maps(maps),
            Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(
            libc_in_maps("1-2 r-xp 0 0:0 1 /lib/ld-musl-x86_64.so.1\n"),
            Some(PathBuf::from("/lib/ld-musl-x86_64.so.1"))
        );
        assert_eq!(
            libc_in_maps("1-2 r-xp 0 0:0 1 /usr/lib/libcap.so.2\n1-2 rw-p 0 0:0 0\n"),
            None
        );
    }

    #[test]
    fn plans_probes_on_this_processes_libc() {
        let libc = find_libc(std::process::id()).expect("this test links libc");
        let points = plan(&libc).expect("plan");
        let malloc = points.iter().find(|p| p.function == "malloc").unwrap();
        assert!(malloc.returns);
        let free = points.iter().find(|p| p.function == "free").unwrap();
        assert!(!free.returns);
        // Distinct offsets only (aliases probed once).
        let offsets: HashSet<u64> = points.iter().map(ProbePoint::offset).collect();
        assert_eq!(offsets.len(), points.len());
    }
}
