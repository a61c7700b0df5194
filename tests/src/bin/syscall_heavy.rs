//! Workload: spends its time in system calls (writes of one byte to
//! /dev/null) for N seconds (first argument, default 5). The system call is
//! made with inline assembly right in `do_syscalls`, so the user stack has no
//! libc frame (Debian's libc has no frame pointers) and the kernel frames sit
//! under `do_syscalls`. Prints `ready <pid>`.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn do_syscalls(fd: i32, rounds: u32) -> u64 {
    let byte = 0u8;
    let mut written = 0u64;
    for _ in 0..rounds {
        let ret: i64;
        // SAFETY: write(fd, &byte, 1); the registers the syscall clobbers are declared.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") 1i64 => ret,
                in("rdi") fd as i64,
                in("rsi") &byte as *const u8,
                in("rdx") 1u64,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        written += ret.max(0) as u64;
    }
    written
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("seconds"))
        .unwrap_or(5.0);
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    println!("ready {}", std::process::id());
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut total = 0;
    while Instant::now() < end {
        total += do_syscalls(null.as_raw_fd(), 10_000);
    }
    std::hint::black_box(total);
}
