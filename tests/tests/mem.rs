//! `hawk-ebpf record --mem` against workloads with a known leak, known
//! churn, realloc growth and anonymous mappings, with the real BPF programs:
//! uprobes on glibc and the mmap tracepoints (`mem_workload`), or uprobes on
//! the shim's sampled allocator (`mem_sampled`).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use hawk_tests::{
    find_output, hawk, hawk_bin, read_json, record_command, require_kernel, scratch_dir,
    weight_where,
};

const MEM_WORKLOAD: &str = env!("CARGO_BIN_EXE_mem_workload");
const MEM_SAMPLED: &str = env!("CARGO_BIN_EXE_mem_sampled");

fn has(frames: &[&str], name: &str) -> bool {
    frames.contains(&name)
}

/// The outstanding profile: the `.json` file that is neither speedscope nor `_alloc`.
fn outstanding_json(dir: &Path) -> PathBuf {
    let matches: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".json") && !n.ends_with(".speedscope.json") && !n.ends_with("_alloc.json")
        })
        .collect();
    assert_eq!(
        matches.len(),
        1,
        "outstanding json in {}: {matches:?}",
        dir.display()
    );
    matches.into_iter().next().unwrap()
}

/// A started workload (`mem_workload` or `mem_sampled`) held at its gate.
struct Gated {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    pid: u32,
}

impl Gated {
    fn start() -> Self {
        Self::start_with(MEM_WORKLOAD, &[])
    }

    fn start_with(program: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(program)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let pid = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{program} printed {line:?}"));
        Self {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Opens the gate and returns the truth it prints.
    fn run(&mut self) -> HashMap<String, u64> {
        writeln!(self.stdin.as_mut().unwrap(), "go").unwrap();
        let mut truth = HashMap::new();
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "workload ended early"
            );
            let line = line.trim();
            if line == "done" {
                return truth;
            }
            let (key, value) = line.split_once(' ').unwrap();
            truth.insert(key.to_string(), value.parse().unwrap());
        }
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `hawk-ebpf ARGS` and waits until it says the probes are attached.
fn start_hawk(args: &[&str]) -> (Child, Vec<String>) {
    let mut child = Command::new(hawk_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting hawk-ebpf");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    let started = Instant::now();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let status = child.wait().unwrap();
            panic!("hawk-ebpf exited ({status}) before attaching: {lines:?}");
        }
        lines.push(line.trim_end().to_string());
        if line.contains("tracing allocations") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{lines:?}");
    }
    // Keep draining stderr so hawk-ebpf never blocks on it.
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("hawk-ebpf: {line}");
        }
    });
    (child, lines)
}

