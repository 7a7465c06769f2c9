//! The codec's error type: every way a body can fail to encode or decode.
//!
//! Decoding never panics: malformed input of any shape ends up as one of these variants, with
//! enough detail to log (but never a copy of the body, which may hold an `auth_token`).

/// Why a message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The AMQP `content_type` names no codec tidings speaks (oslo.messaging drops such messages
    /// too; `application/json; charset=utf-8` is refused, as Python refuses it).
    #[error(
        "unsupported content type {0:?} (expected \"application/json\" or \"application/msgpack\")"
    )]
    UnsupportedContentType(String),

    /// The body (or the inner message, or a reply's failure string) is not valid JSON or
    /// MessagePack; the detail says which and where.
    #[error("invalid message body: {0}")]
    InvalidBody(String),

    /// The body holds a bare `NaN`, `Infinity` or `-Infinity` (as Python's `json` writes them),
    /// or a MessagePack NaN/infinite float: a JSON value cannot carry them.
    #[error("message body holds a NaN or Infinity number, which JSON cannot carry ({0})")]
    NonFiniteNumber(String),

    /// The envelope's `oslo.version` is not `2.x`.
    #[error("unsupported oslo.messaging envelope version {0:?} (only 2.x is understood)")]
    UnsupportedEnvelopeVersion(String),

    /// A required key is absent.
    #[error("missing field {0:?}")]
    MissingField(&'static str),

    /// A key holds a value of the wrong JSON type.
    #[error("field {field:?} has the wrong type: expected {expected}")]
    WrongType {
        /// The offending key (`body` for the whole body, `oslo.message` for the inner message).
        field: &'static str,
        /// What was expected there.
        expected: &'static str,
    },

    /// A reply's `failure` is present but does not describe a remote error
    /// (`{class, module, message, tb, args, kwargs}`).
    #[error("reply failure is not a valid remote error: {0}")]
    InvalidFailure(String),

    /// The value to encode holds, somewhere, an object whose keys are exactly `__type__` and
    /// `__value__`: kombu would decode it as a typed value instead of a plain dict.
    #[error(
        "refusing to encode an object whose keys are exactly \"__type__\" and \"__value__\" \
         (found in {field}): kombu would decode it as a typed value"
    )]
    ForbiddenTypedValue {
        /// Where it was found: `args`, `result`, `payload`, `context` or `failure`.
        field: &'static str,
    },

    /// The body would decode into more values than its size allows (see
    /// [`limits::item_budget`](super::limits::item_budget)): refused before it costs memory.
    #[error("message body holds more than {budget} values, more than its size allows")]
    TooComplex {
        /// The number of values the body's size allowed.
        budget: usize,
    },

    /// A field a peer controls is longer than tidings accepts.
    #[error("field {field:?} is {len} bytes long; at most {max} are accepted")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The longest accepted.
        max: usize,
    },

    /// A field a peer controls holds a value tidings cannot use.
    #[error("field {field:?} {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The serializer failed (should not happen for well-formed messages).
    #[error("cannot encode message: {0}")]
    Encode(String),
}
