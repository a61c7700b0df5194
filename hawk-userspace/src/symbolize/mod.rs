//! Addresses → function names, with blazesym, each address done once.
//!
//! User addresses go through two steps:
//!
//! 1. [`Symbolizer::normalize`], while the process lives: each (pid, address)
//!    becomes (module, file offset) from `/proc/PID/maps`, and each new module
//!    (keyed by path and build id) is opened through `/proc/PID/root` and kept
//!    open. A process that exits later, or lives in another mount namespace,
//!    can still be symbolized.
//! 2. [`Symbolizer::user_frames`]: (module, offset) → name, batched per module
//!    and cached, so an address shared by many processes (libc) is named once.
//!
//! Kernel addresses are named from kallsyms and cached by address. A frame
//! that has no symbol keeps its place as `module+0xoffset`.
//!
//! A process that exits before its first poll is normalized from a
//! [`MapsSnapshot`] the collector read when the kernel announced its first
//! sample ([`Symbolizer::add_snapshot`]).
//!
//! A long-running caller (the daemon) trims the caches with
//! [`Symbolizer::forget_processes`]: the mappings of processes that are gone,
//! then the modules no remaining process maps, with their open files and
//! names, and blazesym's own per-file caches.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blazesym::normalize::{NormalizeOpts, Normalizer, UserMeta};
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as BlazeSymbolizer};
use blazesym::{MaybeDefault, Pid};

use crate::profile::{Frame, FrameKind};

mod snapshot;

pub use snapshot::{Mapping, MapsSnapshot};

/// Never reused, so a name cached for a dropped module cannot stick to a new one.
type ModuleId = u64;

/// Where a user address was mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Location {
    /// In a file: the module and the offset in it.
    File { module: ModuleId, offset: u64 },
    /// Anonymous memory (JIT code), or a process that was gone before its
    /// maps were read.
    Unknown,
}

struct Module {
    /// The path as the process saw it (for `module+0xoffset` names).
    path: PathBuf,
    /// The file, kept open so it can be read after the process exits.
    file: Option<File>,
}

/// Counters for `/metrics` and the profile stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Distinct (module, offset) and kernel addresses symbolized so far.
    pub symbolized: u64,
    /// Lookups answered from the cache.
    pub cache_hits: u64,
    /// Modules (ELF files) opened.
    pub modules: u64,
    /// Modules dropped because no remaining process maps them.
    pub modules_dropped: u64,
}

/// What the caches hold now, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSizes {
    /// Normalized (pid, address) pairs.
    pub locations: usize,
    /// Modules held (each with its file open).
    pub modules: usize,
    /// Names cached for (module, offset) pairs.
    pub user_names: usize,
    /// Names cached for kernel addresses.
    pub kernel_names: usize,
}

