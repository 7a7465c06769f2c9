//! The message types the codecs carry: RPC requests, replies and notifications.
//!
//! These are plain data, independent of the wire format; [`Codec`](super::Codec) turns them into
//! bodies and back. Field docs give the oslo.messaging key each one travels under.

use serde_json::{Map, Number, Value};

use crate::{Context, RemoteError};

/// An RPC request (a call or a cast), as an RPC server receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// `method`: the endpoint method to invoke.
    pub method: String,
    /// `args`: keyword arguments (an object, possibly empty).
    pub args: Map<String, Value>,
    /// `namespace`: the target's namespace; the key is omitted when `None`.
    pub namespace: Option<String>,
    /// `version`: the raw `"X.Y"` the caller asked for; omitted when `None` (a server treats a
    /// missing version as `"1.0"`).
    pub version: Option<String>,
    /// `_msg_id`, `_reply_q`, `_timeout`: present for a call, all three absent for a cast.
    pub call: Option<CallInfo>,
    /// `_unique_id`: 32 hex chars, for duplicate detection.
    pub unique_id: String,
    /// `_context_<key>`: the request context, flattened into one key per context key.
    pub context: Context,
}

/// What makes a request a call: where to send the reply, and the call-monitor timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct CallInfo {
    /// `_msg_id`: 32 hex chars, echoed in the reply.
    pub msg_id: String,
    /// `_reply_q`: the caller's reply queue, e.g. `reply_<32 hex>`.
    pub reply_q: String,
    /// `_timeout`: `null`, or the call-monitor timeout in seconds, kept exactly as sent (an
    /// integer stays an integer).
    pub timeout: Option<Number>,
}

/// A reply to a call: a result, a failure, or (`ending: false`) a call-monitor heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcReply {
    /// `result`: the method's return value (`null` for failures and heartbeats).
    pub result: Value,
    /// `failure`: the remote error. On the JSON wire it is `null` or a JSON *string* holding the
    /// error object; in MessagePack it is a nested map.
    pub failure: Option<RemoteError>,
    /// `ending`: `true` for the final reply, `false` for a heartbeat.
    pub ending: bool,
    /// `_msg_id`: the request's `_msg_id`.
    pub msg_id: String,
    /// `_unique_id`: 32 hex chars, for duplicate detection.
    pub unique_id: String,
}

/// A notification, as a notifier publishes it and a listener receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// `message_id`: a uuid4 with dashes.
    pub message_id: String,
    /// `publisher_id`, e.g. `compute.host1`.
    pub publisher_id: String,
    /// `event_type`, e.g. `compute.instance.create.end`.
    pub event_type: String,
    /// `priority`, as on the wire (upper case: `INFO`, `WARN`, `SAMPLE`, ...).
    pub priority: String,
    /// `payload`: any JSON value.
    pub payload: Value,
    /// `timestamp`, as on the wire (`"YYYY-MM-DD HH:MM:SS.ffffff"`, naive UTC).
    pub timestamp: String,
    /// `_unique_id`; the key is omitted when `None`.
    pub unique_id: Option<String>,
    /// `_context_<key>`: the notification context, flattened.
    pub context: Context,
}
