//! Benchmark workload: the cost of the shim's trace-context marker, with or
//! without a profiler attached to it (`cargo xtask bench`, BENCHMARKS.md).
//!
//! `marker_loop bench N` prints `ready <pid>`, waits for a line (or end of
//! file) on stdin so that a profiler can attach, then:
//!
//! - calls the raw marker `hawk_trace_context_set` N times setting a context
//!   and N times clearing it, alternately, and prints `ns_per_call <n>`
//!   (nanoseconds per marker call);
//! - sets a context with the guard API (`shim::set_current`) and drops the
//!   guard N times (two marker calls each, plus the shim's per-thread
//!   stack), and prints `ns_per_guard <n>` (per set + drop).
//!
//! Before the loops and again after them it prints `marker_probed 1` when a
//! uprobe sits on the marker (x86-64: the marker's first byte, a `nop`, is
//! an `int3`), else `marker_probed 0`, so that a "no profiler" run on a
//! machine where some other Hawk attaches to every shimmed program can be
//! told (and stopped early).
//!
//! The trace id it publishes is `BENCH_TRACE_ID`, which no benchmark
//! captures: a profiler attached to the marker records every call but never
//! opens a window for it.

use std::hint::black_box;
use std::io::{BufRead as _, Write as _};
use std::time::Instant;

use hawk_common::shim::{self, FLAG_SET, hawk_trace_context_set};

/// The trace id published: `4bf92f3577b34da6a3ce929d0e0e4736`.
const BENCH_TRACE_ID: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const BENCH_SPAN_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

/// N × (set, clear) through the raw marker; nanoseconds per call.
#[inline(never)]
fn raw_marker(n: u64) -> f64 {
    let hi = u64::from_be_bytes(BENCH_TRACE_ID[..8].try_into().unwrap());
    let lo = u64::from_be_bytes(BENCH_TRACE_ID[8..].try_into().unwrap());
    let span = u64::from_be_bytes(BENCH_SPAN_ID);
    let start = Instant::now();
    for _ in 0..n {
        hawk_trace_context_set(black_box(hi), black_box(lo), black_box(span), FLAG_SET);
        hawk_trace_context_set(black_box(0), black_box(0), black_box(0), 0);
    }
    start.elapsed().as_nanos() as f64 / (2 * n) as f64
}

/// N × (guard set, drop); nanoseconds per set + drop.
#[inline(never)]
fn guard(n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        drop(shim::set_current(
            black_box(BENCH_TRACE_ID),
            black_box(BENCH_SPAN_ID),
        ));
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Whether a uprobe is on the marker: the kernel writes its breakpoint into
/// this process's copy of the code, so the process sees it.
fn marker_probed() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let marker = hawk_trace_context_set as extern "C" fn(u64, u64, u64, u64) as *const u8;
        // SAFETY: reading the first byte of a function of this program.
        unsafe { std::ptr::read_volatile(marker) == 0xcc }
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = match args.as_slice() {
        [mode, n] if mode == "bench" => n.parse().expect("bench N: a number of iterations"),
        _ => {
            eprintln!("usage: marker_loop bench N");
            std::process::exit(2);
        }
    };
    let mut out = std::io::stdout();
    writeln!(out, "ready {}", std::process::id()).unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);

    writeln!(out, "marker_probed {}", u8::from(marker_probed())).unwrap();
    let per_call = raw_marker(n);
    writeln!(out, "ns_per_call {per_call:.2}").unwrap();
    let per_guard = guard(n);
    writeln!(out, "ns_per_guard {per_guard:.2}").unwrap();
    writeln!(out, "marker_probed {}", u8::from(marker_probed())).unwrap();
}
