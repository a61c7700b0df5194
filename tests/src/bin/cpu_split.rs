//! Workload: burns CPU for N seconds (first argument, default 5), about 3/4
//! of it in `hot_three_quarters` and 1/4 in `hot_one_quarter`. Prints
//! `ready <pid>` once it runs. Built with frame pointers (see
//! .cargo/config.toml) so stacks unwind.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// One unit of work: a fixed number of dependent multiply-adds.
#[inline(always)]
fn spin(units: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15u64);
    for _ in 0..units * 200_000 {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    x
}

#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn hot_three_quarters() -> u64 {
    spin(3)
}

#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn hot_one_quarter() -> u64 {
    spin(1)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("seconds"))
        .unwrap_or(5.0);
    println!("ready {}", std::process::id());
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut acc = 0u64;
    while Instant::now() < end {
        acc ^= hot_three_quarters();
        acc ^= hot_one_quarter();
    }
    black_box(acc);
}
