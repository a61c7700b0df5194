//! The sampled allocator: a [`GlobalAlloc`] wrapper that reports about one
//! allocation per mean interval of bytes to Hawk, through the
//! [`hawk_alloc_sample`] and [`hawk_free_sample`] markers.
//!
//! Hawk's other memory source puts uprobes on every `malloc` and `free` of
//! the C library, which costs microseconds per call. With this wrapper as the
//! program's global allocator, Hawk attaches uprobes to the two markers
//! instead, and only sampled calls reach the kernel:
//!
//! - **Sampling by bytes.** Each thread counts down the bytes it allocates;
//!   when the count crosses zero the allocation is sampled and the next count
//!   is drawn from an exponential distribution with the configured mean
//!   (a Poisson process over bytes, as tcmalloc, Go and jemalloc do), so
//!   there is no bias towards allocation sizes or call sites that line up
//!   with a fixed period.
//! - **Weights.** An allocation of `size` bytes is sampled with probability
//!   `p = 1 - exp(-size / mean)`; it is reported standing for `size / p`
//!   bytes, so the sum of the weights is an unbiased estimate of the bytes
//!   allocated (and of those still live). Small allocations carry weights
//!   near `mean`, large ones near their size.
//! - **Frees.** A sampled block's address goes into a small lock-free table;
//!   `dealloc` checks a counting filter (one byte load, mostly in L1) and
//!   only for possible hits the table, and calls [`hawk_free_sample`] for
//!   sampled blocks only, before the block is released.
//!
//! Unsampled calls cost a thread-local subtraction and a filter lookup on
//! top of the inner allocator (`benches/shim.rs` measures it). With no
//! profiler attached the markers are empty functions.
//!
//! ```
//! use std::alloc::System;
//! use hawk_common::shim::SampledAlloc;
//!
//! #[global_allocator]
//! static ALLOC: SampledAlloc<System> = SampledAlloc::new(System);
//!
//! fn main() {
//!     // A mean interval from the environment, read once at start-up.
//!     if let Some(bytes) = std::env::var("APP_ALLOC_SAMPLE_BYTES")
//!         .ok()
//!         .and_then(|v| v.parse().ok())
//!     {
//!         ALLOC.set_mean_interval(bytes);
//!     }
//!     let v = vec![0u8; 1 << 20];
//!     assert_eq!(v.len(), 1 << 20);
//! }
//! ```
//!
//! Limits: a `realloc` that fails leaves the old block allocated but no
//! longer reported; when the table of sampled blocks is full (16 384 live
//! sampled blocks, ≈8 GiB of live heap at the default interval) further
//! samples are skipped and counted ([`SampledAlloc::skipped_samples`]).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use super::markers::{hawk_alloc_sample, hawk_free_sample};

/// The default mean sampling interval: 512 KiB.
pub const DEFAULT_MEAN_INTERVAL: u64 = 512 * 1024;

/// A [`GlobalAlloc`] that samples allocations by bytes for Hawk.
///
/// Wrap the allocator the program would use otherwise
/// ([`std::alloc::System`], jemalloc, mimalloc, …). See the [module
/// documentation](self) for how sampling and weights work.
pub struct SampledAlloc<A> {
    inner: A,
    mean_interval: AtomicU64,
}

impl<A> SampledAlloc<A> {
    /// Wraps `inner`, sampling once per [`DEFAULT_MEAN_INTERVAL`] bytes on
    /// average.
    pub const fn new(inner: A) -> Self {
        Self::with_mean_interval(inner, DEFAULT_MEAN_INTERVAL)
    }

    /// Wraps `inner`, sampling once per `bytes` allocated on average (at
    /// least 1).
    pub const fn with_mean_interval(inner: A, bytes: u64) -> Self {
        Self {
            inner,
            mean_interval: AtomicU64::new(if bytes == 0 { 1 } else { bytes }),
        }
    }

    /// The mean sampling interval in bytes.
    pub fn mean_interval(&self) -> u64 {
        self.mean_interval.load(Ordering::Relaxed)
    }