#[test]
fn record_mem_finds_the_leak_the_churn_and_the_live_heap() {
    require_kernel!();
    let mut workload = Gated::start();
    let out = scratch_dir("record-mem");
    let pid = workload.pid.to_string();
    let (mut hawk_child, attach_lines) = start_hawk(&[
        "record",
        "--mem",
        "--pid",
        &pid,
        "--duration",
        "120s",
        "--format",
        "json,folded,speedscope",
        "--out",
        out.to_str().unwrap(),
    ]);
    eprintln!("{attach_lines:?}");
    let truth = workload.run();
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(hawk_child.id() as i32, libc::SIGINT) };
    let status = hawk_child.wait().unwrap();
    assert!(status.success(), "hawk-ebpf: {status}");

    let folded = std::fs::read_to_string(find_output(&out, "_alloc.folded")).unwrap();
    eprintln!("allocated (folded):\n{folded}");
    let outstanding = read_json(&outstanding_json(&out));
    let allocated = read_json(&find_output(&out, "_alloc.json"));
    for json in [&outstanding, &allocated] {
        assert_eq!(json["type"], "mem");
        assert_eq!(json["metadata"]["unit"], "bytes");
        assert_eq!(json["metadata"]["pids"], serde_json::json!([workload.pid]));
    }
    let name = outstanding_json(&out)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("hwk_mem_ebpf_profile_20"), "{name}");

    // The leak: all of it outstanding, under leak_memory, with malloc as the leaf.
    let leaked = truth["leaked"];
    let leak_out = weight_where(&outstanding, |f| has(f, "leak_memory"));
    assert!(
        leak_out.abs_diff(leaked) <= leaked / 20,
        "outstanding under leak_memory {leak_out}, leaked {leaked}"
    );
    assert!(
        folded.lines().any(|l| l.contains(";leak_memory;malloc ")),
        "leak_memory;malloc in\n{folded}"
    );

    // The churn: allocated, not outstanding.
    let churned = truth["churned"];
    let churn_alloc = weight_where(&allocated, |f| has(f, "churn_memory"));
    assert!(
        churn_alloc.abs_diff(churned) <= churned / 20,
        "allocated under churn_memory {churn_alloc}, churned {churned}"
    );
    let churn_out = weight_where(&outstanding, |f| has(f, "churn_memory"));
    assert_eq!(churn_out, 0, "churn is freed");

    // realloc growth: the final buffer outstanding, every step allocated.
    let grown = truth["grown"];
    let grow_out = weight_where(&outstanding, |f| has(f, "grow_buffer"));
    assert_eq!(grow_out, grown, "outstanding under grow_buffer");
    let grow_alloc = weight_where(&allocated, |f| has(f, "grow_buffer"));
    assert_eq!(
        grow_alloc, truth["grow_allocated"],
        "allocated under grow_buffer"
    );

    // The live heap at the end of the window.
    let live = truth["live"];
    let heap = outstanding["heap_current_bytes"]
        .as_u64()
        .expect("heap_current_bytes");
    assert!(
        heap.abs_diff(live) <= live / 10,
        "heap_current_bytes {heap}, the workload holds {live}"
    );
    assert_eq!(
        allocated["heap_current_bytes"],
        outstanding["heap_current_bytes"]
    );
    // At least the churn's allocations were counted.
    assert!(outstanding["metadata"]["samples"].as_u64().unwrap() >= 20_000);
    let mem = &outstanding["metadata"]["mem"];
    assert_eq!(mem["source"], "libc");
    assert_eq!(mem["view"], "outstanding");
    assert_eq!(allocated["metadata"]["mem"]["view"], "allocated");
    assert_eq!(mem["frames"], 127);
    assert!(mem["allocations"].as_u64().unwrap() >= 20_000, "{mem}");
    assert!(mem["frees"].as_u64().unwrap() >= 20_000, "{mem}");

    // Anonymous mappings made outside the allocator: all of them allocated,
    // the half not unmapped outstanding, with mmap as the leaf.
    // (map_memory also mallocs the vector of the mappings.)
    let mapped_by = |f: &[&str]| has(f, "map_memory") && f.last() == Some(&"mmap");
    let map_out = weight_where(&outstanding, mapped_by);
    assert_eq!(
        map_out, truth["mapped_live"],
        "outstanding mmaps under map_memory"
    );
    let map_alloc = weight_where(&allocated, mapped_by);
    assert_eq!(
        map_alloc, truth["mapped"],
        "allocated mmaps under map_memory"
    );
    assert!(
        folded
            .lines()
            .any(|l| l.contains(";map_memory;") && l.contains(";mmap ")),
        "map_memory…;mmap in\n{folded}"
    );
}

#[test]
fn record_mem_uses_the_sampled_allocator_when_the_program_links_it() {
    require_kernel!();
    // A small mean interval so that the known quantities get hundreds of
    // samples; the estimates then land within a few percent (the tolerances
    // below are several standard deviations wide).
    let mut workload = Gated::start_with(MEM_SAMPLED, &[("HAWK_SAMPLE_BYTES", "32768")]);
    let out = scratch_dir("record-mem-sampled");
    let pid = workload.pid.to_string();
    let (mut hawk_child, attach_lines) = start_hawk(&[
        "record",
        "--mem",
        "--pid",
        &pid,
        "--duration",
        "120s",
        "--format",
        "json,folded",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        attach_lines
            .iter()
            .any(|l| l.contains("links the sampled allocator")),
        "{attach_lines:?}"
    );
    let truth = workload.run();
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(hawk_child.id() as i32, libc::SIGINT) };
    let status = hawk_child.wait().unwrap();
    assert!(status.success(), "hawk-ebpf: {status}");

    let outstanding = read_json(&outstanding_json(&out));
    let allocated = read_json(&find_output(&out, "_alloc.json"));
    assert_eq!(outstanding["metadata"]["mem"]["source"], "sampled");
    let within = |what: &str, estimate: u64, truth: u64, percent: u64| {
        assert!(
            estimate.abs_diff(truth) <= truth * percent / 100,
            "{what}: estimated {estimate}, truth {truth}"
        );
    };
    let leaked = truth["leaked"];
    let leak_estimate = weight_where(&outstanding, |f| has(f, "leak_memory"));
    // Every sample the program reported reached the profile: each 64 KiB
    // block sampled at a 32 KiB mean stands for 64 KiB / (1 - e^-2).
    let per_block = (65536.0 / (1.0 - (-2.0f64).exp())).round() as u64;
    assert_eq!(leak_estimate, truth["leak_samples"] * per_block);
    within("outstanding under leak_memory", leak_estimate, leaked, 15);
    within(
        "allocated under churn_memory",
        weight_where(&allocated, |f| has(f, "churn_memory")),
        truth["churned"],
        15,
    );
    // Every sampled churn block was freed, and its free reported.
    assert_eq!(
        weight_where(&outstanding, |f| has(f, "churn_memory")),
        0,
        "churn is freed"
    );
    within(
        "outstanding under grow_buffer",
        weight_where(&outstanding, |f| has(f, "grow_buffer")),
        truth["grown"],
        15,
    );
    let heap = outstanding["heap_current_bytes"].as_u64().unwrap();
    within("heap_current_bytes", heap, truth["live"], 15);
    // Far fewer events than allocations: that is the point.
    let mem = &allocated["metadata"]["mem"];
    let events = allocated["metadata"]["samples"].as_u64().unwrap();
    let calls = mem["allocations"].as_u64().unwrap();
    assert!(events * 4 < calls, "{events} events for ≈{calls} calls");
    within("estimated allocation calls", calls, 20_000 + 128, 15);
}

