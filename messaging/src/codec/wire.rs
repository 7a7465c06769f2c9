//! The oslo.messaging message layout shared by both codecs: key names, the `Serialize` views
//! that write a message straight from its struct, the decoding of an inner message from a map,
//! the envelope version rule, and the forbidden `__type__`/`__value__` check.
//!
//! Decoding is lenient where oslo.messaging is: unknown keys (other than `_context_*`) are
//! ignored, a missing `args` is `{}`, a `null` `namespace`/`version`/`_unique_id` (notifications)
//! counts as absent. Wrong types are errors, never panics.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::error::CodecError;
use super::fields::{Fields, CONTEXT_PREFIX};
use super::limits;
use super::message::{CallInfo, Notification, RpcReply, RpcRequest};
use crate::trace::TRACEPARENT_KEY;
use crate::{Context, RemoteError};

/// Envelope key of the format version.
pub(crate) const VERSION_KEY: &str = "oslo.version";
/// Envelope key of the inner message.
pub(crate) const MESSAGE_KEY: &str = "oslo.message";
/// The envelope version tidings writes.
pub(crate) const ENVELOPE_VERSION: &str = "2.0";

/// Whether a receiver accepts envelope `version`: `2.<minor>` or `2.<minor>.<rev>`, digits only.
pub(crate) fn envelope_version_ok(version: &str) -> bool {
    let Some(rest) = version.strip_prefix("2.") else {
        return false;
    };
    let mut parts = 0;
    for part in rest.split('.') {
        parts += 1;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    parts <= 2
}

/// Whether an outer object is an envelope rather than a bare (v1 / un-enveloped) message.
/// oslo.messaging needs both keys; one of them alone is treated as a broken envelope here, which
/// gives a clearer error than "missing method".
pub(crate) fn is_envelope(outer: &Fields) -> bool {
    outer.contains(VERSION_KEY) || outer.contains(MESSAGE_KEY)
}

/// Checks the envelope version and takes the inner message value out of `outer`.
pub(crate) fn open_envelope(outer: &mut Fields) -> Result<Value, CodecError> {
    match outer.get(VERSION_KEY) {
        None => return Err(CodecError::MissingField(VERSION_KEY)),
        Some(Value::String(v)) if envelope_version_ok(v) => {}
        Some(Value::String(v)) => return Err(CodecError::UnsupportedEnvelopeVersion(v.clone())),
        Some(_) => {
            return Err(CodecError::WrongType {
                field: VERSION_KEY,
                expected: "a string",
            })
        }
    }
    outer
        .remove(MESSAGE_KEY)
        .ok_or(CodecError::MissingField(MESSAGE_KEY))
}

// ---------------------------------------------------------------------------------------------
// The forbidden typed value.

/// Whether `map` is exactly `{"__type__": .., "__value__": ..}`.
fn is_typed_value(map: &Map<String, Value>) -> bool {
    map.len() == 2 && map.contains_key("__type__") && map.contains_key("__value__")
}

/// Whether `value`, or anything nested in it, is a typed-value object. Iterative, so a deep value
/// cannot overflow the stack here.
fn contains_typed_value<'a>(roots: impl IntoIterator<Item = &'a Value>) -> bool {
    let mut stack: Vec<&Value> = roots.into_iter().collect();
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                if is_typed_value(map) {
                    return true;
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    false
}

/// Refuses an object (`args`, say) that is, or holds, a typed value.
fn check_object(map: &Map<String, Value>, field: &'static str) -> Result<(), CodecError> {
    if is_typed_value(map) || contains_typed_value(map.values()) {
        Err(CodecError::ForbiddenTypedValue { field })
    } else {
        Ok(())
    }
}

/// Refuses a value that is, or holds, a typed value.
fn check_value(value: &Value, field: &'static str) -> Result<(), CodecError> {
    if contains_typed_value([value]) {
        Err(CodecError::ForbiddenTypedValue { field })
    } else {
        Ok(())
    }
}

fn check_context(context: &Context) -> Result<(), CodecError> {
    if contains_typed_value(context.iter().map(|(_, v)| v)) {
        Err(CodecError::ForbiddenTypedValue { field: "context" })
    } else {
        Ok(())
    }
}

/// Refuses a request that would carry a typed value.
pub(crate) fn check_request(req: &RequestParts<'_>) -> Result<(), CodecError> {
    if let Arguments::Tree(args) = req.args {
        check_object(args, "args")?;
    }
    check_context(req.context)
}

/// Refuses a reply that would carry a typed value.
pub(crate) fn check_reply(reply: &RpcReply) -> Result<(), CodecError> {
    check_value(&reply.result, "result")?;
    if let Some(failure) = &reply.failure {
        if contains_typed_value(&failure.args) {
            return Err(CodecError::ForbiddenTypedValue { field: "failure" });
        }
        check_object(&failure.kwargs, "failure")?;
    }
    Ok(())
}

/// Refuses a notification that would carry a typed value.
pub(crate) fn check_notification(n: &NotificationParts<'_>) -> Result<(), CodecError> {
    if let Payload::Tree(payload) = n.payload {
        check_value(payload, "payload")?;
    }
    check_context(n.context)
}

// ---------------------------------------------------------------------------------------------
// Encoding: borrowed views with a `Serialize` impl, in oslo.messaging's key order.

/// Writes the context as `_context_<key>` entries, reusing one key buffer.
fn serialize_context<M: SerializeMap>(map: &mut M, context: &Context) -> Result<(), M::Error> {
    serialize_context_with(map, context, None)
}

/// Writes the context, with `traceparent` (when given) in place of the context's own: the
/// client sends its call's span as the parent without copying the caller's context.
fn serialize_context_with<M: SerializeMap>(
    map: &mut M,
    context: &Context,
    traceparent: Option<&str>,
) -> Result<(), M::Error> {
    let mut key = String::with_capacity(32);
    for (k, v) in context.iter() {
        if traceparent.is_some() && k == TRACEPARENT_KEY {
            continue;
        }
        key.clear();
        key.push_str(CONTEXT_PREFIX);
        key.push_str(k);
        map.serialize_entry(key.as_str(), v)?;
    }
    if let Some(traceparent) = traceparent {
        key.clear();
        key.push_str(CONTEXT_PREFIX);
        key.push_str(TRACEPARENT_KEY);
        map.serialize_entry(key.as_str(), traceparent)?;
    }
    Ok(())
}

/// A caller's part of a message (a request's arguments, a notification's payload), as the
/// encoder takes it.
#[derive(Debug)]
pub(crate) enum Embedded<'a, T> {
    /// A tree, checked for typed values when it is encoded.
    Tree(&'a T),
    /// What serde_json has already written, holding no typed value: the oslo JSON codec embeds
    /// it as it is (see [`json_arguments`] and [`json_payload`]).
    Json(&'a RawValue),
}

impl<T> Clone for Embedded<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Embedded<'_, T> {}

impl<T: Serialize> Serialize for Embedded<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Embedded::Tree(tree) => tree.serialize(serializer),
            Embedded::Json(raw) => raw.serialize(serializer),
        }
    }
}

