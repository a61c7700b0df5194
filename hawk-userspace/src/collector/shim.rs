//! Finding shimmed programs and attaching the trace-context uprobe.
//!
//! A program takes part in trace correlation by exporting
//! `hawk_trace_context_set` (see DESIGN.md). [`ShimAttacher`] looks for that
//! symbol in the executable and the mapped libraries of every running
//! process, and again in each process that execs (the `sched_process_exec`
//! tracepoint reports them through a ring buffer), and attaches one uprobe
//! per binary (device + inode), not per process.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{TracePoint, UProbe};
use blazesym::inspect::Inspector;
use blazesym::inspect::source::{Elf, Source};
use hawk_common::{TraceContext, maps, programs};

use super::check::ensure_tracefs;
use super::{CollectorError, bpf, procs};

/// The marker symbol of the trace-context contract.
pub const MARKER: &str = hawk_common::shim_symbols::TRACE_CONTEXT_SET;

/// Identity of a binary: device and inode.
type FileId = (u64, u64);

/// Attaches the trace-context uprobe to every binary that exports the marker.
pub struct ShimAttacher {
    inspector: Inspector,
    /// Binaries already looked at, with whether they export the marker.
    checked: HashMap<FileId, bool>,
    /// Binaries the uprobe is attached to.
    attached: HashMap<FileId, PathBuf>,
    /// Processes whose mappings were scanned.
    scanned: HashSet<u32>,
    /// Scanned processes that map a binary exporting the marker.
    shimmed: HashSet<u32>,
    exec_events: Option<RingBuf<MapData>>,
}

impl ShimAttacher {
    /// Loads the uprobe program and, when tracefs can be had, the exec
    /// tracepoint. Without the tracepoint, programs started later are found
    /// by [`ShimAttacher::scan_new_processes`] only.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, CollectorError> {
        let name = programs::TRACE_CONTEXT_SET;
        let uprobe: &mut UProbe = bpf::program_mut(ebpf, name)?;
        uprobe
            .load()
            .map_err(|source| CollectorError::Program { name, source })?;

        let exec_events = match ensure_tracefs() {
            Ok(_) => Self::attach_exec_tracepoint(ebpf)?,
            Err(e) => {
                tracing::warn!("{e}; programs started later are found by polling /proc");
                None
            }
        };
        Ok(Self {
            inspector: Inspector::new(),
            checked: HashMap::new(),
            attached: HashMap::new(),
            scanned: HashSet::new(),
            shimmed: HashSet::new(),
            exec_events,
        })
    }

    fn attach_exec_tracepoint(ebpf: &mut Ebpf) -> Result<Option<RingBuf<MapData>>, CollectorError> {
        let name = programs::SCHED_EXEC;
        let tp: &mut TracePoint = bpf::program_mut(ebpf, name)?;
        tp.load()
            .map_err(|source| CollectorError::Program { name, source })?;
        tp.attach("sched", "sched_process_exec")
            .map_err(|source| CollectorError::Program { name, source })?;
        let map = ebpf
            .take_map(maps::EXEC_EVENTS)
            .ok_or(CollectorError::Missing("EXEC_EVENTS map"))?;
        let ring = RingBuf::try_from(map).map_err(|source| CollectorError::Map {
            name: maps::EXEC_EVENTS,
            source,
        })?;
        Ok(Some(ring))
    }

    /// Number of binaries the uprobe is attached to.
    pub fn attached(&self) -> usize {
        self.attached.len()
    }

    /// The live processes seen mapping a binary that exports the marker,
    /// ascending.
    pub fn shimmed_pids(&mut self) -> Vec<u32> {
        self.shimmed.retain(|pid| procs::is_alive(*pid));
        let mut pids: Vec<u32> = self.shimmed.iter().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// Paths of the binaries the uprobe is attached to.
    pub fn attached_paths(&self) -> impl Iterator<Item = &Path> {
        self.attached.values().map(PathBuf::as_path)
    }

    /// Attaches to `path` (`--attach`), failing when it lacks the marker.
    pub fn attach_path(&mut self, ebpf: &mut Ebpf, path: &Path) -> Result<(), CollectorError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| CollectorError::Io(format!("--attach {}: {e}", path.display())))?;
        if !self.exports_marker(path) {
            return Err(CollectorError::Io(format!(
                "--attach {}: no symbol {MARKER} in its .dynsym or .symtab",
                path.display()
            )));
        }
        self.attach(ebpf, (meta.dev(), meta.ino()), path)
    }

    /// Scans every running process. Returns how many binaries were attached.
    pub fn scan_all(&mut self, ebpf: &mut Ebpf) -> usize {
        let before = self.attached.len();
        for pid in procs::live_pids() {
            self.scan_pid(ebpf, pid);
        }
        self.attached.len() - before
    }

    /// Scans processes not seen before (a fallback without the exec
    /// tracepoint, and a safety net for lost exec events).
    pub fn scan_new_processes(&mut self, ebpf: &mut Ebpf) {
        let pids = procs::live_pids();
        // Processes that are gone leave the set (it would otherwise grow
        // with every pid ever seen); a reused pid is a new process.
        let live: HashSet<u32> = pids.iter().copied().collect();
        self.scanned.retain(|pid| live.contains(pid));
        for pid in pids {
            if !self.scanned.contains(&pid) {
                self.scan_pid(ebpf, pid);
            }
        }
    }

    /// Handles the exec events that arrived since the last call.
    pub fn poll_exec_events(&mut self, ebpf: &mut Ebpf) {
        let mut pids = Vec::new();
        if let Some(ring) = self.exec_events.as_mut() {
            while let Some(item) = ring.next() {
                if let Ok(bytes) = <[u8; 4]>::try_from(&item[..]) {
                    pids.push(u32::from_ne_bytes(bytes));
                }
            }
        }
        for pid in pids {
            // An exec replaces the image: look again even if seen before.
            self.scanned.remove(&pid);
            self.shimmed.remove(&pid);
            self.scan_pid(ebpf, pid);
        }
    }

    /// Looks at the executable and file-backed executable mappings of `pid`.
    pub fn scan_pid(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.scanned.insert(pid);
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        for path in executable_mappings(pid) {
            // Through the process's root: containers see other files.
            let in_root = root.join(path.strip_prefix("/").unwrap_or(&path));
            let Ok(meta) = std::fs::metadata(&in_root) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            let exports = match self.checked.get(&id) {
                Some(&exports) => exports,
                None => {
                    let exports = self.exports_marker(&in_root);
                    self.checked.insert(id, exports);
                    if exports && let Err(e) = self.attach(ebpf, id, &in_root) {
                        tracing::warn!("{e}");
                    }
                    exports
                }
            };
            if exports {
                self.shimmed.insert(pid);
            }
        }
    }

    fn exports_marker(&self, path: &Path) -> bool {
        exports_marker(&self.inspector, path)
    }

    fn attach(&mut self, ebpf: &mut Ebpf, id: FileId, path: &Path) -> Result<(), CollectorError> {
        if self.attached.contains_key(&id) {
            return Ok(());
        }
        let name = programs::TRACE_CONTEXT_SET;
        let uprobe: &mut UProbe = bpf::program_mut(ebpf, name)?;
        uprobe
            .attach(MARKER, path, UProbeScope::AllProcesses)
            .map_err(|source| CollectorError::Program { name, source })?;
        tracing::info!("attached trace-context uprobe to {}", path.display());
        self.attached.insert(id, path.to_path_buf());
        Ok(())
    }
}

