//! The daemon's memory: a rolling window of drained samples, and per trace
//! id the samples that carried it, both bounded in time and in bytes.
//!
//! - The window is a queue of batches, one per drain, each stamped with the
//!   time of the drain. A batch leaves when it is older than the retention,
//!   or, oldest first, when the window holds more than its share of the
//!   memory budget. Both kinds of drop are counted.
//! - The trace store keeps the samples of each trace id seen (a copy: the
//!   window may forget them first), least recently active trace evicted
//!   first when there are more than `max_traces` or they hold more than
//!   their share of the budget, and every trace whose last sample is older
//!   than the retention.
//!
//! Sizes are estimates of the heap a sample holds (its struct, stacks and
//! thread name), which is what grows with load; they are what
//! `--max-memory` bounds and `/metrics` reports.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use crate::collector::cpu::RawSample;

/// Limits of the store.
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    /// How long samples are kept.
    pub retention: Duration,
    /// Bytes the window and the trace store may hold together.
    pub max_bytes: usize,
    /// Traces held at most.
    pub max_traces: usize,
}

impl StoreConfig {
    /// The trace store's share of the memory budget (a quarter).
    fn trace_budget(&self) -> usize {
        self.max_bytes / 4
    }

    /// The window's share of the memory budget (the rest).
    fn window_budget(&self) -> usize {
        self.max_bytes - self.trace_budget()
    }

    /// The most one trace may hold: a runaway trace must not evict all the
    /// others.
    fn per_trace_budget(&self) -> usize {
        (self.trace_budget() / 8).max(1)
    }
}

/// Heap bytes a sample accounts for.
pub fn sample_bytes(s: &RawSample) -> usize {
    std::mem::size_of::<RawSample>()
        + 8 * (s.user_stack.len() + s.kernel_stack.len())
        + s.comm.len()
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Samples (weights) that entered the window.
    pub samples_stored: u64,
    /// Samples dropped from the window for age.
    pub dropped_expired: u64,
    /// Samples dropped from the window (oldest first) for memory.
    pub dropped_memory: u64,
    /// Traces evicted before they expired (count or memory bound).
    pub traces_evicted: u64,
    /// Samples not kept for a trace that already held its maximum.
    pub trace_samples_dropped: u64,
}

struct Batch {
    at: SystemTime,
    samples: Vec<RawSample>,
    bytes: usize,
}

/// What the store holds of one trace.
#[derive(Clone, Debug)]
pub struct TraceRecord {
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// The span of the first sample seen (the file name's `span-…`).
    pub first_span: [u8; 8],
    pub samples: Vec<RawSample>,
    bytes: usize,
    /// Already handed to [`Store::take_finished`].
    reported: bool,
}

impl TraceRecord {
    /// Sum of the sample counts.
    pub fn total(&self) -> u64 {
        self.samples.iter().map(|s| s.count).sum()
    }
}

