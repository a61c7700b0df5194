//! `hawk-ebpf daemon`: always-on profiling of the whole node.
//!
//! - A collector thread owns the BPF side: the CPU sampler on every CPU at
//!   a low rate, and the shim auto-discovery (every running process at
//!   start, then each exec, with a periodic rescan as a safety net). About
//!   once a second it drains the kernel aggregation
//!   ([`CpuSampler::drain`]) into the [`store::Store`]: a rolling window
//!   bounded in time and memory, plus the samples of each trace id seen.
//!   User addresses are normalized while their processes live; names are
//!   looked up only when a profile is asked for. Once a minute, right after
//!   a drain, what is known of processes that exited and have no samples
//!   left (in the store or the kernel map) is forgotten: the process table,
//!   the symbolizer's mappings, modules and names, the sampler's and the
//!   shim scanner's per-pid sets. So a node with many short-lived processes
//!   does not grow the daemon.
//! - [`http`] serves the profiles, health and metrics (axum); memory
//!   profiles are traced per request, for the pids named ([`mem`]).
//! - With `--out`, every trace that has been quiet for `--trace-grace` is
//!   written as files (the seed's names), all or only those longer than
//!   `--min-trace-duration`.
//! - SIGTERM / SIGINT stop the server (in-flight profiles end early with
//!   what they have), drain one last time, write what `--out` still owes,
//!   and return.

pub mod http;
pub mod mem;
pub mod metrics;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::collector::CollectorError;
use crate::collector::cpu::{CpuConfig, CpuSampler, DrainStats, KernelStats};
use crate::collector::procs::{self, ProcessTable};
use crate::collector::shim::ShimAttacher;
use crate::correlate::build_profile;
use crate::output;
use crate::profile::{Metadata, Profile, ProfileKind, SpanId, TraceId, TraceIds};
use crate::render::Format;
use crate::symbolize::{CacheSizes, Symbolizer, SymbolizerStats};
use store::{Store, StoreConfig};

/// How often the kernel aggregation is drained into the store.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(1);
/// How often exec events are looked at.
const TICK: Duration = Duration::from_millis(200);
/// How often every process is rescanned for the shim (lost exec events).
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// How often what is known of processes that exited and left the store is
/// forgotten.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// Everything the daemon is configured with.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub listen: SocketAddr,
    pub frequency_hz: u64,
    pub store: StoreConfig,
    /// Bearer token required on every endpoint but `/healthz`.
    pub auth_token: Option<String>,
    /// Profile requests served at once; more get 429.
    pub max_concurrent: usize,
    /// How long a connection may take to send a request's headers.
    pub header_timeout: Duration,
    /// Longest `seconds` of a profile request.
    pub max_seconds: u64,
    /// Binaries to attach the trace-context uprobe to even before they run.
    pub attach: Vec<PathBuf>,
    /// Write every finished trace's profile here.
    pub out: Option<PathBuf>,
    pub out_formats: Vec<Format>,
    /// Only traces at least this long are written to `out`.
    pub min_trace_duration: Duration,
    /// How long a trace must be quiet to count as finished.
    pub trace_grace: Duration,
}

/// What the collector thread publishes for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct CollectorStats {
    pub kernel: KernelStats,
    pub drain: DrainStats,
    pub attached_binaries: usize,
    pub drains: u64,
    /// When the last drain completed.
    pub last_drain: Option<Instant>,
    pub drain_errors: u64,
    pub traces_written: u64,
    pub trace_write_errors: u64,
    pub symbolizer: SymbolizerStats,
    /// What the symbolizer's caches hold.
    pub symbolizer_caches: CacheSizes,
    /// Processes in the process table.
    pub processes_known: usize,
    /// Processes forgotten by the periodic cleanup.
    pub processes_forgotten: u64,
}

/// A job run on the collector thread, which owns the symbolizer (blazesym's
/// caches are not `Send`) and the process table.
type Job = Box<dyn FnOnce(&mut Symbolizer, &ProcessTable) + Send>;

