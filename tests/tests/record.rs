//! `hawk-ebpf record` against real workloads, with the real BPF programs.

use std::time::{Duration, Instant};

use hawk_tests::{
    Workload, cpu_seconds, find_output, hawk, pids_where, read_json, record_command,
    require_kernel, scratch_dir, secs, speedscope_schema_errors, weight_where,
};

const CPU_SPLIT: &str = env!("CARGO_BIN_EXE_cpu_split");
const SYSCALL_HEAVY: &str = env!("CARGO_BIN_EXE_syscall_heavy");

fn has(frames: &[&str], name: &str) -> bool {
    frames.contains(&name)
}

/// Asserts the 3:1 split of `cpu_split` in a Hawk JSON profile
/// ([`assert_ratio`]) and that every stack is rooted at its process.
fn assert_three_to_one(json: &serde_json::Value) {
    assert_ratio(json);
    // Every stack is rooted at the process.
    for entry in json["stats"].as_array().unwrap() {
        let root = entry["frames"][0].as_str().unwrap();
        assert!(root.starts_with("cpu_split ("), "root frame {root:?}");
    }
}

/// The share of `hot_three_quarters` in the samples of the two hot
/// functions is 3/4 within 3 % (the workload's own imprecision) plus 3.5
/// standard deviations of a binomial share over the samples taken (the test
/// machine may be busy, and fewer samples are noisier).
fn assert_ratio(json: &serde_json::Value) {
    let three = weight_where(json, |f| has(f, "hot_three_quarters"));
    let one = weight_where(json, |f| has(f, "hot_one_quarter"));
    let n = three + one;
    assert!(n >= 40, "too few samples to judge a ratio: {three} / {one}");
    let share = three as f64 / n as f64;
    let tolerance = 0.03 + 3.5 * (0.75 * 0.25 / n as f64).sqrt();
    assert!(
        (share - 0.75).abs() <= tolerance,
        "hot_three_quarters has {three} of {n} samples ({:.1} %), expected 75 % ± {:.1}",
        share * 100.0,
        tolerance * 100.0
    );
}

#[test]
fn record_pid_names_both_hot_functions_in_their_ratio() {
    require_kernel!();
    let workload = Workload::start(CPU_SPLIT, &["8"]);
    let out = scratch_dir("record-pid");
    let pid = workload.pid.to_string();
    let cpu_before = cpu_seconds(workload.pid);
    let run = hawk(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "3s",
        "--freq",
        "499",
        "--out",
        out.to_str().unwrap(),
    ]);
    let cpu_used = cpu_seconds(workload.pid) - cpu_before;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let json = read_json(&find_output(&out, ".json"));
    assert_eq!(json["profiler"], "ebpf");
    assert_eq!(json["type"], "cpu");
    assert!(json.get("trace_context").is_none());
    assert_eq!(json["metadata"]["frequency_hz"], 499);
    assert_eq!(json["metadata"]["pids"], serde_json::json!([workload.pid]));
    assert_three_to_one(&json);
    // One sample per 1/499 s of CPU the workload used in the window. The
    // hawk-ebpf run is a little longer than its window (loading, writing),
    // and other tests compete for the CPUs, so compare with the CPU time the
    // workload really got while hawk-ebpf ran.
    let samples = json["metadata"]["samples"].as_u64().unwrap();
    let expected = cpu_used * 499.0;
    // Under software emulation the guest's cpu-clock loses timer periods
    // when the host is busy while CPU time is still charged: only bound it.
    let min_share = if hawk_tests::slowdown() > 1.0 {
        0.15
    } else {
        0.6
    };
    assert!(
        samples as f64 <= expected * 1.1 && samples as f64 >= expected * min_share,
        "{samples} samples for {cpu_used:.2} s of CPU at 499 Hz (expected about {expected:.0})"
    );

    // All four files, named by the convention.
    for ext in [".svg", ".speedscope.json", ".folded"] {
        let path = find_output(&out, ext);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("hwk_cpu_ebpf_profile_20"), "{name}");
    }
    let folded = std::fs::read_to_string(find_output(&out, ".folded")).unwrap();
    assert!(folded.lines().any(|l| l.contains(";hot_three_quarters")));
    let speedscope = read_json(&find_output(&out, ".speedscope.json"));
    let errors = speedscope_schema_errors(&speedscope);
    assert!(errors.is_empty(), "speedscope schema errors: {errors:?}");
    assert_eq!(
        speedscope["profiles"][0]["name"],
        format!("cpu_split ({})", workload.pid)
    );
    let svg = std::fs::read_to_string(find_output(&out, ".svg")).unwrap();
    assert!(svg.contains("hot_three_quarters") && svg.contains("hot_one_quarter"));
}