/// Window and trace store.
pub struct Store {
    config: StoreConfig,
    window: VecDeque<Batch>,
    window_bytes: usize,
    traces: HashMap<[u8; 16], TraceRecord>,
    /// (last seen, trace id): least recently active first.
    lru: BTreeSet<(SystemTime, [u8; 16])>,
    trace_bytes: usize,
    stats: StoreStats,
}

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            window: VecDeque::new(),
            window_bytes: 0,
            traces: HashMap::new(),
            lru: BTreeSet::new(),
            trace_bytes: 0,
            stats: StoreStats::default(),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Adds the samples of one drain, taken at `at`, then applies the bounds.
    pub fn push(&mut self, at: SystemTime, samples: Vec<RawSample>) {
        for s in samples.iter().filter(|s| !s.trace.is_empty()) {
            self.add_to_trace(at, s);
        }
        if !samples.is_empty() {
            let bytes = samples.iter().map(sample_bytes).sum();
            self.stats.samples_stored += samples.iter().map(|s| s.count).sum::<u64>();
            self.window_bytes += bytes;
            self.window.push_back(Batch { at, samples, bytes });
        }
        self.expire(at);
    }

    fn add_to_trace(&mut self, at: SystemTime, s: &RawSample) {
        let id = s.trace.trace_id;
        let bytes = sample_bytes(s);
        let per_trace = self.config.per_trace_budget();
        let record = self.traces.entry(id).or_insert_with(|| TraceRecord {
            first_seen: at,
            last_seen: at,
            first_span: s.trace.span_id,
            samples: Vec::new(),
            bytes: 0,
            reported: false,
        });
        self.lru.remove(&(record.last_seen, id));
        record.last_seen = at;
        record.reported = false;
        self.lru.insert((at, id));
        if record.bytes + bytes > per_trace {
            self.stats.trace_samples_dropped += s.count;
            return;
        }
        record.bytes += bytes;
        self.trace_bytes += bytes;
        record.samples.push(s.clone());
    }

    /// Drops what is older than the retention at `now`, then what exceeds
    /// the memory and count bounds, oldest first.
    pub fn expire(&mut self, now: SystemTime) {
        let horizon = now
            .checked_sub(self.config.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        while let Some(batch) = self.window.front() {
            let old = batch.at < horizon;
            let over = self.window_bytes > self.config.window_budget();
            if !old && !over {
                break;
            }
            let batch = self.window.pop_front().expect("front exists");
            self.window_bytes -= batch.bytes;
            let weight: u64 = batch.samples.iter().map(|s| s.count).sum();
            if old {
                self.stats.dropped_expired += weight;
            } else {
                self.stats.dropped_memory += weight;
            }
        }
        while let Some(&(last_seen, id)) = self.lru.first() {
            let old = last_seen < horizon;
            let over = self.trace_bytes > self.config.trace_budget()
                || self.traces.len() > self.config.max_traces;
            if !old && !over {
                break;
            }
            self.lru.pop_first();
            if let Some(record) = self.traces.remove(&id) {
                self.trace_bytes -= record.bytes;
                if !old {
                    self.stats.traces_evicted += 1;
                }
            }
        }
    }

    /// The samples of the batches drained in `(after, until]`, restricted
    /// to `pids` when it is not empty.
    pub fn window_samples(
        &self,
        after: SystemTime,
        until: SystemTime,
        pids: &[u32],
    ) -> Vec<RawSample> {
        self.window
            .iter()
            .filter(|b| b.at > after && b.at <= until)
            .flat_map(|b| b.samples.iter())
            .filter(|s| pids.is_empty() || pids.contains(&s.pid))
            .cloned()
            .collect()
    }

    /// What is held of trace `id`.
    pub fn trace(&self, id: &[u8; 16]) -> Option<&TraceRecord> {
        self.traces.get(id)
    }

    /// Traces not active since `quiet_since` and not reported yet, marked
    /// as reported (for `--out`). A trace seen again later is reported again,
    /// with all its samples.
    pub fn take_finished(&mut self, quiet_since: SystemTime) -> Vec<([u8; 16], TraceRecord)> {
        let mut out = Vec::new();
        for (id, record) in &mut self.traces {
            if !record.reported && record.last_seen <= quiet_since {
                record.reported = true;
                out.push((*id, record.clone()));
            }
        }
        out
    }

    /// Number of traces held.
    pub fn traces_held(&self) -> usize {
        self.traces.len()
    }

    /// Estimated bytes held by the window and the traces.
    pub fn bytes(&self) -> usize {
        self.window_bytes + self.trace_bytes
    }

    /// Sample records (not weights) in the window.
    pub fn window_records(&self) -> usize {
        self.window.iter().map(|b| b.samples.len()).sum()
    }

    /// Every pid that still has samples in the store.
    pub fn pids(&self) -> HashSet<u32> {
        self.window
            .iter()
            .flat_map(|b| b.samples.iter().map(|s| s.pid))
            .chain(
                self.traces
                    .values()
                    .flat_map(|r| r.samples.iter().map(|s| s.pid)),
            )
            .collect()
    }

    pub fn stats(&self) -> StoreStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use hawk_common::TraceContext;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn sample(pid: u32, trace: u8, count: u64) -> RawSample {
        RawSample {
            pid,
            tid: pid,
            comm: "w".into(),
            user_stack: vec![1, 2, 3],
            kernel_stack: vec![],
            trace: if trace == 0 {
                TraceContext::default()
            } else {
                TraceContext {
                    trace_id: [trace; 16],
                    span_id: [trace; 8],
                }
            },
            count,
        }
    }

    fn config() -> StoreConfig {
        StoreConfig {
            retention: Duration::from_secs(10),
            max_bytes: 1 << 20,
            max_traces: 100,
        }
    }

    #[test]
    fn window_queries_by_drain_time_and_pid() {
        let mut store = Store::new(config());
        store.push(at(1), vec![sample(1, 0, 2), sample(2, 0, 3)]);
        store.push(at(2), vec![sample(1, 0, 5)]);
        store.push(at(3), vec![sample(2, 0, 7)]);
        let total = |v: Vec<RawSample>| v.iter().map(|s| s.count).sum::<u64>();
        assert_eq!(total(store.window_samples(at(1), at(3), &[])), 12);
        assert_eq!(total(store.window_samples(at(0), at(3), &[1])), 7);
        assert_eq!(total(store.window_samples(at(3), at(9), &[])), 0);
        assert_eq!(store.stats().samples_stored, 17);
    }

    #[test]
    fn old_batches_and_traces_expire_and_are_counted() {
        let mut store = Store::new(config());
        store.push(at(0), vec![sample(1, 7, 4)]);
        store.push(at(5), vec![sample(1, 0, 1)]);
        assert!(store.trace(&[7; 16]).is_some());
        store.push(at(11), vec![]);
        assert_eq!(store.stats().dropped_expired, 4);
        assert!(store.trace(&[7; 16]).is_none(), "expired with the window");
        assert_eq!(store.traces_held(), 0);
        assert_eq!(store.window_records(), 1);
        store.expire(at(100));
        assert_eq!(store.bytes(), 0);
        assert_eq!(store.stats().traces_evicted, 0, "expiry is not eviction");
    }

    #[test]
    fn memory_bound_drops_oldest_first() {
        let one = sample_bytes(&sample(1, 0, 1));
        let mut store = Store::new(StoreConfig {
            max_bytes: one * 4 * 4 / 3 + 1, // window share: 3 samples... or so
            ..config()
        });
        for i in 0..10 {
            store.push(at(i), vec![sample(1, 0, 1)]);
        }
        assert!(store.bytes() <= store.config().max_bytes);
        assert!(store.stats().dropped_memory >= 6, "{:?}", store.stats());
        // The newest batch is still there.
        assert_eq!(store.window_samples(at(8), at(9), &[]).len(), 1);
    }

    #[test]
    fn traces_are_an_lru_bounded_by_count() {
        let mut store = Store::new(StoreConfig {
            max_traces: 2,
            ..config()
        });
        store.push(at(1), vec![sample(1, 1, 1)]);
        store.push(at(2), vec![sample(1, 2, 1)]);
        store.push(at(3), vec![sample(1, 1, 1)]); // 1 is active again
        store.push(at(4), vec![sample(1, 3, 1)]); // evicts 2
        assert!(store.trace(&[1; 16]).is_some());
        assert!(store.trace(&[2; 16]).is_none());
        assert!(store.trace(&[3; 16]).is_some());
        assert_eq!(store.stats().traces_evicted, 1);
        let t1 = store.trace(&[1; 16]).unwrap();
        assert_eq!((t1.total(), t1.first_seen, t1.last_seen), (2, at(1), at(3)));
        assert_eq!(t1.first_span, [1; 8]);
    }

    #[test]
    fn finished_traces_are_reported_once_until_seen_again() {
        let mut store = Store::new(config());
        store.push(at(1), vec![sample(1, 1, 1), sample(1, 2, 1)]);
        store.push(at(3), vec![sample(1, 2, 1)]);
        let done: Vec<_> = store
            .take_finished(at(2))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(done, vec![[1; 16]]);
        assert!(store.take_finished(at(2)).is_empty());
        store.push(at(4), vec![sample(1, 1, 1)]);
        let again = store.take_finished(at(5));
        assert_eq!(again.len(), 2);
    }
}
