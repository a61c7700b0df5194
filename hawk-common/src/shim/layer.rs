//! [`HawkLayer`]: publishes the OpenTelemetry span of each entered tracing span.

use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt as _;
use tracing::dispatcher::WeakDispatch;
use tracing::span::Id;
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::guard::{Owner, push, remove};
use crate::TraceContext;

/// A [`tracing_subscriber::Layer`] that tells Hawk which OpenTelemetry span
/// each thread is serving, for applications instrumented with `tracing` and
/// [`tracing-opentelemetry`](tracing_opentelemetry).
///
/// When a span is entered, the layer publishes that span's OpenTelemetry
/// trace id and span id for the entering thread; when it is exited, the
/// thread's previous context comes back (the enclosing span's, or none). The
/// contexts live on a per-thread stack (shared with
/// [`set_current`](super::set_current) guards), and enter/exit happen on the
/// thread that polls a future, so a tokio task that moves between worker
/// threads is attributed right on each of them; a span entered on another
/// thread (e.g. inside `spawn_blocking`) is published there.
///
/// # Placement
///
/// Add it to the same subscriber as the
/// [`OpenTelemetryLayer`](tracing_opentelemetry::OpenTelemetryLayer), *after*
/// it (further from the `Registry`), so the OpenTelemetry span exists and is
/// entered first:
///
/// ```
/// use hawk_common::shim::HawkLayer;
/// use opentelemetry::trace::TracerProvider as _;
/// use tracing_subscriber::layer::SubscriberExt as _;
///
/// # let provider = opentelemetry::trace::noop::NoopTracerProvider::new();
/// let tracer = provider.tracer("my-service");
/// let subscriber = tracing_subscriber::registry()
///     .with(tracing_opentelemetry::layer().with_tracer(tracer))
///     .with(HawkLayer::new());
/// tracing::subscriber::set_global_default(subscriber).unwrap();
/// ```
///
/// The ids are read from the span's OpenTelemetry data through
/// [`tracing_opentelemetry::get_otel_context`], so they do not depend on the
/// OpenTelemetry layer's context activation setting.
///
/// # Spans without a trace
///
/// A span with no OpenTelemetry data (filtered out of the OpenTelemetry
/// layer), with an invalid span context, or not sampled (by default, see
/// [`with_unsampled`](Self::with_unsampled)) changes nothing: the thread
/// keeps serving the enclosing span.
///
/// # Cost
///
/// The first enter of a span looks up its OpenTelemetry context (≈175 ns,
/// and it starts the OpenTelemetry span, as the OpenTelemetry layer's own
/// enter does) and caches the ids in the span's extensions; every enter and
/// exit after that costs ≈40 ns more than without this layer, of which the
/// marker calls are ≈1.5 ns each with no profiler attached (measured with
/// `benches/shim.rs`). With Hawk attached, each marker call that changes the
/// thread's context traps into the kernel's uprobe (under a microsecond).
#[derive(Debug, Default)]
pub struct HawkLayer {
    /// The subscriber this layer is part of, to look up OpenTelemetry data.
    dispatch: OnceLock<WeakDispatch>,
    /// Publish spans that are not sampled too.
    unsampled: bool,
}

impl HawkLayer {
    /// A layer that publishes sampled spans.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to publish spans that are valid but not sampled (default:
    /// `false`: such spans inherit the enclosing context). Profiles of
    /// unsampled traces cannot be matched with a trace in a tracing backend,
    /// but Hawk still tags their samples when this is on.
    pub fn with_unsampled(mut self, unsampled: bool) -> Self {
        self.unsampled = unsampled;
        self
    }

    /// The context to publish for span `id`, if it has one.
    fn trace_context(&self, id: &Id) -> Option<TraceContext> {
        let cx = match self.dispatch.get().and_then(WeakDispatch::upgrade) {
            Some(dispatch) => tracing_opentelemetry::get_otel_context(id, &dispatch),
            // Not registered through a `Dispatch` (not expected): try the
            // thread's current one.
            None => tracing::dispatcher::get_default(|dispatch| {
                tracing_opentelemetry::get_otel_context(id, dispatch)
            }),
        }?;
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() || !(self.unsampled || sc.is_sampled()) {
            return None;
        }
        Some(TraceContext {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
        })
    }
}

