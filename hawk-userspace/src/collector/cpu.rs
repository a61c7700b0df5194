//! The CPU sampler: a perf_event program on the software CPU clock of every
//! online CPU, aggregating (pid, tid, stacks, trace context) → count in the
//! kernel. Userspace polls the map during the window to learn new processes
//! and stacks while they live, and reads it all at the end.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, StackTraceMap};
use aya::programs::PerfEvent;
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use hawk_common::{STACK_KERNEL, STACK_USER, SampleKey, SampleValue, TraceContext, maps, stats};

use super::bpf::{self, CollectorError, Globals};
use super::first_samples::MapsWatcher;
use super::procs::{self, ProcessTable};
use super::stacks::SeenStacks;
use crate::symbolize::Symbolizer;

/// Samples counted into a key since the last drain: its count now minus the
/// count taken then. A count lower than the one taken means the key was
/// deleted and created anew since (it restarted from 1).
fn increment(count: u64, taken: u64) -> u64 {
    if count >= taken { count - taken } else { count }
}

/// The stack ids among `held` that none of `keys` references.
fn unreferenced_stacks<'a>(
    held: impl Iterator<Item = &'a i32>,
    keys: impl Iterator<Item = &'a SampleKey>,
) -> Vec<i32> {
    let referenced: HashSet<i32> = keys
        .flat_map(|k| [k.user_stack_id, k.kernel_stack_id])
        .filter(|id| *id >= 0)
        .collect();
    held.copied()
        .filter(|id| !referenced.contains(id))
        .collect()
}

/// One step of the orphan sweep ([`CpuSampler::sweep_orphan_stacks`]): the
/// stack ids among `held` that no key `referenced` are orphans. Those that
/// were orphans at the previous step too (`previous`) are to be deleted; the
/// others wait for the next step, since a sample may be between taking its
/// stack id and inserting its key. Returns (ids to delete, orphans to look
/// at again).
fn sweep_step(
    previous: &HashSet<i32>,
    held: impl Iterator<Item = i32>,
    referenced: &HashSet<i32>,
) -> (Vec<i32>, HashSet<i32>) {
    let mut delete = Vec::new();
    let mut wait = HashSet::new();
    for id in held.filter(|id| !referenced.contains(id)) {
        if previous.contains(&id) {
            delete.push(id);
        } else {
            wait.insert(id);
        }
    }
    (delete, wait)
}

/// How often at most [`CpuSampler::drain`] sweeps the stack map for
/// orphans, while samples are being dropped or orphans wait.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Entries of the `CPU_COUNTS` map, as declared in `hawk-ebpf`.
pub const COUNTS_CAPACITY: u64 = 32_768;
/// Entries of the `STACKS` map, as declared in `hawk-ebpf`.
pub const STACKS_CAPACITY: u64 = 16_384;

/// What to sample.
#[derive(Clone, Debug)]
pub struct CpuConfig {
    /// Samples per second on each CPU.
    pub frequency_hz: u64,
    /// Processes to sample; empty means every process.
    pub pids: Vec<u32>,
    pub user_stacks: bool,
    pub kernel_stacks: bool,
    /// Sample only threads that serve a trace (trace captures).
    pub traced_only: bool,
}

/// One aggregated kernel record, with its stacks read out (leaf first).
#[derive(Clone, Debug)]
pub struct RawSample {
    pub pid: u32,
    pub tid: u32,
    /// The thread's name.
    pub comm: String,
    pub user_stack: Vec<u64>,
    pub kernel_stack: Vec<u64>,
    pub trace: TraceContext,
    pub count: u64,
}

/// Counters kept by the BPF program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub samples: u64,
    pub stack_errors: u64,
    pub counts_full: u64,
    pub traced_samples: u64,
}

/// A running CPU sampler. Dropping it detaches the programs.
pub struct CpuSampler {
    ebpf: Ebpf,
    started: SystemTime,
    frequency_hz: u64,
    /// (pid, user stack id) pairs already normalized.
    seen: SeenStacks,
    /// What [`CpuSampler::drain`] has taken so far.
    drain: DrainState,
    /// Maps of processes read at their first sample (short-lived ones).
    first_samples: Option<MapsWatcher>,
}

/// Bookkeeping of continuous draining (see [`CpuSampler::drain`]).
#[derive(Default)]
struct DrainState {
    /// Count of each kernel key as last read: what was already handed out.
    taken: HashMap<SampleKey, u64>,
    /// Stacks read out of `STACKS`, by id, while a key references them.
    stacks: HashMap<i32, Vec<u64>>,
    /// Stack ids no key referenced at the last sweep.
    orphans: HashSet<i32>,
    /// `COUNTS_FULL` as of the last sweep.
    swept_at_full: u64,
    last_sweep: Option<Instant>,
    stats: DrainStats,
}

