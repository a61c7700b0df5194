//! The daemon's memory over a long run (BENCHMARKS.md section 4).
//!
//! `hawk-ebpf daemon` at its default 19 Hz on a loopback port, with some
//! activity on the node: `traced_service` serving a request with a new
//! trace every 100 ms (the daemon holds each trace's samples), a short-lived
//! `fixed_work` process every second (new pids and execs to look at), and a
//! 2-second profile request to the daemon every 30 s. Its resident memory
//! is read from /proc every few seconds.
//!
//! The retention is shortened (60 s; 10 s with `--quick`) so that the
//! rolling window and the trace store reach their steady size within the
//! run: growth after that is what an hour would add. The slope is a least
//! squares fit over the samples taken after the retention (plus one sample
//! interval) and is extrapolated to an hour. `HAWK_BENCH_DAEMON_SECS=600`
//! runs longer.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Bench;
use super::proc::{Says, free_port, http_get, rss_kib, slope, spawn_ready};

impl Bench {
    pub fn daemon_memory(&self) -> Result<()> {
        let (mut secs, every, retention) = if self.quick {
            (30u64, 3u64, 10u64)
        } else {
            (150, 5, 60)
        };
        if let Some(s) = std::env::var("HAWK_BENCH_DAEMON_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            secs = s;
        }
        println!(
            "\n== 4. daemon memory: hawk-ebpf daemon at 19 Hz for {secs} s (--retention {retention}s), \
             RSS every {every} s; traced_service at 10 requests/s, a short process every second"
        );
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // The background: a shimmed service, before the daemon so that it
        // is found by the start-up scan.
        let service = spawn_ready(
            Command::new(self.target.join("traced_service")).arg("0"),
            Says::Stdout,
            "ready ",
            Duration::ZERO,
            Duration::from_secs(10),
        )?;
        let service_port: u16 = service
            .lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| {
                l.strip_prefix("ready ")?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .context("traced_service did not say its port")?;
        let daemon = match spawn_ready(
            Command::new(&self.hawk)
                .args(["daemon", "--listen", &addr.to_string()])
                .args(["--retention", &format!("{retention}s")]),
            Says::Stderr,
            "daemon listening",
            Duration::ZERO,
            Duration::from_secs(60),
        ) {
            Ok(d) => d,
            Err(e) => {
                service.stop(Duration::from_secs(2));
                return Err(e);
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        {
            let (stop, requests) = (stop.clone(), requests.clone());
            let service: SocketAddr = ([127, 0, 0, 1], service_port).into();
            threads.push(std::thread::spawn(move || {
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let traceparent =
                        format!("00-{:032x}-{:016x}-01", 0x4a77_0000_0000u128 + n as u128, n);
                    if http_get(service, "/alpha?ms=5", &[("traceparent", &traceparent)]).is_ok() {
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }));
        }
        {
            let stop = stop.clone();
            let fixed_work = self.fixed_work.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = Command::new(&fixed_work)
                        .arg("20")
                        .stdout(Stdio::null())
                        .status();
                    std::thread::sleep(Duration::from_secs(1));
                }
            }));
        }
        {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut next = Instant::now() + Duration::from_secs(10);
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        let _ = http_get(addr, "/debug/prof/cpu/ebpf/?seconds=2&format=json", &[]);
                        next += Duration::from_secs(30);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }));
        }

        let pid = daemon.id();
        let started = Instant::now();
        let mut points: Vec<Point> = Vec::new();
        let result = (|| -> Result<()> {
            for i in 0..=secs / every {
                let at = started + Duration::from_secs(i * every);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let Some((total, anon, file)) = rss_kib(pid) else {
                    bail!("the daemon exited");
                };
                let t = started.elapsed().as_secs_f64();
                let metrics = http_get(addr, "/metrics", &[])
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                points.push(Point {
                    t,
                    total,
                    anon,
                    file,
                    modules: gauge(&metrics, "hawk_symbolizer_modules"),
                });
            }
            Ok(())
        })();
        let metrics = http_get(addr, "/metrics", &[])
            .map(|(_, body)| body)
            .unwrap_or_default();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        daemon.stop(Duration::from_secs(20));
        service.stop(Duration::from_secs(5));
        result?;

        let mib = |kib: u64| kib as f64 / 1024.0;
        let first = points.first().context("no RSS sample")?;
        let last = points.last().context("no RSS sample")?;
        let peak = |f: fn(&Point) -> u64| points.iter().map(f).max().unwrap_or(0);
        for (name, f) in [
            ("RSS MiB      ", (|p| p.total) as fn(&Point) -> u64),
            ("  anonymous  ", |p| p.anon),
            ("  file-backed", |p| p.file),
        ] {
            println!(
                "{name}  start {:>7.1}  end {:>7.1}  peak {:>7.1}",
                mib(f(first)),
                mib(f(last)),
                mib(peak(f))
            );
        }
        println!(
            "  series (s: total/anonymous MiB, binaries the symbolizer holds): {}",
            points
                .iter()
                .map(|p| format!(
                    "{:.0}: {:.0}/{:.0} {}",
                    p.t,
                    mib(p.total),
                    mib(p.anon),
                    p.modules.map_or("?".into(), |m| format!("{m:.0}"))
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let warm = (retention + every) as f64;
        let steady: Vec<&Point> = points.iter().filter(|p| p.t >= warm).collect();
        let xs: Vec<f64> = steady.iter().map(|p| p.t).collect();
        let per_hour = |ys: Vec<f64>| {
            slope(&xs, &ys).map_or("n/a".to_string(), |s| {
                format!("{:+.1} MiB/h", s * 3600.0 / 1024.0)
            })
        };
        println!(
            "slope after t = {warm:.0} s ({} samples over {:.0} s), extrapolated to an hour: \
             RSS {}, anonymous {}",
            steady.len(),
            xs.last().unwrap_or(&0.0) - xs.first().unwrap_or(&0.0),
            per_hour(steady.iter().map(|p| p.total as f64).collect()),
            per_hour(steady.iter().map(|p| p.anon as f64).collect()),
        );
        println!(
            "background: {} traced requests; daemon's /metrics at the end: {} traces held, \
             store {:.0} KiB, {} samples",
            requests.load(Ordering::Relaxed),
            gauge(&metrics, "hawk_traces_held").map_or("?".into(), |v| format!("{v:.0}")),
            gauge(&metrics, "hawk_store_bytes").map_or(f64::NAN, |v| v / 1024.0),
            gauge(&metrics, "hawk_samples_total").map_or("?".into(), |v| format!("{v:.0}")),
        );
        Ok(())
    }
}

/// One reading of the daemon's memory.
struct Point {
    /// Seconds since the daemon was ready.
    t: f64,
    /// Resident KiB: all, anonymous, file-backed.
    total: u64,
    anon: u64,
    file: u64,
    /// Binaries its symbolizer holds (`hawk_symbolizer_modules`).
    modules: Option<f64>,
}

/// The value of an unlabelled metric in Prometheus text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}
