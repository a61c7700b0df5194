//! Benchmark workload: a fixed amount of CPU work (first argument: millions
//! of multiply-add steps, default 2000), in `fixed_work_loop`, on one thread.
//! Prints the wall time it took in seconds. The same work every run, so its
//! run time measures what a profiler costs it.

use std::hint::black_box;
use std::time::Instant;

#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn fixed_work_loop(steps: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15u64);
    for _ in 0..steps {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    x
}

fn main() {
    let millions: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("millions of steps"))
        .unwrap_or(2000);
    let start = Instant::now();
    let mut acc = 0;
    for _ in 0..millions {
        acc ^= fixed_work_loop(1_000_000);
    }
    black_box(acc);
    println!("{:.6}", start.elapsed().as_secs_f64());
}
