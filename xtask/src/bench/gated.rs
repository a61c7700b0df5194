//! Slowdown of a workload loop under a profiler attached to its pid:
//! the memory profilers on a malloc+free loop (BENCHMARKS.md section 6) and
//! the trace-context uprobe on the shim's marker (section 7).
//!
//! Each row is a workload binary of `target/release` that follows the
//! `bench N` protocol (`<bin> bench N` prints `ready <pid>`, waits for a line
//! on stdin, works, prints `<key> <ns>` lines) and a profiler attached to its
//! pid before the line is sent. Rows run interleaved, one round after the
//! other; the table gives the median ns per operation, the spread and the
//! ratio to the first row. A row whose binary is not built, or whose
//! profiler cannot run here, prints why and is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::proc::{Gated, Ready, Says, spawn_ready};
use super::{Bench, stats};

/// How a row profiles the workload.
#[derive(Clone, Debug)]
pub enum Attach {
    None,
    /// `hawk-ebpf record --mem --pid P` (uprobes on libc's allocator, or the
    /// sampled allocator's markers when the program has them).
    HawkMem,
    /// `hawk-ebpf capture --trace <another id> --pid P`: the trace-context
    /// uprobe on the marker, for a trace the workload never publishes.
    HawkTraceUprobe,
    /// `memleak-bpfcc -p P`, with the kernel source bcc compiles against.
    Memleak(Option<PathBuf>),
}

/// One row: `workload bench N` under `attach`.
pub struct Row {
    pub label: &'static str,
    pub workload: &'static str,
    pub n: u64,
    pub attach: Attach,
    /// The workload says `marker_probed 0|1` before and after its loops
    /// (marker_loop): runs where that differs from what `attach` implies
    /// are dropped (no profiler) or fail (the uprobe did not attach).
    pub marker: bool,
}

/// Whether `attach` puts a uprobe on the shim's marker.
fn expected_probe(attach: &Attach) -> bool {
    matches!(attach, Attach::HawkTraceUprobe)
}

/// A trace id no workload publishes (`capture` waits for it forever).
const OTHER_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

impl Bench {
    /// Section 6: a malloc(64)+free loop (`<bin> bench N` prints
    /// `ns_per_op`) with no profiler, under Hawk's libc uprobes and under
    /// memleak-bpfcc; and the sampled allocator (mode 2) once its workload
    /// `mem_sampled` is built. A row is one line here.
    pub fn mem_profiling(&self) -> Result<()> {
        let (rounds, fast, slow, slowest) = if self.quick {
            (1, 2_000_000, 50_000, 20_000)
        } else {
            (3, 10_000_000, 200_000, 100_000)
        };
        let memleak = Attach::Memleak(self.memleak_source.clone());
        #[rustfmt::skip]
        let rows = [
            Row { label: "no profiler", workload: "mem_workload", n: fast, attach: Attach::None, marker: false },
            Row { label: "hawk-ebpf record --mem (libc uprobes)", workload: "mem_workload", n: slow, attach: Attach::HawkMem, marker: false },
            Row { label: "memleak-bpfcc -p", workload: "mem_workload", n: slowest, attach: memleak, marker: false },
            Row { label: "mem_sampled, no profiler", workload: "mem_sampled", n: fast, attach: Attach::None, marker: false },
            Row { label: "mem_sampled, record --mem (mode 2)", workload: "mem_sampled", n: fast, attach: Attach::HawkMem, marker: false },
        ];
        println!(
            "\n== 6. memory profiling: malloc(64)+free loop, ns per pair, {rounds} interleaved rounds \
             (x: against the first row)"
        );
        self.gated_table("mem", &rows, &["ns_per_op"], rounds)
    }

    /// Section 7: the shim's marker (`marker_loop bench N`: raw marker
    /// calls, and guard set + drop) with no profiler and with Hawk's
    /// trace-context uprobe attached to it.
    pub fn shim_marker(&self) -> Result<()> {
        let (rounds, fast, slow) = if self.quick {
            (2, 20_000_000, 100_000)
        } else {
            (5, 50_000_000, 500_000)
        };
        #[rustfmt::skip]
        let rows = [
            Row { label: "no profiler", workload: "marker_loop", n: fast, attach: Attach::None, marker: true },
            Row { label: "hawk-ebpf capture (trace-context uprobe)", workload: "marker_loop", n: slow, attach: Attach::HawkTraceUprobe, marker: true },
        ];
        println!(
            "\n== 7. shim marker: ns per marker call (ns_per_call) and per guard set + drop \
             (ns_per_guard, two calls), {rounds} interleaved rounds"
        );
        self.gated_table("shim", &rows, &["ns_per_call", "ns_per_guard"], rounds)
    }

