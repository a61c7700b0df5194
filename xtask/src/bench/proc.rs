//! Child processes for the benchmarks: profilers started until they say they
//! are ready, gated workloads (`ready <pid>`, then a line on stdin), a small
//! HTTP client and /proc readings.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Which output of a child announces that it is ready.
#[derive(Clone, Copy, Debug)]
pub enum Says {
    Stdout,
    Stderr,
}

/// A running child whose output is drained by a thread (kept for errors).
pub struct Ready {
    pub child: Child,
    /// The announcing stream's lines so far.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Ready {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then waits up to `grace` before SIGKILL. Returns the exit code
    /// (-1 when killed by a signal).
    pub fn stop(mut self, grace: Duration) -> i32 {
        interrupt(&self.child);
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.code().unwrap_or(-1),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return -1;
                }
            }
        }
    }
}

/// SIGINT to our own child.
pub fn interrupt(child: &Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
}

/// Spawns `cmd` and waits until a line of `says` contains `needle` (then
/// `settle` more), failing when it exits first or `timeout` passes. The
/// other stream is discarded.
pub fn spawn_ready(
    cmd: &mut Command,
    says: Says,
    needle: &str,
    settle: Duration,
    timeout: Duration,
) -> Result<Ready> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null());
    match says {
        Says::Stdout => cmd.stdout(Stdio::piped()).stderr(Stdio::null()),
        Says::Stderr => cmd.stderr(Stdio::piped()).stdout(Stdio::null()),
    };
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let stream: Box<dyn std::io::Read + Send> = match says {
        Says::Stdout => Box::new(child.stdout.take().expect("piped")),
        Says::Stderr => Box::new(child.stderr.take().expect("piped")),
    };
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    {
        let lines = lines.clone();
        let needle = needle.to_string();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if line.contains(&needle)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
    }
    match rx.recv_timeout(timeout) {
        Ok(()) => {
            std::thread::sleep(settle);
            Ok(Ready { child, lines })
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let said = {
                let lines = lines.lock().unwrap();
                lines[lines.len().saturating_sub(5)..].join("\n")
            };
            let why = match e {
                mpsc::RecvTimeoutError::Timeout => format!("not ready after {timeout:?}"),
                mpsc::RecvTimeoutError::Disconnected => "exited".to_string(),
            };
            bail!("{program} {why} (waiting for {needle:?}); its last lines:\n{said}")
        }
    }
}

/// A workload that prints `ready <pid>` and waits for a line on stdin
/// before it works (mem_workload, marker_loop, …), then prints `key value`
/// lines.
pub struct Gated {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Gated {
    /// Starts `program args…` and reads its `ready` line.
    pub fn start(program: &Path, args: &[String]) -> Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut gated = Self {
            child,
            stdin,
            stdout,
        };
        let line = gated.line()?;
        if !line.starts_with("ready ") {
            gated.kill();
            bail!(
                "{}: expected `ready <pid>`, got {line:?}",
                program.display()
            );
        }
        Ok(gated)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it work.
    pub fn go(&mut self) -> Result<()> {
        let mut stdin = self.stdin.take().context("already started")?;
        stdin.write_all(b"go\n")?;
        Ok(())
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the workload exited early");
        }
        Ok(line.trim().to_string())
    }

    /// Reads lines until `key <number>`.
    pub fn value(&mut self, key: &str) -> Result<f64> {
        loop {
            let line = self.line()?;
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(' ')) {
                return v
                    .trim()
                    .parse()
                    .with_context(|| format!("bad {key} line: {line:?}"));
            }
        }
    }

    /// Waits for it to exit (killing it after 10 s).
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// Kills it, done or not.
    pub fn abort(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr` with `Connection: close`: status and body.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from {addr}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident memory of a process in KiB: (total, anonymous, file-backed),
/// from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")?))
}

/// (program type, run_time_ns, run_cnt) of every BPF program `pid` holds,
/// from /proc/PID/fdinfo.
pub fn bpf_prog_stats(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(link) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
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

/// Least-squares slope of `ys` over `xs`, `None` with fewer than 2 points.
pub fn slope(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return None;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().sum::<f64>() / n as f64;
    let sxx: f64 = xs[..n].iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = (0..n).map(|i| (xs[i] - mx) * (ys[i] - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_slope() {
        assert_eq!(slope(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]), Some(2.0));
        assert_eq!(slope(&[0.0], &[1.0]), None);
        assert_eq!(slope(&[1.0, 1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn own_rss_is_read() {
        let (total, anon, file) = rss_kib(std::process::id()).unwrap();
        assert!(total > 0 && total >= anon && total >= file);
    }
}