/// Turns stack addresses into [`Frame`]s, caching every step.
pub struct Symbolizer {
    normalizer: Normalizer,
    blaze: BlazeSymbolizer,
    modules: HashMap<ModuleId, Module>,
    next_module: ModuleId,
    module_ids: HashMap<(PathBuf, Option<Vec<u8>>), ModuleId>,
    locations: HashMap<(u32, u64), Location>,
    user_names: HashMap<(ModuleId, u64), Arc<str>>,
    kernel_names: HashMap<u64, Arc<str>>,
    /// Maps read early, for processes that may be gone before `normalize`.
    snapshots: HashMap<u32, MapsSnapshot>,
    stats: SymbolizerStats,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            normalizer: new_normalizer(),
            blaze: new_blaze(),
            modules: HashMap::new(),
            next_module: 0,
            module_ids: HashMap::new(),
            locations: HashMap::new(),
            user_names: HashMap::new(),
            kernel_names: HashMap::new(),
            snapshots: HashMap::new(),
            stats: SymbolizerStats::default(),
        }
    }

    /// Keeps `snapshot` of `pid`'s maps, for normalizing its addresses if
    /// the process is gone by then.
    pub fn add_snapshot(&mut self, pid: u32, snapshot: MapsSnapshot) {
        self.snapshots.insert(pid, snapshot);
    }

    pub fn stats(&self) -> SymbolizerStats {
        self.stats
    }

    /// Records where the frames of `stack` (leaf first, as the kernel
    /// records them) of `pid` are mapped, for the addresses not seen before.
    /// Call it while the process lives. Returns false when the process's
    /// maps could not be read (it is gone).
    pub fn normalize(&mut self, pid: u32, stack: &[u64]) -> bool {
        self.normalize_addrs(pid, &lookup_addrs(stack))
    }

    fn normalize_addrs(&mut self, pid: u32, addrs: &[u64]) -> bool {
        let mut fresh: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !self.locations.contains_key(&(pid, *a)))
            .collect();
        if fresh.is_empty() {
            return true;
        }
        fresh.sort_unstable();
        fresh.dedup();
        let opts = NormalizeOpts {
            sorted_addrs: true,
            ..Default::default()
        };
        let Ok(output) = self
            .normalizer
            .normalize_user_addrs_opts(Pid::from(pid), &fresh, &opts)
        else {
            return self.normalize_from_snapshot(pid, &fresh);
        };
        // Map each meta entry to a module once.
        let mut meta_modules: Vec<Option<ModuleId>> = Vec::with_capacity(output.meta.len());
        for meta in &output.meta {
            meta_modules.push(match meta {
                UserMeta::Elf(elf) => Some(Self::module_id(
                    &mut self.modules,
                    &mut self.next_module,
                    &mut self.module_ids,
                    &mut self.stats,
                    pid,
                    &elf.path,
                    elf.build_id.as_deref(),
                )),
                _ => None,
            });
        }
        for (addr, (offset, meta_idx)) in fresh.iter().zip(output.outputs.iter()) {
            let location = match meta_modules.get(*meta_idx).copied().flatten() {
                Some(module) => Location::File {
                    module,
                    offset: *offset,
                },
                None => Location::Unknown,
            };
            self.locations.insert((pid, *addr), location);
        }
        // A process that exited but is not reaped yet has empty maps.
        if self.snapshots.contains_key(&pid) {
            let unknown: Vec<u64> = fresh
                .iter()
                .copied()
                .filter(|a| self.locations.get(&(pid, *a)) == Some(&Location::Unknown))
                .collect();
            self.normalize_from_snapshot(pid, &unknown);
        }
        true
    }

    /// Normalizes `addrs` of `pid` from its snapshot; false without one.
    fn normalize_from_snapshot(&mut self, pid: u32, addrs: &[u64]) -> bool {
        let Some(snapshot) = self.snapshots.get(&pid) else {
            return false;
        };
        for addr in addrs {
            let location = match snapshot.locate(*addr) {
                Some((mapping, offset)) => {
                    let key = (mapping.path.clone(), None);
                    let module = match self.module_ids.get(&key) {
                        Some(id) => *id,
                        None => {
                            let id = self.next_module;
                            self.next_module += 1;
                            let file = mapping.file.as_ref().and_then(|f| f.try_clone().ok());
                            self.modules.insert(
                                id,
                                Module {
                                    path: mapping.path.clone(),
                                    file,
                                },
                            );
                            self.module_ids.insert(key, id);
                            self.stats.modules += 1;
                            id
                        }
                    };
                    Location::File { module, offset }
                }
                None => Location::Unknown,
            };
            self.locations.insert((pid, *addr), location);
        }
        true
    }

    fn module_id(
        modules: &mut HashMap<ModuleId, Module>,
        next_module: &mut ModuleId,
        module_ids: &mut HashMap<(PathBuf, Option<Vec<u8>>), ModuleId>,
        stats: &mut SymbolizerStats,
        pid: u32,
        path: &Path,
        build_id: Option<&[u8]>,
    ) -> ModuleId {
        let key = (path.to_path_buf(), build_id.map(<[u8]>::to_vec));
        if let Some(id) = module_ids.get(&key) {
            return *id;
        }
        // Through the process's root, so that containers work too.
        let in_root = Path::new("/proc")
            .join(pid.to_string())
            .join("root")
            .join(path.strip_prefix("/").unwrap_or(path));
        let file = File::open(&in_root).or_else(|_| File::open(path)).ok();
        let id = *next_module;
        *next_module += 1;
        modules.insert(
            id,
            Module {
                path: path.to_path_buf(),
                file,
            },
        );
        module_ids.insert(key, id);
        stats.modules += 1;
        id
    }

    /// Names the user frames `addrs` (leaf first, as the kernel records
    /// them) of `pid`, returning them leaf first. Addresses never normalized
    /// are normalized now (works while the process lives).
    pub fn user_frames(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let lookup: Vec<u64> = lookup_addrs(addrs);
        if lookup
            .iter()
            .any(|a| !self.locations.contains_key(&(pid, *a)))
        {
            self.normalize(pid, &lookup);
        }
        // Symbolize what is not cached yet, batched per module.
        let mut wanted: HashMap<ModuleId, Vec<u64>> = HashMap::new();
        for addr in &lookup {
            if let Some(Location::File { module, offset }) = self.locations.get(&(pid, *addr))
                && !self.user_names.contains_key(&(*module, *offset))
            {
                wanted.entry(*module).or_default().push(*offset);
            }
        }
        for (module, mut offsets) in wanted {
            offsets.sort_unstable();
            offsets.dedup();
            self.symbolize_module(module, &offsets);
        }
        lookup
            .iter()
            .map(|addr| {
                let cached = match self.locations.get(&(pid, *addr)) {
                    Some(Location::File { module, offset }) => {
                        self.user_names.get(&(*module, *offset))
                    }
                    _ => None,
                };
                let name = match cached {
                    Some(name) => {
                        self.stats.cache_hits += 1;
                        name.to_string()
                    }
                    None => format!("[unknown]+{addr:#x}"),
                };
                Frame::new(name, FrameKind::User)
            })
            .collect()
    }

    fn symbolize_module(&mut self, module: ModuleId, offsets: &[u64]) {
        let Some(m) = self.modules.get(&module) else {
            return;
        };
        let file_name = m
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| m.path.display().to_string());
        let results = m.file.as_ref().and_then(|file| {
            let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            let src = Source::Elf(Elf::new(path));
            self.blaze.symbolize(&src, Input::FileOffset(offsets)).ok()
        });
        for (i, offset) in offsets.iter().enumerate() {
            let name: Arc<str> = match results.as_ref().and_then(|r| r.get(i)) {
                Some(Symbolized::Sym(sym)) => Arc::from(sym.name.as_ref()),
                _ => Arc::from(format!("{file_name}+{offset:#x}")),
            };
            self.user_names.insert((module, *offset), name);
            self.stats.symbolized += 1;
        }
    }

    /// Names kernel frames (leaf first), returning them leaf first.
    pub fn kernel_frames(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let lookup = lookup_addrs(addrs);
        let mut fresh: Vec<u64> = lookup
            .iter()
            .copied()
            .filter(|a| !self.kernel_names.contains_key(a))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !fresh.is_empty() {
            fresh.sort_unstable();
            let src = Source::Kernel(Kernel {
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Default::default()
            });
            let results = self.blaze.symbolize(&src, Input::AbsAddr(&fresh)).ok();
            for (i, addr) in fresh.iter().enumerate() {
                let name: Arc<str> = match results.as_ref().and_then(|r| r.get(i)) {
                    Some(Symbolized::Sym(sym)) => Arc::from(sym.name.as_ref()),
                    _ => Arc::from(format!("[kernel]+{addr:#x}")),
                };
                self.kernel_names.insert(*addr, name);
                self.stats.symbolized += 1;
            }
        }
        lookup
            .iter()
            .map(|addr| {
                self.stats.cache_hits += 1;
                Frame::new(self.kernel_names[addr].to_string(), FrameKind::Kernel)
            })
            .collect()
    }

    /// Forgets every process `gone` says is gone (the daemon's periodic
    /// cleanup): its address → module mappings, then each module that no
    /// remaining process maps, with its open file and cached names. When a
    /// module goes, blazesym's normalizer and symbolizer start afresh too:
    /// they cache every file they ever opened (open, parsed) and have no
    /// way to drop one. Returns the number of modules dropped.
    pub fn forget_processes(&mut self, mut gone: impl FnMut(u32) -> bool) -> usize {
        let pids: HashSet<u32> = self
            .locations
            .keys()
            .map(|(p, _)| *p)
            .chain(self.snapshots.keys().copied())
            .collect();
        let gone: HashSet<u32> = pids.into_iter().filter(|p| gone(*p)).collect();
        if !gone.is_empty() {
            self.locations.retain(|(p, _), _| !gone.contains(p));
            self.snapshots.retain(|p, _| !gone.contains(p));
        }
        let used: HashSet<ModuleId> = self
            .locations
            .values()
            .filter_map(|l| match l {
                Location::File { module, .. } => Some(*module),
                Location::Unknown => None,
            })
            .collect();
        let before = self.modules.len();
        self.modules.retain(|id, _| used.contains(id));
        let dropped = before - self.modules.len();
        if dropped > 0 {
            self.module_ids.retain(|_, id| used.contains(id));
            self.user_names.retain(|(m, _), _| used.contains(m));
            self.normalizer = new_normalizer();
            self.blaze = new_blaze();
            self.stats.modules_dropped += dropped as u64;
        }
        dropped
    }

    /// What the caches hold now.
    pub fn sizes(&self) -> CacheSizes {
        CacheSizes {
            locations: self.locations.len(),
            modules: self.modules.len(),
            user_names: self.user_names.len(),
            kernel_names: self.kernel_names.len(),
        }
    }
}