    /// Starts the profiler of `attach` on `pid` and returns once it traces.
    fn attach(&self, attach: &Attach, pid: u32, out: &Path) -> Result<Option<Ready>> {
        let ready = Duration::from_secs(60);
        let settle = Duration::from_millis(200);
        Ok(Some(match attach {
            Attach::None => return Ok(None),
            Attach::HawkMem => spawn_ready(
                Command::new(&self.hawk)
                    .args(["record", "--mem", "--pid", &pid.to_string()])
                    .args(["--duration", "1h", "--format", "folded", "--out"])
                    .arg(out),
                Says::Stderr,
                "tracing allocations",
                settle,
                ready,
            )?,
            Attach::HawkTraceUprobe => spawn_ready(
                Command::new(&self.hawk)
                    .args(["capture", "--trace", OTHER_TRACE_ID, "--pid"])
                    .arg(pid.to_string())
                    // Only the uprobe matters here: sample as rarely as allowed.
                    .args([
                        "--freq",
                        "1",
                        "--timeout",
                        "1h",
                        "--format",
                        "json",
                        "--out",
                    ])
                    .arg(out),
                Says::Stderr,
                "waiting for trace",
                settle,
                ready,
            )?,
            Attach::Memleak(kernel_source) => {
                let mut cmd = Command::new("memleak-bpfcc");
                // Report once an hour: no symbolization while we measure.
                cmd.args(["-p", &pid.to_string(), "3600"])
                    .env("PYTHONUNBUFFERED", "1");
                if let Some(src) = kernel_source {
                    cmd.env("BCC_KERNEL_SOURCE", src);
                }
                // It says so just before it attaches its uprobes.
                spawn_ready(
                    &mut cmd,
                    Says::Stdout,
                    "Attaching to pid",
                    Duration::from_millis(1500),
                    ready,
                )?
            }
        }))
    }

    /// One run of `row`: the workload's `keys` values, in ns; `None` when a
    /// run without a profiler found a uprobe on its marker all the same.
    fn run_row(&self, row: &Row, keys: &[&str], out: &Path) -> Result<Option<Vec<f64>>> {
        let program = self.target.join(row.workload);
        let mut work = Gated::start(&program, &["bench".into(), row.n.to_string()])?;
        let profiler = match self.attach(&row.attach, work.pid(), out) {
            Ok(p) => p,
            Err(e) => {
                work.finish();
                return Err(e);
            }
        };
        work.go()?;
        let expected = expected_probe(&row.attach);
        let result = (|| -> Result<Option<Vec<f64>>> {
            // marker_loop says whether a uprobe is on its marker, before and
            // after its loops. On a run meant to have none, some other
            // profiler on this machine attached to it: stop there.
            if row.marker && (work.value("marker_probed")? != 0.0) != expected {
                return Ok(None);
            }
            let values = keys
                .iter()
                .map(|k| work.value(k))
                .collect::<Result<Vec<_>>>()?;
            if row.marker && (work.value("marker_probed")? != 0.0) != expected {
                return Ok(None);
            }
            Ok(Some(values))
        })();
        match result {
            Ok(Some(_)) => work.finish(),
            _ => work.abort(),
        }
        if let Some(p) = profiler {
            p.stop(Duration::from_secs(20));
        }
        let values = result.with_context(|| format!("{} under {}", row.workload, row.label))?;
        if values.is_none() && expected {
            anyhow::bail!("the trace-context uprobe was not on the marker");
        }
        Ok(values)
    }

