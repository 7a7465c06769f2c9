//! Message codecs: oslo JSON (the default, what Python peers speak) and MessagePack.
//!
//! [`Codec`] turns [`RpcRequest`], [`RpcReply`] and [`Notification`] into message bodies and
//! back, and maps AMQP content types to codecs. The layout of each message (which key holds
//! what, the `_context_<key>` flattening, the `{"oslo.version", "oslo.message"}` envelope) is
//! shared by both codecs; only the byte encoding differs:
//!
//! - **oslo JSON** (`application/json`): the inner message is a JSON *string* inside the
//!   envelope, and a reply's `failure` is a JSON string too.
//! - **MessagePack** (`application/msgpack`): the same fields, the inner message as a nested
//!   map and the failure as a nested map. Python peers do not speak it.
//!
//! Decoding accepts what oslo.messaging accepts: any `2.x` envelope, a bare (un-enveloped)
//! message, extra keys (ignored), a missing `args` (`{}`). Wrong types fail with
//! [`CodecError::WrongType`], never a panic. Encoding refuses any object whose keys are exactly
//! `__type__` and `__value__` ([`CodecError::ForbiddenTypedValue`]), which kombu would decode
//! as a typed value.

mod error;
mod fields;
pub mod limits;
mod message;
mod msgpack;
mod oslo_json;
mod wire;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use error::CodecError;
pub use message::{CallInfo, Notification, RpcReply, RpcRequest};
pub(crate) use wire::{
    json_arguments, json_payload, Arguments, NotificationParts, Payload, RequestParts,
};

/// The content type of oslo JSON bodies.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// The content type of MessagePack bodies.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// A body encoding, chosen by the AMQP `content_type` property.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Codec {
    /// oslo.messaging's JSON envelope (`application/json`): the only one Python speaks.
    #[default]
    OsloJson,
    /// MessagePack (`application/msgpack`), for Rust peers.
    MessagePack,
}

/// How a notification body is laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NotificationFormat {
    /// The `messagingv2` driver: the notification inside the 2.0 envelope.
    #[default]
    V2,
    /// The `messaging` driver: the notification as a bare dict.
    V1,
}

