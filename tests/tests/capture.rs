//! `hawk-ebpf capture --trace`: real shimmed programs (a Rust service using
//! tokio + tracing + OpenTelemetry + the shim, and a C program exporting the
//! marker by hand), real BPF programs.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hawk_tests::http::{TracedService, frames_of};
use hawk_tests::{find_output, hawk, hawk_bin, read_json, require_kernel, scratch_dir, target_dir};

const TRACED_SERVICE: &str = env!("CARGO_BIN_EXE_traced_service");
const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_A: &str = "00f067aa0ba902b7";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN_B: &str = "b7ad6b7169203331";
// The C program's own trace: tests run in parallel, and a capture sees every
// process on the machine.
const TRACE_C: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";
const SPAN_C: &str = "5eed5eed5eed5eed";

/// A running `hawk-ebpf capture`, started and waited for in the background.
struct Capture {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

impl Capture {
    /// Starts the capture and returns once it waits for the trace.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(hawk_bin())
            .arg("capture")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hawk-ebpf capture");
        let mut reader = BufReader::new(child.stderr.take().expect("stderr"));
        let mut stderr = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).expect("read stderr") == 0 {
                panic!("hawk-ebpf capture ended early: {stderr:?}");
            }
            stderr.push(line.trim_end().to_string());
            if line.contains("waiting for trace") {
                break;
            }
        }
        // Keep draining stderr so the capture never blocks on a full pipe.
        let stderr = std::thread::spawn(move || {
            let mut s = stderr.join("\n");
            let _ = reader.read_to_string(&mut s);
            s
        });
        Self { child, stderr }
    }

    /// Waits for the capture to end and returns (exit code, stdout + stderr).
    fn wait(mut self) -> (i32, String) {
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout)
            .expect("read stdout");
        let status = self.child.wait().expect("wait for capture");
        let stderr = self.stderr.join().expect("stderr reader");
        (status.code().unwrap_or(-1), format!("{stdout}\n{stderr}"))
    }
}

#[test]
fn capture_collects_one_trace_across_threads_and_nothing_else() {
    require_kernel!();
    let service = TracedService::start(TRACED_SERVICE);
    let out = scratch_dir("capture-service");
    let capture = Capture::start(&[
        "--trace",
        TRACE_A,
        "--timeout",
        "60s",
        "--grace",
        "300ms",
        "--out",
        out.to_str().unwrap(),
    ]);
    // B's request runs while A's does: its samples must stay out.
    std::thread::scope(|s| {
        s.spawn(|| service.get("/beta?ms=900", TRACE_B, SPAN_B));
        std::thread::sleep(Duration::from_millis(100));
        let response = service.get("/alpha?ms=900", TRACE_A, SPAN_A);
        assert_eq!(response.status, 200);
        assert!(response.text().contains(TRACE_A), "{}", response.text());
    });
    let (code, stdout) = capture.wait();
    assert_eq!(code, 0, "capture failed: {stdout}");

    let json_path = find_output(&out, ".json");
    let name = json_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("hwk_cpu_ebpf_profile_")
            && name.contains(&format!("_trace-{TRACE_A}_span-")),
        "{name}"
    );
    let json = read_json(&json_path);
    assert_eq!(json["trace_context"]["trace_id"], TRACE_A);
    let span = json["trace_context"]["span_id"].as_str().unwrap();
    assert!(name.contains(&format!("_span-{span}.")), "{name} vs {span}");
    assert!(json["metadata"]["samples"].as_u64().unwrap() > 50, "{json}");

    let frames = frames_of(&json);
    let has = |f: &str| frames.iter().any(|x| x == f);
    assert!(has("alpha_work"), "alpha_work missing: {frames:?}");
    assert!(
        has("alpha_helper_work"),
        "the helper thread's work is part of the trace: {frames:?}"
    );
    assert!(!has("beta_work"), "trace B leaked into trace A's profile");
    // Every format, named for the trace.
    for ext in [".svg", ".speedscope.json", ".folded"] {
        let p = find_output(&out, ext);
        assert!(p.to_string_lossy().contains(TRACE_A), "{}", p.display());
    }
}

