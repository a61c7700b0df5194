//! A process's file-backed executable mappings, read (and each file opened)
//! while it lived, for naming its frames after it exited.
//!
//! The symbolizer normalizes addresses through `/proc/PID/maps` while a
//! process runs. A process that lives less than one poll of the collector
//! (a shell pipeline, a compiler run) is gone by then; the collector reads a
//! snapshot as soon as the kernel announces the process's first sample, and
//! the symbolizer falls back on it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::collector::procs::executable_mappings;

/// One executable mapping of a file.
#[derive(Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// The path as the process saw it.
    pub path: PathBuf,
    /// The file, opened through `/proc/PID/root` (shared by the mappings of
    /// one path).
    pub file: Option<Arc<File>>,
}

/// The executable mappings of one process.
#[derive(Debug, Default)]
pub struct MapsSnapshot {
    mappings: Vec<Mapping>,
}

impl MapsSnapshot {
    /// Reads `/proc/PID/maps` and opens each mapped file; `None` when the
    /// process is gone (or maps no file).
    pub fn read(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let snapshot = Self::parse(&text, |path| {
            File::open(root.join(path.strip_prefix("/").unwrap_or(path)))
                .ok()
                .map(Arc::new)
        });
        (!snapshot.mappings.is_empty()).then_some(snapshot)
    }

    /// The executable file mappings in the text of a `/proc/PID/maps`,
    /// opening each path once with `open`.
    pub fn parse(maps: &str, mut open: impl FnMut(&Path) -> Option<Arc<File>>) -> Self {
        let mut mappings: Vec<Mapping> = Vec::new();
        for m in executable_mappings(maps) {
            let path = PathBuf::from(m.path.trim_end_matches(" (deleted)"));
            let file = match mappings.iter().find(|known| known.path == path) {
                Some(known) => known.file.clone(),
                None => open(&path),
            };
            mappings.push(Mapping {
                start: m.start,
                end: m.end,
                file_offset: m.file_offset,
                path,
                file,
            });
        }
        Self { mappings }
    }

    /// The mapping holding `addr` and the file offset of `addr` in it.
    pub fn locate(&self, addr: u64) -> Option<(&Mapping, u64)> {
        self.mappings
            .iter()
            .find(|m| (m.start..m.end).contains(&addr))
            .map(|m| (m, addr - m.start + m.file_offset))
    }

    /// The mappings, in the order of the maps file.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_file_mappings_with_their_offsets() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 11 /usr/bin/cat
55d0c0a01000-55d0c0a05000 r-xp 00001000 fe:00 11 /usr/bin/cat
7fb71da66000-7fb71da8c000 r--p 00000000 fe:00 22 /usr/lib/libc.so.6
7fb71da8c000-7fb71dbe2000 r-xp 00026000 fe:00 22 /usr/lib/libc.so.6
7fb71dc00000-7fb71dc01000 r-xp 00000000 00:00 0
7ffd1000000-7ffd1001000 r-xp 00000000 00:00 0 [vdso]
";
        let mut opened = Vec::new();
        let snapshot = MapsSnapshot::parse(maps, |p| {
            opened.push(p.to_path_buf());
            None
        });
        assert_eq!(opened.len(), 2, "each file once: {opened:?}");
        assert_eq!(snapshot.mappings().len(), 2);
        let (m, offset) = snapshot.locate(0x55d0c0a01234).unwrap();
        assert_eq!(m.path, Path::new("/usr/bin/cat"));
        assert_eq!(offset, 0x1234);
        let (m, offset) = snapshot.locate(0x7fb71da8c010).unwrap();
        assert_eq!(m.path, Path::new("/usr/lib/libc.so.6"));
        assert_eq!(offset, 0x26010);
        assert!(snapshot.locate(0x7fb71dc00010).is_none(), "anonymous");
        assert!(snapshot.locate(0x1000).is_none());
    }

    #[test]
    fn reads_this_process() {
        let snapshot = MapsSnapshot::read(std::process::id()).unwrap();
        let here = reads_this_process as *const () as u64;
        let (m, _) = snapshot.locate(here).expect("this function is mapped");
        assert!(m.file.is_some());
        assert!(MapsSnapshot::read(u32::MAX).is_none());
    }
}