#[test]
fn record_command_runs_it_until_it_exits() {
    require_kernel!();
    let out = scratch_dir("record-command");
    let started = Instant::now();
    let run = hawk(&[
        "record",
        "--duration",
        "60s",
        "--freq",
        "499",
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
        "--",
        CPU_SPLIT,
        "2",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the window ends when the command exits"
    );
    let json = read_json(&find_output(&out, ".json"));
    assert_three_to_one(&json);
}

#[test]
fn short_lived_processes_get_named_frames() {
    require_kernel!();
    let out = scratch_dir("record-short-lived");
    // Twenty processes of about 30 ms each: all of them gone long before
    // the collector's next poll (200 ms). Their maps are read when their
    // first samples are announced.
    let script = format!(
        "for i in $(seq 20); do {CPU_SPLIT} {} >/dev/null; done",
        hawk_tests::secs(0.03)
    );
    let stderr = record_command(&out, &["--freq", "999"], &["sh", "-c", &script]);
    let json = read_json(&find_output(&out, ".json"));
    let workload = |f: &[&str]| f[0].starts_with("cpu_split (");
    let total = weight_where(&json, workload);
    let unnamed = weight_where(&json, |f| {
        workload(f) && f.iter().any(|name| name.starts_with("[unknown]"))
    });
    let hot = weight_where(&json, |f| workload(f) && has(f, "hot_three_quarters"));
    let pids = pids_where(&json, workload);
    assert!(
        pids.len() >= 10,
        "{} processes sampled: {stderr}",
        pids.len()
    );
    // Before snapshots, nine samples in ten had unnamed frames.
    assert!(
        unnamed * 10 <= total,
        "{unnamed} of {total} samples have frames without a name"
    );
    // (Under emulation, start-up is a larger share of each short life.)
    assert!(
        hot * 3 >= total,
        "{hot} of {total} samples in hot_three_quarters"
    );
}

#[test]
fn record_command_follows_the_processes_it_forks() {
    require_kernel!();
    let out = scratch_dir("record-command-forks");
    // The shell forks cpu_split twice (one after the other): both are
    // followed from their first instruction, in the kernel.
    let script = format!("{CPU_SPLIT} 1; {CPU_SPLIT} 1");
    let stderr = record_command(&out, &["--freq", "499"], &["sh", "-c", &script]);
    let json = read_json(&find_output(&out, ".json"));
    let pids_with_work = pids_where(&json, |f| has(f, "hot_three_quarters"));
    assert_eq!(pids_with_work.len(), 2, "{stderr}\n{json:#}");
    // The shell (and each child before its exec) has a few samples too.
    assert_ratio(&json);
}

#[test]
fn syscall_heavy_workload_shows_kernel_frames_under_the_caller() {
    require_kernel!();
    let workload = Workload::start(SYSCALL_HEAVY, &["8"]);
    let out = scratch_dir("record-syscalls");
    let pid = workload.pid.to_string();
    let run = hawk(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "2s",
        "--freq",
        "499",
        "--format",
        "json,folded",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json = read_json(&find_output(&out, ".json"));
    let total = weight_where(&json, |_| true);
    // Kernel frames of the write path, below do_syscalls.
    let in_kernel = weight_where(&json, |f| {
        f.iter()
            .position(|x| *x == "do_syscalls")
            .is_some_and(|i| f[i + 1..].iter().any(|k| k.contains("sys_write")))
    });
    assert!(
        in_kernel * 4 >= total,
        "expected most samples in the kernel's write path under do_syscalls: {in_kernel} of {total}"
    );
    // The folded file marks kernel frames as perf does.
    let folded = std::fs::read_to_string(find_output(&out, ".folded")).unwrap();
    assert!(folded.contains("sys_write_[k]"), "{folded}");
}

#[test]
fn system_wide_record_sees_a_busy_process() {
    require_kernel!();
    let workload = Workload::start(CPU_SPLIT, &["6"]);
    let out = scratch_dir("record-system");
    let run = hawk(&[
        "record",
        "--duration",
        "2s",
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json = read_json(&find_output(&out, ".json"));
    let root = format!("cpu_split ({})", workload.pid);
    let busy = weight_where(&json, |f| f[0] == root && has(f, "hot_three_quarters"));
    assert!(busy > 0, "no samples of {root} in a system-wide profile");
    assert_eq!(json["metadata"]["target_pids"], serde_json::json!([]));
}

#[test]
fn user_only_and_kernel_only_restrict_the_stacks() {
    require_kernel!();
    let workload = Workload::start(SYSCALL_HEAVY, &[&secs(8.0)]);
    let pid = workload.pid.to_string();
    let window = format!("{}s", secs(1.0));
    for (flag, want_user, want_kernel) in
        [("--user-only", true, false), ("--kernel-only", false, true)]
    {
        let out = scratch_dir(&format!("record{flag}"));
        let run = hawk(&[
            "record",
            "--pid",
            &pid,
            "--duration",
            &window,
            "--freq",
            "499",
            flag,
            "--format",
            "folded",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let folded = std::fs::read_to_string(find_output(&out, ".folded")).unwrap();
        assert_eq!(
            folded.contains("do_syscalls"),
            want_user,
            "{flag}: {folded}"
        );
        assert_eq!(folded.contains("_[k]"), want_kernel, "{flag}: {folded}");
    }
}

#[test]
fn bad_input_fails_with_one_line_and_writes_nothing() {
    require_kernel!();
    let out = scratch_dir("record-errors");
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["record", "--pid", "4000000", "--out", o],
            "no such process: 4000000",
        ),
        (
            vec![
                "record",
                "--duration",
                "1s",
                "--out",
                "/proc/nonexistent-dir",
            ],
            "/proc/nonexistent-dir",
        ),
        (
            vec!["record", "--duration", "1s", "--out", "/proc"],
            "/proc",
        ),
        (
            vec!["record", "--freq", "abc", "--out", o],
            "invalid frequency",
        ),
        (
            vec![
                "record",
                "--duration",
                "1s",
                "--out",
                o,
                "--",
                "/nonexistent/program",
            ],
            "/nonexistent/program",
        ),
    ] {
        let run = hawk(&args);
        assert!(!run.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn check_reports_a_usable_machine() {
    require_kernel!();
    let run = hawk(&["check"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    for name in [
        "capabilities",
        "BTF",
        "perf_event",
        "uprobes",
        "tracepoints",
        "ring buffer",
    ] {
        assert!(stdout.contains(name), "check lists {name}: {stdout}");
    }
    assert!(stdout.contains("record: can run here"));
}

#[test]
fn ctrl_c_ends_the_window_early_and_still_writes_the_files() {
    require_kernel!();
    let workload = Workload::start(CPU_SPLIT, &["20"]);
    let out = scratch_dir("record-sigint");
    let pid = workload.pid.to_string();
    let started = Instant::now();
    let mut child = std::process::Command::new(hawk_tests::hawk_bin())
        .args([
            "record",
            "--pid",
            &pid,
            "--duration",
            "60s",
            "--freq",
            "499",
            "--format",
            "json",
            "--out",
        ])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it samples, let it sample a while, then Ctrl-C.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("sampling") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "hawk-ebpf ended before sampling"
        );
    }
    std::thread::sleep(Duration::from_secs_f64(1.0 * hawk_tests::slowdown()));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let mut run = child.wait_with_output().unwrap();
    run.stderr = rest.into_bytes();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(String::from_utf8_lossy(&run.stderr).contains("interrupted"));
    let json = read_json(&find_output(&out, ".json"));
    assert!(weight_where(&json, |f| has(f, "hot_three_quarters")) > 0);
}

#[test]
fn a_process_that_exits_during_the_window_is_still_symbolized() {
    require_kernel!();
    let workload = Workload::start(CPU_SPLIT, &[&secs(1.5)]);
    let out = scratch_dir("record-exit");
    let pid = workload.pid.to_string();
    let started = Instant::now();
    let run = hawk(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "30s",
        "--freq",
        "499",
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The window ends when the only target exits.
    assert!(started.elapsed() < Duration::from_secs_f64(15.0 * hawk_tests::slowdown()));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("all target processes exited"), "{stderr}");
    let json = read_json(&find_output(&out, ".json"));
    assert_three_to_one(&json);
    // Stacks first seen in the last poll interval before the exit cannot be
    // mapped any more; everything seen earlier must be named.
    let unnamed = json["metadata"]["unsymbolized_frames"].as_u64().unwrap();
    let samples = json["metadata"]["samples"].as_u64().unwrap();
    assert!(
        unnamed * 50 <= samples,
        "{unnamed} unsymbolized frames in {samples} samples"
    );
}
