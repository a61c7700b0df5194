//! Following the processes targets fork, in the kernel: the
//! `task/task_newtask` tracepoint adds each new child process of a pid in
//! `PIDS` to `PIDS` before it runs, so a `record -- make` samples the
//! compilers too. Threads are not processes and are left alone.

use aya::Ebpf;
use aya::programs::TracePoint;
use hawk_common::programs;

use super::check::ensure_tracefs;
use super::{CollectorError, bpf};

const EVENT: (&str, &str) = ("task", "task_newtask");

/// Where the fields `hawk_task_newtask` reads sit in a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewTaskOffsets {
    pub pid: u32,
    pub clone_flags: u32,
}

impl Default for NewTaskOffsets {
    /// The layout of kernels 5.8 to 6.x (`comm` as `char[16]`).
    fn default() -> Self {
        Self {
            pid: 8,
            clone_flags: 32,
        }
    }
}

impl NewTaskOffsets {
    /// Reads the offsets from the event's format file (tracefs), falling
    /// back on the default layout.
    pub fn of_this_kernel() -> Self {
        // Mounts tracefs when missing; without it, the default layout.
        let _ = ensure_tracefs();
        let path = format!("/sys/kernel/tracing/events/{}/{}/format", EVENT.0, EVENT.1);
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// The offsets in the text of a format file.
    pub fn parse(format: &str) -> Option<Self> {
        Some(Self {
            pid: field_offset(format, "pid")?,
            clone_flags: field_offset(format, "clone_flags")?,
        })
    }
}

/// The offset of `name` in a tracepoint format, from a line like
/// `field:pid_t pid; offset:8; size:4; signed:1;`.
fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let field = decl.rsplit(' ').next()?.split('[').next()?;
        if field != name {
            return None;
        }
        line.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

/// Attaches the fork follower of `ebpf` (loaded with the pid filter on).
pub fn follow(ebpf: &mut Ebpf) -> Result<(), CollectorError> {
    ensure_tracefs().map_err(CollectorError::Io)?;
    let name = programs::TASK_NEWTASK;
    let program: &mut TracePoint = bpf::program_mut(ebpf, name)?;
    program
        .load()
        .map_err(|source| CollectorError::Program { name, source })?;
    program
        .attach(EVENT.0, EVENT.1)
        .map_err(|source| CollectorError::Program { name, source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_both_layouts() {
        let old = "\
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:pid_t pid;	offset:8;	size:4;	signed:1;
	field:char comm[16];	offset:12;	size:16;	signed:0;
	field:unsigned long clone_flags;	offset:32;	size:8;	signed:0;
	field:short oom_score_adj;	offset:40;	size:2;	signed:1;
";
        assert_eq!(NewTaskOffsets::parse(old), Some(NewTaskOffsets::default()));
        let new = "\
	field:pid_t pid;	offset:8;	size:4;	signed:1;
	field:__data_loc char[] comm;	offset:12;	size:4;	signed:0;
	field:u64 clone_flags;	offset:16;	size:8;	signed:0;
";
        assert_eq!(
            NewTaskOffsets::parse(new),
            Some(NewTaskOffsets {
                pid: 8,
                clone_flags: 16
            })
        );
        assert_eq!(NewTaskOffsets::parse("garbage"), None);
    }
}
