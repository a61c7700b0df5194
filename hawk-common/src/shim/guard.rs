//! The per-thread context stack and the guard API.
//!
//! Every thread has one stack of contexts, shared by [`ContextGuard`]s and
//! [`HawkLayer`](super::HawkLayer) spans. Its top is the context the thread
//! serves; whenever the top changes the shim calls the marker, so Hawk's view
//! of the thread always equals the top of the stack (or "no trace" when it is
//! empty). Scopes may end out of order: an entry that is not on top is just
//! removed, and the marker is called only if the top changed.

use core::cell::RefCell;
use core::marker::PhantomData;
use std::vec::Vec;

use opentelemetry::trace::{SpanContext, TraceContextExt as _};

use super::markers::publish;
use crate::TraceContext;

/// Who pushed a stack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A [`ContextGuard`], by its per-thread token.
    Guard(u64),
    /// A tracing span entered under [`HawkLayer`](super::HawkLayer), by its id.
    Span(u64),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    owner: Owner,
    ctx: TraceContext,
}

struct State {
    stack: Vec<Entry>,
    next_token: u64,
}

impl Drop for State {
    fn drop(&mut self) {
        // The thread exits while still serving a trace (a leaked guard or
        // span): tell Hawk, so a later thread reusing the tid starts clean.
        if !self.stack.is_empty() {
            publish(None);
        }
    }
}

std::thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State { stack: Vec::new(), next_token: 0 })
    };
}

fn top(stack: &[Entry]) -> Option<&TraceContext> {
    stack.last().map(|e| &e.ctx)
}

/// Pushes `ctx` for `owner` and publishes it if the thread's context changes.
/// `owner: None` allocates a guard token. Returns the owner used, or `None`
/// when the thread is being torn down.
pub(crate) fn push(owner: Option<Owner>, ctx: TraceContext) -> Option<Owner> {
    STATE
        .try_with(|state| {
            let mut state = state.borrow_mut();
            let owner = owner.unwrap_or_else(|| {
                state.next_token = state.next_token.wrapping_add(1);
                Owner::Guard(state.next_token)
            });
            let changed = top(&state.stack) != Some(&ctx);
            state.stack.push(Entry { owner, ctx });
            if changed {
                publish(Some(&ctx));
            }
            owner
        })
        .ok()
}

/// Removes the newest entry of `owner`, if any, and publishes the new top if
/// the thread's context changed.
pub(crate) fn remove(owner: Owner) {
    let _ = STATE.try_with(|state| {
        let mut state = state.borrow_mut();
        let stack = &mut state.stack;
        let Some(pos) = stack.iter().rposition(|e| e.owner == owner) else {
            return;
        };
        let removed = stack.remove(pos);
        if pos == stack.len() {
            // It was on top.
            let now = top(stack);
            if now != Some(&removed.ctx) {
                publish(now);
            }
        }
    });
}

/// The context the calling thread publishes now: the top of its stack, or
/// `None` when it serves no trace (empty stack, or a scope set to the
/// all-zero trace id).
pub fn current() -> Option<TraceContext> {
    STATE
        .try_with(|state| top(&state.borrow().stack).copied())
        .ok()
        .flatten()
        .filter(|ctx| !ctx.is_empty())
}

/// Makes the calling thread serve `trace_id` / `span_id` (W3C bytes, as in
/// the `traceparent` header) until the returned guard drops; the guard then
/// restores the thread's previous context (nested scopes), or clears it.
///
/// An all-zero `trace_id` makes the thread serve no trace for the scope.
/// Costs a few nanoseconds (one marker call) when no profiler is attached.
///
/// ```
/// use hawk_common::shim;
///
/// let trace_id = [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
///                 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
/// let span_id = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
/// {
///     let _guard = shim::set_current(trace_id, span_id);
///     assert_eq!(shim::current().unwrap().trace_id, trace_id);
///     // ... work done here is attributed to the span ...
/// }
/// assert_eq!(shim::current(), None);
/// ```
pub fn set_current(trace_id: [u8; 16], span_id: [u8; 8]) -> ContextGuard {
    let owner = push(None, TraceContext { trace_id, span_id });
    ContextGuard::new(owner)
}

/// Like [`set_current`] for an OpenTelemetry span context.
///
/// A span context that is not valid (no span) or not sampled leaves the
/// thread's context as it is (the scope inherits it); the guard then does
/// nothing.
pub fn set_span_context(span_context: &SpanContext) -> ContextGuard {
    if !span_context.is_valid() || !span_context.is_sampled() {
        return ContextGuard::new(None);
    }
    set_current(
        span_context.trace_id().to_bytes(),
        span_context.span_id().to_bytes(),
    )
}

/// Like [`set_span_context`] for the span of an OpenTelemetry context, e.g.
/// `set_context(&opentelemetry::Context::current())`.
pub fn set_context(cx: &opentelemetry::Context) -> ContextGuard {
    set_span_context(cx.span().span_context())
}

/// Makes the calling thread serve no trace and forgets its whole stack:
/// guards and spans still open on this thread then restore nothing when they
/// end. For a thread that returns to a pool, or after an error path that may
/// have leaked a guard.
pub fn clear() {
    let _ = STATE.try_with(|state| {
        state.borrow_mut().stack.clear();
    });
    publish(None);
}