/// JSON text read back into a tree: what MessagePack, which has no use for the text, encodes.
pub(crate) fn tree_of<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, CodecError> {
    serde_json::from_str(raw.get()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// A request's keyword arguments: an object.
pub(crate) type Arguments<'a> = Embedded<'a, Map<String, Value>>;

/// A notification's payload: any value.
pub(crate) type Payload<'a> = Embedded<'a, Value>;

/// `args` written as JSON, when that text can go into a request as it is: an object without
/// any `"__type__"` key (serde_json never escapes those characters, so a typed value cannot hide
/// from the search). `None` for anything else, which is then built as a tree and checked (or
/// refused) value by value. Writing once and searching the text costs a fraction of building
/// the tree.
pub(crate) fn json_arguments(args: &impl Serialize) -> Option<Box<RawValue>> {
    json_untyped(args).filter(|raw| raw.get().starts_with('{'))
}

/// A notification's `payload` written as JSON, when that text can go into the notification as
/// it is: any value without a `"__type__"` key (see [`json_arguments`]).
pub(crate) fn json_payload(payload: &impl Serialize) -> Option<Box<RawValue>> {
    json_untyped(payload)
}

/// `value` written by serde_json, unless the text may hold a typed value.
fn json_untyped(value: &impl Serialize) -> Option<Box<RawValue>> {
    let raw = serde_json::value::to_raw_value(value).ok()?;
    (!raw.get().contains("\"__type__\"")).then_some(raw)
}

/// A request to encode, borrowed field by field, so that a client can encode one from its
/// own target and the caller's context without copying either into an [`RpcRequest`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestParts<'a> {
    pub(crate) method: &'a str,
    pub(crate) args: Arguments<'a>,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) version: Option<&'a str>,
    pub(crate) call: Option<&'a CallInfo>,
    pub(crate) unique_id: &'a str,
    pub(crate) context: &'a Context,
    /// Sent as the context's `traceparent`, replacing the caller's.
    pub(crate) traceparent: Option<&'a str>,
}

impl<'a> From<&'a RpcRequest> for RequestParts<'a> {
    fn from(r: &'a RpcRequest) -> Self {
        Self {
            method: &r.method,
            args: Arguments::Tree(&r.args),
            namespace: r.namespace.as_deref(),
            version: r.version.as_deref(),
            call: r.call.as_ref(),
            unique_id: &r.unique_id,
            context: &r.context,
            traceparent: None,
        }
    }
}

