//! `cargo xtask bench [--quick]`: Hawk measured against its targets and
//! against what users would run instead (issue 8, BENCHMARKS.md).
//!
//! Every number is a ratio within one run of this task: the machine is a
//! noisy 2-core VM, so configurations are interleaved round by round and
//! the median and the spread (min–max) are reported. The section numbers
//! are those of BENCHMARKS.md.
//!
//! 1. Overhead on a fixed CPU-bound workload (`fixed_work`): wall and CPU
//!    time with no profiler, `hawk-ebpf record` system-wide at 19, 99 and
//!    999 Hz, and `perf record -g -a` at the same rates.
//! 2. BPF cost per sample: `kernel.bpf_stats_enabled`, then run_time_ns /
//!    run_cnt of Hawk's perf_event program read from its fdinfo, with every
//!    CPU busy and with one; beside it (full run, when bpftrace is
//!    installed) the floor of this machine: an empty perf_event program and
//!    one that only counts, at the same rates and load.
//! 3. End to end: time from the end of a window to the files written, Hawk
//!    vs `perf record -g` + `perf script` + inferno, and the CPU each used.
//! 4. Peak RSS of `hawk-ebpf record` system-wide; the daemon's RSS over a
//!    long run at 19 Hz ([`daemon`]).
//! 5. Symbolization throughput (criterion: `cargo bench -p hawk-userspace`);
//!    `--quick` skips it.
//! 6. Memory profiling: a malloc+free loop with no profiler, under
//!    `hawk-ebpf record --mem` and under `memleak-bpfcc` ([`gated`]).
//! 7. The shim's marker with and without Hawk's uprobe on it ([`gated`]),
//!    and its criterion bench (`cargo bench -p hawk-common --features
//!    shim`, skipped by `--quick`).

mod daemon;
mod gated;
mod proc;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use self::proc::{Says, bpf_prog_stats, interrupt, spawn_ready};
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

/// A system-wide perf_event BPF program of the BPF cost benchmark.
#[derive(Clone, Debug)]
enum Sampler {
    Hawk(u64),
    /// `bpftrace -e 'profile:hz:N { $x = 1; }'`: the floor of any program.
    BpftraceEmpty(u64),
    /// `bpftrace -e 'profile:hz:N { @n = count(); }'`: one map update.
    BpftraceCount(u64),
    /// `bpftrace -e 'profile:hz:N { @[pid, ustack, kstack] = count(); }'`:
    /// what a standard tool pays for Hawk's job.
    BpftraceStacks(u64),
}

