//! `cargo xtask bench [--quick]`: Hawk measured against its targets and
//! against what users would run instead (issue 8, BENCHMARKS.md).
//!
//! Every number is a ratio within one run of this task: the machine is a
//! noisy 2-core VM, so configurations are interleaved round by round and
//! the median and the spread (min–max) are reported.
//!
//! 1. Overhead on a fixed CPU-bound workload (`fixed_work`): wall and CPU
//!    time with no profiler, `hawk-ebpf record` system-wide at 19, 99 and
//!    999 Hz, and `perf record -g -a` at the same rates.
//! 2. BPF cost per sample: `kernel.bpf_stats_enabled`, then run_time_ns /
//!    run_cnt of Hawk's perf_event program read from its fdinfo.
//! 3. End to end: time from the end of a window to the files written, Hawk
//!    vs `perf record -g` + `perf script` + inferno, and the CPU each used.
//! 4. Peak RSS of `hawk-ebpf record` system-wide.
//! 5. Symbolization throughput (criterion: `cargo bench -p hawk-userspace`)
//!    and the shim's marker cost (`cargo bench -p hawk-common --features
//!    shim`) are criterion benches; `--quick` skips them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// One profiler configuration of the overhead benchmark.
#[derive(Clone, Debug)]
enum Profiler {
    None,
    Hawk(u64),
    Perf(u64),
}

impl Profiler {
    fn label(&self) -> String {
        match self {
            Profiler::None => "no profiler".into(),
            Profiler::Hawk(hz) => format!("hawk-ebpf record {hz} Hz"),
            Profiler::Perf(hz) => format!("perf record -g {hz} Hz"),
        }
    }
}

/// Resource use of a finished child.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    wall: f64,
    cpu: f64,
    max_rss_kib: u64,
}

/// Waits for `child`, returning its CPU time and peak RSS (wait4).
fn wait_usage(child: &mut Child, started: Instant) -> Result<(i32, Usage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; waiting for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: as above.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((
        code,
        Usage {
            wall: started.elapsed().as_secs_f64(),
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            max_rss_kib: ru.ru_maxrss as u64,
        },
    ))
}

fn interrupt(child: &Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
}