/// The inner message of a request.
pub(crate) struct RequestView<'a>(pub(crate) RequestParts<'a>);

impl Serialize for RequestView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = &self.0;
        let len = 3
            + usize::from(r.namespace.is_some())
            + usize::from(r.version.is_some())
            + if r.call.is_some() { 3 } else { 0 }
            + r.context.len()
            + usize::from(r.traceparent.is_some() && r.context.get(TRACEPARENT_KEY).is_none());
        let mut map = serializer.serialize_map(Some(len))?;
        map.serialize_entry("method", r.method)?;
        map.serialize_entry("args", &r.args)?;
        if let Some(namespace) = &r.namespace {
            map.serialize_entry("namespace", namespace)?;
        }
        if let Some(version) = &r.version {
            map.serialize_entry("version", version)?;
        }
        if let Some(call) = r.call {
            map.serialize_entry("_msg_id", &call.msg_id)?;
            map.serialize_entry("_reply_q", &call.reply_q)?;
            map.serialize_entry("_timeout", &call.timeout)?;
        }
        map.serialize_entry("_unique_id", r.unique_id)?;
        serialize_context_with(&mut map, r.context, r.traceparent)?;
        map.end()
    }
}

/// How a reply's failure is written.
pub(crate) enum FailureOut<'a> {
    /// `null`.
    None,
    /// A JSON string holding the error object (the oslo JSON wire).
    Text(String),
    /// A nested map (MessagePack).
    Nested(&'a RemoteError),
}

impl Serialize for FailureOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FailureOut::None => serializer.serialize_unit(),
            FailureOut::Text(text) => serializer.serialize_str(text),
            FailureOut::Nested(error) => error.serialize(serializer),
        }
    }
}

/// The inner message of a reply.
pub(crate) struct ReplyView<'a> {
    pub(crate) reply: &'a RpcReply,
    pub(crate) failure: FailureOut<'a>,
}

impl Serialize for ReplyView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.reply;
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("result", &r.result)?;
        map.serialize_entry("failure", &self.failure)?;
        map.serialize_entry("ending", &r.ending)?;
        map.serialize_entry("_msg_id", &r.msg_id)?;
        map.serialize_entry("_unique_id", &r.unique_id)?;
        map.end()
    }
}

/// A notification to encode, borrowed field by field, so that a notifier can encode one from
/// its own fields and the caller's context and payload without copying them into a
/// [`Notification`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotificationParts<'a> {
    pub(crate) message_id: &'a str,
    pub(crate) publisher_id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) priority: &'a str,
    pub(crate) payload: Payload<'a>,
    pub(crate) timestamp: &'a str,
    pub(crate) unique_id: Option<&'a str>,
    pub(crate) context: &'a Context,
}

impl<'a> From<&'a Notification> for NotificationParts<'a> {
    fn from(n: &'a Notification) -> Self {
        Self {
            message_id: &n.message_id,
            publisher_id: &n.publisher_id,
            event_type: &n.event_type,
            priority: &n.priority,
            payload: Payload::Tree(&n.payload),
            timestamp: &n.timestamp,
            unique_id: n.unique_id.as_deref(),
            context: &n.context,
        }
    }
}

/// The inner message of a notification (or the whole body, in the v1 format).
pub(crate) struct NotificationView<'a>(pub(crate) NotificationParts<'a>);