/// The threads whose current trace context (in `TRACE_CTX` of `ebpf`)
/// `matches`, as (pid, tid, context). Entries of threads that exited without
/// clearing their context are removed from the map on the way.
pub fn traced_threads(
    ebpf: &mut Ebpf,
    matches: impl Fn(&TraceContext) -> bool,
) -> Result<Vec<(u32, u32, TraceContext)>, CollectorError> {
    let mut map: BpfHashMap<&mut MapData, u64, TraceContext> = bpf::map_mut(ebpf, maps::TRACE_CTX)?;
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for (pid_tgid, ctx) in map.iter().flatten() {
        let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
        if !procs::thread_exists(pid, tid) {
            dead.push(pid_tgid);
        } else if matches(&ctx) {
            live.push((pid, tid, ctx));
        }
    }
    for key in dead {
        let _ = map.remove(&key);
    }
    Ok(live)
}

/// True when the ELF file at `path` has the marker in `.dynsym` or `.symtab`.
fn exports_marker(inspector: &Inspector, path: &Path) -> bool {
    exports_symbol(inspector, path, MARKER)
}

/// True when the ELF file at `path` has `symbol` in `.dynsym` or `.symtab`.
pub(crate) fn exports_symbol(inspector: &Inspector, path: &Path, symbol: &str) -> bool {
    let mut elf = Elf::new(path);
    elf.debug_syms = false;
    inspector
        .lookup(&Source::Elf(elf), &[symbol])
        .is_ok_and(|found| found.iter().any(|syms| !syms.is_empty()))
}

/// Paths of the file-backed executable mappings of `pid` (its executable
/// and the libraries it maps), each once, as the process sees them.
pub(crate) fn executable_mappings(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    parse_executable_mappings(&maps)
}

fn parse_executable_mappings(maps: &str) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    procs::executable_mappings(maps)
        .filter(|m| !m.deleted() && seen.insert(m.path))
        .map(|m| PathBuf::from(m.path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_file_mappings_only_once_each() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1234 /usr/bin/svc
55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 1234 /usr/bin/svc
7f0000000000-7f0000001000 r-xp 00000000 fd:01 99 /usr/lib/libc.so.6
7f0000001000-7f0000002000 r-xp 00001000 fd:01 99 /usr/lib/libc.so.6
7f0000002000-7f0000003000 r-xp 00000000 00:00 0 
7f0000003000-7f0000004000 r-xp 00000000 00:00 0 [vdso]
7f0000004000-7f0000005000 r-xp 00000000 fd:01 77 /tmp/my lib.so
7f0000005000-7f0000006000 r-xp 00000000 fd:01 78 /tmp/gone.so (deleted)
";
        assert_eq!(
            parse_executable_mappings(maps),
            vec![
                PathBuf::from("/usr/bin/svc"),
                PathBuf::from("/usr/lib/libc.so.6"),
                PathBuf::from("/tmp/my lib.so"),
            ]
        );
    }

    #[test]
    fn binaries_without_the_marker_are_not_shimmed() {
        let inspector = Inspector::new();
        assert!(!exports_marker(&inspector, Path::new("/bin/true")));
        assert!(!exports_marker(&inspector, Path::new("/nonexistent")));
        assert!(!exports_marker(&inspector, Path::new("/etc/passwd")));
    }
}