    /// Changes the mean sampling interval (at least 1 byte). The calling
    /// thread uses it from its next allocation on; other threads from their
    /// next sample (call it at start-up, before starting threads, for it to
    /// hold everywhere at once).
    pub fn set_mean_interval(&self, bytes: u64) {
        self.mean_interval.store(bytes.max(1), Ordering::Relaxed);
        // Redraw this thread's countdown with the new mean: one drawn with
        // the old mean could outlast many allocations.
        let _ = COUNTDOWN.try_with(|countdown| countdown.set(0));
    }

    /// Samples skipped because the table of sampled blocks was full.
    pub fn skipped_samples(&self) -> u64 {
        SKIPPED.load(Ordering::Relaxed)
    }

    /// Allocations reported through [`hawk_alloc_sample`] so far.
    pub fn reported_samples(&self) -> u64 {
        REPORTED.load(Ordering::Relaxed)
    }

    /// Decides whether an allocation of `size` bytes is sampled; returns the
    /// bytes it stands for when it is.
    #[inline]
    fn sample(&self, size: usize) -> Option<u64> {
        let size = size as u64;
        COUNTDOWN
            .try_with(|countdown| {
                let left = countdown.get();
                if left > size {
                    countdown.set(left - size);
                    return None;
                }
                self.sample_slow(countdown, left, size)
            })
            .ok()
            .flatten()
    }

    #[cold]
    fn sample_slow(&self, countdown: &Cell<u64>, left: u64, size: u64) -> Option<u64> {
        let mean = self.mean_interval();
        countdown.set(next_interval(mean));
        // 0 is the "not started" state of a new thread: draw, don't sample.
        if left == 0 {
            return self.sample(size as usize);
        }
        Some(weight(size, mean))
    }

