//! The library API (`ProfileHandler`), used as an application would: profile
//! this very process while a future runs, render with the caller's trace.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hawk_tests::require_kernel;
use hawk_userspace::handler::{ProfileHandler, ProfileOptions};
use hawk_userspace::render::Format;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};

#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn library_hot_function(millis: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(millis);
    let mut x = 1u64;
    while Instant::now() < end {
        for _ in 0..10_000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_handler_profiles_this_process_and_carries_the_callers_trace() {
    require_kernel!();
    let options = ProfileOptions::from_pairs([("format", "json"), ("frequency", "499")]).unwrap();
    let mut handler = ProfileHandler::new(options);
    let value = handler
        .profile(async {
            tokio::task::spawn_blocking(|| library_hot_function(1500))
                .await
                .unwrap()
        })
        .await
        .unwrap();
    black_box(value);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let span = "00f067aa0ba902b7";
    let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex(trace).unwrap(),
        SpanId::from_hex(span).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let _attached = cx.attach();
    let rendered = handler.render_profile().unwrap();

    assert_eq!(rendered.metadata.trace_id.as_deref(), Some(trace));
    assert_eq!(rendered.metadata.span_id.as_deref(), Some(span));
    assert_eq!(rendered.metadata.format, Format::Json);
    assert!(
        rendered
            .file_name
            .ends_with(&format!("_trace-{trace}_span-{span}.json")),
        "{}",
        rendered.file_name
    );
    let json: serde_json::Value = serde_json::from_slice(&rendered.bytes).unwrap();
    assert_eq!(json["trace_context"]["trace_id"], trace);
    let hot = hawk_tests::weight_where(&json, |f| f.contains(&"library_hot_function"));
    let total = hawk_tests::weight_where(&json, |_| true);
    // ~1.5 s of one busy thread at 499 Hz; the rest of the process idles.
    assert!(hot > 300, "library_hot_function: {hot} of {total} samples");
    // The rest is this process's own runtime (and, under software
    // emulation, Hawk's polling, which is several times slower there).
    // (Seen at 35 % in a loaded 6.1 guest.)
    let min_percent = if hawk_tests::slowdown() > 1.0 { 25 } else { 80 };
    assert!(
        hot * 100 >= total * min_percent,
        "{hot} of {total}: {json:#}"
    );
    assert_eq!(rendered.metadata.pid, std::process::id());
}