/// What a span publishes, kept in the span's extensions after its first
/// enter: its OpenTelemetry ids are fixed once the OpenTelemetry span has
/// started (the first lookup starts it), and an async task's span is entered
/// at every poll.
#[derive(Clone, Copy)]
struct Published(Option<TraceContext>);

impl<S> Layer<S> for HawkLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        // The first subscriber wins; a layer is part of one subscriber.
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let cached = span.extensions().get::<Published>().copied();
        let published = match cached {
            Some(published) => published,
            None => {
                // Not holding the extensions: the lookup locks them.
                let published = Published(self.trace_context(id));
                // `replace`, not `insert`: another thread may have entered
                // the same span meanwhile.
                span.extensions_mut().replace(published);
                published
            }
        };
        if let Some(trace) = published.0 {
            push(Some(Owner::Span(id.into_u64())), trace);
        }
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        // Nothing to do for a span that published nothing: its id is not on
        // the stack.
        remove(Owner::Span(id.into_u64()));
    }
}

#[cfg(test)]
mod tests {
    use std::boxed::Box;
    use std::collections::HashMap;
    use std::string::ToString as _;

    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use tracing::subscriber::DefaultGuard;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::{Layer as _, Registry};

    use super::*;
    use crate::shim::current;

    /// A subscriber with the OpenTelemetry layer (SDK provider, no exporter)
    /// and the Hawk layer, as the thread's default.
    fn install(sampler: Sampler, unsampled: bool) -> (DefaultGuard, SdkTracerProvider) {
        let provider = SdkTracerProvider::builder().with_sampler(sampler).build();
        let subscriber = Registry::default()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(HawkLayer::new().with_unsampled(unsampled));
        (tracing::subscriber::set_default(subscriber), provider)
    }

    /// The W3C ids of a tracing span's OpenTelemetry span.
    fn ids(span: &tracing::Span) -> TraceContext {
        let cx = span.context();
        let otel = cx.span();
        let sc = otel.span_context();
        assert!(sc.is_valid());
        TraceContext {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
        }
    }

    #[test]
    fn nested_spans_publish_their_ids_and_restore_on_exit() {
        let (_default, _provider) = install(Sampler::AlwaysOn, false);
        let outer = tracing::info_span!("outer");
        let inner = tracing::info_span!(parent: &outer, "inner");
        let (outer_ids, inner_ids) = (ids(&outer), ids(&inner));
        assert_eq!(outer_ids.trace_id, inner_ids.trace_id);
        assert_ne!(outer_ids.span_id, inner_ids.span_id);

        assert_eq!(current(), None);
        outer.in_scope(|| {
            assert_eq!(current(), Some(outer_ids));
            inner.in_scope(|| {
                assert_eq!(current(), Some(inner_ids));
                // Re-entering the enclosing span nests too.
                outer.in_scope(|| assert_eq!(current(), Some(outer_ids)));
                assert_eq!(current(), Some(inner_ids));
            });
            assert_eq!(current(), Some(outer_ids));
        });
        assert_eq!(current(), None);
    }

    #[test]
    fn spans_created_inside_nest_under_the_entered_one() {
        let (_default, _provider) = install(Sampler::AlwaysOn, false);
        let outer = tracing::info_span!("request");
        let _o = outer.enter();
        let outer_ids = current().unwrap();
        assert_eq!(outer_ids, ids(&outer));
        {
            let child = tracing::info_span!("child");
            let _c = child.enter();
            let child_ids = current().unwrap();
            assert_eq!(child_ids.trace_id, outer_ids.trace_id);
            assert_ne!(child_ids.span_id, outer_ids.span_id);
            assert_eq!(child_ids, ids(&child));
        }
        assert_eq!(current(), Some(outer_ids));
    }

