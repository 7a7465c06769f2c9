//! W3C trace context (`traceparent`) carried in the request context, so that one trace spans a
//! client and the servers it calls, across Rust and Python peers.
//!
//! oslo.messaging carries OpenTelemetry's context as the context keys `traceparent` and
//! `tracestate`; a Python peer without tracing passes them through untouched. This module owns
//! the `traceparent` value: parsing (a peer controls it, so anything malformed is ignored),
//! printing, and making a child for the next hop. It does not know about spans or exporters:
//! the RPC layer records the ids as span fields, where any `tracing` subscriber can read them.

use std::fmt;

/// The context key of the W3C trace parent.
pub const TRACEPARENT_KEY: &str = "traceparent";
/// The context key of the W3C trace state (passed through untouched).
pub const TRACESTATE_KEY: &str = "tracestate";

/// A parsed `traceparent`: which trace a request belongs to and which span sent it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

impl TraceParent {
    /// The start of a new trace (sampled), with a fresh span id.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            flags: 0x01,
        }
    }

    /// The next hop of the same trace: same trace id and flags, a fresh span id.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_u64(),
            ..*self
        }
    }

    /// Parses a `traceparent` value. Returns `None` for anything that is not a valid version-00
    /// value (or a later version's compatible prefix), as the W3C rules ask.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() < 55 || (bytes.len() > 55 && bytes[55] != b'-') {
            return None;
        }
        let version = u8::from_str_radix(text.get(0..2)?, 16).ok()?;
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id = lower_hex::<u128>(text.get(3..35)?)?;
        let span_id = lower_hex::<u64>(text.get(36..52)?)?;
        let flags = lower_hex::<u8>(text.get(53..55)?)?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex_text(&self.encode()[3..35]).to_owned()
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        hex_text(&self.encode()[36..52]).to_owned()
    }

    /// The `traceparent` text, `00-<trace id>-<span id>-<flags>`, written into a buffer of its
    /// own size: every message carries one, and formatting it piece by piece into a `String`
    /// grew the string three times.
    fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut text = [b'-'; TRACEPARENT_LEN];
        text[0] = b'0';
        text[1] = b'0';
        write_hex(&mut text[3..35], self.trace_id);
        write_hex(&mut text[36..52], u128::from(self.span_id));
        write_hex(&mut text[53..55], u128::from(self.flags));
        text
    }

    /// Whether the caller sampled this trace.
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 == 0x01
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex_text(&self.encode()))
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

/// The length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// Writes the low `4 * out.len()` bits of `value` into `out` as lower-case hex digits,
/// zero-padded.
fn write_hex(out: &mut [u8], value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut rest = value;
    for digit in out.iter_mut().rev() {
        // The mask keeps the index below 16.
        *digit = DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
    }
}

/// Text made only of what [`write_hex`] and [`TraceParent::encode`] write (ASCII).
fn hex_text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Parses fixed-width lower-case hex (the W3C format forbids upper case).
fn lower_hex<T: TryFrom<u128>>(text: &str) -> Option<T> {
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(text, 16)
        .ok()
        .and_then(|v| T::try_from(v).ok())
}

fn nonzero_u128() -> u128 {
    fastrand::u128(1..)
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_w3c_example() {
        let parent = TraceParent::parse(SAMPLE).unwrap();
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.span_id(), "00f067aa0ba902b7");
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), SAMPLE);
    }

    #[test]
    fn prints_every_digit_zero_padded() {
        for _ in 0..1000 {
            let parent = TraceParent {
                // Any number of leading zero digits, never all zeros (which do not parse).
                trace_id: (fastrand::u128(1..) >> fastrand::u32(0..128)).max(1),
                span_id: (fastrand::u64(1..) >> fastrand::u32(0..64)).max(1),
                flags: fastrand::u8(..),
            };
            let expected = format!(
                "00-{:032x}-{:016x}-{:02x}",
                parent.trace_id, parent.span_id, parent.flags
            );
            assert_eq!(parent.to_string(), expected);
            assert_eq!(parent.trace_id(), expected[3..35]);
            assert_eq!(parent.span_id(), expected[36..52]);
            assert_eq!(TraceParent::parse(&expected), Some(parent));
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let parent = TraceParent::parse(SAMPLE).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        assert!(TraceParent::parse(&child.to_string()).is_some());
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version may append fields after a dash.
        let later = format!("01{}-more", &SAMPLE[2..]);
        assert!(TraceParent::parse(&later).is_some());
    }
}