impl Serialize for NotificationView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let n = &self.0;
        let len = 6 + usize::from(n.unique_id.is_some()) + n.context.len();
        let mut map = serializer.serialize_map(Some(len))?;
        map.serialize_entry("message_id", n.message_id)?;
        map.serialize_entry("publisher_id", n.publisher_id)?;
        map.serialize_entry("event_type", n.event_type)?;
        map.serialize_entry("priority", n.priority)?;
        map.serialize_entry("payload", &n.payload)?;
        map.serialize_entry("timestamp", n.timestamp)?;
        if let Some(unique_id) = n.unique_id {
            map.serialize_entry("_unique_id", unique_id)?;
        }
        serialize_context(&mut map, n.context)?;
        map.end()
    }
}

/// The `{"oslo.version": "2.0", "oslo.message": ..}` envelope around an inner message (a JSON
/// string for oslo JSON, a map for MessagePack).
pub(crate) struct EnvelopeView<M>(pub(crate) M);

impl<M: Serialize> Serialize for EnvelopeView<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry(VERSION_KEY, ENVELOPE_VERSION)?;
        map.serialize_entry(MESSAGE_KEY, &self.0)?;
        map.end()
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding from an inner message's fields.

/// Takes a required string.
fn take_string(map: &mut Fields, field: &'static str) -> Result<String, CodecError> {
    match map.remove(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(CodecError::WrongType {
            field,
            expected: "a string",
        }),
        None => Err(CodecError::MissingField(field)),
    }
}

/// Takes an optional string: absent or `null` is `None`.
fn take_opt_string(map: &mut Fields, field: &'static str) -> Result<Option<String>, CodecError> {
    match map.remove(field) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(CodecError::WrongType {
            field,
            expected: "a string or null",
        }),
    }
}

/// The context, from the message's `_context_*` keys; the other keys left are dropped.
fn take_context(fields: Fields) -> Context {
    Context::from(fields.into_context())
}

/// Decodes the inner message of a request. Keys other than the documented ones and
/// `_context_*` are ignored. Every field a peer controls is checked against [`limits`]; a
/// request refused after its `_msg_id` and `_reply_q` were read comes back with them, so that
/// the caller can be told why instead of waiting out its timeout.
pub(crate) fn request_from_fields(
    mut map: Fields,
) -> Result<RpcRequest, (CodecError, Option<CallInfo>)> {
    // `_msg_id` decides call or cast; a stray `_reply_q`/`_timeout` on a cast is ignored.
    let call = if map.contains("_msg_id") {
        let msg_id = take_string(&mut map, "_msg_id").map_err(|e| (e, None))?;
        let reply_q = take_string(&mut map, "_reply_q").map_err(|e| (e, None))?;
        limits::check_name("_msg_id", &msg_id, limits::MAX_ID_LEN).map_err(|e| (e, None))?;
        limits::check_name("_reply_q", &reply_q, limits::MAX_QUEUE_NAME_LEN)
            .map_err(|e| (e, None))?;
        Some(CallInfo {
            msg_id,
            reply_q,
            timeout: None,
        })
    } else {
        map.remove("_reply_q");
        map.remove("_timeout");
        None
    };
    match request_fields(map, call.clone()) {
        Ok(request) => Ok(request),
        Err(error) => Err((error, call)),
    }
}

/// The rest of a request, once its call (if any) is known.
fn request_fields(mut map: Fields, mut call: Option<CallInfo>) -> Result<RpcRequest, CodecError> {
    if let Some(call) = call.as_mut() {
        call.timeout = match map.remove("_timeout") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                let seconds = n.as_f64().unwrap_or(f64::NAN);
                if !(0.0..=limits::MAX_CALL_MONITOR_SECONDS).contains(&seconds) {
                    return Err(CodecError::InvalidField {
                        field: "_timeout",
                        reason: "must be a number of seconds from 0 to a year",
                    });
                }
                Some(n)
            }
            Some(_) => {
                return Err(CodecError::WrongType {
                    field: "_timeout",
                    expected: "a number or null",
                })
            }
        };
    }
    let method = take_string(&mut map, "method")?;
    limits::check_name("method", &method, limits::MAX_NAME_LEN)?;
    let args = match map.remove("args") {
        None => Map::new(),
        Some(Value::Object(args)) => args,
        Some(_) => {
            return Err(CodecError::WrongType {
                field: "args",
                expected: "an object",
            })
        }
    };
    let namespace = take_opt_string(&mut map, "namespace")?;
    if let Some(namespace) = &namespace {
        limits::check_name("namespace", namespace, limits::MAX_NAME_LEN)?;
    }
    let version = take_opt_string(&mut map, "version")?;
    if let Some(version) = &version {
        limits::check_name("version", version, limits::MAX_VERSION_LEN)?;
    }
    let unique_id = take_string(&mut map, "_unique_id")?;
    limits::check_name("_unique_id", &unique_id, limits::MAX_ID_LEN)?;
    let context = take_context(map);
    check_received_context(&context)?;
    Ok(RpcRequest {
        method,
        args,
        namespace,
        version,
        call,
        unique_id,
        context,
    })
}

