//! Cost of the shim with no profiler attached.
//!
//! `cargo bench -p hawk-common --features shim --bench shim`
//! (add `-- --quick` for a short run).
//!
//! - `marker/raw`: one call of `hawk_trace_context_set`.
//! - `guard/set_drop`: `set_current` + drop (two marker calls and the
//!   per-thread stack push/pop).
//! - `span_enter_exit/*`: entering and exiting an existing tracing span under
//!   a `Registry` + `tracing-opentelemetry` (SDK provider, no exporter),
//!   without and with `HawkLayer`. The difference is the layer's cost.
//! - `span_lifecycle/*`: creating, entering, exiting and closing a span, the
//!   same two ways.
//! - `alloc_free_64/*`: allocating and freeing 64 bytes through `System`
//!   and through `SampledAlloc<System>` at the default interval (the
//!   sampled allocator's cost when no profiler is attached).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use std::alloc::{GlobalAlloc, Layout, System};

use hawk_common::shim::{self, HawkLayer, SampledAlloc, hawk_trace_context_set};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt as _;

fn marker(c: &mut Criterion) {
    c.bench_function("marker/raw", |b| {
        b.iter(|| {
            hawk_trace_context_set(
                black_box(0x4bf92f3577b34da6),
                black_box(0xa3ce929d0e0e4736),
                black_box(0x00f067aa0ba902b7),
                black_box(1),
            )
        })
    });
}

fn guard(c: &mut Criterion) {
    let trace_id = [0x4b; 16];
    let span_id = [0xb7; 8];
    c.bench_function("guard/set_drop", |b| {
        b.iter(|| drop(shim::set_current(black_box(trace_id), black_box(span_id))))
    });
    c.bench_function("guard/nested_set_drop", |b| {
        let _outer = shim::set_current([1; 16], [2; 8]);
        b.iter(|| drop(shim::set_current(black_box(trace_id), black_box(span_id))))
    });
}

fn dispatch(provider: &SdkTracerProvider, hawk: bool) -> Dispatch {
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"));
    if hawk {
        Dispatch::new(Registry::default().with(otel).with(HawkLayer::new()))
    } else {
        Dispatch::new(Registry::default().with(otel))
    }
}

fn spans(c: &mut Criterion) {
    let provider = SdkTracerProvider::builder().build();
    for (name, hawk) in [("otel", false), ("otel+hawk", true)] {
        let dispatch = dispatch(&provider, hawk);
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request");
            c.bench_function(&format!("span_enter_exit/{name}"), |b| {
                b.iter(|| drop(black_box(span.enter())))
            });
            c.bench_function(&format!("span_lifecycle/{name}"), |b| {
                b.iter(|| tracing::info_span!("request").in_scope(|| black_box(())))
            });
        });
    }
}

fn alloc(c: &mut Criterion) {
    fn alloc_free(c: &mut Criterion, name: &str, allocator: &impl GlobalAlloc) {
        let layout = Layout::from_size_align(64, 8).unwrap();
        c.bench_function(name, |b| {
            b.iter(|| {
                // SAFETY: a non-zero layout; the block is freed once, with it.
                unsafe {
                    let p = allocator.alloc(black_box(layout));
                    allocator.dealloc(black_box(p), layout);
                }
            })
        });
    }
    alloc_free(c, "alloc_free_64/system", &System);
    alloc_free(c, "alloc_free_64/sampled", &SampledAlloc::new(System));
}

criterion_group!(benches, marker, guard, spans, alloc);
criterion_main!(benches);