/// Restores the thread's previous context when dropped.
///
/// Returned by [`set_current`], [`set_span_context`] and [`set_context`]. It
/// must drop on the thread that created it (it is `!Send`). Guards may drop
/// out of order: the thread's context is always that of the newest live one.
#[must_use = "the context is restored when the guard drops"]
#[derive(Debug)]
pub struct ContextGuard {
    owner: Option<Owner>,
    /// `!Send`, `!Sync`: the stack is per thread.
    _not_send: PhantomData<*const ()>,
}

impl ContextGuard {
    fn new(owner: Option<Owner>) -> Self {
        Self {
            owner,
            _not_send: PhantomData,
        }
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if let Some(owner) = self.owner {
            remove(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::markers::{FLAG_SET, test_hook};
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    const T1: [u8; 16] = [0x11; 16];
    const T2: [u8; 16] = [0x22; 16];
    const S1: [u8; 8] = [0xa1; 8];
    const S2: [u8; 8] = [0xa2; 8];
    const S3: [u8; 8] = [0xa3; 8];

    fn ctx(trace_id: [u8; 16], span_id: [u8; 8]) -> Option<TraceContext> {
        Some(TraceContext { trace_id, span_id })
    }

    fn set_args(trace_id: [u8; 16], span_id: [u8; 8]) -> [u64; 4] {
        let hi = u64::from_be_bytes(trace_id[..8].try_into().unwrap());
        let lo = u64::from_be_bytes(trace_id[8..].try_into().unwrap());
        [hi, lo, u64::from_be_bytes(span_id), FLAG_SET]
    }

    #[test]
    fn nested_guards_restore_the_previous_context() {
        test_hook::take();
        assert_eq!(current(), None);
        {
            let _outer = set_current(T1, S1);
            assert_eq!(current(), ctx(T1, S1));
            {
                let _inner = set_current(T1, S2);
                assert_eq!(current(), ctx(T1, S2));
                {
                    let _other = set_current(T2, S3);
                    assert_eq!(current(), ctx(T2, S3));
                }
                assert_eq!(current(), ctx(T1, S2));
            }
            assert_eq!(current(), ctx(T1, S1));
        }
        assert_eq!(current(), None);
        assert_eq!(
            test_hook::take(),
            [
                set_args(T1, S1),
                set_args(T1, S2),
                set_args(T2, S3),
                set_args(T1, S2),
                set_args(T1, S1),
                [0; 4],
            ]
        );
    }

    #[test]
    fn out_of_order_drops_keep_the_newest_live_context() {
        test_hook::take();
        let a = set_current(T1, S1);
        let b = set_current(T1, S2);
        // `a` ends first: `b` is still on top, nothing to publish.
        drop(a);
        assert_eq!(current(), ctx(T1, S2));
        drop(b);
        assert_eq!(current(), None);
        assert_eq!(
            test_hook::take(),
            [set_args(T1, S1), set_args(T1, S2), [0; 4]]
        );
    }

    #[test]
    fn same_context_twice_publishes_once() {
        test_hook::take();
        {
            let _a = set_current(T1, S1);
            let _b = set_current(T1, S1);
        }
        assert_eq!(test_hook::take(), [set_args(T1, S1), [0; 4]]);
    }

    #[test]
    fn zero_trace_id_clears_for_the_scope() {
        test_hook::take();
        let _a = set_current(T1, S1);
        {
            let _none = set_current([0; 16], [0; 8]);
            assert_eq!(current(), None);
        }
        assert_eq!(current(), ctx(T1, S1));
        assert_eq!(
            test_hook::take(),
            [set_args(T1, S1), [0; 4], set_args(T1, S1)]
        );
    }

    #[test]
    fn clear_forgets_the_stack() {
        let a = set_current(T1, S1);
        let b = set_current(T2, S2);
        test_hook::take();
        clear();
        assert_eq!(current(), None);
        drop(b);
        drop(a);
        assert_eq!(current(), None);
        assert_eq!(test_hook::take(), [[0; 4]]);
    }

    #[test]
    fn threads_have_their_own_stacks() {
        let _a = set_current(T1, S1);
        std::thread::spawn(|| {
            assert_eq!(current(), None);
            let _b = set_current(T2, S2);
            assert_eq!(current(), ctx(T2, S2));
        })
        .join()
        .unwrap();
        assert_eq!(current(), ctx(T1, S1));
    }

    #[test]
    fn span_context_conveniences() {
        let sampled = SpanContext::new(
            TraceId::from_bytes(T1),
            SpanId::from_bytes(S1),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let unsampled = SpanContext::new(
            TraceId::from_bytes(T2),
            SpanId::from_bytes(S2),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        {
            let _g = set_span_context(&sampled);
            assert_eq!(current(), ctx(T1, S1));
            {
                // Not sampled, or no span at all: inherit.
                let _u = set_span_context(&unsampled);
                assert_eq!(current(), ctx(T1, S1));
                let _n = set_context(&opentelemetry::Context::new());
                assert_eq!(current(), ctx(T1, S1));
            }
            let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(T2),
                SpanId::from_bytes(S3),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ));
            let _c = set_context(&cx);
            assert_eq!(current(), ctx(T2, S3));
        }
        assert_eq!(current(), None);
    }
}
