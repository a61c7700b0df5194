//! Helpers for Hawk's integration tests: find the `hawk-ebpf` binary and the
//! workloads, run them, read what they wrote.
//!
//! The tests load the real BPF programs, so they need root (CAP_BPF and
//! CAP_PERFMON). Where those are missing a test prints why and skips; `cargo
//! xtask test` refuses to run without root, so CI never skips silently.

pub mod http;

/// The stdin gate of the workload binaries (`mem_workload`, `mem_sampled`).
pub mod gate {
    use std::io::{BufRead as _, Write as _};

    /// Prints `ready <pid>` on stdout, then waits for a line on stdin (or
    /// end of file), so that a profiler can attach first.
    pub fn ready_then_wait() {
        let mut out = std::io::stdout();
        writeln!(out, "ready {}", std::process::id()).unwrap();
        out.flush().unwrap();
        wait_for_line();
    }

    /// Waits for a line on stdin; returns false at end of file.
    pub fn wait_for_line() -> bool {
        let mut line = String::new();
        matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0)
    }
}

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The cargo target directory of the running test (`target/<profile>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .to_path_buf()
}

/// The `hawk-ebpf` binary built next to this test (`cargo xtask test` builds it).
pub fn hawk_bin() -> PathBuf {
    let bin = target_dir().join("hawk-ebpf");
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo build --workspace --bins`, done by `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// How many times slower than a host these tests run here: 4 under QEMU's
/// software emulation (`cargo xtask vm-test` sets `HAWK_TEST_VM_ACCEL=tcg`),
/// 1 elsewhere. Windows and workloads are stretched by it; assertions on
/// what Hawk records are not.
pub fn slowdown() -> f64 {
    match std::env::var("HAWK_TEST_VM_ACCEL").as_deref() {
        Ok("tcg") => 4.0,
        _ => 1.0,
    }
}

/// `secs × slowdown()` as a `--duration` or workload argument.
pub fn secs(secs: f64) -> String {
    format!("{}", secs * slowdown())
}

/// Why this machine cannot run the kernel tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CAP_BPF, CAP_PERFMON)".into());
    }
    None
}

/// Returns early from a test, printing the reason, when it cannot run here.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if let Some(reason) = $crate::skip_reason() {
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
}

/// A started workload that announced `ready <pid>`; killed on drop.
pub struct Workload {
    pub child: Child,
    pub pid: u32,
}

impl Workload {
    /// Starts workload `path` with `args` and waits for its `ready` line.
    pub fn start(path: &str, args: &[&str]) -> Self {
        let mut child = Command::new(path)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {path}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        let pid = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{path} printed {line:?}, not `ready <pid>`"));
        Self { child, pid }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may hold spaces): state is field 3,
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// Runs `hawk-ebpf ARGS` and returns its output.
pub fn hawk(args: &[&str]) -> Output {
    Command::new(hawk_bin())
        .args(args)
        .output()
        .expect("running hawk-ebpf")
}

/// A fresh empty directory under the target dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = target_dir()
        .join("hawk-test-out")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The one file in `dir` whose name ends with `suffix`.
pub fn find_output(dir: &Path, suffix: &str) -> PathBuf {
    let matches: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read out dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let name = p.to_string_lossy();
            // `.json` is Hawk JSON; speedscope files end in `.speedscope.json`.
            name.ends_with(suffix) && (suffix != ".json" || !name.ends_with(".speedscope.json"))
        })
        .collect();
    assert_eq!(
        matches.len(),
        1,
        "files ending in {suffix} in {}: {matches:?}",
        dir.display()
    );
    matches.into_iter().next().expect("one match")
}

/// Reads a Hawk JSON profile.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("read json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `stats` entries of a Hawk JSON profile whose frames satisfy `pred`.
fn entries_where<'a>(
    json: &'a serde_json::Value,
    pred: impl Fn(&[&str]) -> bool + 'a,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    json["stats"]
        .as_array()
        .expect("stats array")
        .iter()
        .filter(move |entry| {
            let frames: Vec<&str> = entry["frames"]
                .as_array()
                .expect("frames")
                .iter()
                .map(|f| f.as_str().expect("frame name"))
                .collect();
            pred(&frames)
        })
}

/// Sum of `samples` (or `bytes`) over the `stats` entries whose frames
/// satisfy `pred`.
pub fn weight_where(json: &serde_json::Value, pred: impl Fn(&[&str]) -> bool) -> u64 {
    entries_where(json, pred)
        .map(|entry| {
            entry["samples"]
                .as_u64()
                .or_else(|| entry["bytes"].as_u64())
                .expect("weight")
        })
        .sum()
}

/// The pids of the `stats` entries whose frames satisfy `pred`.
pub fn pids_where(
    json: &serde_json::Value,
    pred: impl Fn(&[&str]) -> bool,
) -> std::collections::BTreeSet<u64> {
    entries_where(json, pred)
        .map(|entry| entry["pid"].as_u64().expect("pid"))
        .collect()
}

/// Runs `hawk-ebpf record FLAGS --duration 60s --format json --out OUT --
/// COMMAND…` with an empty stdin, asserts that it succeeded, and returns its
/// stderr. The window ends when the command exits.
pub fn record_command(out: &Path, flags: &[&str], command: &[&str]) -> String {
    let run = Command::new(hawk_bin())
        .arg("record")
        .args(flags)
        .args(["--duration", "60s", "--format", "json", "--out"])
        .arg(out)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .output()
        .expect("running hawk-ebpf record");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "hawk-ebpf record: {stderr}");
    stderr
}

/// Schema errors of a speedscope file, checked against the schema published
/// in speedscope's npm package (vendored next to the renderer).
pub fn speedscope_schema_errors(doc: &serde_json::Value) -> Vec<String> {
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../hawk-userspace/src/render/testdata/speedscope-file-format-schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).expect("speedscope schema"))
            .expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    validator.iter_errors(doc).map(|e| e.to_string()).collect()
}