enum Request {
    /// Drain now, then answer with the kernel counters.
    Flush(tokio::sync::oneshot::Sender<KernelStats>),
    /// Run a job with the symbolizer (building a profile).
    Run(Job),
}

/// State shared by the collector thread and the HTTP handlers.
pub struct Shared {
    pub config: DaemonConfig,
    pub store: Mutex<Store>,
    pub stats: Mutex<CollectorStats>,
    pub started: SystemTime,
    requests: Mutex<mpsc::Sender<Request>>,
}

/// Locks a mutex, recovering from a poisoned one (a panicking handler must
/// not take the daemon down).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Has the collector drain now, and returns the kernel counters as of
    /// the drain. Everything sampled before the call is in the store after.
    pub async fn flush(&self) -> Option<KernelStats> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.requests).send(Request::Flush(tx)).ok()?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .ok()?
            .ok()
    }

    /// Runs `job` on the collector thread and returns its result.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Symbolizer, &ProcessTable) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |symbolizer, procs| {
            let _ = tx.send(job(symbolizer, procs));
        });
        lock(&self.requests).send(Request::Run(job)).ok()?;
        rx.await.ok()
    }

    /// A CPU profile of the samples drained in `(after, until]`.
    pub async fn window_profile(
        &self,
        after: SystemTime,
        until: SystemTime,
        pids: &[u32],
        kernel_delta: KernelStats,
    ) -> Option<Profile> {
        let raw = lock(&self.store).window_samples(after, until, pids);
        let mut metadata = Metadata::new(ProfileKind::Cpu, after, until);
        metadata.frequency_hz = Some(self.config.frequency_hz);
        metadata.target_pids = pids.to_vec();
        metadata.stats.samples = raw.iter().map(|s| s.count).sum();
        metadata.stats.lost_stacks = kernel_delta.stack_errors;
        metadata.stats.dropped_samples = kernel_delta.counts_full;
        self.run(move |symbolizer, procs| {
            build_profile(&raw, symbolizer, procs, metadata, |_| true)
        })
        .await
    }

    /// The profile of trace `id` as held: `Ok(None)` when unknown, `Err`
    /// when the collector is gone.
    pub async fn trace_profile(&self, id: TraceId) -> Result<Option<Profile>, ()> {
        let Some(record) = lock(&self.store).trace(&id.0).cloned() else {
            return Ok(None);
        };
        let frequency_hz = self.config.frequency_hz;
        self.run(move |symbolizer, procs| {
            trace_record_profile(frequency_hz, id, &record, symbolizer, procs)
        })
        .await
        .map(Some)
        .ok_or(())
    }
}

/// The profile of one trace's record.
fn trace_record_profile(
    frequency_hz: u64,
    id: TraceId,
    record: &store::TraceRecord,
    symbolizer: &mut Symbolizer,
    procs: &ProcessTable,
) -> Profile {
    // A batch holds what was sampled during the drain interval before it.
    let start = record
        .first_seen
        .checked_sub(DRAIN_INTERVAL)
        .unwrap_or(record.first_seen);
    let mut metadata = Metadata::new(ProfileKind::Cpu, start, record.last_seen);
    metadata.frequency_hz = Some(frequency_hz);
    metadata.trace = Some(TraceIds {
        trace_id: id,
        span_id: SpanId(record.first_span),
    });
    metadata.stats.samples = record.total();
    build_profile(&record.samples, symbolizer, procs, metadata, |_| true)
}

/// The kernel counters that grew from `before` to `after`.
pub fn kernel_delta(before: KernelStats, after: KernelStats) -> KernelStats {
    KernelStats {
        samples: after.samples.saturating_sub(before.samples),
        stack_errors: after.stack_errors.saturating_sub(before.stack_errors),
        counts_full: after.counts_full.saturating_sub(before.counts_full),
        traced_samples: after.traced_samples.saturating_sub(before.traced_samples),
    }
}

