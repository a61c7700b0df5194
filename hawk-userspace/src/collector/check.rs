//! What this kernel and these privileges allow: capabilities, BTF,
//! perf_event sampling, uprobes, tracepoints (tracefs), ring buffers.
//! `hawk-ebpf check` prints [`run_checks`]; loaders call
//! [`require_capabilities`] before touching the kernel.

use std::path::Path;

use super::CollectorError;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// The capabilities Hawk lacks to load programs and sample, by name.
pub fn missing_capabilities(caps: u64) -> Vec<&'static str> {
    let mut missing = Vec::new();
    // CAP_SYS_ADMIN covers both on kernels before 5.8 and still works after.
    if !has(caps, CAP_SYS_ADMIN) {
        if !has(caps, CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(caps, CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    missing
}

/// Fails with one line naming the missing capabilities.
pub fn require_capabilities() -> Result<(), CollectorError> {
    let missing = missing_capabilities(effective_capabilities());
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CollectorError::MissingCapability(format!(
            "capability {}",
            missing.join(" and ")
        )))
    }
}

/// Kernel release as (major, minor), from uname.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. Raise it there;
/// where that is not allowed (no CAP_SYS_RESOURCE), warn and go on.
pub fn raise_memlock_if_needed() {
    if kernel_version().is_some_and(|v| v >= (5, 11)) {
        return;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::warn!(
            "could not raise RLIMIT_MEMLOCK ({}); loading may fail on this kernel",
            std::io::Error::last_os_error()
        );
    }
}

/// `kernel.perf_event_max_sample_rate`, the highest sampling frequency.
pub fn max_sample_rate() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Where tracefs is (or is mounted now, when missing).
pub fn ensure_tracefs() -> Result<&'static str, String> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(dir);
        }
    }
    let dir = "/sys/kernel/tracing";
    let (src, target, fstype) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && Path::new(dir).join("events").is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "tracefs is not mounted and mounting it at {dir} failed: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// One line of `hawk-ebpf check`.
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Needed by `record` (a failure makes `check` exit non-zero).
    pub required: bool,
    pub detail: String,
}

fn perf_event_works() -> Result<(), String> {
    // A CPU-clock sampling event on CPU 0 for all processes, as `record` opens.
    let attr = PerfEventAttr {
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        type_: 1,  // PERF_TYPE_SOFTWARE
        config: 0, // PERF_COUNT_SW_CPU_CLOCK
        sample_freq: 99,
        flags: 1 << 10 | 1, // freq, disabled
        ..Default::default()
    };
    // SAFETY: attr is a valid perf_event_attr prefix of the declared size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1,
            0,
            -1,
            8, // PERF_FLAG_FD_CLOEXEC
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd was just returned by the kernel.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// The first 64 bytes of `struct perf_event_attr` (PERF_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_freq: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    bp_addr: u64,
}

/// Runs every check, in the order `check` prints them.
pub fn run_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    let caps = effective_capabilities();
    let missing = missing_capabilities(caps);
    checks.push(Check {
        name: "capabilities",
        ok: missing.is_empty(),
        required: true,
        detail: if missing.is_empty() {
            "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) present".into()
        } else {
            format!("missing {}", missing.join(", "))
        },
    });
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    checks.push(Check {
        name: "kernel",
        ok: kernel_version().is_some_and(|v| v >= (5, 8)),
        required: true,
        detail: format!("{} (5.8 or newer needed)", release.trim()),
    });
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    checks.push(Check {
        name: "BTF",
        ok: btf,
        required: false,
        detail: if btf {
            "/sys/kernel/btf/vmlinux present".into()
        } else {
            "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF off)".into()
        },
    });
    let perf = perf_event_works();
    checks.push(Check {
        name: "perf_event",
        ok: perf.is_ok(),
        required: true,
        detail: match perf {
            Ok(()) => format!(
                "software CPU clock sampling works (max {} Hz)",
                max_sample_rate().map_or("?".into(), |r| r.to_string())
            ),
            Err(e) => format!("perf_event_open failed: {e}"),
        },
    });
    let uprobes = Path::new("/sys/bus/event_source/devices/uprobe/type").exists();
    checks.push(Check {
        name: "uprobes",
        ok: uprobes,
        required: false,
        detail: if uprobes {
            "uprobe PMU present (trace context, memory profiling)".into()
        } else {
            "no uprobe PMU (CONFIG_UPROBE_EVENTS off): no trace context or memory profiles".into()
        },
    });
    let tracefs = ensure_tracefs();
    // The events Hawk attaches to: exec (shim discovery), new tasks (fork
    // following), mmap/munmap (memory profiles).
    let missing_events: Vec<&str> = match &tracefs {
        Ok(dir) => [
            "sched/sched_process_exec",
            "task/task_newtask",
            "syscalls/sys_enter_mmap",
            "syscalls/sys_exit_mmap",
            "syscalls/sys_enter_munmap",
        ]
        .into_iter()
        .filter(|event| !Path::new(dir).join("events").join(event).exists())
        .collect(),
        Err(_) => Vec::new(),
    };
    checks.push(Check {
        name: "tracepoints",
        ok: tracefs.is_ok() && missing_events.is_empty(),
        required: false,
        detail: match tracefs {
            Ok(dir) if missing_events.is_empty() => {
                format!("tracefs at {dir}; exec, fork, mmap and munmap events present")
            }
            Ok(dir) => format!(
                "tracefs at {dir}, but no {} (CONFIG_FTRACE_SYSCALLS off?)",
                missing_events.join(", ")
            ),
            Err(e) => e,
        },
    });
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    checks.push(Check {
        name: "kprobes",
        ok: kprobes,
        required: false,
        detail: if kprobes {
            "kprobe PMU present (not used by Hawk)".into()
        } else {
            "absent (CONFIG_KPROBES off); Hawk does not need them".into()
        },
    });
    let ringbuf = kernel_version().is_some_and(|v| v >= (5, 8));
    checks.push(Check {
        name: "ring buffer",
        ok: ringbuf,
        required: false,
        detail: if ringbuf {
            "BPF_MAP_TYPE_RINGBUF available (5.8+)".into()
        } else {
            "needs kernel 5.8".into()
        },
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_missing_capabilities() {
        assert_eq!(missing_capabilities(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_capabilities(1 << CAP_BPF), vec!["CAP_PERFMON"]);
    }

    #[test]
    fn reads_the_kernel_version() {
        let (major, _) = kernel_version().expect("osrelease");
        assert!(major >= 3);
    }
}
