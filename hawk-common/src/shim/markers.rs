//! The exported marker functions Hawk attaches uprobes to.
//!
//! Each marker is an empty C-ABI function with an unmangled name. Calling it
//! does nothing but a `call`/`ret` (about a nanosecond); when Hawk is
//! attached, a uprobe on its first instruction reads the argument registers
//! (`rdi`, `rsi`, `rdx`, `rcx` on x86-64; `x0`–`x3` on aarch64).
//!
//! On x86-64 and aarch64 the markers are naked functions whose body is exactly
//! `nop; ret`:
//! - calls to them are opaque to the optimizer, so they are never inlined or
//!   elided, even with LTO, and the arguments really are in the argument
//!   registers at the call (the contract Hawk reads);
//! - the probed instruction is a one-byte `nop`, which the x86-64 kernel
//!   emulates instead of single-stepping out of line (a single-stepped probe
//!   costs ≈30x more: see DESIGN.md, "Measured on this kind of machine").
//!
//! (Naked functions are never inlined; Rust rejects `#[inline]` attributes
//! on them, which is why they carry none.) Elsewhere the markers are
//! `#[inline(never)]` functions that keep their arguments live with
//! [`core::hint::black_box`].
//!
//! # Keeping the symbols in the final binary
//!
//! Hawk finds a shimmed program by the symbol `hawk_trace_context_set` in the
//! `.symtab` or `.dynsym` of its executable or of a mapped library. The
//! markers are called from the shim, so the linker keeps them, and they are in
//! `.symtab` of a normal release build (cargo's default `strip = "debuginfo"`
//! keeps it). A binary stripped of its symbol table (`strip = true` /
//! `"symbols"`, `strip -s`) must export the marker dynamically instead, e.g.
//! with `-C link-arg=-Wl,--export-dynamic-symbol=hawk_trace_context_set`.
//!
//! Only one copy of the markers may be linked into a program: two versions of
//! `hawk-common` with feature `shim` in one binary fail to link (duplicate
//! symbols), which is what the contract needs anyway.

use crate::TraceContext;

/// Symbol of the trace-context marker.
pub const TRACE_CONTEXT_SET_SYMBOL: &str = crate::shim_symbols::TRACE_CONTEXT_SET;
/// Symbol of the sampled-allocation marker.
pub const ALLOC_SAMPLE_SYMBOL: &str = crate::shim_symbols::ALLOC_SAMPLE;
/// Symbol of the sampled-free marker.
pub const FREE_SAMPLE_SYMBOL: &str = crate::shim_symbols::FREE_SAMPLE;

/// `flags` bit 0 of [`hawk_trace_context_set`]: set the thread's context
/// (clear: clear it). The other bits are reserved and passed as zero.
pub const FLAG_SET: u64 = 1;

macro_rules! marker {
    (
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: u64),*);
    ) => {
        $(#[$doc])*
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub extern "C" fn $name($($arg: u64),*) {
            core::arch::naked_asm!("nop", "ret")
        }

        $(#[$doc])*
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        #[inline(never)]
        #[unsafe(no_mangle)]
        pub extern "C" fn $name($($arg: u64),*) {
            core::hint::black_box(($($arg,)*));
        }
    };
}

marker! {
    /// Publishes the calling thread's trace context to Hawk.
    ///
    /// The W3C ids map onto the arguments big-endian: for trace id
    /// `4bf92f3577b34da6a3ce929d0e0e4736`, `trace_id_hi = 0x4bf92f3577b34da6`
    /// and `trace_id_lo = 0xa3ce929d0e0e4736`; span id `00f067aa0ba902b7` is
    /// `span_id = 0x00f067aa0ba902b7`. `flags` bit 0 ([`FLAG_SET`]) set: the
    /// thread now serves that span; `flags = 0` (with all-zero ids): the
    /// thread serves no trace. The function itself does nothing.
    ///
    /// Applications normally call it through [`crate::shim::set_current`] or
    /// [`crate::shim::HawkLayer`], which keep a per-thread stack so that the
    /// previous context comes back when a scope ends.
    fn hawk_trace_context_set(trace_id_hi: u64, trace_id_lo: u64, span_id: u64, flags: u64);
}

marker! {
    /// Reports one sampled allocation (`ptr`, `size` bytes) standing for
    /// `weight` bytes of allocations, for the shim's sampled allocator
    /// ([`crate::shim::SampledAlloc`]). The function itself does nothing.
    fn hawk_alloc_sample(ptr: u64, size: u64, weight: u64);
}

marker! {
    /// Reports that a sampled allocation (one reported by
    /// [`hawk_alloc_sample`]) at `ptr` is being freed, for the shim's sampled
    /// allocator. The function itself does nothing.
    fn hawk_free_sample(ptr: u64);
}

/// The marker arguments for `ctx` (`None` or an all-zero trace id: clear).
#[inline]
pub(crate) const fn marker_args(ctx: Option<&TraceContext>) -> [u64; 4] {
    match ctx {
        Some(ctx) if !is_zero(&ctx.trace_id) => {
            let t = &ctx.trace_id;
            let hi = u64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
            let lo = u64::from_be_bytes([t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15]]);
            [hi, lo, u64::from_be_bytes(ctx.span_id), FLAG_SET]
        }
        _ => [0; 4],
    }
}

const fn is_zero(bytes: &[u8; 16]) -> bool {
    u128::from_ne_bytes(*bytes) == 0
}

/// Tells Hawk the calling thread now serves `ctx` (`None`: no trace).
#[inline]
pub(crate) fn publish(ctx: Option<&TraceContext>) {
    let [hi, lo, span, flags] = marker_args(ctx);
    #[cfg(test)]
    test_hook::record([hi, lo, span, flags]);
    hawk_trace_context_set(hi, lo, span, flags);
}

/// What the shim passed to the marker on this thread, for the unit tests.
#[cfg(test)]
pub(crate) mod test_hook {
    use std::cell::RefCell;
    use std::vec::Vec;

    std::thread_local! {
        static CALLS: RefCell<Vec<[u64; 4]>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn record(args: [u64; 4]) {
        // `try_with`: the stack's own destructor may publish at thread exit.
        let _ = CALLS.try_with(|c| c.borrow_mut().push(args));
    }

    /// The marker calls made on this thread since the last `take`.
    pub(crate) fn take() -> Vec<[u64; 4]> {
        CALLS.with(|c| core::mem::take(&mut *c.borrow_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_through_the_bpf_side_decoding() {
        let ctx =
            TraceContext::from_args(0x4bf92f3577b34da6, 0xa3ce929d0e0e4736, 0x00f067aa0ba902b7);
        let [hi, lo, span, flags] = marker_args(Some(&ctx));
        assert_eq!(
            (hi, lo, span, flags),
            (
                0x4bf92f3577b34da6,
                0xa3ce929d0e0e4736,
                0x00f067aa0ba902b7,
                FLAG_SET
            )
        );
        assert_eq!(TraceContext::from_args(hi, lo, span), ctx);
        assert_eq!(marker_args(None), [0; 4]);
        // An all-zero trace id means "no trace", whatever the span id.
        let empty = TraceContext {
            trace_id: [0; 16],
            span_id: [1; 8],
        };
        assert_eq!(marker_args(Some(&empty)), [0; 4]);
    }

    #[test]
    fn markers_are_callable() {
        hawk_trace_context_set(1, 2, 3, FLAG_SET);
        hawk_trace_context_set(0, 0, 0, 0);
        hawk_alloc_sample(0x1000, 64, 4096);
        hawk_free_sample(0x1000);
    }
}
