//! A workload whose memory behaviour is known, for `record --mem`.
//!
//! `mem_workload` prints `ready <pid>`, waits for a line (or end of file) on
//! stdin so that the profiler can attach, then, through glibc's allocator
//! (the libc crate, so the calls are real `malloc`/`free`/`realloc`):
//!
//! - `leak_memory`: 32 blocks of 64 KiB, never freed;
//! - `churn_memory`: 20 000 × (malloc 4 KiB, write, free);
//! - `grow_buffer`: one buffer realloc'd from 1 KiB, doubling to 1 MiB, kept;
//! - `map_memory`: 4 anonymous mappings of 256 KiB (`mmap`, outside the
//!   allocator), 2 of them unmapped again.
//!
//! It then prints the truth (`leaked`, `churned`, `grown`, `grow_allocated`,
//! `mapped`, `mapped_live`, `live` bytes), `done`, and waits for another line before exiting (at end
//! of file, 1.5 s).
//!
//! `mem_workload bench N` does N × (malloc 64 B, free) after the gate and
//! prints `ns_per_op <n>`: the slowdown benchmark of a malloc-heavy loop.

use std::hint::black_box;
use std::io::Write as _;
use std::time::Instant;

use hawk_tests::gate;

const LEAK_BLOCKS: usize = 32;
const LEAK_BLOCK_SIZE: usize = 64 * 1024;
const CHURN_ROUNDS: usize = 20_000;
const CHURN_SIZE: usize = 4096;
const GROW_START: usize = 1024;
const GROW_END: usize = 1024 * 1024;
const MAP_REGIONS: usize = 4;
const MAP_SIZE: usize = 256 * 1024;

/// Leaks `LEAK_BLOCKS` blocks; returns the bytes leaked.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn leak_memory() -> usize {
    let mut total = 0;
    for i in 0..LEAK_BLOCKS {
        // SAFETY: malloc with a non-zero size; the block is written within bounds.
        let p = unsafe { libc::malloc(LEAK_BLOCK_SIZE) } as *mut u8;
        assert!(!p.is_null(), "malloc failed");
        unsafe { p.write_bytes(i as u8, LEAK_BLOCK_SIZE) };
        // Never freed: the pointer escapes and is forgotten.
        black_box(p);
        total += LEAK_BLOCK_SIZE;
    }
    total
}

/// Allocates and frees `CHURN_ROUNDS` blocks; returns the bytes allocated.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn churn_memory() -> usize {
    let mut total = 0;
    for i in 0..CHURN_ROUNDS {
        // SAFETY: as above; freed right after.
        unsafe {
            let p = libc::malloc(CHURN_SIZE) as *mut u8;
            assert!(!p.is_null(), "malloc failed");
            p.write_bytes(i as u8, 64);
            libc::free(black_box(p) as *mut libc::c_void);
        }
        total += CHURN_SIZE;
    }
    total
}

/// Grows one buffer by realloc; returns (the buffer, its final size, the
/// bytes requested over all calls).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn grow_buffer(requested: &mut usize) -> *mut u8 {
    let mut size = GROW_START;
    // SAFETY: realloc(NULL, n) is malloc(n); each result replaces the old pointer.
    let mut p = unsafe { libc::realloc(std::ptr::null_mut(), size) } as *mut u8;
    *requested = size;
    while size < GROW_END {
        size *= 2;
        p = unsafe { libc::realloc(p as *mut libc::c_void, size) } as *mut u8;
        assert!(!p.is_null(), "realloc failed");
        unsafe { p.write_bytes(1, size) };
        *requested += size;
    }
    black_box(p)
}

/// One anonymous private mapping of `size` bytes, touched.
#[inline(never)]
fn map_region(size: usize) -> *mut u8 {
    // SAFETY: an anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap failed");
    let p = p as *mut u8;
    // SAFETY: within the mapping.
    unsafe { p.write_bytes(7, size) };
    p
}

/// Maps `MAP_REGIONS` regions and unmaps half; returns (mapped, still mapped).
#[inline(never)]
#[unsafe(no_mangle)]
pub fn map_memory() -> (usize, usize) {
    let regions: Vec<*mut u8> = (0..MAP_REGIONS).map(|_| map_region(MAP_SIZE)).collect();
    for &p in &regions[..MAP_REGIONS / 2] {
        // SAFETY: a whole mapping made above, unmapped once.
        unsafe { libc::munmap(p as *mut libc::c_void, MAP_SIZE) };
    }
    black_box(&regions);
    (
        MAP_REGIONS * MAP_SIZE,
        (MAP_REGIONS - MAP_REGIONS / 2) * MAP_SIZE,
    )
}

#[inline(never)]
fn malloc_loop(n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: a small block, freed at once.
        unsafe {
            let p = libc::malloc(64);
            libc::free(black_box(p));
        }
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout();
    gate::ready_then_wait();

    if let [mode, n] = args.as_slice()
        && mode == "bench"
    {
        let n: u64 = n.parse().expect("bench N");
        let ns = malloc_loop(n);
        writeln!(out, "ns_per_op {ns:.1}").unwrap();
        return;
    }

    let leaked = leak_memory();
    let churned = churn_memory();
    let mut grow_allocated = 0;
    let buffer = grow_buffer(&mut grow_allocated);
    let (mapped, mapped_live) = map_memory();
    writeln!(out, "leaked {leaked}").unwrap();
    writeln!(out, "churned {churned}").unwrap();
    writeln!(out, "grown {GROW_END}").unwrap();
    writeln!(out, "grow_allocated {grow_allocated}").unwrap();
    writeln!(out, "mapped {mapped}").unwrap();
    writeln!(out, "mapped_live {mapped_live}").unwrap();
    writeln!(out, "live {}", leaked + GROW_END + mapped_live).unwrap();
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
    if !gate::wait_for_line() {
        // No one to wait for (stdin is empty): stay a moment, so that a
        // profiler polling /proc still finds the process and its maps.
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    black_box(buffer);
}
