//! Symbolization throughput, cold (new symbolizer: maps read, ELF files
//! opened and parsed) and warm (every address cached), in frames per second.
//! Target: ≥ 2M frames/s warm. Addresses are spread over the executable
//! mappings of this very process (the bench binary and its libraries), in
//! stacks of 20 frames as the kernel records them.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hawk_userspace::symbolize::Symbolizer;

/// `count` addresses spread evenly over this process's r-x file mappings.
fn addresses(count: usize) -> Vec<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let ranges: Vec<(u64, u64)> = maps
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with('/'))
        })
        .filter_map(|l| {
            let (lo, hi) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
            ))
        })
        .collect();
    let total: u64 = ranges.iter().map(|(lo, hi)| hi - lo).sum();
    let step = (total / count as u64).max(1);
    let mut out = Vec::with_capacity(count);
    let mut skip = 0;
    for (lo, hi) in ranges {
        let mut a = lo + skip;
        while a < hi && out.len() < count {
            out.push(a);
            a += step;
        }
        skip = a.saturating_sub(hi);
    }
    out
}

fn symbolize_all(s: &mut Symbolizer, pid: u32, addrs: &[u64]) -> usize {
    addrs
        .chunks(20)
        .map(|stack| {
            s.normalize(pid, stack);
            s.user_frames(pid, stack).len()
        })
        .sum()
}

fn bench(c: &mut Criterion) {
    let pid = std::process::id();
    let addrs = addresses(20_000);
    let mut group = c.benchmark_group("symbolize");
    group.throughput(Throughput::Elements(addrs.len() as u64));
    group.sample_size(10);
    group.bench_function("cold", |b| {
        b.iter(|| {
            let mut s = Symbolizer::new();
            black_box(symbolize_all(&mut s, pid, &addrs))
        })
    });
    let mut warm = Symbolizer::new();
    symbolize_all(&mut warm, pid, &addrs);
    group.bench_function("warm", |b| {
        b.iter(|| black_box(symbolize_all(&mut warm, pid, &addrs)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