/// Median and (min, max) of `xs`.
fn stats(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (
        median,
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

struct Bench {
    hawk: PathBuf,
    fixed_work: PathBuf,
    scratch: PathBuf,
    quick: bool,
    perf: bool,
}

/// Runs every benchmark and prints the tables.
pub fn bench(quick: bool) -> Result<()> {
    crate::setup::setup()?;
    cmd::run(Command::new("cargo").args([
        "build",
        "--release",
        "--workspace",
        "--exclude",
        "hawk-ebpf",
        "--bins",
    ]))?;
    let target = PathBuf::from("target/release");
    let perf = cmd::probe(Command::new("perf").arg("--version")).is_some();
    if !perf {
        println!("perf not found (Debian package linux-perf): perf comparisons are skipped");
    } else if cmd::probe(Command::new("inferno-flamegraph").arg("--help")).is_none() {
        // The perf pipeline we compare with: perf script | inferno.
        cmd::run(Command::new("cargo").args(["install", "inferno", "--locked"]))?;
    }
    let scratch = std::env::temp_dir().join(format!("hawk-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let b = Bench {
        hawk: fs::canonicalize(target.join("hawk-ebpf"))?,
        fixed_work: fs::canonicalize(target.join("fixed_work"))?,
        scratch,
        quick,
        perf,
    };
    let result = (|| {
        b.overhead()?;
        b.bpf_cost()?;
        b.end_to_end()?;
        if !quick {
            cmd::run(Command::new("cargo").args(["bench", "-p", "hawk-userspace"]))?;
            cmd::run(Command::new("cargo").args([
                "bench",
                "-p",
                "hawk-common",
                "--features",
                "shim",
            ]))?;
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&b.scratch);
    result
}

impl Bench {
    /// Starts a system-wide profiler and returns once it samples.
    fn start_profiler(&self, p: &Profiler, out: &Path) -> Result<Option<(Child, Instant)>> {
        let mut command = match p {
            Profiler::None => return Ok(None),
            Profiler::Hawk(hz) => {
                let mut c = Command::new(&self.hawk);
                c.args(["record", "--duration", "1h", "--freq", &hz.to_string()])
                    .args(["--format", "folded", "--out"])
                    .arg(out);
                c
            }
            Profiler::Perf(hz) => {
                let mut c = Command::new("perf");
                c.args(["record", "-g", "-a", "-F", &hz.to_string(), "-o"])
                    .arg(out.join("perf.data"))
                    .args(["--", "sleep", "3600"]);
                c
            }
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", p.label()))?;
        let started = Instant::now();
        // Loading and attaching take well under a second for both.
        std::thread::sleep(Duration::from_millis(1500));
        Ok(Some((child, started)))
    }

    fn overhead(&self) -> Result<()> {
        let rounds = if self.quick { 3 } else { 7 };
        let steps = if self.quick { "700" } else { "2000" };
        let mut configs = vec![
            Profiler::None,
            Profiler::Hawk(19),
            Profiler::Hawk(99),
            Profiler::Hawk(999),
        ];
        if self.perf {
            configs.extend([Profiler::Perf(19), Profiler::Perf(99), Profiler::Perf(999)]);
        }
        let mut wall: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        println!(
            "\n== 1. overhead: fixed_work {steps}M steps, {rounds} interleaved rounds, profilers system-wide"
        );
        for round in 0..rounds {
            for (i, p) in configs.iter().enumerate() {
                let out = self.scratch.join(format!("overhead-{round}-{i}"));
                fs::create_dir_all(&out)?;
                let profiler = self.start_profiler(p, &out)?;
                let started = Instant::now();
                let mut work = Command::new(&self.fixed_work)
                    .arg(steps)
                    .stdout(Stdio::null())
                    .spawn()?;
                let (code, usage) = wait_usage(&mut work, started)?;
                if code != 0 {
                    bail!("fixed_work exited with {code}");
                }
                if let Some((mut child, t)) = profiler {
                    interrupt(&child);
                    wait_usage(&mut child, t)?;
                }
                let _ = fs::remove_dir_all(&out);
                wall[i].push(usage.wall);
                cpu[i].push(usage.cpu);
            }
        }
        let (base_wall, _, _) = stats(&wall[0]);
        let (base_cpu, _, _) = stats(&cpu[0]);
        println!(
            "{:<26} {:>9} {:>17} {:>9} {:>9} {:>9}",
            "configuration", "wall s", "(min-max)", "wall x", "cpu s", "cpu x"
        );
        for (i, p) in configs.iter().enumerate() {
            let (w, lo, hi) = stats(&wall[i]);
            let (c, _, _) = stats(&cpu[i]);
            println!(
                "{:<26} {:>9.3} {:>17} {:>9.4} {:>9.3} {:>9.4}",
                p.label(),
                w,
                format!("({lo:.3}-{hi:.3})"),
                w / base_wall,
                c,
                c / base_cpu
            );
        }
        Ok(())
    }

    /// run_time_ns / run_cnt of Hawk's perf_event program, from the fdinfo of
    /// a running `hawk-ebpf record`, with kernel.bpf_stats_enabled set.
    fn bpf_cost(&self) -> Result<()> {
        println!("\n== 2. BPF cost per CPU sample (kernel.bpf_stats_enabled=1)");
        let knob = Path::new("/proc/sys/kernel/bpf_stats_enabled");
        let before = fs::read_to_string(knob).unwrap_or_else(|_| "0".into());
        fs::write(knob, "1").context("enabling kernel.bpf_stats_enabled")?;
        let result = (|| -> Result<()> {
            for hz in [99u64, 999] {
                let out = self.scratch.join(format!("bpf-{hz}"));
                fs::create_dir_all(&out)?;
                let (mut hawk, t) = self
                    .start_profiler(&Profiler::Hawk(hz), &out)?
                    .expect("hawk");
                // Give it work to sample: user and kernel stacks.
                let mut work = Command::new(&self.fixed_work)
                    .arg(if self.quick { "500" } else { "1500" })
                    .stdout(Stdio::null())
                    .spawn()?;
                wait_usage(&mut work, Instant::now())?;
                let progs = bpf_prog_stats(hawk.id());
                interrupt(&hawk);
                wait_usage(&mut hawk, t)?;
                for (name, run_ns, runs) in progs {
                    if runs > 0 {
                        println!(
                            "{hz:>5} Hz  {name:<20} {runs:>8} runs  {:>8.2} µs/run",
                            run_ns as f64 / runs as f64 / 1000.0
                        );
                    }
                }
            }
            Ok(())
        })();
        let _ = fs::write(knob, before.trim());
        result
    }

    /// Time from the end of a window to the files written, and CPU used.
    fn end_to_end(&self) -> Result<()> {
        let secs = if self.quick { 3 } else { 10 };
        println!(
            "\n== 3-4. end to end: a {secs} s system-wide window at 99 Hz, fixed_work running"
        );
        let out = self.scratch.join("e2e-hawk");
        fs::create_dir_all(&out)?;
        let mut work = Command::new(&self.fixed_work)
            .arg("100000")
            .stdout(Stdio::null())
            .spawn()?;
        let started = Instant::now();
        let log = out.join("stderr.txt");
        let mut hawk = Command::new(&self.hawk)
            .args([
                "record",
                "--duration",
                &format!("{secs}s"),
                "--freq",
                "99",
                "--out",
            ])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?;
        let (code, usage) = wait_usage(&mut hawk, started)?;
        if code != 0 {
            let _ = work.kill();
            bail!("hawk-ebpf record exited with {code}");
        }
        // hawk-ebpf reports it: "files written 0.123 s after the window".
        let stderr = fs::read_to_string(&log)?;
        let after: f64 = stderr
            .split("files written ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no latency in hawk-ebpf's output: {stderr}"))?;
        println!(
            "hawk-ebpf record:  files written {after:.3} s after the window; CPU {:.3} s in all; peak RSS {} MiB",
            usage.cpu,
            usage.max_rss_kib / 1024
        );
        if self.perf {
            let dir = self.scratch.join("e2e-perf");
            fs::create_dir_all(&dir)?;
            let data = dir.join("perf.data");
            let started = Instant::now();
            let mut rec = Command::new("perf")
                .args(["record", "-g", "-a", "-F", "99", "-o"])
                .arg(&data)
                .args(["--", "sleep", &secs.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let (_, rec_usage) = wait_usage(&mut rec, started)?;
            let record_tail = rec_usage.wall - secs as f64;
            let started = Instant::now();
            let script = format!(
                "perf script -i {} | inferno-collapse-perf | inferno-flamegraph > {}",
                data.display(),
                dir.join("perf.svg").display()
            );
            let mut post = Command::new("sh").args(["-c", &script]).spawn()?;
            let (code, post_usage) = wait_usage(&mut post, started)?;
            if code != 0 {
                println!(
                    "perf script | inferno: failed (is inferno installed? `cargo install inferno`)"
                );
            } else {
                println!(
                    "perf + inferno:    files written {:.3} s after the window; CPU {:.3} s in all",
                    record_tail + post_usage.wall,
                    rec_usage.cpu + post_usage.cpu
                );
            }
        }
        let _ = work.kill();
        let _ = work.wait();
        Ok(())
    }
}

/// (program name, run_time_ns, run_cnt) of every BPF program `pid` holds,
/// from /proc/PID/fdinfo.
fn bpf_prog_stats(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(link) = fs::read_link(fd.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let num = |key: &str| field(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        let name = match field("prog_type:").as_deref() {
            Some("7") => "perf_event".to_string(),
            Some(t) => format!("prog type {t}"),
            None => "?".to_string(),
        };
        out.push((name, num("run_time_ns:"), num("run_cnt:")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spread() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
