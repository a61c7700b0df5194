//! Snapshots of the memory maps of processes as soon as they are first
//! sampled, so that short-lived processes get named frames.
//!
//! The sampler sends the pid of each new `CPU_COUNTS` key (a process's
//! first sample, or new code it runs) to the `PID_EVENTS` ring buffer. A
//! thread of its own waits on that buffer and reads the process's maps
//! (opening each mapped file) within about a millisecond, long before the
//! next poll of the collector, by which time a shell pipeline or a short
//! compiler run has exited. A process is read again at a later event, its
//! first sample may come before the dynamic loader mapped its libraries:
//! [`REREAD_AFTER`] after the first read, then at doubling intervals (a
//! long-lived process's maps rarely change, and the daemon's drains make
//! new keys all the time). The poll hands the snapshots to the symbolizer
//! ([`crate::symbolize::Symbolizer::add_snapshot`]), which falls back on
//! them for processes that are gone.

use std::collections::HashMap;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::{MapData, RingBuf};
use hawk_common::maps;

use super::CollectorError;
use crate::symbolize::MapsSnapshot;

/// How long the thread waits for an event before looking at the stop flag.
const WAIT_MS: i32 = 100;
/// A process's maps are read again this long after the first read, at its
/// next event; the interval then doubles with each read.
pub const REREAD_AFTER: Duration = Duration::from_millis(20);

/// When a process was first read, and last read.
#[derive(Clone, Copy)]
struct Reads {
    first: Instant,
    last: Instant,
}

impl Reads {
    /// Whether it is time to read again at `now`.
    fn due(&self, now: Instant) -> bool {
        let interval = REREAD_AFTER.max(self.last.duration_since(self.first));
        now.duration_since(self.last) >= interval
    }
}
/// Pids remembered with the time of their last read; beyond this the
/// oldest half is forgotten.
const MAX_REMEMBERED: usize = 65_536;

/// The thread reading first-sample events, and what it read.
pub struct MapsWatcher {
    snapshots: mpsc::Receiver<(u32, MapsSnapshot)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MapsWatcher {
    /// Takes `PID_EVENTS` out of `ebpf` and starts the thread.
    pub fn start(ebpf: &mut Ebpf) -> Result<Self, CollectorError> {
        let map = ebpf
            .take_map(maps::PID_EVENTS)
            .ok_or(CollectorError::Missing(maps::PID_EVENTS))?;
        let ring = RingBuf::try_from(map).map_err(|source| CollectorError::Map {
            name: maps::PID_EVENTS,
            source,
        })?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("hawk-first-samples".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || watch(ring, &tx, &stop)
            })
            .map_err(|e| CollectorError::Io(format!("starting the maps thread: {e}")))?;
        Ok(Self {
            snapshots: rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The snapshots read since the last call.
    pub fn take(&self) -> Vec<(u32, MapsSnapshot)> {
        self.snapshots.try_iter().collect()
    }
}

impl Drop for MapsWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(mut ring: RingBuf<MapData>, tx: &mpsc::Sender<(u32, MapsSnapshot)>, stop: &AtomicBool) {
    let me = std::process::id();
    let mut read: HashMap<u32, Reads> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, WAIT_MS) };
        let mut pids = Vec::new();
        while let Some(item) = ring.next() {
            if let Ok(bytes) = <[u8; 4]>::try_from(&item[..]) {
                pids.push(u32::from_ne_bytes(bytes));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        let now = Instant::now();
        if read.len() >= MAX_REMEMBERED {
            let mut times: Vec<Instant> = read.values().map(|r| r.last).collect();
            let (_, median, _) = times.select_nth_unstable(read.len() / 2);
            let median = *median;
            read.retain(|_, r| r.last > median);
        }
        for pid in pids {
            if pid == me || read.get(&pid).is_some_and(|r| !r.due(now)) {
                continue;
            }
            let first = read.get(&pid).map_or(now, |r| r.first);
            read.insert(pid, Reads { first, last: now });
            if let Some(snapshot) = MapsSnapshot::read(pid)
                && tx.send((pid, snapshot)).is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_again_at_doubling_intervals() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let fresh = Reads {
            first: t0,
            last: t0,
        };
        assert!(!fresh.due(t0 + ms(10)));
        assert!(fresh.due(t0 + ms(20)));
        // Last read 1 s after the first: next one 1 s later.
        let older = Reads {
            first: t0,
            last: t0 + ms(1000),
        };
        assert!(!older.due(t0 + ms(1900)));
        assert!(older.due(t0 + ms(2000)));
    }
}
