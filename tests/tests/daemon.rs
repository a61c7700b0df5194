//! `hawk-ebpf daemon`: the real daemon with the real BPF programs, driven
//! over loopback HTTP by a small std client: every endpoint and format, bad
//! parameters, unknown traces, the concurrency bound, auth off loopback, the
//! memory profile of a process with a known leak, a
//! trace's profile asked for after the request finished (the instrumented
//! service), `--out`, SIGTERM, and clients that never finish their headers.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use hawk_tests::http::{Response, TracedService, frames_of, get};
use hawk_tests::{
    Workload, hawk, hawk_bin, require_kernel, scratch_dir, speedscope_schema_errors, weight_where,
};

const CPU_SPLIT: &str = env!("CARGO_BIN_EXE_cpu_split");
const MEM_WORKLOAD: &str = env!("CARGO_BIN_EXE_mem_workload");
const TRACED_SERVICE: &str = env!("CARGO_BIN_EXE_traced_service");
// Trace ids of this file only: tests run in parallel and every daemon sees
// every process.
const TRACE_A: &str = "da3a0000da3a0000da3a0000da3a0001";
const SPAN_A: &str = "00f067aa0ba902b7";
const TRACE_B: &str = "da3b0000da3b0000da3b0000da3b0002";
const SPAN_B: &str = "b7ad6b7169203331";

/// A running daemon; killed on drop.
struct Daemon {
    child: Child,
    port: u16,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Daemon {
    /// Starts `hawk-ebpf daemon ARGS` (with `--listen 127.0.0.1:0` unless
    /// ARGS has a --listen) and waits until it listens.
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(hawk_bin());
        command.arg("daemon");
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hawk-ebpf daemon");
        let mut reader = BufReader::new(child.stderr.take().expect("stderr"));
        let mut seen = Vec::new();
        let port = loop {
            let mut line = String::new();
            if reader.read_line(&mut line).expect("read stderr") == 0 {
                panic!("the daemon ended early: {seen:?}");
            }
            seen.push(line.trim_end().to_string());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().expect("address");
                break addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in {line:?}"));
            }
        };
        let stderr = std::thread::spawn(move || {
            let mut s = seen.join("\n");
            let _ = reader.read_to_string(&mut s);
            s
        });
        Self {
            child,
            port,
            stderr: Some(stderr),
        }
    }

    fn get(&self, path: &str) -> Response {
        get(self.port, path, &[])
    }

    /// SIGTERM, then the exit code and everything the daemon printed.
    fn terminate(mut self) -> (Option<i32>, String) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
        (status.code(), stderr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking()
            && let Some(stderr) = self.stderr.take()
        {
            eprintln!("daemon stderr:\n{}", stderr.join().unwrap_or_default());
        }
    }
}

