//! The application side of Hawk's trace-context contract (feature `shim`).
//!
//! Link this into a program and Hawk knows, for every CPU sample of the
//! program's threads, which OpenTelemetry trace and span the thread was
//! serving. The contract (DESIGN.md, "The trace-context contract") is one
//! exported C-ABI function, [`hawk_trace_context_set`], that does nothing
//! itself: Hawk attaches a uprobe to it and records the arguments per thread.
//!
//! Two ways to call it, sharing one per-thread stack of contexts:
//!
//! - [`HawkLayer`], a `tracing_subscriber::Layer` for programs that use
//!   `tracing` with `tracing-opentelemetry`: entering a span publishes its
//!   OpenTelemetry ids for the thread, exiting restores the previous ones.
//! - [`set_current`] / [`set_span_context`] / [`set_context`], returning a
//!   [`ContextGuard`] that restores the previous context when dropped, for
//!   code that uses `opentelemetry` without `tracing`; [`clear`] resets the
//!   thread.
//!
//! With no profiler attached, publishing costs a few nanoseconds (one call to
//! an empty function); see `benches/shim.rs`.
//!
//! For memory profiling, [`SampledAlloc`] wraps the program's global
//! allocator and reports about one allocation per mean interval of bytes
//! through the [`hawk_alloc_sample`] and [`hawk_free_sample`] markers: Hawk
//! then traces those instead of every call into the C library's allocator.

mod alloc;
mod guard;
mod layer;
mod markers;

pub use alloc::{DEFAULT_MEAN_INTERVAL, SampledAlloc};
pub use guard::{ContextGuard, clear, current, set_context, set_current, set_span_context};
pub use layer::HawkLayer;
pub use markers::{
    ALLOC_SAMPLE_SYMBOL, FLAG_SET, FREE_SAMPLE_SYMBOL, TRACE_CONTEXT_SET_SYMBOL, hawk_alloc_sample,
    hawk_free_sample, hawk_trace_context_set,
};