    /// Runs `rows` interleaved for `rounds` rounds and prints, for each of
    /// `keys`, the median ns, spread and ratio to the first row.
    pub fn gated_table(
        &self,
        name: &str,
        rows: &[Row],
        keys: &[&str],
        rounds: usize,
    ) -> Result<()> {
        let out = self.scratch.join(name);
        std::fs::create_dir_all(&out)?;
        // values[row][key] = one per round
        let mut values: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); keys.len()]; rows.len()];
        let mut skipped: Vec<Option<String>> = rows.iter().map(|r| self.unavailable(r)).collect();
        let mut foreign = vec![0; rows.len()];
        for _ in 0..rounds {
            for (i, row) in rows.iter().enumerate() {
                if skipped[i].is_some() {
                    continue;
                }
                match self.run_row(row, keys, &out) {
                    Ok(Some(v)) => v.iter().zip(&mut values[i]).for_each(|(v, s)| s.push(*v)),
                    Ok(None) => foreign[i] += 1,
                    Err(e) => skipped[i] = Some(format!("failed: {e:#}")),
                }
            }
        }
        for (i, row) in rows.iter().enumerate() {
            if foreign[i] > 0 {
                println!(
                    "{}: {} of {rounds} runs dropped: another program's uprobe was on the marker \
                     (a Hawk daemon or capture running on this machine?)",
                    row.label, foreign[i]
                );
            }
        }
        let _ = std::fs::remove_dir_all(&out);
        for (k, key) in keys.iter().enumerate() {
            let base = stats(&values[0][k]).0;
            println!(
                "{:<44} {:>10} {:>9} {:>21} {:>10}",
                key, "N", "ns", "(min-max)", "x"
            );
            for (i, row) in rows.iter().enumerate() {
                if let Some(why) = &skipped[i] {
                    println!("{:<44} {why}", row.label);
                    continue;
                }
                let (m, lo, hi) = stats(&values[i][k]);
                println!(
                    "{:<44} {:>10} {:>9.1} {:>21} {:>10.1}",
                    row.label,
                    row.n,
                    m,
                    format!("({lo:.1}-{hi:.1})"),
                    m / base
                );
            }
        }
        Ok(())
    }

    /// Why `row` cannot run here, if it cannot.
    fn unavailable(&self, row: &Row) -> Option<String> {
        if !self.target.join(row.workload).is_file() {
            return Some(format!("not built (no target/release/{})", row.workload));
        }
        if let Attach::Memleak(_) = row.attach {
            return self.memleak_blocker.clone();
        }
        None
    }
}

/// Where bcc finds kernel headers for `memleak-bpfcc`: `Ok(None)` when it
/// finds them by itself (`/lib/modules/<release>/build`, or
/// `BCC_KERNEL_SOURCE` set), `Ok(Some(dir))` for a tree assembled under
/// `cache` from the Debian headers package of another kernel, `Err(why)`
/// when memleak cannot run.
pub fn memleak_kernel_source(cache: &Path) -> std::result::Result<Option<PathBuf>, String> {
    if crate::cmd::probe(Command::new("which").arg("memleak-bpfcc")).is_none() {
        return Err("not installed (apt-get install bpfcc-tools)".into());
    }
    let release = crate::cmd::probe(Command::new("uname").arg("-r")).unwrap_or_default();
    if std::env::var_os("BCC_KERNEL_SOURCE").is_some()
        || Path::new(&format!("/lib/modules/{release}/build")).exists()
        || Path::new("/sys/kernel/kheaders.tar.xz").exists()
    {
        return Ok(None);
    }
    // Debian splits headers into linux-headers-<v>-common (the source
    // includes) and linux-headers-<v>-<arch> (generated ones); bcc wants
    // one tree. memleak -p only reads pt_regs in uprobes, whose layout does
    // not change between kernels, so another kernel's headers serve.
    let mut commons: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    commons.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-common"))
    });
    commons.sort();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    for common in commons.iter().rev() {
        let name = common.file_name().unwrap().to_string_lossy();
        let arch = common.with_file_name(name.replace("-common", &format!("-{arch}")));
        if !arch.is_dir() {
            continue;
        }
        // Kept between runs: linking 20 000 files takes seconds.
        let tree = cache.join(format!(
            "bcc-kernel-{}",
            arch.file_name().unwrap().to_string_lossy()
        ));
        let done = tree.join(".complete");
        if done.exists() {
            return Ok(Some(tree));
        }
        let _ = std::fs::remove_dir_all(&tree);
        let merged = std::fs::create_dir_all(&tree).is_ok()
            && [common, &arch].iter().all(|src| {
                Command::new("cp")
                    .arg("-asf")
                    .arg(format!("{}/.", src.display()))
                    .arg(&tree)
                    .status()
                    .is_ok_and(|s| s.success())
            })
            && std::fs::write(&done, b"").is_ok();
        if merged {
            return Ok(Some(tree));
        }
    }
    Err(format!(
        "cannot run: bcc needs kernel headers and this kernel ({release}) has none \
         (no /lib/modules/{release}/build, no CONFIG_IKHEADERS); install a Debian \
         linux-headers-<version>-amd64 package or set BCC_KERNEL_SOURCE"
    ))
}