impl Codec {
    /// The AMQP `content_type` to publish with: `application/json` or `application/msgpack`.
    pub fn content_type(&self) -> &'static str {
        match self {
            Codec::OsloJson => JSON_CONTENT_TYPE,
            Codec::MessagePack => MSGPACK_CONTENT_TYPE,
        }
    }

    /// The codec for a received `content_type`: an exact match on the two types (anything
    /// else, `application/json; charset=utf-8` included, is
    /// [`CodecError::UnsupportedContentType`]); an empty content type is oslo JSON.
    pub fn from_content_type(ct: &str) -> Result<Codec, CodecError> {
        match ct {
            JSON_CONTENT_TYPE | "" => Ok(Codec::OsloJson),
            MSGPACK_CONTENT_TYPE => Ok(Codec::MessagePack),
            other => Err(CodecError::UnsupportedContentType(other.to_owned())),
        }
    }

    /// Encodes an RPC request (call or cast) in the 2.0 envelope.
    pub fn encode_request(&self, req: &RpcRequest) -> Result<Vec<u8>, CodecError> {
        self.encode_request_parts(wire::RequestParts::from(req))
    }

    /// Encodes a request given by borrowed parts (what the RPC client sends from).
    pub(crate) fn encode_request_parts(
        &self,
        req: wire::RequestParts<'_>,
    ) -> Result<Vec<u8>, CodecError> {
        wire::check_request(&req)?;
        match (self, req.args) {
            (Codec::OsloJson, _) => oslo_json::encode_enveloped(&wire::RequestView(req)),
            (Codec::MessagePack, wire::Arguments::Tree(_)) => {
                msgpack::encode_enveloped(&wire::RequestView(req))
            }
            (Codec::MessagePack, wire::Arguments::Json(raw)) => {
                let args = wire::tree_of(raw)?;
                let req = wire::RequestParts {
                    args: wire::Arguments::Tree(&args),
                    ..req
                };
                msgpack::encode_enveloped(&wire::RequestView(req))
            }
        }
    }

    /// Decodes an RPC request. Keys other than oslo.messaging's and `_context_*` are ignored.
    pub fn decode_request(&self, body: &[u8]) -> Result<RpcRequest, CodecError> {
        self.decode_request_salvaging(body)
            .map_err(|(error, _)| error)
    }

    /// Decodes an RPC request; when it is refused, also what could be read of its call
    /// (`_msg_id` and `_reply_q`, when those are usable) so that the caller can be told why.
    pub(crate) fn decode_request_salvaging(
        &self,
        body: &[u8],
    ) -> Result<RpcRequest, (CodecError, Option<CallInfo>)> {
        let fields = self.decode_message(body).map_err(|error| (error, None))?;
        wire::request_from_fields(fields)
    }

    /// Encodes an RPC reply in the 2.0 envelope.
    pub fn encode_reply(&self, reply: &RpcReply) -> Result<Vec<u8>, CodecError> {
        wire::check_reply(reply)?;
        match self {
            Codec::OsloJson => {
                let failure = match &reply.failure {
                    Some(error) => wire::FailureOut::Text(oslo_json::failure_text(error)?),
                    None => wire::FailureOut::None,
                };
                oslo_json::encode_enveloped(&wire::ReplyView { reply, failure })
            }
            Codec::MessagePack => {
                let failure = match &reply.failure {
                    Some(error) => wire::FailureOut::Nested(error),
                    None => wire::FailureOut::None,
                };
                msgpack::encode_enveloped(&wire::ReplyView { reply, failure })
            }
        }
    }

    /// Decodes an RPC reply. The failure may be a JSON string or a nested object in either
    /// codec.
    pub fn decode_reply(&self, body: &[u8]) -> Result<RpcReply, CodecError> {
        wire::reply_from_fields(self.decode_message(body)?)
    }

    /// Encodes a notification, enveloped ([`NotificationFormat::V2`]) or bare
    /// ([`NotificationFormat::V1`]).
    pub fn encode_notification(
        &self,
        n: &Notification,
        format: NotificationFormat,
    ) -> Result<Vec<u8>, CodecError> {
        self.encode_notification_parts(wire::NotificationParts::from(n), format)
    }

    /// Encodes a notification given by borrowed parts (what the notifier sends from).
    pub(crate) fn encode_notification_parts(
        &self,
        n: wire::NotificationParts<'_>,
        format: NotificationFormat,
    ) -> Result<Vec<u8>, CodecError> {
        wire::check_notification(&n)?;
        let tree;
        let n = match (self, n.payload) {
            (Codec::MessagePack, wire::Payload::Json(raw)) => {
                tree = wire::tree_of(raw)?;
                wire::NotificationParts {
                    payload: wire::Payload::Tree(&tree),
                    ..n
                }
            }
            _ => n,
        };
        let view = wire::NotificationView(n);
        match (self, format) {
            (Codec::OsloJson, NotificationFormat::V2) => oslo_json::encode_enveloped(&view),
            (Codec::OsloJson, NotificationFormat::V1) => oslo_json::encode_bare(&view),
            (Codec::MessagePack, NotificationFormat::V2) => msgpack::encode_enveloped(&view),
            (Codec::MessagePack, NotificationFormat::V1) => msgpack::encode_bare(&view),
        }
    }

    /// Decodes a notification, enveloped (v2) or bare (v1).
    pub fn decode_notification(&self, body: &[u8]) -> Result<Notification, CodecError> {
        wire::notification_from_fields(self.decode_message(body)?)
    }

    /// The inner message of a body, enveloped or bare.
    fn decode_message(&self, body: &[u8]) -> Result<fields::Fields, CodecError> {
        match self {
            Codec::OsloJson => oslo_json::decode_message(body),
            Codec::MessagePack => msgpack::decode_message(body),
        }
    }
}
