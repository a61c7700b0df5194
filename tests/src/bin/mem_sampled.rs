//! A workload whose memory behaviour is known, allocating through the shim's
//! sampled allocator (`SampledAlloc<System>` as the global allocator), for
//! `record --mem` with the sampled source.
//!
//! Same protocol as `mem_workload`: prints `ready <pid>`, waits for a line on
//! stdin, then, through Rust's allocation API:
//!
//! - `leak_memory`: 128 boxes of 64 KiB, leaked;
//! - `churn_memory`: 20 000 × (a 4 KiB vector, written, dropped);
//! - `grow_buffer`: one vector grown from 1 KiB by doubling to 1 MiB (each
//!   step a realloc), kept.
//!
//! It then prints the truth (`leaked`, `churned`, `grown`, `live` bytes),
//! how many allocations it reported (`leak_samples` in `leak_memory`,
//! `samples` in all, `skipped` when the sampled-block table was full),
//! `done`, and waits for another line (at end of file, 1.5 s).
//!
//! The mean sampling interval is 512 KiB (the default) unless
//! `HAWK_SAMPLE_BYTES` says otherwise.
//!
//! `mem_sampled bench N` does N × (allocate 64 B, free) through the global
//! allocator after the gate and prints `ns_per_op <n>`.

use std::alloc::System;
use std::hint::black_box;
use std::io::Write as _;
use std::time::Instant;

use hawk_common::shim::SampledAlloc;
use hawk_tests::gate;

#[global_allocator]
static ALLOC: SampledAlloc<System> = SampledAlloc::new(System);

const LEAK_BLOCKS: usize = 128;
const LEAK_BLOCK_SIZE: usize = 64 * 1024;
const CHURN_ROUNDS: usize = 20_000;
const CHURN_SIZE: usize = 4096;
const GROW_START: usize = 1024;
const GROW_END: usize = 1024 * 1024;

/// Leaks `LEAK_BLOCKS` blocks; returns the bytes leaked.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_memory() -> usize {
    for i in 0..LEAK_BLOCKS {
        let block = vec![i as u8; LEAK_BLOCK_SIZE].into_boxed_slice();
        black_box(Box::leak(block));
    }
    LEAK_BLOCKS * LEAK_BLOCK_SIZE
}

/// Allocates and drops `CHURN_ROUNDS` vectors; returns the bytes allocated.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn churn_memory() -> usize {
    for i in 0..CHURN_ROUNDS {
        let mut v: Vec<u8> = Vec::with_capacity(CHURN_SIZE);
        v.extend(std::iter::repeat_n(i as u8, 64));
        black_box(&v);
    }
    CHURN_ROUNDS * CHURN_SIZE
}

/// Grows one vector by doubling its capacity; returns it.
#[inline(never)]
#[unsafe(no_mangle)]
pub fn grow_buffer() -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(GROW_START);
    while v.capacity() < GROW_END {
        let more = v.capacity() * 2 - v.len();
        v.reserve_exact(more);
        v.resize(v.capacity(), 1);
    }
    black_box(v)
}

#[inline(never)]
fn alloc_loop(n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        black_box(Box::new(black_box([0u8; 64])));
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    if let Some(bytes) = std::env::var("HAWK_SAMPLE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        ALLOC.set_mean_interval(bytes);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout();
    gate::ready_then_wait();

    if let [mode, n] = args.as_slice()
        && mode == "bench"
    {
        let n: u64 = n.parse().expect("bench N");
        let ns = alloc_loop(n);
        writeln!(out, "ns_per_op {ns:.1}").unwrap();
        return;
    }

    let reported_before = ALLOC.reported_samples();
    let leaked = leak_memory();
    let leak_samples = ALLOC.reported_samples() - reported_before;
    let churned = churn_memory();
    let buffer = grow_buffer();
    writeln!(out, "leaked {leaked}").unwrap();
    writeln!(out, "churned {churned}").unwrap();
    writeln!(out, "grown {}", buffer.capacity()).unwrap();
    writeln!(out, "live {}", leaked + buffer.capacity()).unwrap();
    writeln!(out, "leak_samples {leak_samples}").unwrap();
    writeln!(out, "samples {}", ALLOC.reported_samples()).unwrap();
    writeln!(out, "skipped {}", ALLOC.skipped_samples()).unwrap();
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
    if !gate::wait_for_line() {
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    black_box(buffer);
}
