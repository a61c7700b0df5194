//! Hawk: a system-wide continuous profiler on eBPF.
//!
//! The pipeline, one module each:
//!
//! - [`collector`]: loads the BPF programs, attaches them, reads their maps
//!   (everything that touches the kernel lives here);
//! - [`symbolize`]: turns addresses into function names (blazesym), cached;
//! - [`correlate`]: raw samples → Profile (frames, process roots, trace ids);
//! - [`profile`]: the one [`Profile`](profile::Profile) model in the middle;
//! - [`render`]: Profile → SVG flamegraph, speedscope, Hawk JSON, folded;
//! - [`output`]: file names and atomic writes;
//! - [`handler`]: the library API (`ProfileHandler`), for programs that
//!   profile themselves;
//! - [`daemon`]: the node daemon (continuous sampling, rolling window,
//!   per-trace store, HTTP endpoints);
//! - [`telemetry`]: OpenTelemetry spans for rendered profiles, over OTLP;
//! - [`cli`] and [`commands`]: the `hawk-ebpf` command line and what each
//!   subcommand does.

pub mod cli;
pub mod collector;
pub mod commands;
pub mod correlate;
pub mod daemon;
pub mod handler;
pub mod output;
pub mod profile;
pub mod render;
pub mod symbolize;
pub mod telemetry;
pub mod util;