impl Sampler {
    fn hz(&self) -> u64 {
        match self {
            Sampler::Hawk(hz)
            | Sampler::BpftraceEmpty(hz)
            | Sampler::BpftraceCount(hz)
            | Sampler::BpftraceStacks(hz) => *hz,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Sampler::Hawk(_) => "hawk_cpu_sample",
            Sampler::BpftraceEmpty(_) => "bpftrace, empty program",
            Sampler::BpftraceCount(_) => "bpftrace, @n = count()",
            Sampler::BpftraceStacks(_) => "bpftrace, @[pid,ustack,kstack]=count()",
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

/// The load averages (1, 5, 15 min) of /proc/loadavg: how busy the rest of
/// the machine was.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
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

/// One section of the bench (BENCHMARKS.md's numbering).
type Section = fn(&Bench) -> Result<()>;

struct Bench {
    /// `target/release`, absolute.
    target: PathBuf,
    hawk: PathBuf,
    fixed_work: PathBuf,
    scratch: PathBuf,
    quick: bool,
    perf: bool,
    bpftrace: bool,
    /// Kernel source for bcc (`BCC_KERNEL_SOURCE`), when it must be set.
    memleak_source: Option<PathBuf>,
    /// Why `memleak-bpfcc` cannot run here, if it cannot.
    memleak_blocker: Option<String>,
}

/// Runs every benchmark and prints the tables.
pub fn bench(quick: bool, only: &[u8]) -> Result<()> {
    let run = |section: u8| only.is_empty() || only.contains(&section);
    crate::setup::setup()?;
    // What the bench compares with: perf (+ inferno, below), bpftrace's
    // reference programs, memleak-bpfcc and the kernel headers bcc compiles
    // against (Debian's, of its own kernel: see gated::memleak_kernel_source).
    // Missing tools only skip their rows, so a failed install is a warning.
    let tools: Vec<String> = [
        "linux-perf",
        "bpftrace",
        "bpfcc-tools",
        "linux-headers-amd64",
    ]
    .map(String::from)
    .to_vec();
    if let Err(e) = crate::setup::apt_install(&tools) {
        println!("warning: {e:#}: the rows that need them are skipped");
    }
    cmd::run(Command::new("cargo").args([
        "build",
        "--release",
        "--workspace",
        "--exclude",
        "hawk-ebpf",
        "--bins",
    ]))?;
    let target = fs::canonicalize("target/release")?;
    let perf = cmd::probe(Command::new("perf").arg("--version")).is_some();
    if !perf {
        println!("perf not found (Debian package linux-perf): perf comparisons are skipped");
    } else if cmd::probe(Command::new("inferno-flamegraph").arg("--help")).is_none() {
        // The perf pipeline we compare with: perf script | inferno.
        cmd::run(Command::new("cargo").args(["install", "inferno", "--locked"]))?;
    }
    let bpftrace = cmd::probe(Command::new("bpftrace").arg("--version")).is_some();
    let scratch = std::env::temp_dir().join(format!("hawk-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let (memleak_source, memleak_blocker) = match run(6) {
        true => match gated::memleak_kernel_source(&target.with_file_name("bench-cache")) {
            Ok(source) => (source, None),
            Err(why) => (None, Some(why)),
        },
        false => (None, None),
    };
    let b = Bench {
        hawk: target.join("hawk-ebpf"),
        fixed_work: target.join("fixed_work"),
        target,
        scratch,
        quick,
        perf,
        bpftrace,
        memleak_source,
        memleak_blocker,
    };
    let result = (|| {
        let sections: [(&[u8], Section); 6] = [
            (&[1], Bench::overhead),
            (&[2], Bench::bpf_cost),
            (&[3, 4], Bench::end_to_end),
            (&[4], Bench::daemon_memory),
            (&[6], Bench::mem_profiling),
            (&[7], Bench::shim_marker),
        ];
        for (numbers, section) in sections {
            if numbers.iter().any(|&n| run(n)) {
                let started = Instant::now();
                section(&b)?;
                println!("({:.0} s)", started.elapsed().as_secs_f64());
            }
        }
        if !quick && run(5) {
            cmd::run(Command::new("cargo").args(["bench", "-p", "hawk-userspace"]))?;
        }
        if !quick && run(7) {
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
    fn start_profiler(&self, p: &Profiler, out: &Path) -> Result<Option<Child>> {
        match p {
            Profiler::None => Ok(None),
            Profiler::Hawk(hz) => {
                // It says "sampling …" once its programs are attached; its
                // first polls (reading /proc, symbolizing what is running)
                // follow at once: wait them out before the workload starts.
                let ready = spawn_ready(
                    Command::new(&self.hawk)
                        .args(["record", "--duration", "1h", "--freq", &hz.to_string()])
                        .args(["--format", "folded", "--out"])
                        .arg(out),
                    Says::Stderr,
                    "sampling",
                    Duration::from_millis(if self.quick { 700 } else { 1200 }),
                    Duration::from_secs(60),
                )?;
                Ok(Some(ready.child))
            }
            Profiler::Perf(hz) => {
                let child = Command::new("perf")
                    .args(["record", "-g", "-a", "-F", &hz.to_string(), "-o"])
                    .arg(out.join("perf.data"))
                    .args(["--", "sleep", "3600"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting {}", p.label()))?;
                // perf says nothing when it starts; it has opened its events
                // and synthesized the running processes well within this.
                std::thread::sleep(Duration::from_millis(if self.quick { 1000 } else { 1500 }));
                Ok(Some(child))
            }
        }
    }

    fn overhead(&self) -> Result<()> {
        let rounds = if self.quick { 3 } else { 7 };
        let steps = if self.quick { "700" } else { "2000" };
        // 19 Hz gives 15 samples in the quick run's 0.8 s: nothing to see.
        let rates: &[u64] = if self.quick {
            &[99, 999]
        } else {
            &[19, 99, 999]
        };
        let mut configs = vec![Profiler::None];
        configs.extend(rates.iter().map(|&hz| Profiler::Hawk(hz)));
        if self.perf {
            configs.extend(rates.iter().map(|&hz| Profiler::Perf(hz)));
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
                if let Some(mut child) = profiler {
                    interrupt(&child);
                    wait_usage(&mut child, Instant::now())?;
                }
                let _ = fs::remove_dir_all(&out);
                wall[i].push(usage.wall);
                cpu[i].push(usage.cpu);
            }
        }
        let (base_wall, _, _) = stats(&wall[0]);
        let (base_cpu, _, _) = stats(&cpu[0]);
        println!("load average at the end: {}", loadavg());
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
    /// a running `hawk-ebpf record`, with kernel.bpf_stats_enabled set; and,
    /// as the floor of this machine, the same for bpftrace's empty and
    /// counting perf_event programs.
    fn bpf_cost(&self) -> Result<()> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (rounds, secs) = if self.quick { (1, 1.5) } else { (3, 2.0) };
        let mut runs: Vec<(Sampler, usize)> = Vec::new();
        for hz in [99, 999] {
            runs.push((Sampler::Hawk(hz), cpus));
            if !self.quick {
                runs.push((Sampler::Hawk(hz), 1));
                if self.bpftrace {
                    runs.push((Sampler::BpftraceEmpty(hz), cpus));
                    runs.push((Sampler::BpftraceCount(hz), cpus));
                    runs.push((Sampler::BpftraceStacks(hz), cpus));
                }
            }
        }
        println!(
            "\n== 2. BPF cost per CPU sample (kernel.bpf_stats_enabled=1): run_time_ns / run_cnt, \
             {secs} s of fixed_work on N CPUs, {rounds} interleaved rounds"
        );
        if !self.quick && !self.bpftrace {
            println!("bpftrace not found (apt-get install bpftrace): no floor reference");
        }
        let knob = Path::new("/proc/sys/kernel/bpf_stats_enabled");
        let before = fs::read_to_string(knob).unwrap_or_else(|_| "0".into());
        fs::write(knob, "1").context("enabling kernel.bpf_stats_enabled")?;
        let mut per_run: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
        let mut counts: Vec<u64> = vec![0; runs.len()];
        let result = (|| -> Result<()> {
            for _ in 0..rounds {
                for (i, (sampler, busy)) in runs.iter().enumerate() {
                    let out = self.scratch.join("bpf");
                    fs::create_dir_all(&out)?;
                    let profiler = self.start_sampler(sampler, &out)?;
                    // Work to sample: user stacks, a few kernel ones.
                    let mut work = (0..*busy)
                        .map(|_| {
                            Command::new(&self.fixed_work)
                                .arg("1000000")
                                .stdout(Stdio::null())
                                .spawn()
                        })
                        .collect::<std::io::Result<Vec<_>>>()?;
                    std::thread::sleep(Duration::from_secs_f64(secs));
                    let progs = bpf_prog_stats(profiler.id());
                    for w in &mut work {
                        let _ = w.kill();
                        let _ = w.wait();
                    }
                    profiler.stop(Duration::from_secs(20));
                    let _ = fs::remove_dir_all(&out);
                    let (ns, cnt) = progs
                        .iter()
                        .filter(|(kind, _, _)| kind == "perf_event")
                        .fold((0, 0), |(ns, cnt), (_, n, c)| (ns + n, cnt + c));
                    if cnt > 0 {
                        per_run[i].push(ns as f64 / cnt as f64 / 1000.0);
                        counts[i] += cnt;
                    }
                }
            }
            Ok(())
        })();
        let _ = fs::write(knob, before.trim());
        result?;
        println!("load average at the end: {}", loadavg());
        println!(
            "{:>7}  {:<40} {:>11} {:>9} {:>9} {:>15}",
            "rate", "program", "busy CPUs", "runs", "µs/run", "(min-max)"
        );
        for (i, (sampler, busy)) in runs.iter().enumerate() {
            let (m, lo, hi) = stats(&per_run[i]);
            println!(
                "{:>4} Hz  {:<40} {:>11} {:>9} {:>9.2} {:>15}",
                sampler.hz(),
                sampler.label(),
                format!("{busy} of {cpus}"),
                counts[i],
                m,
                format!("({lo:.2}-{hi:.2})")
            );
        }
        Ok(())
    }

    /// Starts a system-wide perf_event BPF program; returns once it runs.
    fn start_sampler(&self, sampler: &Sampler, out: &Path) -> Result<proc::Ready> {
        let timeout = Duration::from_secs(60);
        match sampler {
            Sampler::Hawk(hz) => spawn_ready(
                Command::new(&self.hawk)
                    .args(["record", "--duration", "1h", "--freq", &hz.to_string()])
                    .args(["--format", "folded", "--out"])
                    .arg(out),
                Says::Stderr,
                "sampling",
                Duration::from_millis(300),
                timeout,
            ),
            Sampler::BpftraceEmpty(hz)
            | Sampler::BpftraceCount(hz)
            | Sampler::BpftraceStacks(hz) => spawn_ready(
                Command::new("bpftrace").args([
                    "-e",
                    &match sampler {
                        Sampler::BpftraceEmpty(_) => format!("profile:hz:{hz} {{ $x = 1; }}"),
                        Sampler::BpftraceCount(_) => format!("profile:hz:{hz} {{ @n = count(); }}"),
                        _ => format!("profile:hz:{hz} {{ @[pid, ustack, kstack] = count(); }}"),
                    },
                ]),
                // "Attaching 1 probe..." comes just before it attaches.
                Says::Stdout,
                "Attaching",
                Duration::from_millis(500),
                timeout,
            ),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spread() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