/// Counters of [`CpuSampler::drain`], for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainStats {
    /// Samples handed out by drains.
    pub samples: u64,
    /// Idle keys deleted from the counts map.
    pub keys_evicted: u64,
    /// Stack ids deleted from the stack map.
    pub stacks_freed: u64,
    /// Keys in the counts map after the last drain.
    pub keys_held: u64,
    /// Stack ids held after the last drain.
    pub stacks_held: u64,
    /// Samples whose stack was gone from the stack map when read (a stack
    /// freed just as a new sample took its id).
    pub stacks_missing: u64,
    /// Orphan stack ids deleted by sweeps (stacks of samples the full
    /// counts map dropped).
    pub stacks_swept: u64,
}

impl CpuSampler {
    /// Loads the programs, fills the pid filter and starts sampling on every
    /// online CPU.
    pub fn start(config: &CpuConfig) -> Result<Self, CollectorError> {
        if let Some(max) = super::check::max_sample_rate()
            && config.frequency_hz > max
        {
            return Err(CollectorError::FrequencyTooHigh {
                requested: config.frequency_hz,
                max,
            });
        }
        for pid in &config.pids {
            if !procs::exists(*pid) {
                return Err(CollectorError::NoSuchProcess(*pid));
            }
        }
        let mut stack_mode = 0;
        if config.user_stacks {
            stack_mode |= STACK_USER;
        }
        if config.kernel_stacks {
            stack_mode |= STACK_KERNEL;
        }
        let ebpf = bpf::load(&Globals {
            filter_pids: !config.pids.is_empty(),
            stack_mode,
            traced_only: config.traced_only,
        })?;
        let mut sampler = Self {
            ebpf,
            started: SystemTime::now(),
            frequency_hz: config.frequency_hz,
            seen: SeenStacks::default(),
            drain: DrainState::default(),
            first_samples: None,
        };
        for pid in &config.pids {
            sampler.add_pid(*pid)?;
        }
        if !config.pids.is_empty() {
            // The processes the targets fork are sampled too.
            super::forks::follow(&mut sampler.ebpf)?;
        }
        // Without it, short-lived processes keep unnamed frames: worth a
        // warning, not a failure.
        match MapsWatcher::start(&mut sampler.ebpf) {
            Ok(watcher) => sampler.first_samples = Some(watcher),
            Err(e) => tracing::warn!("{e}: processes that exit within a poll keep unnamed frames"),
        }
        sampler.attach()?;
        sampler.started = SystemTime::now();
        Ok(sampler)
    }