#[test]
fn daemon_serves_profiles_health_and_metrics() {
    require_kernel!();
    let workload = Workload::start(CPU_SPLIT, &["60"]);
    let daemon = Daemon::start(&["--freq", "99", "--max-concurrent", "1"]);
    let pid = workload.pid.to_string();

    let health = daemon.get("/healthz");
    assert_eq!((health.status, health.text().trim()), (200, "ok"));

    // A window profile of one process, as JSON.
    let r = daemon.get(&format!(
        "/debug/prof/cpu/ebpf/?seconds=2&pid={pid}&format=json"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "application/json");
    let json = r.json();
    assert_eq!(json["profiler"], "ebpf");
    assert_eq!(json["type"], "cpu");
    assert!(
        json.get("trace_context").is_none(),
        "no OTel, no traceparent: {json}"
    );
    let total = weight_where(&json, |_| true);
    assert!(
        total >= 50,
        "2 s of a busy process at 99 Hz: {total} samples"
    );
    let hot = weight_where(&json, |f| f.contains(&"hot_three_quarters"));
    assert!(
        hot * 2 > total,
        "hot_three_quarters {hot} of {total}: {json}"
    );
    let root = format!("cpu_split ({pid})");
    assert_eq!(
        weight_where(&json, |f| f[0] == root),
        total,
        "only the pid asked for"
    );
    let disposition = r
        .headers
        .get("content-disposition")
        .cloned()
        .unwrap_or_default();
    assert!(
        disposition.contains("hwk_cpu_ebpf_profile_"),
        "{disposition}"
    );

    // Every other format, with its content type.
    let r = daemon.get(&format!(
        "/debug/prof/cpu/ebpf/?seconds=1&pid={pid}&format=svg"
    ));
    assert_eq!((r.status, r.content_type()), (200, "image/svg+xml"));
    // A slow machine (an emulated VM) may give a process few samples in a
    // second: names are asserted on the JSON above, shapes here.
    let sampled = |r: &Response| {
        r.headers
            .get("x-hawk-samples")
            .and_then(|n| n.parse::<u64>().ok())
            .expect("x-hawk-samples")
            > 0
    };
    assert!(r.text().contains("<svg"));
    assert!(!sampled(&r) || r.text().contains(&root), "{}", r.text());
    let r = daemon.get(&format!(
        "/debug/prof/cpu/ebpf?seconds=1&pid={pid}&format=speedscope"
    ));
    assert_eq!((r.status, r.content_type()), (200, "application/json"));
    let errors = speedscope_schema_errors(&r.json());
    assert!(errors.is_empty(), "speedscope schema: {errors:?}");
    let r = daemon.get(&format!(
        "/debug/prof/cpu/ebpf/?seconds=1&pid={pid}&format=folded"
    ));
    assert_eq!(
        (r.status, r.content_type()),
        (200, "text/plain; charset=utf-8")
    );
    let folded = r.text();
    assert!(
        folded.lines().all(|l| l
            .rsplit_once(' ')
            .is_some_and(|(_, n)| n.parse::<u64>().is_ok())),
        "{folded}"
    );
    assert!(!sampled(&r) || folded.contains(&root), "{folded}");

    // Bad parameters: 400 with a one-line reason.
    for (path, needle) in [
        ("/debug/prof/cpu/ebpf/?seconds=0", "invalid seconds"),
        ("/debug/prof/cpu/ebpf/?seconds=100000", "expected 1 to 300"),
        ("/debug/prof/cpu/ebpf/?seconds=abc", "invalid seconds"),
        ("/debug/prof/cpu/ebpf/?pid=abc", "invalid pid"),
        ("/debug/prof/cpu/ebpf/?pid=99999999999", "invalid pid"),
        ("/debug/prof/cpu/ebpf/?format=png", "unknown format"),
        ("/debug/prof/cpu/ebpf/?colour=red", "unknown parameter"),
        ("/debug/prof/trace/xyz", "32 hex digits"),
        (
            "/debug/prof/trace/00000000000000000000000000000000",
            "all zeros",
        ),
        (
            &format!("/debug/prof/trace/{TRACE_A}?format=gif"),
            "unknown format",
        ),
    ] {
        let r = daemon.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let text = r.text();
        assert!(text.contains(needle), "{path}: {text}");
        assert_eq!(text.trim_end().lines().count(), 1, "{path}: {text}");
    }
    let r = daemon.get("/debug/prof/trace/0123456789abcdef0123456789abcdef");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(daemon.get("/nope").status, 404);

    // The concurrency bound: one profile at a time here.
    let port = daemon.port;
    let long =
        std::thread::spawn(move || get(port, "/debug/prof/cpu/ebpf/?seconds=3&format=folded", &[]));
    std::thread::sleep(Duration::from_millis(800));
    let busy = daemon.get("/debug/prof/cpu/ebpf/?seconds=1");
    assert_eq!(busy.status, 429, "{}", busy.text());
    assert_eq!(long.join().unwrap().status, 200);

    // Metrics, in the Prometheus text format.
    let m = daemon.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.content_type().starts_with("text/plain; version=0.0.4"),
        "{}",
        m.content_type()
    );
    let text = m.text();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(value("hawk_samples_total ") > 0.0);
    assert!(value("hawk_samples_drained_total ") > 0.0);
    assert!(value("hawk_symbolizer_cache_hits_total ") > 0.0);
    assert!(value("hawk_store_bytes ") > 0.0);
    assert!(value("hawk_process_resident_memory_bytes ") > 0.0);
    for name in [
        "hawk_samples_lost_total{reason=\"map_full\"}",
        "hawk_map_fill_ratio{map=\"cpu_counts\"}",
        "hawk_map_fill_ratio{map=\"stacks\"}",
        "hawk_attached_binaries ",
        "hawk_traces_held ",
        "hawk_http_profile_requests_total{outcome=\"busy\"}",
    ] {
        value(name);
    }
    assert!(value("hawk_http_profile_requests_total{outcome=\"busy\"}") >= 1.0);
    assert!(
        value("hawk_map_fill_ratio{map=\"cpu_counts\"}") < 0.5,
        "drains keep the map small"
    );

    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "SIGTERM exits 0: {stderr}");
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("WARN"),
        "{stderr}"
    );
}