    #[test]
    fn remote_parent_from_traceparent() {
        let (_default, _provider) =
            install(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), false);
        let headers = HashMap::from([(
            "traceparent".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        )]);
        let parent = TraceContextPropagator::new().extract(&headers);
        let span = tracing::info_span!("handler");
        span.set_parent(parent).unwrap();
        span.in_scope(|| {
            let ctx = current().unwrap();
            assert_eq!(
                ctx.trace_id,
                TraceContext::from_args(0x4bf92f3577b34da6, 0xa3ce929d0e0e4736, 0).trace_id
            );
            assert_ne!(ctx.span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
            assert_eq!(ctx, ids(&span));
        });
        assert_eq!(current(), None);
    }

    #[test]
    fn child_span_entered_on_another_thread_is_published_there() {
        let (_default, _provider) = install(Sampler::AlwaysOn, false);
        let request = tracing::info_span!("request");
        let _r = request.enter();
        let request_ids = current().unwrap();
        let helper = tracing::info_span!("helper");
        let helper_ids = ids(&helper);
        std::thread::spawn(move || {
            // No default subscriber on this thread: the span carries its own.
            assert_eq!(current(), None);
            helper.in_scope(|| assert_eq!(current(), Some(helper_ids)));
            assert_eq!(current(), None);
        })
        .join()
        .unwrap();
        assert_eq!(helper_ids.trace_id, request_ids.trace_id);
        assert_eq!(current(), Some(request_ids));
    }

    #[test]
    fn unsampled_spans_inherit_unless_asked() {
        {
            let (_default, _provider) = install(Sampler::AlwaysOff, false);
            let span = tracing::info_span!("dropped");
            span.in_scope(|| assert_eq!(current(), None));
            // Inside a guard's scope, the unsampled span inherits it.
            let _g = crate::shim::set_current([7; 16], [8; 8]);
            span.in_scope(|| {
                assert_eq!(
                    current(),
                    Some(TraceContext {
                        trace_id: [7; 16],
                        span_id: [8; 8]
                    })
                )
            });
        }
        let (_default, _provider) = install(Sampler::AlwaysOff, true);
        let span = tracing::info_span!("dropped");
        let span_ids = ids(&span);
        span.in_scope(|| assert_eq!(current(), Some(span_ids)));
        assert_eq!(current(), None);
    }

    #[test]
    fn spans_without_otel_data_inherit() {
        let provider = SdkTracerProvider::builder().build();
        // The OpenTelemetry layer only sees spans named "traced".
        let otel = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                !m.is_span() || m.name() == "traced"
            }));
        let subscriber = Registry::default().with(otel).with(HawkLayer::new());
        let _default = tracing::subscriber::set_default(subscriber);
        let traced = tracing::info_span!("traced");
        let traced_ids = ids(&traced);
        traced.in_scope(|| {
            let plain = tracing::info_span!("plain");
            plain.in_scope(|| assert_eq!(current(), Some(traced_ids)));
            assert_eq!(current(), Some(traced_ids));
        });
        assert_eq!(current(), None);
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_published() {
        let subscriber = Registry::default().with(HawkLayer::new());
        let _default = tracing::subscriber::set_default(subscriber);
        tracing::info_span!("plain").in_scope(|| assert_eq!(current(), None));
    }

    #[test]
    fn guards_and_spans_share_the_stack() {
        let (_default, _provider) = install(Sampler::AlwaysOn, false);
        let span = tracing::info_span!("request");
        let span_ids = ids(&span);
        let _g = crate::shim::set_current([1; 16], [2; 8]);
        let guard_ctx = current();
        span.in_scope(|| {
            assert_eq!(current(), Some(span_ids));
            let _inner = crate::shim::set_current([3; 16], [4; 8]);
            assert_eq!(current().unwrap().trace_id, [3; 16]);
        });
        assert_eq!(current(), guard_ctx);
    }
}