    fn attach(&mut self) -> Result<(), CollectorError> {
        let name = hawk_common::programs::CPU_SAMPLE;
        let program: &mut PerfEvent = bpf::program_mut(&mut self.ebpf, name)?;
        program
            .load()
            .map_err(|source| CollectorError::Program { name, source })?;
        let cpus = aya::util::online_cpus()
            .map_err(|(what, e)| CollectorError::Io(format!("reading {what}: {e}")))?;
        for cpu in cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(self.frequency_hz),
                    false,
                )
                .map_err(|source| CollectorError::Program { name, source })?;
        }
        Ok(())
    }

    /// Adds a process to the pid filter (it must have been started with pids).
    pub fn add_pid(&mut self, pid: u32) -> Result<(), CollectorError> {
        let mut pids: BpfHashMap<&mut MapData, u32, u8> = bpf::map_mut(&mut self.ebpf, maps::PIDS)?;
        pids.insert(pid, 1, 0)
            .map_err(|source| CollectorError::Map {
                name: maps::PIDS,
                source,
            })
    }

    /// When sampling started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    pub fn frequency_hz(&self) -> u64 {
        self.frequency_hz
    }

    fn counts(ebpf: &Ebpf) -> Result<BpfHashMap<&MapData, SampleKey, SampleValue>, CollectorError> {
        bpf::map(ebpf, maps::CPU_COUNTS)
    }

    fn stacks(ebpf: &Ebpf) -> Result<StackTraceMap<&MapData>, CollectorError> {
        bpf::map(ebpf, maps::STACKS)
    }

    /// Learns the processes and user stacks that appeared since the last
    /// poll, while they are alive: their names, and where their addresses
    /// are mapped. Only samples `wanted` accepts are looked at; returns the
    /// number of samples they hold. Call it every few hundred milliseconds
    /// during a window.
    pub fn poll(
        &mut self,
        procs: &mut ProcessTable,
        symbolizer: &mut Symbolizer,
        wanted: impl Fn(&SampleKey) -> bool,
    ) -> Result<u64, CollectorError> {
        self.take_snapshots(symbolizer);
        let mut matching = 0;
        let mut fresh = Vec::new();
        for (key, value) in Self::counts(&self.ebpf)?.iter().flatten() {
            if !wanted(&key) {
                continue;
            }
            matching += value.count;
            procs.observe(key.pid);
            if self.seen.is_new(key.pid, key.user_stack_id) {
                fresh.push((key.pid, key.user_stack_id));
            }
        }
        let stacks = Self::stacks(&self.ebpf)?;
        self.seen.normalize_from(&stacks, symbolizer, fresh);
        Ok(matching)
    }

    /// Hands the maps read at first samples to `symbolizer`.
    fn take_snapshots(&self, symbolizer: &mut Symbolizer) {
        if let Some(watcher) = &self.first_samples {
            for (pid, snapshot) in watcher.take() {
                symbolizer.add_snapshot(pid, snapshot);
            }
        }
    }

    /// The threads whose current trace context `matches`, as (pid, tid,
    /// context). Entries of threads that exited without clearing their
    /// context are removed from the map on the way.
    pub fn traced_threads(
        &mut self,
        matches: impl Fn(&TraceContext) -> bool,
    ) -> Result<Vec<(u32, u32, TraceContext)>, CollectorError> {
        super::shim::traced_threads(&mut self.ebpf, matches)
    }

    /// The loaded object, for the other programs in it (the trace-context
    /// uprobe shares `TRACE_CTX` with the sampler).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The counters of the BPF program, summed over CPUs.
    pub fn kernel_stats(&self) -> Result<KernelStats, CollectorError> {
        let array: PerCpuArray<&MapData, u64> = bpf::map(&self.ebpf, maps::STATS)?;
        let read = |i: u32| -> u64 {
            array
                .get(&i, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        Ok(KernelStats {
            samples: read(stats::SAMPLES),
            stack_errors: read(stats::STACK_ERRORS),
            counts_full: read(stats::COUNTS_FULL),
            traced_samples: read(stats::TRACED_SAMPLES),
        })
    }

    /// Processes that exited before their memory maps could be read.
    pub fn unmapped_processes(&self) -> usize {
        self.seen.unmapped_processes()
    }

    /// Every aggregated sample so far, with its stacks read out.
    pub fn read_samples(&self) -> Result<Vec<RawSample>, CollectorError> {
        let counts = Self::counts(&self.ebpf)?;
        let stacks = Self::stacks(&self.ebpf)?;
        let read_stack = |id: i32| -> Vec<u64> {
            if id < 0 {
                return Vec::new();
            }
            stacks
                .get(&(id as u32), 0)
                .map(|t| t.frames().iter().map(|f| f.ip).collect())
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for entry in counts.iter() {
            let Ok((key, value)) = entry else { continue };
            out.push(RawSample {
                pid: key.pid,
                tid: key.tid,
                comm: procs::comm_str(&value.comm),
                user_stack: read_stack(key.user_stack_id),
                kernel_stack: read_stack(key.kernel_stack_id),
                trace: key.trace,
                count: value.count,
            });
        }
        Ok(out)
    }

    /// Takes the samples counted since the last drain, for continuous
    /// operation (the daemon), and keeps both kernel maps from filling up.
    ///
    /// The BPF program bumps counts in place, without atomics, so reading a
    /// key and deleting it races with the program: an increment landing
    /// between the read and the delete would be lost. Instead a drain hands
    /// out the *difference* since the previous drain (the key stays, and the
    /// program keeps counting into it), and deletes only keys that did not
    /// move for a whole drain period. The race is then limited to a thread
    /// that was idle in that stack for a period and is sampled in it again
    /// in the microseconds between our read and our delete: rare, and at
    /// worst one sample. A key recreated after a delete restarts from 1,
    /// and a count lower than the one taken is read as such a restart.
    ///
    /// The stack map is cleaned the same way: once no remaining key
    /// references a stack id, the id is deleted from `STACKS` (and from the
    /// normalization bookkeeping), so new stacks find room. A sample taking
    /// that very id just as it is deleted finds no stack when read; those are
    /// counted in [`DrainStats::stacks_missing`].
    ///
    /// That cleaning only knows the ids some key referenced. A sample
    /// dropped because `CPU_COUNTS` was full has already put its stacks in
    /// `STACKS`, and no key will ever name them: left alone, such orphans
    /// would pile up over a long run (each one blocks its hash bucket, so
    /// later stacks landing there are lost). So while the kernel counts
    /// dropped samples, or orphans from the last sweep wait, a drain also
    /// sweeps the whole stack map, at most every [`SWEEP_INTERVAL`] (see
    /// [`CpuSampler::sweep_orphan_stacks`]).
    ///
    /// New user stacks are normalized on the way (see [`CpuSampler::poll`]),
    /// while their processes live. Returns the new samples, counts being the
    /// increments since the last drain.
    pub fn drain(
        &mut self,
        procs: &mut ProcessTable,
        symbolizer: &mut Symbolizer,
    ) -> Result<Vec<RawSample>, CollectorError> {
        self.take_snapshots(symbolizer);
        let entries: Vec<(SampleKey, SampleValue)> =
            Self::counts(&self.ebpf)?.iter().flatten().collect();
        let mut out = Vec::new();
        let mut idle = Vec::new();
        let mut fresh_stacks: Vec<(u32, i32)> = Vec::new();
        {
            let stacks = Self::stacks(&self.ebpf)?;
            let state = &mut self.drain;
            for (key, value) in &entries {
                let delta = increment(value.count, state.taken.get(key).copied().unwrap_or(0));
                if delta == 0 {
                    idle.push(*key);
                    continue;
                }
                state.taken.insert(*key, value.count);
                procs.observe(key.pid);
                let mut read = |id: i32| -> Vec<u64> {
                    if id < 0 {
                        return Vec::new();
                    }
                    if let Some(frames) = state.stacks.get(&id) {
                        return frames.clone();
                    }
                    match stacks.get(&(id as u32), 0) {
                        Ok(trace) => {
                            let frames: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
                            state.stacks.insert(id, frames.clone());
                            frames
                        }
                        Err(_) => {
                            state.stats.stacks_missing += delta;
                            Vec::new()
                        }
                    }
                };
                let user_stack = read(key.user_stack_id);
                let kernel_stack = read(key.kernel_stack_id);
                if !user_stack.is_empty() && self.seen.is_new(key.pid, key.user_stack_id) {
                    fresh_stacks.push((key.pid, key.user_stack_id));
                }
                state.stats.samples += delta;
                out.push(RawSample {
                    pid: key.pid,
                    tid: key.tid,
                    comm: procs::comm_str(&value.comm),
                    user_stack,
                    kernel_stack,
                    trace: key.trace,
                    count: delta,
                });
            }
        }
        for (pid, id) in fresh_stacks {
            if let Some(ips) = self.drain.stacks.get(&id) {
                self.seen.normalize(symbolizer, pid, ips);
            }
        }

        // Idle keys go; then the stacks no remaining key references.
        let mut counts: BpfHashMap<&mut MapData, SampleKey, SampleValue> =
            bpf::map_mut(&mut self.ebpf, maps::CPU_COUNTS)?;
        for key in &idle {
            if counts.remove(key).is_ok() {
                self.drain.stats.keys_evicted += 1;
            }
            self.drain.taken.remove(key);
        }
        // Keys that vanished from the map (never, unless someone else deletes).
        let present: HashSet<SampleKey> = entries.iter().map(|(k, _)| *k).collect();
        self.drain.taken.retain(|k, _| present.contains(k));
        let unreferenced = unreferenced_stacks(self.drain.stacks.keys(), self.drain.taken.keys());
        if !unreferenced.is_empty() {
            let mut stacks: StackTraceMap<&mut MapData> =
                bpf::map_mut(&mut self.ebpf, maps::STACKS)?;
            for id in &unreferenced {
                if stacks.remove(&(*id as u32)).is_ok() {
                    self.drain.stats.stacks_freed += 1;
                }
                self.drain.stacks.remove(id);
            }
            let gone: HashSet<i32> = unreferenced.into_iter().collect();
            self.seen.forget(&gone);
        }
        self.drain.stats.keys_held = self.drain.taken.len() as u64;
        self.drain.stats.stacks_held = self.drain.stacks.len() as u64;
        if self.sweep_due()
            && let Err(e) = self.sweep_orphan_stacks()
        {
            tracing::debug!("sweeping the stack map: {e}");
        }
        Ok(out)
    }

    /// True when samples were dropped since the last sweep (their stacks may
    /// be orphans) or orphans wait, and the last sweep is old enough.
    fn sweep_due(&self) -> bool {
        let state = &self.drain;
        if state
            .last_sweep
            .is_some_and(|at| at.elapsed() < SWEEP_INTERVAL)
        {
            return false;
        }
        !state.orphans.is_empty()
            || self
                .kernel_stats()
                .is_ok_and(|k| k.counts_full > state.swept_at_full)
    }

    /// Deletes from `STACKS` the ids that no key of `CPU_COUNTS` referenced
    /// at this sweep nor at the previous one (one step of [`sweep_step`]);
    /// returns how many. The drain calls it when due; it costs one pass over
    /// each map.
    pub fn sweep_orphan_stacks(&mut self) -> Result<u64, CollectorError> {
        let full = self.kernel_stats()?.counts_full;
        // Keys first, then stacks: a stack stored after the keys were listed
        // looks orphaned, and only waits.
        let referenced: HashSet<i32> = Self::counts(&self.ebpf)?
            .keys()
            .flatten()
            .flat_map(|k| [k.user_stack_id, k.kernel_stack_id])
            .filter(|id| *id >= 0)
            .collect();
        let held: Vec<i32> = Self::stacks(&self.ebpf)?
            .stack_ids()
            .flatten()
            .map(|id| id as i32)
            .collect();
        let (delete, wait) = sweep_step(&self.drain.orphans, held.into_iter(), &referenced);
        let mut swept = 0;
        if !delete.is_empty() {
            let mut stacks: StackTraceMap<&mut MapData> =
                bpf::map_mut(&mut self.ebpf, maps::STACKS)?;
            for id in &delete {
                if stacks.remove(&(*id as u32)).is_ok() {
                    swept += 1;
                }
                self.drain.stacks.remove(id);
            }
            self.seen.forget(&delete.into_iter().collect());
        }
        let state = &mut self.drain;
        state.orphans = wait;
        state.swept_at_full = full;
        state.last_sweep = Some(Instant::now());
        state.stats.stacks_swept += swept;
        state.stats.stacks_held = state.stacks.len() as u64;
        Ok(swept)
    }

    /// Pids of the keys still in the kernel map as of the last drain: their
    /// processes may have samples to come, even if they exited.
    pub fn pending_pids(&self) -> HashSet<u32> {
        self.drain.taken.keys().map(|k| k.pid).collect()
    }

    /// Forgets which stacks of the processes `gone` says are gone were
    /// normalized (the daemon's periodic cleanup).
    pub fn forget_processes(&mut self, gone: impl FnMut(u32) -> bool) {
        self.seen.forget_processes(gone);
    }

    /// Counters of [`CpuSampler::drain`].
    pub fn drain_stats(&self) -> DrainStats {
        self.drain.stats
    }

    /// Stops sampling (detaches the perf events) but keeps the maps readable.
    pub fn stop(&mut self) {
        if let Some(program) = self.ebpf.program_mut(hawk_common::programs::CPU_SAMPLE)
            && let Ok(program) = <&mut PerfEvent>::try_from(program)
        {
            // Unloading detaches every link; the maps stay.
            let _ = program.unload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_hand_out_increments_and_restarts() {
        assert_eq!(increment(10, 7), 3);
        assert_eq!(increment(7, 7), 0, "idle: the key may go");
        assert_eq!(increment(2, 7), 2, "deleted and recreated since");
        assert_eq!(increment(5, 0), 5, "new key");
    }

    #[test]
    fn orphan_stacks_are_deleted_at_their_second_sweep() {
        let referenced = HashSet::from([1, 2]);
        // First sweep: 3 and 4 are orphans, and wait.
        let (delete, wait) = sweep_step(&HashSet::new(), [1, 2, 3, 4].into_iter(), &referenced);
        assert!(delete.is_empty());
        assert_eq!(wait, HashSet::from([3, 4]));
        // Second: a key took 4 meanwhile; 3 is still an orphan and goes; 5
        // is new and waits.
        let referenced = HashSet::from([1, 2, 4]);
        let (delete, wait) = sweep_step(&wait, [1, 2, 3, 4, 5].into_iter(), &referenced);
        assert_eq!(delete, vec![3]);
        assert_eq!(wait, HashSet::from([5]));
        // Third: 5 was freed by a drain in between; nothing left.
        let (delete, wait) = sweep_step(&wait, [1, 2, 4].into_iter(), &referenced);
        assert!(delete.is_empty() && wait.is_empty());
    }

    #[test]
    fn stacks_no_key_references_are_freed() {
        let key = |user, kernel| SampleKey {
            user_stack_id: user,
            kernel_stack_id: kernel,
            ..SampleKey::default()
        };
        let keys = [key(1, 2), key(1, -14), key(hawk_common::STACK_ID_NONE, 3)];
        let held = [1, 2, 3, 4, 5];
        let mut free = unreferenced_stacks(held.iter(), keys.iter());
        free.sort_unstable();
        assert_eq!(free, vec![4, 5]);
    }
}