/// `mem_workload` held at its gate: it allocates only when told to.
struct MemWorkload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl MemWorkload {
    fn start() -> Self {
        let mut child = Command::new(MEM_WORKLOAD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting mem_workload");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready line");
        let pid = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("mem_workload printed {line:?}"));
        Self {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Opens the gate; returns the byte counts it reports once done.
    fn run(&mut self) -> std::collections::HashMap<String, u64> {
        writeln!(self.stdin.as_mut().expect("stdin"), "go").unwrap();
        let mut truth = std::collections::HashMap::new();
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "mem_workload ended early"
            );
            match line.trim().split_once(' ') {
                Some((key, value)) => {
                    truth.insert(key.to_string(), value.parse().unwrap());
                }
                None if line.trim() == "done" => return truth,
                None => panic!("mem_workload printed {line:?}"),
            }
        }
    }

    /// Closes its stdin: it lingers 1.5 s, then exits.
    fn let_exit(&mut self) {
        drop(self.stdin.take());
    }
}

impl Drop for MemWorkload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first sample of metric `name` (with its labels, if
/// any) in the daemon's `/metrics`.
fn metric_value(daemon: &Daemon, name: &str) -> Option<f64> {
    let text = daemon.get("/metrics").text();
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_memory_profile_of_one_process_shows_its_leak() {
    require_kernel!();
    let daemon = Daemon::start(&[]);
    // Memory is profiled per process only: no pid, no profile.
    for (path, needle) in [
        ("/debug/prof/mem/ebpf/", "pid is required"),
        (
            "/debug/prof/mem/ebpf?seconds=1&format=json",
            "pid is required",
        ),
        ("/debug/prof/mem/ebpf/?pid=999999999", "no such process"),
        ("/debug/prof/mem/ebpf/?pid=1&view=live", "invalid view"),
        (
            "/debug/prof/mem/ebpf/?pid=1&min_age=soon",
            "invalid min_age",
        ),
    ] {
        let r = daemon.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let text = r.text();
        assert!(text.contains(needle), "{path}: {text}");
        assert_eq!(text.trim_end().lines().count(), 1, "{path}: {text}");
    }

    let mut workload = MemWorkload::start();
    let (port, pid) = (daemon.port, workload.pid);
    // 30 s at most; the window ends when the workload exits.
    let request = std::thread::spawn(move || {
        get(
            port,
            &format!("/debug/prof/mem/ebpf/?seconds=30&pid={pid}&format=json"),
            &[],
        )
    });
    // Allocate only once the probes are in place.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_value(&daemon, "hawk_mem_windows_active ") != Some(1.0) {
        assert!(!request.is_finished(), "{}", request.join().unwrap().text());
        assert!(Instant::now() < deadline, "the memory window never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let truth = workload.run();
    workload.let_exit();
    let r = request.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "application/json");
    let disposition = r
        .headers
        .get("content-disposition")
        .cloned()
        .unwrap_or_default();
    assert!(
        disposition.contains("hwk_mem_ebpf_profile_") && disposition.ends_with(".json\""),
        "{disposition}"
    );
    let json = r.json();
    assert_eq!(json["type"], "mem");
    assert_eq!(json["metadata"]["unit"], "bytes");
    assert_eq!(json["metadata"]["mem"]["view"], "outstanding");
    assert_eq!(json["metadata"]["target_pids"], serde_json::json!([pid]));
    assert!(
        json["metadata"]["duration_secs"].as_f64().unwrap() < 30.0,
        "the window ends when its target exits: {}",
        json["metadata"]
    );
    // The leak, all of it outstanding, under leak_memory.
    let leaked = truth["leaked"];
    let leak = weight_where(&json, |f| f.contains(&"leak_memory"));
    eprintln!(
        "memory window of {:.1} s: {leak} bytes outstanding under leak_memory (leaked {leaked}), heap_current_bytes {} (the workload holds {})",
        json["metadata"]["duration_secs"], json["heap_current_bytes"], truth["live"]
    );
    assert!(
        leak.abs_diff(leaked) <= leaked / 20,
        "outstanding under leak_memory {leak}, leaked {leaked}: {json}"
    );
    // The churn was freed.
    assert_eq!(weight_where(&json, |f| f.contains(&"churn_memory")), 0);
    // The live heap at the end: what the workload holds (the leak and the
    // grown buffer), give or take its own small allocations.
    let live = truth["live"];
    let heap = json["heap_current_bytes"]
        .as_u64()
        .expect("heap_current_bytes");
    assert!(
        heap >= leaked && heap.abs_diff(live) <= live / 10,
        "heap_current_bytes {heap}, the workload holds {live}"
    );
    assert_eq!(metric_value(&daemon, "hawk_mem_windows_active "), Some(0.0));

    // The allocated view, folded, of a process that keeps running (this one).
    let r = daemon.get(&format!(
        "/debug/prof/mem/ebpf/?seconds=1&pid={}&view=allocated&format=folded",
        std::process::id()
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "text/plain; charset=utf-8");
    let disposition = r
        .headers
        .get("content-disposition")
        .cloned()
        .unwrap_or_default();
    assert!(disposition.ends_with("_alloc.folded\""), "{disposition}");
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_trace_profile_is_served_after_the_request_finished() {
    require_kernel!();
    let service = TracedService::start(TRACED_SERVICE);
    let out = scratch_dir("daemon-traces");
    let daemon = Daemon::start(&[
        "--freq",
        "199",
        "--out",
        out.to_str().unwrap(),
        "--format",
        "json,folded",
        "--trace-grace",
        "1s",
    ]);
    // Two traces at once: B's samples must stay out of A's profile.
    std::thread::scope(|s| {
        s.spawn(|| service.get("/beta?ms=900", TRACE_B, SPAN_B));
        std::thread::sleep(Duration::from_millis(100));
        let r = service.get("/alpha?ms=900", TRACE_A, SPAN_A);
        assert_eq!(r.status, 200);
        assert!(r.text().contains(TRACE_A), "{}", r.text());
    });
    // The request is over; ask for its profile now.
    let r = daemon.get(&format!("/debug/prof/trace/{TRACE_A}?format=json"));
    assert_eq!(r.status, 200, "{}", r.text());
    let json = r.json();
    assert_eq!(json["trace_context"]["trace_id"], TRACE_A);
    let frames = frames_of(&json);
    let has = |f: &str| frames.iter().any(|x| x == f);
    assert!(has("alpha_work"), "alpha_work missing: {frames:?}");
    assert!(
        has("alpha_helper_work"),
        "the helper thread belongs to the trace: {frames:?}"
    );
    assert!(!has("beta_work"), "trace B leaked into trace A");
    let span = json["trace_context"]["span_id"]
        .as_str()
        .unwrap()
        .to_string();
    let disposition = r
        .headers
        .get("content-disposition")
        .cloned()
        .unwrap_or_default();
    assert!(
        disposition.contains(&format!("_trace-{TRACE_A}_span-{span}.json")),
        "{disposition}"
    );
    let r = daemon.get(&format!("/debug/prof/trace/{TRACE_B}?format=folded"));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("beta_work") && !r.text().contains("alpha_work"));
    let r = daemon.get(&format!("/debug/prof/trace/{TRACE_A}?format=svg"));
    assert_eq!((r.status, r.content_type()), (200, "image/svg+xml"));

    // --out writes each finished trace with the seed's names.
    let deadline = Instant::now() + Duration::from_secs(20);
    let written = |trace: &str, ext: &str| {
        std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .any(|n| {
                n.starts_with("hwk_cpu_ebpf_profile_")
                    && n.contains(&format!("_trace-{trace}_span-"))
                    && n.ends_with(ext)
            })
    };
    while !(written(TRACE_A, ".json") && written(TRACE_B, ".folded")) {
        assert!(
            Instant::now() < deadline,
            "no trace files in {}",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn off_loopback_needs_a_token_and_the_token_is_checked() {
    // Refused before anything is loaded: no kernel needed.
    let run = hawk(&["daemon", "--listen", "0.0.0.0:0"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_ne!(run.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("--auth-token"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    require_kernel!();
    let token_file = scratch_dir("daemon-token").join("token");
    std::fs::write(&token_file, "s3cret-t0ken\n").unwrap();
    let daemon = Daemon::start(&[
        "--listen",
        "0.0.0.0:0",
        "--auth-token-file",
        token_file.to_str().unwrap(),
    ]);
    let port = daemon.port;
    let r = get(port, "/metrics", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.headers.get("www-authenticate").map(String::as_str),
        Some("Bearer")
    );
    for wrong in [
        "Bearer s3cret-t0keN",
        "Bearer s3cret",
        "Basic s3cret-t0ken",
        "Bearer ",
    ] {
        let r = get(port, "/metrics", &[("Authorization", wrong)]);
        assert_eq!(r.status, 401, "{wrong}");
    }
    let r = get(
        port,
        "/debug/prof/trace/0123456789abcdef0123456789abcdef",
        &[],
    );
    assert_eq!(r.status, 401);
    let ok = [("Authorization", "Bearer s3cret-t0ken")];
    assert_eq!(get(port, "/metrics", &ok).status, 200);
    let r = get(port, "/debug/prof/cpu/ebpf/?seconds=1&format=folded", &ok);
    assert_eq!(r.status, 200, "{}", r.text());
    // Liveness probes need no token.
    assert_eq!(get(port, "/healthz", &[]).status, 200);
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    require_kernel!();
    let daemon = Daemon::start(&["--header-timeout", "1s"]);
    let connect = || {
        let stream = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
        // Far beyond the header timeout: only a hung daemon gets here.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    };
    // The request line and a header, never the blank line that ends them.
    let mut partial = connect();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    // And a connection that sends nothing at all.
    let mut silent = connect();
    for (what, stream) in [("partial headers", &mut partial), ("nothing", &mut silent)] {
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => assert!(
                answer.is_empty(),
                "{what}: {}",
                String::from_utf8_lossy(&answer)
            ),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "{what}: the daemon kept the connection open"
            ),
        }
    }
    // A complete request still gets its answer, and the daemon still serves.
    let mut whole = connect();
    whole
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    whole.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(daemon.get("/healthz").status, 200);
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

/// An OTLP/gRPC trace receiver (opentelemetry-proto's tonic server types)
/// on a loopback port, keeping what it receives.
mod otlp {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };

    #[derive(Clone, Default)]
    pub struct Receiver(pub Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            self.0.lock().unwrap().push(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    /// Starts the receiver on `runtime`; returns it and its port.
    pub fn start(runtime: &tokio::runtime::Runtime) -> (Receiver, u16) {
        let receiver = Receiver::default();
        let incoming = runtime
            .block_on(async {
                tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
            })
            .expect("bind the OTLP receiver");
        let port = incoming.local_addr().expect("local addr").port();
        let service = TraceServiceServer::new(receiver.clone());
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (receiver, port)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn profiling_spans_reach_an_otlp_receiver() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

    require_kernel!();
    const TRACE_P: &str = "da3c0000da3c0000da3c0000da3c0003";
    const SPAN_P: &str = "1234567890abcdef";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (receiver, port) = otlp::start(&runtime);
    let endpoint = format!("http://127.0.0.1:{port}");
    let daemon = Daemon::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "hawk-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let traceparent = format!("00-{TRACE_P}-{SPAN_P}-01");
    let r = get(
        daemon.port,
        "/debug/prof/cpu/ebpf/?seconds=1&format=json",
        &[("traceparent", &traceparent)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let json = r.json();
    // The profile references the profiling span: same trace, its own span.
    assert_eq!(json["trace_context"]["trace_id"], TRACE_P, "{json}");
    let profiling_span = json["trace_context"]["span_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(profiling_span, SPAN_P);
    let disposition = r
        .headers
        .get("content-disposition")
        .cloned()
        .unwrap_or_default();
    assert!(
        disposition.contains(&format!("_trace-{TRACE_P}_span-{profiling_span}.json")),
        "{disposition}"
    );
    // A memory profile (of this process) under the same traceparent.
    let r = get(
        daemon.port,
        &format!(
            "/debug/prof/mem/ebpf/?seconds=1&pid={}&format=json",
            std::process::id()
        ),
        &[("traceparent", &traceparent)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mem_span = r.json()["trace_context"]["span_id"]
        .as_str()
        .expect("the memory profile names its span")
        .to_string();
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");

    // The shutdown flushed the spans.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans: Vec<_> = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|req| req.resource_spans.iter())
            .flat_map(|rs| {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| kv.value.as_ref()?.value.clone());
                rs.scope_spans.iter().flat_map(move |ss| {
                    let scope = ss
                        .scope
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    let service = service.clone();
                    ss.spans
                        .iter()
                        .map(move |s| (service.clone(), scope.clone(), s.clone()))
                })
            })
            .collect();
        if spans.len() >= 4 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans received: {spans:?}\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let find = |name: &str| {
        spans
            .iter()
            .find(|(_, _, s)| s.name == name)
            .unwrap_or_else(|| panic!("no span {name}: {spans:?}"))
    };
    let (service, scope, server) = find("GET /debug/prof/cpu/ebpf/");
    assert_eq!(
        service,
        &Some(Value::StringValue("hawk-under-test".into())),
        "OTEL_SERVICE_NAME"
    );
    assert_eq!(scope, "hawk.profiling");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.trace_id), TRACE_P, "the traceparent's trace");
    assert_eq!(
        hex(&server.parent_span_id),
        SPAN_P,
        "child of the traceparent"
    );
    let (_, _, profile) = find("hawk.profile.cpu");
    assert_eq!(hex(&profile.trace_id), TRACE_P);
    assert_eq!(
        hex(&profile.parent_span_id),
        hex(&server.span_id),
        "child of the request"
    );
    assert_eq!(
        hex(&profile.span_id),
        profiling_span,
        "the span the JSON names"
    );
    let attr = |key: &str| {
        profile
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.clone())
            .unwrap_or_else(|| panic!("no attribute {key}: {:?}", profile.attributes))
    };
    assert_eq!(attr("hawk.profiler"), Value::StringValue("ebpf".into()));
    assert_eq!(attr("hawk.profiler.type"), Value::StringValue("cpu".into()));
    assert_eq!(attr("hawk.format"), Value::StringValue("json".into()));
    let Value::DoubleValue(interval) = attr("hawk.interval") else {
        panic!("hawk.interval is not a double")
    };
    assert!((interval - 1.0 / 19.0).abs() < 1e-9, "{interval}");
    let Value::IntValue(samples) = attr("hawk.samples") else {
        panic!("hawk.samples is not an int")
    };
    assert_eq!(Some(samples as u64), json["metadata"]["samples"].as_u64());
    assert!(matches!(attr("hawk.pids"), Value::ArrayValue(_)));

    // The memory profile: its own span, child of its request's server span.
    let (_, _, mem_server) = find("GET /debug/prof/mem/ebpf/");
    assert_eq!(hex(&mem_server.parent_span_id), SPAN_P);
    let (_, _, mem) = find("hawk.profile.mem");
    assert_eq!(hex(&mem.trace_id), TRACE_P);
    assert_eq!(hex(&mem.parent_span_id), hex(&mem_server.span_id));
    assert_eq!(hex(&mem.span_id), mem_span, "the span the JSON names");
    let mem_attr = |key: &str| {
        mem.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.clone())
            .unwrap_or_else(|| panic!("no attribute {key}: {:?}", mem.attributes))
    };
    assert_eq!(
        mem_attr("hawk.profiler.type"),
        Value::StringValue("mem".into())
    );
    assert_eq!(mem_attr("hawk.frames"), Value::IntValue(127));
    runtime.shutdown_background();
}

#[test]
fn without_an_endpoint_nothing_is_exported_or_logged() {
    require_kernel!();
    let daemon = Daemon::start(&[]);
    let r = daemon.get("/debug/prof/cpu/ebpf/?seconds=1&format=folded");
    assert_eq!(r.status, 200);
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let lower = stderr.to_lowercase();
    for word in ["otlp", "opentelemetry", "export", "error", "grpc", "4317"] {
        assert!(!lower.contains(word), "{word:?} in {stderr}");
    }
}

/// Resident memory of `pid` in KiB (VmRSS, RssAnon).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

#[test]
fn bounded_load_keeps_memory_flat_and_answers_without_errors() {
    require_kernel!();
    let service = TracedService::start(TRACED_SERVICE);
    let daemon = Daemon::start(&[
        "--freq",
        "99",
        "--retention",
        "4s",
        "--max-memory",
        "8MiB",
        "--max-traces",
        "500",
    ]);
    let pid = daemon.child.id();
    let (service_port, daemon_port) = (service.port, daemon.port);
    const THREADS: u64 = 3;
    const PER_THREAD: u64 = 600;
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(16);
    let mid_rss = std::sync::Mutex::new(None);
    let results: Vec<(u64, u64, Vec<String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let mid_rss = &mid_rss;
                s.spawn(move || {
                    let (mut requests, mut lookups, mut errors) = (0u64, 0u64, Vec::new());
                    for i in 0..PER_THREAD {
                        if Instant::now() >= stop_at {
                            break;
                        }
                        let trace = format!("da3d{t:04x}{i:024x}");
                        let r = get(
                            service_port,
                            "/beta?ms=3",
                            &[("traceparent", &format!("00-{trace}-{SPAN_A}-01"))],
                        );
                        requests += 1;
                        if r.status != 200 {
                            errors.push(format!("service {}", r.status));
                        }
                        if t == 0 && i % 25 == 0 {
                            let r = get(daemon_port, &format!("/debug/prof/trace/{trace}"), &[]);
                            lookups += 1;
                            if r.status != 200 && r.status != 404 {
                                errors.push(format!("trace {}: {}", r.status, r.text()));
                            }
                            let m = get(daemon_port, "/metrics", &[]);
                            if m.status != 200 {
                                errors.push(format!("metrics {}", m.status));
                            }
                        }
                        if t == 0 && started.elapsed() >= Duration::from_secs(6) {
                            let mut mid = mid_rss.lock().unwrap();
                            if mid.is_none() {
                                *mid = Some(rss_kib(pid));
                            }
                        }
                    }
                    (requests, lookups, errors)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let end_rss = rss_kib(pid);
    let requests: u64 = results.iter().map(|r| r.0).sum();
    let lookups: u64 = results.iter().map(|r| r.1).sum();
    let errors: Vec<&String> = results.iter().flat_map(|r| r.2.iter()).collect();
    let m = daemon.get("/metrics").text();
    let metric = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    let mid_rss = mid_rss.into_inner().unwrap().unwrap_or(end_rss);
    eprintln!(
        "load: {requests} traced requests and {lookups} trace lookups in {:.1} s; daemon RSS {} KiB (anon {}) at 6 s, {} KiB (anon {}) at the end; traces held {}, store {} bytes",
        started.elapsed().as_secs_f64(),
        mid_rss.0,
        mid_rss.1,
        end_rss.0,
        end_rss.1,
        metric("hawk_traces_held "),
        metric("hawk_store_bytes "),
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(requests >= 100, "only {requests} requests");
    assert!(metric("hawk_traces_held ") <= 500.0);
    assert!(metric("hawk_store_bytes ") <= (8 << 20) as f64);
    // Flat: the heap may settle, not grow with the load.
    assert!(
        end_rss.1 <= mid_rss.1 + 32 * 1024,
        "anonymous RSS grew from {} to {} KiB",
        mid_rss.1,
        end_rss.1
    );
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}
