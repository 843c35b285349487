//! A request's place in a distributed trace, carried in [`crate::InferRequest`]
//! so that the host's spans join the gateway's trace.
//!
//! The fields of a W3C `traceparent` header (version 00) as bytes, not its
//! 55-character text: 25 bytes on the wire, parsed once at the gateway's
//! edge. This crate knows nothing of OpenTelemetry; the daemons convert.

use serde::{Deserialize, Serialize};

/// The W3C trace context of the span that sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceParent {
    /// The trace the request belongs to (never all zeros).
    pub trace_id: [u8; 16],
    /// The sender's span, the parent of the receiver's (never all zeros).
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Whether the sender recorded its span (the W3C sampled flag): the
    /// receiver's parent-based sampler follows it.
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Whether both ids are non-zero, as W3C requires of a valid parent.
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_25_bytes_on_the_wire() {
        let parent = TraceParent { trace_id: [0xab; 16], span_id: [0xcd; 8], flags: 1 };
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(Some(parent), config).unwrap();
        // One byte for the Option's tag, then 16 + 8 + 1.
        assert_eq!(bytes.len(), 1 + 25);
        let (back, _): (Option<TraceParent>, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, Some(parent));
        assert!(parent.is_sampled() && parent.is_valid());
        assert!(!TraceParent { flags: 0, ..parent }.is_sampled());
        assert!(!TraceParent { trace_id: [0; 16], ..parent }.is_valid());
    }
}