/// The collector thread's state.
struct Collector {
    sampler: CpuSampler,
    shims: ShimAttacher,
    symbolizer: Symbolizer,
    procs: ProcessTable,
    shared: Arc<Shared>,
    last_drain: Instant,
    last_rescan: Instant,
    last_forget: Instant,
}

impl Collector {
    fn start(config: &DaemonConfig, shared: Arc<Shared>) -> Result<Self, CollectorError> {
        let mut sampler = CpuSampler::start(&CpuConfig {
            frequency_hz: config.frequency_hz,
            pids: Vec::new(),
            user_stacks: true,
            kernel_stacks: true,
            traced_only: false,
        })?;
        let mut shims = ShimAttacher::new(sampler.ebpf_mut())?;
        for path in &config.attach {
            shims.attach_path(sampler.ebpf_mut(), path)?;
        }
        shims.scan_all(sampler.ebpf_mut());
        Ok(Self {
            sampler,
            shims,
            symbolizer: Symbolizer::new(),
            procs: ProcessTable::default(),
            shared,
            last_drain: Instant::now(),
            last_rescan: Instant::now(),
            last_forget: Instant::now(),
        })
    }

    fn run(mut self, requests: mpsc::Receiver<Request>) {
        // What was sampled during the startup scan.
        self.drain();
        loop {
            match requests.recv_timeout(TICK) {
                Ok(Request::Flush(reply)) => {
                    self.drain();
                    let _ = reply.send(self.kernel_stats());
                }
                Ok(Request::Run(job)) => {
                    job(&mut self.symbolizer, &self.procs);
                    self.publish_symbolizer_stats();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.tick(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // The last drain, and what --out still owes.
        self.drain();
        self.write_finished(true);
    }

    fn tick(&mut self) {
        self.shims.poll_exec_events(self.sampler.ebpf_mut());
        if self.last_rescan.elapsed() >= RESCAN_INTERVAL {
            self.shims.scan_new_processes(self.sampler.ebpf_mut());
            self.last_rescan = Instant::now();
        }
        if self.last_drain.elapsed() >= DRAIN_INTERVAL {
            self.drain();
            self.write_finished(false);
            // Right after a drain: whatever a process left is in the store.
            if self.last_forget.elapsed() >= FORGET_INTERVAL {
                self.forget_gone_processes();
                self.last_forget = Instant::now();
            }
        } else if let Err(e) = self
            .sampler
            .poll(&mut self.procs, &mut self.symbolizer, |_| true)
        {
            // Between drains: normalize new stacks while short-lived
            // processes still live.
            tracing::debug!("polling the CPU samples: {e}");
        }
    }

    fn kernel_stats(&self) -> KernelStats {
        self.sampler.kernel_stats().unwrap_or_default()
    }

    fn drain(&mut self) {
        self.last_drain = Instant::now();
        let drained = self.sampler.drain(&mut self.procs, &mut self.symbolizer);
        let now = SystemTime::now();
        let kernel = self.kernel_stats();
        let mut stats = lock(&self.shared.stats);
        match drained {
            Ok(samples) => {
                lock(&self.shared.store).push(now, samples);
                stats.drains += 1;
                stats.last_drain = Some(Instant::now());
            }
            Err(e) => {
                // A map read failing once must not stop the daemon.
                stats.drain_errors += 1;
                tracing::warn!("draining the CPU samples: {e}");
                lock(&self.shared.store).expire(now);
            }
        }
        stats.kernel = kernel;
        stats.drain = self.sampler.drain_stats();
        stats.attached_binaries = self.shims.attached();
        drop(stats);
        self.publish_symbolizer_stats();
    }

    fn publish_symbolizer_stats(&self) {
        let mut stats = lock(&self.shared.stats);
        stats.symbolizer = self.symbolizer.stats();
        stats.symbolizer_caches = self.symbolizer.sizes();
        stats.processes_known = self.procs.len();
    }

    /// Forgets what is known of the processes that exited and whose samples
    /// are no longer held (in the store, or in the kernel map as of the last
    /// drain).
    fn forget_gone_processes(&mut self) {
        let mut held = lock(&self.shared.store).pids();
        held.extend(self.sampler.pending_pids());
        let live = procs::live_pids();
        let gone = |pid: u32| !held.contains(&pid) && !live.contains(&pid);
        let forgotten = self.procs.forget(gone);
        self.symbolizer.forget_processes(gone);
        self.sampler.forget_processes(gone);
        lock(&self.shared.stats).processes_forgotten += forgotten as u64;
        self.publish_symbolizer_stats();
    }

    /// Writes the traces that finished (quiet for the grace) to `--out`.
    fn write_finished(&mut self, all: bool) {
        let config = &self.shared.config;
        let Some(out) = config.out.clone() else {
            return;
        };
        let now = SystemTime::now();
        let quiet_since = if all {
            now
        } else {
            now.checked_sub(config.trace_grace).unwrap_or(now)
        };
        let finished = lock(&self.shared.store).take_finished(quiet_since);
        for (id, record) in finished {
            let lasted = record
                .last_seen
                .duration_since(record.first_seen)
                .unwrap_or_default()
                + DRAIN_INTERVAL;
            if lasted < config.min_trace_duration {
                continue;
            }
            let trace_id = TraceId(id);
            let profile = trace_record_profile(
                config.frequency_hz,
                trace_id,
                &record,
                &mut self.symbolizer,
                &self.procs,
            );
            let span = crate::telemetry::ProfileSpan::start(
                &profile,
                &config.out_formats,
                Some(trace_id),
                &opentelemetry::Context::new(),
            );
            let written = output::write_profile(&out, &profile, &config.out_formats);
            let mut stats = lock(&self.shared.stats);
            match written {
                Ok(paths) => {
                    stats.traces_written += 1;
                    for p in paths {
                        tracing::info!("wrote {}", p.display());
                    }
                }
                Err(e) => {
                    stats.trace_write_errors += 1;
                    span.error(e.to_string());
                    tracing::warn!("trace {trace_id}: {e:#}");
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: DaemonConfig) -> anyhow::Result<()> {
    http::check_listen(&config)?;
    if let Some(out) = &config.out {
        output::check_writable(out)?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local = listener.local_addr().context("local address")?;

    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        store: Mutex::new(Store::new(config.store)),
        stats: Mutex::new(CollectorStats::default()),
        started: SystemTime::now(),
        requests: Mutex::new(tx),
        config: config.clone(),
    });
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let thread_shared = shared.clone();
    let collector = std::thread::Builder::new()
        .name("hawk-collector".into())
        .spawn(
            move || match Collector::start(&thread_shared.config, thread_shared.clone()) {
                Ok(collector) => {
                    let _ = ready_tx.send(Ok(collector.shims.attached()));
                    collector.run(rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            },
        )
        .context("starting the collector thread")?;
    let attached = ready_rx.await.context("the collector thread died")??;

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = http::router(shared.clone(), stop_rx.clone());
    eprintln!(
        "hawk-ebpf: daemon listening on http://{local} ({} Hz, retention {:.0} s, {} shimmed binaries attached)",
        config.frequency_hz,
        config.store.retention.as_secs_f64(),
        attached
    );
    let server = tokio::spawn(http::serve(
        listener,
        app,
        config.header_timeout,
        stop_rx.clone(),
    ));
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("hawk-ebpf: stopping");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(15), server).await {
        Ok(Err(e)) => tracing::warn!("HTTP server task: {e}"),
        Ok(Ok(())) => {}
        Err(_) => tracing::warn!("HTTP requests still running after 15 s; stopping anyway"),
    }
    // Dropping the last sender ends the collector loop: it drains once more
    // and writes what it owes.
    *lock(&shared.requests) = mpsc::channel().0;
    tokio::task::spawn_blocking(move || collector.join())
        .await
        .context("joining the collector thread")?
        .map_err(|_| anyhow::anyhow!("the collector thread panicked"))?;
    Ok(())
}
