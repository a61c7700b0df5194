//! The CPU sampler's stack map over a long run: the stacks of samples that
//! were dropped because `CPU_COUNTS` was full have no key naming them, and
//! the sweep deletes them instead of leaving them to pile up.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, StackTraceMap};
use hawk_common::{STACK_ID_NONE, SampleKey, SampleValue, maps};
use hawk_tests::require_kernel;
use hawk_userspace::collector::bpf;
use hawk_userspace::collector::cpu::{CpuConfig, CpuSampler};
use hawk_userspace::collector::procs::ProcessTable;
use hawk_userspace::symbolize::Symbolizer;

/// Burns CPU at a recursion depth that changes all the time, so that the
/// samples carry many distinct user stacks.
#[inline(never)]
fn descend(depth: u32, x: u64) -> u64 {
    if depth == 0 {
        let mut y = x;
        for _ in 0..20_000 {
            y = black_box(y.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        return y;
    }
    black_box(descend(depth - 1, x ^ u64::from(depth))).wrapping_add(1)
}

/// Stack ids in `STACKS`, and those some key of `CPU_COUNTS` references.
fn stack_ids(sampler: &mut CpuSampler) -> (HashSet<u32>, HashSet<u32>) {
    let ebpf = sampler.ebpf_mut();
    let counts: BpfHashMap<&MapData, SampleKey, SampleValue> =
        bpf::map(ebpf, maps::CPU_COUNTS).unwrap();
    let referenced = counts
        .keys()
        .flatten()
        .flat_map(|k| [k.user_stack_id, k.kernel_stack_id])
        .filter(|id| *id >= 0)
        .map(|id| id as u32)
        .collect();
    let stacks: StackTraceMap<&MapData> = bpf::map(ebpf, maps::STACKS).unwrap();
    (stacks.stack_ids().flatten().collect(), referenced)
}

#[test]
fn stacks_of_samples_dropped_while_the_counts_map_is_full_are_swept() {
    require_kernel!();
    let me = std::process::id();
    let mut sampler = CpuSampler::start(&CpuConfig {
        frequency_hz: 999,
        pids: vec![me],
        user_stacks: true,
        kernel_stacks: true,
        traced_only: false,
    })
    .expect("start the sampler");
    // Fill CPU_COUNTS with keys no sample has: from now on every sample is
    // dropped, after its stacks went into STACKS.
    let fake = |i: u32| SampleKey {
        pid: u32::MAX - i,
        tid: 1,
        user_stack_id: STACK_ID_NONE,
        kernel_stack_id: STACK_ID_NONE,
        ..SampleKey::default()
    };
    let filled = {
        let mut counts: BpfHashMap<&mut MapData, SampleKey, SampleValue> =
            bpf::map_mut(sampler.ebpf_mut(), maps::CPU_COUNTS).unwrap();
        let value = SampleValue {
            count: 1,
            comm: [0; 16],
        };
        (0..)
            .take_while(|i| counts.insert(fake(*i), value, 0).is_ok())
            .count() as u32
    };
    let start = Instant::now();
    let mut depth = 0;
    while start.elapsed() < Duration::from_millis(1500)
        || sampler.kernel_stats().unwrap().counts_full == 0
    {
        black_box(descend(depth % 40, u64::from(depth)));
        depth += 1;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no sample was dropped"
        );
    }
    sampler.stop();
    let dropped = sampler.kernel_stats().unwrap().counts_full;
    {
        let mut counts: BpfHashMap<&mut MapData, SampleKey, SampleValue> =
            bpf::map_mut(sampler.ebpf_mut(), maps::CPU_COUNTS).unwrap();
        for i in 0..filled {
            counts.remove(&fake(i)).unwrap();
        }
    }
    let (held, referenced) = stack_ids(&mut sampler);
    let orphans = held.difference(&referenced).count() as u64;
    eprintln!(
        "{dropped} samples dropped; {} stack ids held, {orphans} of them referenced by no key",
        held.len()
    );
    assert!(orphans > 0, "dropped samples left no orphan stack");

    // The drain sees samples were dropped and sweeps; an orphan goes at its
    // second sweep.
    let (mut procs, mut symbolizer) = (ProcessTable::default(), Symbolizer::new());
    sampler.drain(&mut procs, &mut symbolizer).unwrap();
    sampler.sweep_orphan_stacks().unwrap();
    sampler.sweep_orphan_stacks().unwrap();
    let (held, referenced) = stack_ids(&mut sampler);
    assert!(
        held.is_subset(&referenced),
        "orphans left: {:?}",
        held.difference(&referenced).collect::<Vec<_>>()
    );
    assert_eq!(sampler.drain_stats().stacks_swept, orphans);
    assert!(!referenced.is_empty(), "the stacks of kept samples stay");
}