    #[inline]
    fn report_alloc(&self, ptr: *mut u8, size: usize) {
        if ptr.is_null() {
            return;
        }
        if let Some(weight) = self.sample(size) {
            if SAMPLED.insert(ptr as usize) {
                REPORTED.fetch_add(1, Ordering::Relaxed);
                hawk_alloc_sample(ptr as u64, size as u64, weight);
            } else {
                SKIPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[inline]
    fn report_free(ptr: *mut u8) {
        if SAMPLED.remove(ptr as usize) {
            hawk_free_sample(ptr as u64);
        }
    }
}

// SAFETY: every method forwards to `inner` with the caller's arguments and
// returns its result unchanged; the reporting around it touches only
// thread-locals and the static table, and never allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SampledAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.inner.alloc(layout) };
        self.report_alloc(ptr, layout.size());
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        self.report_alloc(ptr, layout.size());
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Reported before the block is released: once it is, another thread
        // may get the same address and sample it.
        Self::report_free(ptr);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A realloc is a free of the old block and an allocation of the new
        // one, reported in that order for the reason `dealloc` gives.
        Self::report_free(ptr);
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
        self.report_alloc(new, new_size);
        new
    }
}

/// The bytes an allocation of `size` stands for when sampled with a mean
/// interval of `mean`: `size / (1 - exp(-size / mean))`.
fn weight(size: u64, mean: u64) -> u64 {
    if size == 0 {
        return mean;
    }
    let ratio = size as f64 / mean as f64;
    // -expm1(-x) = 1 - exp(-x), exact for small x.
    let p = -(-ratio).exp_m1();
    if p <= 0.0 {
        return mean;
    }
    (size as f64 / p).round() as u64
}

/// A draw from the exponential distribution of mean `mean`, at least 1.
fn next_interval(mean: u64) -> u64 {
    // Uniform in (0, 1]: 53 random bits, plus one so it is never 0.
    let bits = RNG.try_with(next_random).unwrap_or(0x9e37_79b9) >> 11;
    let u = (bits + 1) as f64 / (1u64 << 53) as f64;
    let draw = -u.ln() * mean as f64;
    (draw as u64).max(1)
}

/// xorshift64*: a fast generator, seeded per thread from the address of
/// its state and a global sequence.
fn next_random(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    if x == 0 {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let seed = (state as *const Cell<u64> as u64)
            ^ SEQUENCE
                .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
                .rotate_left(17);
        x = splitmix64(seed) | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.set(x);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

std::thread_local! {
    /// Bytes this thread may still allocate before the next sample (0: not
    /// drawn yet). No destructor, so it works during thread teardown too.
    static COUNTDOWN: Cell<u64> = const { Cell::new(0) };
    /// The thread's random state (0: not seeded yet).
    static RNG: Cell<u64> = const { Cell::new(0) };
}

static SKIPPED: AtomicU64 = AtomicU64::new(0);
static REPORTED: AtomicU64 = AtomicU64::new(0);

/// Addresses of the live sampled blocks.
static SAMPLED: SampledTable = SampledTable::new();

const TABLE_SLOTS: usize = 1 << 14;
const FILTER_SLOTS: usize = 1 << 12;
/// Slots looked at from an address's home slot before giving up.
const MAX_PROBES: usize = 32;
const EMPTY: usize = 0;
/// A slot whose block was freed; lookups go on past it.
const TOMBSTONE: usize = 1;

/// An open-addressing set of addresses with a counting filter in front, so
/// that the common case (freeing a block that was not sampled) reads one
/// byte of a 4 KiB array.
struct SampledTable {
    filter: [AtomicU8; FILTER_SLOTS],
    slots: [AtomicUsize; TABLE_SLOTS],
}

impl SampledTable {
    const fn new() -> Self {
        Self {
            filter: [const { AtomicU8::new(0) }; FILTER_SLOTS],
            slots: [const { AtomicUsize::new(EMPTY) }; TABLE_SLOTS],
        }
    }

    /// Multiplicative hash of an address; its high bits are well mixed.
    fn hash(addr: usize) -> u64 {
        // Allocations are at least 8-byte aligned: the low bits carry nothing.
        (addr as u64 >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn home(addr: usize) -> usize {
        (Self::hash(addr) >> 40) as usize % TABLE_SLOTS
    }

    fn filter_slot(&self, addr: usize) -> &AtomicU8 {
        &self.filter[(Self::hash(addr) >> 52) as usize % FILTER_SLOTS]
    }

    /// Adds `addr`; false when its probe sequence is full (or its filter
    /// counter saturated).
    fn insert(&self, addr: usize) -> bool {
        if addr <= TOMBSTONE {
            return false;
        }
        let counter = self.filter_slot(addr);
        // Counted first, so a concurrent free of this (not yet returned)
        // address cannot miss it; saturated counters refuse the sample.
        if counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_add(1))
            .is_err()
        {
            return false;
        }
        let home = Self::home(addr);
        for i in 0..MAX_PROBES {
            let slot = &self.slots[(home + i) % TABLE_SLOTS];
            let current = slot.load(Ordering::Relaxed);
            if (current == EMPTY || current == TOMBSTONE)
                && slot
                    .compare_exchange(current, addr, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return true;
            }
        }
        counter.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Removes `addr`; true when it was there.
    #[inline]
    fn remove(&self, addr: usize) -> bool {
        let counter = self.filter_slot(addr);
        if counter.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.remove_slow(addr, counter)
    }

    #[cold]
    fn remove_slow(&self, addr: usize, counter: &AtomicU8) -> bool {
        let home = Self::home(addr);
        for i in 0..MAX_PROBES {
            let slot = &self.slots[(home + i) % TABLE_SLOTS];
            let current = slot.load(Ordering::Acquire);
            if current == addr {
                // Only the owner of the block frees it: no race on this slot.
                slot.store(TOMBSTONE, Ordering::Release);
                counter.fetch_sub(1, Ordering::AcqRel);
                return true;
            }
            if current == EMPTY {
                return false;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::vec::Vec;

    #[test]
    fn weights_are_unbiased_for_small_and_large_sizes() {
        // Tiny allocations stand for about one interval, huge ones for
        // themselves.
        assert_eq!(weight(0, 1000), 1000);
        let tiny = weight(8, 512 * 1024);
        assert!((512 * 1024..512 * 1024 + 8).contains(&tiny), "{tiny}");
        let huge = weight(64 << 20, 512 * 1024);
        assert_eq!(huge, 64 << 20);
        // size / p with p = 1 - e^-1 at size == mean.
        let at_mean = weight(1000, 1000);
        assert!((1581..=1582).contains(&at_mean), "{at_mean}");
    }

    #[test]
    fn intervals_are_exponential_with_the_requested_mean() {
        let n = 200_000;
        let mean = 4096;
        let draws: Vec<u64> = (0..n).map(|_| next_interval(mean)).collect();
        let avg = draws.iter().sum::<u64>() as f64 / n as f64;
        assert!((avg / mean as f64 - 1.0).abs() < 0.02, "mean {avg}");
        // P(X > mean) = e^-1 for an exponential.
        let above = draws.iter().filter(|&&d| d > mean).count() as f64 / n as f64;
        assert!((above - (-1f64).exp()).abs() < 0.01, "tail {above}");
    }

    #[test]
    fn the_estimate_matches_the_bytes_allocated() {
        // Many allocations of mixed sizes through the sampling decision
        // alone: the summed weights estimate the total within a few percent.
        let alloc = SampledAlloc::with_mean_interval(System, 16 * 1024);
        let sizes = [16usize, 48, 200, 1024, 4096, 70_000];
        let mut truth = 0u64;
        let mut estimate = 0u64;
        for i in 0..400_000 {
            let size = sizes[i % sizes.len()];
            truth += size as u64;
            estimate += alloc.sample(size).unwrap_or(0);
        }
        let error = estimate as f64 / truth as f64 - 1.0;
        assert!(error.abs() < 0.03, "estimate {estimate} vs {truth}");
    }

    #[test]
    fn a_new_interval_holds_from_the_next_allocation() {
        // A countdown drawn with a huge mean must not outlast the change.
        let alloc = SampledAlloc::with_mean_interval(System, 1 << 40);
        let _ = alloc.sample(1);
        alloc.set_mean_interval(1024);
        let sampled = (0..64)
            .filter(|_| alloc.sample(64 * 1024).is_some())
            .count();
        assert!(sampled >= 60, "{sampled} of 64");
    }

    #[test]
    fn sampled_blocks_are_found_again_and_others_are_not() {
        let table = SampledTable::new();
        // The filter is the global one: use addresses no other test uses.
        let base = 0x7f00_dead_0000usize;
        let addrs: Vec<usize> = (0..1000).map(|i| base + i * 48).collect();
        for &a in &addrs {
            assert!(table.insert(a));
        }
        for &a in &addrs {
            assert!(!table.remove(a + 16), "never inserted");
        }
        for &a in &addrs {
            assert!(table.remove(a), "inserted");
            assert!(!table.remove(a), "removed twice");
        }
        // Freed slots are reused.
        for &a in &addrs {
            assert!(table.insert(a));
            assert!(table.remove(a));
        }
        assert!(!table.insert(0) && !table.insert(1));
    }

    #[test]
    fn the_allocator_returns_working_memory() {
        let alloc = SampledAlloc::with_mean_interval(System, 64);
        let layout = Layout::from_size_align(100, 16).unwrap();
        // SAFETY: non-zero layout; each block is freed once with its layout.
        unsafe {
            let mut blocks = Vec::new();
            for i in 0..1000 {
                let p = alloc.alloc(layout);
                assert!(!p.is_null());
                p.write_bytes(i as u8, 100);
                blocks.push(p);
            }
            for p in &mut blocks {
                let q = alloc.realloc(*p, layout, 300);
                assert!(!q.is_null());
                assert_eq!(*q.add(99), *q);
                *p = q;
            }
            let grown = Layout::from_size_align(300, 16).unwrap();
            for p in blocks {
                alloc.dealloc(p, grown);
            }
            let z = alloc.alloc_zeroed(layout);
            assert!((0..100).all(|i| *z.add(i) == 0));
            alloc.dealloc(z, layout);
        }
    }
}
