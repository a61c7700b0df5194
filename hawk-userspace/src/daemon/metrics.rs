//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Shared, lock};
use crate::collector::cpu::{COUNTS_CAPACITY, STACKS_CAPACITY};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters the HTTP side keeps.
#[derive(Debug, Default)]
pub struct HttpCounters {
    pub profiles_served: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub bad_requests: AtomicU64,
    pub unauthorized: AtomicU64,
    /// Memory windows tracing now (probes attached).
    pub mem_windows_active: AtomicU64,
}

/// Appends one metric with its help and type lines.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// The Prometheus text of the daemon's state.
pub fn render(shared: &Shared, http: &HttpCounters) -> String {
    let stats = lock(&shared.stats).clone();
    let (sym, caches) = (stats.symbolizer, stats.symbolizer_caches);
    let (store_stats, traces, bytes, records) = {
        let store = lock(&shared.store);
        (
            store.stats(),
            store.traces_held(),
            store.bytes(),
            store.window_records(),
        )
    };
    let uptime = shared.started.elapsed().unwrap_or_default().as_secs_f64();
    let n = |v: u64| v as f64;
    let mut out = String::new();
    let counter = "counter";
    let gauge = "gauge";
    metric(
        &mut out,
        "hawk_up_seconds",
        gauge,
        "Seconds since the daemon started.",
        &[("", uptime)],
    );
    metric(
        &mut out,
        "hawk_sampling_frequency_hertz",
        gauge,
        "CPU samples per second on each CPU.",
        &[("", n(shared.config.frequency_hz))],
    );
    metric(
        &mut out,
        "hawk_samples_total",
        counter,
        "CPU samples taken by the kernel.",
        &[("", n(stats.kernel.samples))],
    );
    metric(
        &mut out,
        "hawk_samples_traced_total",
        counter,
        "CPU samples that carried a trace context.",
        &[("", n(stats.kernel.traced_samples))],
    );
    metric(
        &mut out,
        "hawk_samples_drained_total",
        counter,
        "CPU samples moved from the kernel into the store.",
        &[("", n(stats.drain.samples))],
    );
    metric(
        &mut out,
        "hawk_samples_lost_total",
        counter,
        "Samples lost, by reason: map_full (kernel counts map full), stack (stack not recorded), stack_freed (stack freed as it was reused), expired and memory (dropped from the window), trace_full (a trace held its maximum).",
        &[
            ("reason=\"map_full\"", n(stats.kernel.counts_full)),
            ("reason=\"stack\"", n(stats.kernel.stack_errors)),
            ("reason=\"stack_freed\"", n(stats.drain.stacks_missing)),
            ("reason=\"expired\"", n(store_stats.dropped_expired)),
            ("reason=\"memory\"", n(store_stats.dropped_memory)),
            (
                "reason=\"trace_full\"",
                n(store_stats.trace_samples_dropped),
            ),
        ],
    );
    metric(
        &mut out,
        "hawk_map_entries",
        gauge,
        "Entries held in the BPF maps after the last drain.",
        &[
            ("map=\"cpu_counts\"", n(stats.drain.keys_held)),
            ("map=\"stacks\"", n(stats.drain.stacks_held)),
        ],
    );
    metric(
        &mut out,
        "hawk_map_capacity",
        gauge,
        "Entries the BPF maps can hold.",
        &[
            ("map=\"cpu_counts\"", n(COUNTS_CAPACITY)),
            ("map=\"stacks\"", n(STACKS_CAPACITY)),
        ],
    );
    metric(
        &mut out,
        "hawk_map_fill_ratio",
        gauge,
        "Entries held over capacity, per BPF map.",
        &[
            (
                "map=\"cpu_counts\"",
                n(stats.drain.keys_held) / n(COUNTS_CAPACITY),
            ),
            (
                "map=\"stacks\"",
                n(stats.drain.stacks_held) / n(STACKS_CAPACITY),
            ),
        ],
    );
    metric(
        &mut out,
        "hawk_map_evictions_total",
        counter,
        "Idle entries deleted from the BPF maps by the drains.",
        &[
            ("map=\"cpu_counts\"", n(stats.drain.keys_evicted)),
            ("map=\"stacks\"", n(stats.drain.stacks_freed)),
        ],
    );
    metric(
        &mut out,
        "hawk_stacks_swept_total",
        counter,
        "Orphan stack ids (of samples dropped while the counts map was full) deleted by sweeps.",
        &[("", n(stats.drain.stacks_swept))],
    );
    metric(
        &mut out,
        "hawk_drains_total",
        counter,
        "Drains of the kernel aggregation.",
        &[("", n(stats.drains))],
    );
    metric(
        &mut out,
        "hawk_drain_errors_total",
        counter,
        "Drains that failed to read the maps.",
        &[("", n(stats.drain_errors))],
    );
    metric(
        &mut out,
        "hawk_symbolizer_cache_hits_total",
        counter,
        "Frame names answered from the symbolizer's cache.",
        &[("", n(sym.cache_hits))],
    );
    metric(
        &mut out,
        "hawk_symbolizer_symbolized_total",
        counter,
        "Distinct addresses given a name.",
        &[("", n(sym.symbolized))],
    );
    metric(
        &mut out,
        "hawk_symbolizer_modules",
        gauge,
        "ELF files the symbolizer holds open (modules of processes that live or have samples held).",
        &[("", caches.modules as f64)],
    );
    metric(
        &mut out,
        "hawk_symbolizer_modules_dropped_total",
        counter,
        "Modules dropped because no remaining process maps them.",
        &[("", n(sym.modules_dropped))],
    );
    metric(
        &mut out,
        "hawk_symbolizer_locations",
        gauge,
        "Normalized (pid, address) pairs held.",
        &[("", caches.locations as f64)],
    );
    metric(
        &mut out,
        "hawk_symbolizer_names",
        gauge,
        "Function names cached, by kind of address.",
        &[
            ("kind=\"user\"", caches.user_names as f64),
            ("kind=\"kernel\"", caches.kernel_names as f64),
        ],
    );
    metric(
        &mut out,
        "hawk_processes_known",
        gauge,
        "Processes in the process table (alive, or with samples held).",
        &[("", stats.processes_known as f64)],
    );
    metric(
        &mut out,
        "hawk_processes_forgotten_total",
        counter,
        "Processes forgotten after they exited and their samples left the store.",
        &[("", n(stats.processes_forgotten))],
    );
    metric(
        &mut out,
        "hawk_attached_binaries",
        gauge,
        "Binaries the trace-context uprobe is attached to.",
        &[("", stats.attached_binaries as f64)],
    );
    metric(
        &mut out,
        "hawk_traces_held",
        gauge,
        "Traces whose samples are held.",
        &[("", traces as f64)],
    );
    metric(
        &mut out,
        "hawk_traces_evicted_total",
        counter,
        "Traces evicted before they expired (count or memory bound).",
        &[("", n(store_stats.traces_evicted))],
    );
    metric(
        &mut out,
        "hawk_traces_written_total",
        counter,
        "Trace profiles written to --out.",
        &[
            ("result=\"ok\"", n(stats.traces_written)),
            ("result=\"error\"", n(stats.trace_write_errors)),
        ],
    );
    metric(
        &mut out,
        "hawk_store_bytes",
        gauge,
        "Estimated bytes held by the sample window and the traces.",
        &[("", bytes as f64)],
    );
    metric(
        &mut out,
        "hawk_store_max_bytes",
        gauge,
        "The memory bound of the store (--max-memory).",
        &[("", shared.config.store.max_bytes as f64)],
    );
    metric(
        &mut out,
        "hawk_store_records",
        gauge,
        "Sample records in the window.",
        &[("", records as f64)],
    );
    metric(
        &mut out,
        "hawk_store_samples_total",
        counter,
        "Samples that entered the window.",
        &[("", n(store_stats.samples_stored))],
    );
    metric(
        &mut out,
        "hawk_process_resident_memory_bytes",
        gauge,
        "Resident memory of the daemon.",
        &[("", rss_bytes() as f64)],
    );
    let get = |c: &AtomicU64| n(c.load(Ordering::Relaxed));
    metric(
        &mut out,
        "hawk_http_profile_requests_total",
        counter,
        "Profile requests, by outcome.",
        &[
            ("outcome=\"served\"", get(&http.profiles_served)),
            ("outcome=\"busy\"", get(&http.rejected_busy)),
            ("outcome=\"bad_request\"", get(&http.bad_requests)),
            ("outcome=\"unauthorized\"", get(&http.unauthorized)),
        ],
    );
    metric(
        &mut out,
        "hawk_mem_windows_active",
        gauge,
        "Memory profile windows tracing allocations now (probes attached).",
        &[("", get(&http.mem_windows_active))],
    );
    out
}

/// This process's resident set size, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_lines() {
        let mut out = String::new();
        metric(
            &mut out,
            "x_total",
            "counter",
            "Xs.",
            &[("a=\"b\"", 2.0), ("", 1.5)],
        );
        assert_eq!(
            out,
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total{a=\"b\"} 2\nx_total 1.5\n"
        );
        assert!(rss_bytes() > 0);
    }
}
