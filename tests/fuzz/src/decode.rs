//! Path (1): every decode function of both codecs called directly on a body, each under
//! `catch_unwind`; what decodes is encoded again and decoded once more (the encoders see
//! whatever the decoders let through). Errors are counted by kind.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tidings::codec::{Codec, CodecError, NotificationFormat};

use crate::panics::in_direct_decode;

/// The functions called on every body.
pub const FUNCTIONS: &[&str] = &[
    "OsloJson.decode_request",
    "OsloJson.decode_reply",
    "OsloJson.decode_notification",
    "MessagePack.decode_request",
    "MessagePack.decode_reply",
    "MessagePack.decode_notification",
];

/// What the direct decodes saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Decode calls made.
    pub calls: u64,
    /// Successful decodes, by function.
    pub decoded: BTreeMap<&'static str, u64>,
    /// Decode errors by kind (`WrongType(_timeout)`, `InvalidBody`, …), over all functions.
    pub errors: BTreeMap<String, u64>,
    /// Decoded messages the same codec then refused to encode, by error kind.
    pub encode_refusals: BTreeMap<String, u64>,
    /// Decoded messages that came back different after encoding and decoding again.
    pub round_trip_mismatches: u64,
    /// Content types, by the codec `from_content_type` chose (or its error kind).
    pub content_types: BTreeMap<String, u64>,
}

impl DecodeStats {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &DecodeStats) {
        self.calls += other.calls;
        self.round_trip_mismatches += other.round_trip_mismatches;
        for (k, v) in &other.decoded {
            *self.decoded.entry(k).or_default() += v;
        }
        for (map, from) in [
            (&mut self.errors, &other.errors),
            (&mut self.encode_refusals, &other.encode_refusals),
            (&mut self.content_types, &other.content_types),
        ] {
            for (k, v) in from {
                *map.entry(k.clone()).or_default() += v;
            }
        }
    }
}

/// A panic caught in a direct call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectPanic {
    /// The function that panicked (one of [`FUNCTIONS`], or an encoder after it).
    pub function: String,
    /// The panic message.
    pub message: String,
}

/// A short name for an error: its variant, with the field for field errors.
pub fn error_kind(error: &CodecError) -> String {
    match error {
        CodecError::MissingField(field) => format!("MissingField({field})"),
        CodecError::WrongType { field, .. } => format!("WrongType({field})"),
        other => {
            let debug = format!("{other:?}");
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-text panic payload)".to_owned())
}

/// Runs `f` under `catch_unwind`, marked as a direct decode.
fn guarded<R>(name: &str, panics: &mut Vec<DirectPanic>, f: impl FnOnce() -> R) -> Option<R> {
    match in_direct_decode(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(out) => Some(out),
        Err(payload) => {
            panics.push(DirectPanic {
                function: name.to_owned(),
                message: panic_text(payload.as_ref()),
            });
            None
        }
    }
}

/// Decodes, encodes and decodes again with one codec, for one message type.
fn exercise<T: PartialEq>(
    name: &'static str,
    body: &[u8],
    stats: &mut DecodeStats,
    panics: &mut Vec<DirectPanic>,
    decode: impl Fn(&[u8]) -> Result<T, CodecError>,
    encode: impl Fn(&T) -> Result<Vec<u8>, CodecError>,
) {
    stats.calls += 1;
    let Some(decoded) = guarded(name, panics, || decode(body)) else {
        return;
    };
    let message = match decoded {
        Ok(message) => message,
        Err(error) => {
            *stats.errors.entry(error_kind(&error)).or_default() += 1;
            return;
        }
    };
    *stats.decoded.entry(name).or_default() += 1;
    let encoder = format!("{name} then encode");
    let Some(encoded) = guarded(&encoder, panics, || encode(&message)) else {
        return;
    };
    let bytes = match encoded {
        Ok(bytes) => bytes,
        Err(error) => {
            *stats.encode_refusals.entry(error_kind(&error)).or_default() += 1;
            return;
        }
    };
    let again = format!("{name} then encode and decode");
    if let Some(back) = guarded(&again, panics, || decode(&bytes)) {
        if back.as_ref().ok() != Some(&message) {
            stats.round_trip_mismatches += 1;
        }
    }
}

/// Calls every decode function of both codecs on `body` (and `from_content_type` on
/// `content_type`), counting into `stats`; returns the panics caught.
pub fn decode_all(body: &[u8], content_type: &str, stats: &mut DecodeStats) -> Vec<DirectPanic> {
    let mut panics = Vec::new();
    if let Some(chosen) = guarded("Codec::from_content_type", &mut panics, || {
        Codec::from_content_type(content_type)
    }) {
        let key = match chosen {
            Ok(codec) => format!("{codec:?}"),
            Err(error) => error_kind(&error),
        };
        *stats.content_types.entry(key).or_default() += 1;
    }
    let names = FUNCTIONS.chunks(3);
    for (codec, names) in [Codec::OsloJson, Codec::MessagePack].into_iter().zip(names) {
        exercise(
            names[0],
            body,
            stats,
            &mut panics,
            |b| codec.decode_request(b),
            |m| codec.encode_request(m),
        );
        exercise(
            names[1],
            body,
            stats,
            &mut panics,
            |b| codec.decode_reply(b),
            |m| codec.encode_reply(m),
        );
        exercise(
            names[2],
            body,
            stats,
            &mut panics,
            |b| codec.decode_notification(b),
            |m| codec.encode_notification(m, NotificationFormat::V2),
        );
    }
    panics
}