#[test]
fn capture_mem_keeps_the_allocations_of_one_trace() {
    require_kernel!();
    const TRACE_M: &str = "a110c0000000000000000000000000a1";
    const SPAN_M: &str = "a110c000000000a1";
    const TRACE_N: &str = "a110c0000000000000000000000000b2";
    const SPAN_N: &str = "a110c000000000b2";
    let service = TracedService::start(TRACED_SERVICE);
    let out = scratch_dir("capture-mem");
    // No --pid: every process running a shimmed binary is traced.
    let capture = Capture::start(&[
        "--trace",
        TRACE_M,
        "--mem",
        "--timeout",
        "60s",
        "--grace",
        "300ms",
        "--format",
        "json,folded",
        "--out",
        out.to_str().unwrap(),
    ]);
    // N allocates in the same function at the same time: none of it may
    // enter M's profiles.
    let (m, _n) = std::thread::scope(|s| {
        let n = s.spawn(|| service.get("/alloc?kb=2048", TRACE_N, SPAN_N));
        let m = service.get("/alloc?kb=4096", TRACE_M, SPAN_M);
        (m, n.join().unwrap())
    });
    assert_eq!(m.status, 200, "{}", m.text());
    let number = |key: &str| -> u64 {
        m.text()
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {}", m.text()))
    };
    let (allocated, leaked) = (number("allocated"), number("leaked"));
    let (code, output) = capture.wait();
    assert_eq!(code, 0, "capture failed: {output}");

    let outstanding_path = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".json") && !n.ends_with("_alloc.json")
        })
        .expect("outstanding json");
    let name = outstanding_path.file_name().unwrap().to_string_lossy();
    assert!(
        name.starts_with("hwk_mem_ebpf_profile_")
            && name.contains(&format!("_trace-{TRACE_M}_span-")),
        "{name}"
    );
    let outstanding = read_json(&outstanding_path);
    let alloc = read_json(&find_output(&out, "_alloc.json"));
    for json in [&outstanding, &alloc] {
        assert_eq!(json["type"], "mem");
        assert_eq!(json["trace_context"]["trace_id"], TRACE_M);
    }
    let in_alloc_work =
        |json: &serde_json::Value| hawk_tests::weight_where(json, |f| f.contains(&"alloc_work"));
    // Exact: libc probes see every call, and N's calls carry N's trace.
    assert_eq!(in_alloc_work(&alloc), allocated, "{output}");
    assert_eq!(in_alloc_work(&outstanding), leaked, "{output}");
}

#[test]
fn capture_of_a_trace_that_never_comes_times_out_with_exit_code_3() {
    require_kernel!();
    let out = scratch_dir("capture-timeout");
    let run = hawk(&[
        "capture",
        "--trace",
        "11111111111111111111111111111111",
        "--timeout",
        "2s",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("did not appear within 2 s"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "no empty flamegraph"
    );
}

#[test]
fn malformed_ids_fail_before_anything_is_loaded() {
    // No kernel needed: the arguments are checked first.
    for (args, needle) in [
        (vec!["capture", "--trace", "not-hex"], "32 hex digits"),
        (
            vec!["capture", "--trace", TRACE_A, "--span", "abc"],
            "16 hex digits",
        ),
        (
            vec!["capture", "--trace", "00000000000000000000000000000000"],
            "all zeros",
        ),
    ] {
        let run = hawk(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// Builds tests/c/traced.c with the machine's C compiler, with frame pointers.
fn build_c_workload() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/traced.c");
    let bin = target_dir().join("traced-c");
    let status = Command::new("cc")
        .args(["-O1", "-fno-omit-frame-pointer", "-g", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc {}", src.display());
    bin
}

#[test]
fn a_c_program_exporting_the_marker_is_found_when_it_starts() {
    require_kernel!();
    let bin = build_c_workload();
    let out = scratch_dir("capture-c");
    // The capture starts first: the program is found through the exec
    // tracepoint, not the startup scan.
    let capture = Capture::start(&[
        "--trace",
        TRACE_C,
        "--timeout",
        "60s",
        "--out",
        out.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let status = Command::new(&bin)
        .args([TRACE_C, SPAN_C, "1", "1"])
        .stdout(Stdio::null())
        .status()
        .expect("run traced-c");
    assert!(status.success());
    let (code, output) = capture.wait();
    assert_eq!(code, 0, "capture failed: {output}");
    let json = read_json(&find_output(&out, ".json"));
    assert_eq!(json["trace_context"]["trace_id"], TRACE_C);
    assert_eq!(json["trace_context"]["span_id"], SPAN_C);
    let frames = frames_of(&json);
    assert!(frames.iter().any(|f| f == "c_traced_work"), "{frames:?}");
    assert!(
        !frames.iter().any(|f| f == "c_untraced_work"),
        "work after the context was cleared must stay out"
    );
}