/// A received context's keys: not too many, none too long.
fn check_received_context(context: &Context) -> Result<(), CodecError> {
    if context.len() > limits::MAX_CONTEXT_KEYS {
        return Err(CodecError::InvalidField {
            field: "context",
            reason: "has more keys than accepted",
        });
    }
    for (key, _) in context.iter() {
        limits::check_name("context", key, limits::MAX_CONTEXT_KEY_LEN)?;
    }
    Ok(())
}

/// Decodes a failure given as a JSON string (the oslo JSON wire) or a nested object
/// (MessagePack); `null` or absent is no failure.
fn failure_from_value(value: Option<Value>) -> Result<Option<RemoteError>, CodecError> {
    let object = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => {
            super::oslo_json::parse_text(text.as_bytes()).map_err(|e| match e {
                CodecError::NonFiniteNumber(_) => e,
                other => CodecError::InvalidFailure(other.to_string()),
            })?
        }
        Some(object @ Value::Object(_)) => object,
        Some(_) => {
            return Err(CodecError::WrongType {
                field: "failure",
                expected: "null, a JSON string or an object",
            })
        }
    };
    serde_json::from_value(object)
        .map(Some)
        .map_err(|e| CodecError::InvalidFailure(e.to_string()))
}

/// Decodes the inner message of a reply. A missing `result` is `null`, a missing `failure` is
/// none, a missing `ending` is `false` (as oslo.messaging reads them).
pub(crate) fn reply_from_fields(mut map: Fields) -> Result<RpcReply, CodecError> {
    let result = map.remove("result").unwrap_or(Value::Null);
    let failure = failure_from_value(map.remove("failure"))?;
    let ending = match map.remove("ending") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(CodecError::WrongType {
                field: "ending",
                expected: "a boolean",
            })
        }
    };
    Ok(RpcReply {
        result,
        failure,
        ending,
        msg_id: take_string(&mut map, "_msg_id")?,
        unique_id: take_string(&mut map, "_unique_id")?,
    })
}

/// Decodes a notification. A missing `payload` is `null`; a missing or `null` `publisher_id` (a
/// Python notifier built without one) is the empty string.
pub(crate) fn notification_from_fields(mut map: Fields) -> Result<Notification, CodecError> {
    let message_id = take_string(&mut map, "message_id")?;
    let publisher_id = take_opt_string(&mut map, "publisher_id")?.unwrap_or_default();
    let event_type = take_string(&mut map, "event_type")?;
    let priority = take_string(&mut map, "priority")?;
    let payload = map.remove("payload").unwrap_or(Value::Null);
    let timestamp = take_string(&mut map, "timestamp")?;
    let unique_id = take_opt_string(&mut map, "_unique_id")?;
    limits::check_name("message_id", &message_id, limits::MAX_ID_LEN)?;
    limits::check_name("publisher_id", &publisher_id, limits::MAX_NAME_LEN)?;
    limits::check_name("event_type", &event_type, limits::MAX_NAME_LEN)?;
    limits::check_name("priority", &priority, limits::MAX_NAME_LEN)?;
    limits::check_name("timestamp", &timestamp, limits::MAX_NAME_LEN)?;
    let context = take_context(map);
    check_received_context(&context)?;
    Ok(Notification {
        message_id,
        publisher_id,
        event_type,
        priority,
        payload,
        timestamp,
        unique_id,
        context,
    })
}
