//! What Hawk knows about processes from `/proc`: names and liveness.

use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Process names by pid, read from `/proc/PID/comm` the first time a pid is
/// seen (so they are known even after the process exits). A long-running
/// caller forgets the processes that are gone ([`ProcessTable::forget`]), so
/// the table does not grow with every pid ever seen and a reused pid gets
/// its new name.
#[derive(Default)]
pub struct ProcessTable {
    names: HashMap<u32, Option<String>>,
}

impl ProcessTable {
    /// Records `pid`; returns true the first time it is seen.
    pub fn observe(&mut self, pid: u32) -> bool {
        if self.names.contains_key(&pid) {
            return false;
        }
        self.names.insert(pid, read_comm(pid));
        true
    }

    /// The process's name as read from /proc, if it was alive when first seen.
    pub fn name(&self, pid: u32) -> Option<&str> {
        self.names.get(&pid).and_then(|n| n.as_deref())
    }

    /// Forgets the processes `gone` says are gone; returns how many.
    pub fn forget(&mut self, mut gone: impl FnMut(u32) -> bool) -> usize {
        let before = self.names.len();
        self.names.retain(|pid, _| !gone(*pid));
        before - self.names.len()
    }

    /// Processes known.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The pids of every process in `/proc` now (zombies included).
pub fn live_pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `/proc/PID/comm` without the newline.
pub fn read_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// True while `/proc/PID` exists and the process is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the last ')' (comm may contain parentheses).
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// True when `pid` names an existing process (thread group leader).
pub fn exists(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}/status")).exists()
}

/// True while thread `tid` of process `pid` exists.
pub fn thread_exists(pid: u32, tid: u32) -> bool {
    Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// A NUL-padded kernel `comm` as text.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// The processes `pid`'s threads forked that are still alive (from
/// `/proc/PID/task/TID/children`), each once.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// One line of `/proc/PID/maps` that maps part of a file executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecutableMapping<'a> {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// The path as written, ending in ` (deleted)` when the file was removed.
    pub path: &'a str,
}

impl ExecutableMapping<'_> {
    /// Whether the file was removed (or replaced) after it was mapped.
    pub fn deleted(&self) -> bool {
        self.path.ends_with(" (deleted)")
    }
}

/// The executable file mappings in the text of a `/proc/PID/maps`, in order
/// (anonymous memory, `[vdso]` and the like are left out).
pub fn executable_mappings(maps: &str) -> impl Iterator<Item = ExecutableMapping<'_>> {
    maps.lines().filter_map(|line| {
        // start-end perms offset dev inode path (the path may hold spaces)
        let mut fields = line.splitn(6, char::is_whitespace);
        let range = fields.next()?;
        let perms = fields.next()?;
        let offset = fields.next()?;
        let _dev = fields.next()?;
        let inode = fields.next()?;
        let path = fields.next()?.trim_start();
        if !perms.contains('x') || inode == "0" || !path.starts_with('/') {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        Some(ExecutableMapping {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            file_offset: u64::from_str_radix(offset, 16).ok()?,
            path,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(exists(me));
        assert!(is_alive(me));
        let mut t = ProcessTable::default();
        assert!(t.observe(me));
        assert!(!t.observe(me));
        assert!(t.name(me).is_some_and(|n| !n.is_empty()));
        assert!(!exists(0));
        assert!(!is_alive(u32::MAX));
        assert!(live_pids().contains(&me));
    }

    #[test]
    fn forgets_the_processes_that_are_gone() {
        let me = std::process::id();
        let mut t = ProcessTable::default();
        t.observe(me);
        t.observe(u32::MAX);
        assert_eq!(t.len(), 2);
        let live = live_pids();
        assert_eq!(t.forget(|pid| !live.contains(&pid)), 1);
        assert_eq!(t.len(), 1);
        assert!(t.name(me).is_some());
        // Seen again (a reused pid): read afresh.
        assert!(t.observe(u32::MAX));
        assert_eq!(t.forget(|_| true), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn finds_the_children_of_a_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let found = children(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(children(u32::MAX).is_empty());
    }

    #[test]
    fn parses_executable_file_mappings() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 11 /usr/bin/cat
55d0c0a01000-55d0c0a05000 r-xp 00001000 fe:00 11                         /usr/bin/my cat
7fb71dc00000-7fb71dc01000 r-xp 00000000 00:00 0
7fb71dd00000-7fb71dd01000 r-xp 00002000 fe:00 12 /tmp/old.so (deleted)
7ffd1000000-7ffd1001000 r-xp 00000000 00:00 0                          [vdso]
";
        let found: Vec<ExecutableMapping> = executable_mappings(maps).collect();
        assert_eq!(
            found[0],
            ExecutableMapping {
                start: 0x55d0c0a01000,
                end: 0x55d0c0a05000,
                file_offset: 0x1000,
                path: "/usr/bin/my cat",
            }
        );
        assert_eq!(found.len(), 2);
        assert!(found[1].deleted() && !found[0].deleted());
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_str(b"bash\0\0\0\0garbage"), "bash");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }
}
