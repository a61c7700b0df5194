//! W3C trace and span ids: parsing, hex formatting, and the kernel's byte layout.

use std::fmt;
use std::str::FromStr;

use hawk_common::TraceContext;

/// A malformed trace or span id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("trace id must be 32 hex digits, got {0:?}")]
    MalformedTrace(String),
    #[error("trace id must not be all zeros")]
    ZeroTrace,
    #[error("span id must be 16 hex digits, got {0:?}")]
    MalformedSpan(String),
    #[error("span id must not be all zeros")]
    ZeroSpan,
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// A W3C trace id (16 bytes, printed as 32 lowercase hex digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// A W3C span id (8 bytes, printed as 16 lowercase hex digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

impl FromStr for TraceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bytes = parse_hex::<16>(s).ok_or_else(|| IdError::MalformedTrace(s.to_string()))?;
        if bytes == [0; 16] {
            return Err(IdError::ZeroTrace);
        }
        Ok(Self(bytes))
    }
}

impl FromStr for SpanId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bytes = parse_hex::<8>(s).ok_or_else(|| IdError::MalformedSpan(s.to_string()))?;
        if bytes == [0; 8] {
            return Err(IdError::ZeroSpan);
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// The trace and span a sample (or a whole profile) belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

impl TraceIds {
    /// The ids the kernel recorded, or `None` when the thread had no trace.
    pub fn from_kernel(ctx: &TraceContext) -> Option<Self> {
        (!ctx.is_empty()).then_some(Self {
            trace_id: TraceId(ctx.trace_id),
            span_id: SpanId(ctx.span_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_w3c_ids() {
        let t: TraceId = "4bf92f3577b34da6a3ce929d0e0e4736".parse().unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let s: SpanId = "00F067AA0BA902B7".parse().unwrap();
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        let ctx =
            TraceContext::from_args(0x4bf92f3577b34da6, 0xa3ce929d0e0e4736, 0x00f067aa0ba902b7);
        assert_eq!(
            TraceIds::from_kernel(&ctx),
            Some(TraceIds {
                trace_id: t,
                span_id: s
            })
        );
        assert_eq!(TraceIds::from_kernel(&TraceContext::default()), None);
    }

    #[test]
    fn rejects_malformed_ids() {
        assert!(matches!(
            "abc".parse::<TraceId>(),
            Err(IdError::MalformedTrace(_))
        ));
        assert!(matches!(
            "zz f92f3577b34da6a3ce929d0e0e4736".parse::<TraceId>(),
            Err(IdError::MalformedTrace(_))
        ));
        assert_eq!(
            "00000000000000000000000000000000".parse::<TraceId>(),
            Err(IdError::ZeroTrace)
        );
        assert!(matches!(
            "00f067aa0ba902b".parse::<SpanId>(),
            Err(IdError::MalformedSpan(_))
        ));
        assert_eq!("0000000000000000".parse::<SpanId>(), Err(IdError::ZeroSpan));
        // Multi-byte characters must not panic on slicing.
        assert!("é".repeat(16).parse::<TraceId>().is_err());
    }
}