fn new_normalizer() -> Normalizer {
    Normalizer::builder()
        .enable_vma_caching(false)
        .enable_build_id_caching(true)
        .build()
}

fn new_blaze() -> BlazeSymbolizer {
    BlazeSymbolizer::builder()
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .build()
}

/// The addresses to look up for a stack recorded leaf first: every frame but
/// the leaf holds a return address, which points after the call; step back
/// one byte so it names the calling function (as perf does).
fn lookup_addrs(addrs: &[u64]) -> Vec<u64> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| if i == 0 { *a } else { a.saturating_sub(1) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn names_a_function_of_this_process() {
        let addr = marker_function_for_symbolizer_test as *const () as u64;
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        assert!(s.normalize(pid, &[addr]));
        let frames = s.user_frames(pid, &[addr]);
        assert_eq!(frames.len(), 1);
        assert!(
            frames[0]
                .name
                .contains("marker_function_for_symbolizer_test"),
            "got {:?}",
            frames[0]
        );
        // The second lookup is a cache hit, not a new symbolization.
        let before = s.stats().symbolized;
        s.user_frames(pid, &[addr]);
        assert_eq!(s.stats().symbolized, before);
    }

    #[test]
    fn a_gone_process_is_named_from_its_snapshot() {
        // This process's maps, filed under a pid that does not exist: the
        // normalizer cannot read it, the snapshot answers.
        let addr = marker_function_for_symbolizer_test as *const () as u64;
        let gone = u32::MAX - 7;
        let mut s = Symbolizer::new();
        assert!(!s.normalize(gone, &[addr]), "no maps and no snapshot");
        let mut s = Symbolizer::new();
        s.add_snapshot(gone, MapsSnapshot::read(std::process::id()).unwrap());
        assert!(s.normalize(gone, &[addr]));
        let frames = s.user_frames(gone, &[addr, 0x10]);
        assert!(
            frames[0]
                .name
                .contains("marker_function_for_symbolizer_test"),
            "{frames:?}"
        );
        assert!(frames[1].name.starts_with("[unknown]"), "{frames:?}");
        // Forgotten with the process.
        s.forget_processes(|pid| pid == gone);
        assert!(s.snapshots.is_empty());
    }

    #[test]
    fn stacks_normalized_while_alive_need_no_second_look() {
        // Caller frames are looked up one byte back; normalize() must record
        // the same addresses user_frames() asks for, or a process that exits
        // in between loses its callers.
        let addr = marker_function_for_symbolizer_test as *const () as u64;
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        let stack = [addr, addr + 1];
        assert!(s.normalize(pid, &stack));
        for a in lookup_addrs(&stack) {
            assert!(s.locations.contains_key(&(pid, a)), "{a:#x} not recorded");
        }
    }

    #[test]
    fn gone_processes_are_forgotten_with_the_modules_only_they_map() {
        let addr = marker_function_for_symbolizer_test as *const () as u64;
        let mut s = Symbolizer::new();
        let me = std::process::id();
        assert!(s.normalize(me, &[addr]));
        let Some(&Location::File { module, offset }) = s.locations.get(&(me, addr)) else {
            panic!("this test's own function is in a file");
        };
        s.user_frames(me, &[addr]);
        // Another process mapping the same module (as two processes of one
        // binary do), and one whose address was in anonymous memory.
        let other = u32::MAX - 1;
        s.locations
            .insert((other, addr), Location::File { module, offset });
        s.locations.insert((u32::MAX, 0x10), Location::Unknown);
        let held = s.sizes();
        assert_eq!((held.locations, held.modules), (3, 1));
        assert_eq!(held.user_names, 1);

        // This process is gone: its mappings go, the module stays for the other.
        assert_eq!(s.forget_processes(|pid| pid == me || pid == u32::MAX), 0);
        assert_eq!(s.sizes().locations, 1);
        assert_eq!((s.sizes().modules, s.sizes().user_names), (1, 1));
        let frames = s.user_frames(other, &[addr]);
        assert!(
            frames[0]
                .name
                .contains("marker_function_for_symbolizer_test")
        );

        // The last process mapping it is gone: the module, its file and its
        // names go; nothing else is touched.
        assert_eq!(s.forget_processes(|pid| pid == other), 1);
        assert_eq!(
            s.sizes(),
            CacheSizes {
                kernel_names: s.kernel_names.len(),
                ..CacheSizes::default()
            }
        );
        assert!(s.module_ids.is_empty());
        assert_eq!(s.stats().modules_dropped, 1);

        // A live process is symbolized as before (the module is opened anew,
        // under a new id).
        assert!(s.normalize(me, &[addr]));
        let frames = s.user_frames(me, &[addr]);
        assert!(
            frames[0]
                .name
                .contains("marker_function_for_symbolizer_test")
        );
        assert_eq!(s.stats().modules, 2);
        assert_ne!(s.module_ids.values().next(), Some(&module));
    }

    #[test]
    fn unmapped_addresses_keep_their_place() {
        let mut s = Symbolizer::new();
        let frames = s.user_frames(std::process::id(), &[0x10]);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].name, "[unknown]+0x10");
    }

    #[test]
    fn return_addresses_step_back_into_the_call() {
        assert_eq!(lookup_addrs(&[100, 200, 300]), vec![100, 199, 299]);
    }
}