#[test]
fn record_mem_min_age_hides_young_allocations() {
    require_kernel!();
    let mut workload = Gated::start();
    let out = scratch_dir("record-mem-min-age");
    let pid = workload.pid.to_string();
    let (mut hawk_child, _) = start_hawk(&[
        "record",
        "--mem",
        "--pid",
        &pid,
        "--min-age",
        "1h",
        "--frames",
        "3",
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    let truth = workload.run();
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(hawk_child.id() as i32, libc::SIGINT) };
    assert!(hawk_child.wait().unwrap().success());
    let outstanding = read_json(&outstanding_json(&out));
    // Nothing is an hour old, but the live heap is still known.
    assert_eq!(outstanding["stats"], serde_json::json!([]));
    let heap = outstanding["heap_current_bytes"].as_u64().unwrap();
    assert!(heap.abs_diff(truth["live"]) <= truth["live"] / 10, "{heap}");
    // --frames 3: the process frame, at most three frames, the allocator leaf.
    let allocated = read_json(&find_output(&out, "_alloc.json"));
    for entry in allocated["stats"].as_array().unwrap() {
        let n = entry["frames"].as_array().unwrap().len();
        assert!(n <= 5, "{entry}");
    }
}

#[test]
fn record_mem_command_exits_mid_window() {
    require_kernel!();
    let out = scratch_dir("record-mem-command");
    // stdin is empty: the workload runs straight through and exits.
    let stderr = record_command(&out, &["--mem"], &[MEM_WORKLOAD]);
    // The process is gone when the files are written: its stacks are named
    // from what the polls learned while it lived (it lingers 1.5 s).
    let outstanding = read_json(&outstanding_json(&out));
    let leak = weight_where(&outstanding, |f| has(f, "leak_memory"));
    assert_eq!(leak, 32 * 64 * 1024, "{stderr}\n{outstanding:#}");
}

#[test]
fn record_mem_follows_the_processes_a_command_forks() {
    require_kernel!();
    let out = scratch_dir("record-mem-fork");
    // The shell forks the workload; the workload waits for the pipe to close
    // (`sleep`) before it allocates, by which time Hawk follows it.
    let script = format!("sleep {} | {MEM_WORKLOAD}", hawk_tests::secs(1.5));
    let stderr = record_command(&out, &["--mem"], &["sh", "-c", &script]);
    assert!(stderr.contains("following child process"), "{stderr}");
    let outstanding = read_json(&outstanding_json(&out));
    let leak = weight_where(&outstanding, |f| has(f, "leak_memory"));
    assert_eq!(leak, 32 * 64 * 1024, "{stderr}\n{outstanding:#}");
}

#[test]
fn record_mem_bad_input_is_a_clear_error() {
    let out = hawk(&["record", "--mem", "--min-age", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --min-age"));
    require_kernel!();
    let out = hawk(&["record", "--mem", "--pid", "999999999", "--duration", "1s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such process"), "{err}");
    let out = hawk(&["record", "--mem", "--mem-source", "tcmalloc"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected auto, libc or sampled"), "{err}");
    // The sampled source on a program without the sampled allocator.
    let workload = Gated::start();
    let pid = workload.pid.to_string();
    let out = hawk(&[
        "record",
        "--mem",
        "--mem-source",
        "sampled",
        "--pid",
        &pid,
        "--duration",
        "1s",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not link the shim's sampled allocator") && err.lines().count() == 1,
        "{err}"
    );
}
