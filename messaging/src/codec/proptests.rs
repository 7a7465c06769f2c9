//! Property tests: encode→decode is the identity for arbitrary messages in both codecs, and no
//! input (random bytes, or mutations of valid bodies) makes a decoder panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

use super::*;
use crate::{Context, RemoteError};

const CODECS: [Codec; 2] = [Codec::OsloJson, Codec::MessagePack];

/// A finite float that survives serde_json's text round trip. Without serde_json's
/// `float_roundtrip` feature, its parser may land one ULP off for some 17-digit floats; that is
/// serde_json's precision, not the codec's, so such floats are left out here.
fn arb_float() -> impl Strategy<Value = Number> {
    any::<f64>().prop_filter_map("finite, JSON round-trippable", |f| {
        let n = Number::from_f64(f)?;
        let back: f64 = serde_json::from_str(&n.to_string()).ok()?;
        (back == f).then_some(n)
    })
}

/// Object keys: arbitrary unicode, short ASCII, and the two kombu keys (so typed values do turn
/// up now and then).
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        4 => "[a-z_]{0,8}",
        1 => Just("__type__".to_owned()),
        1 => Just("__value__".to_owned()),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        arb_float().prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn arb_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((arb_key(), arb_json()), 0..6)
        .prop_map(|entries| entries.into_iter().collect())
}

/// A call-monitor timeout within what a receiver accepts (0 to a year).
fn arb_timeout() -> impl Strategy<Value = Option<Number>> {
    prop_oneof![
        Just(None),
        (0u32..=31_536_000).prop_map(|n| Some(Number::from(n))),
        (0.0f64..31_536_000.0).prop_map(Number::from_f64),
    ]
}

/// A name a peer may send: no control characters, within the receiver's length limits.
fn arb_name() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{0,24}"
}

/// A context a receiver accepts: keys without control characters.
fn arb_received_context() -> impl Strategy<Value = Context> {
    prop::collection::vec((arb_name(), arb_json()), 0..6)
        .prop_map(|entries| Context::from(entries.into_iter().collect::<Map<String, Value>>()))
}

prop_compose! {
    fn arb_call()(msg_id in arb_name(), reply_q in arb_name(), timeout in arb_timeout())
        -> CallInfo {
        CallInfo { msg_id, reply_q, timeout }
    }
}

prop_compose! {
    fn arb_request()(
        method in arb_name(),
        args in arb_object(),
        namespace in proptest::option::of(arb_name()),
        version in proptest::option::of("[0-9]{1,2}\\.[0-9]{1,2}"),
        call in proptest::option::of(arb_call()),
        unique_id in "[0-9a-f]{32}",
        context in arb_received_context(),
    ) -> RpcRequest {
        RpcRequest { method, args, namespace, version, call, unique_id, context }
    }
}

prop_compose! {
    fn arb_remote_error()(
        class in any::<String>(),
        module in any::<String>(),
        message in any::<String>(),
        tb in prop::collection::vec(any::<String>(), 0..4),
        args in prop::collection::vec(arb_json(), 0..3),
        kwargs in arb_object(),
    ) -> RemoteError {
        RemoteError { class, module, message, tb, args, kwargs }
    }
}

prop_compose! {
    fn arb_reply()(
        result in arb_json(),
        failure in proptest::option::of(arb_remote_error()),
        ending in any::<bool>(),
        msg_id in "[0-9a-f]{32}",
        unique_id in any::<String>(),
    ) -> RpcReply {
        RpcReply { result, failure, ending, msg_id, unique_id }
    }
}

prop_compose! {
    fn arb_notification()(
        message_id in arb_name(),
        publisher_id in arb_name(),
        event_type in arb_name(),
        priority in "(INFO|WARN|ERROR|SAMPLE|[A-Za-z]{0,6})",
        payload in arb_json(),
        timestamp in arb_name(),
        unique_id in proptest::option::of(any::<String>()),
        context in arb_received_context(),
    ) -> Notification {
        Notification {
            message_id, publisher_id, event_type, priority, payload, timestamp, unique_id, context,
        }
    }
}

/// Runs every decoder of both codecs on `body`; only a panic fails.
fn decode_all(body: &[u8]) {
    for codec in CODECS {
        let _ = codec.decode_request(body);
        let _ = codec.decode_reply(body);
        let _ = codec.decode_notification(body);
    }
}

/// Byte-level damage to a valid body.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn arb_mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ];
    prop::collection::vec(one, 1..6)
}

fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = body.len();
        match *m {
            Mutation::Flip(i, b) if len > 0 => body[i % len] ^= b | 1,
            Mutation::Insert(i, b) => body.insert(i % (len + 1), b),
            Mutation::Remove(i) if len > 0 => {
                body.remove(i % len);
            }
            Mutation::Truncate(i) => body.truncate(i % (len + 1)),
            _ => {}
        }
    }
    body
}

fn has_typed_value(value: &Value) -> bool {
    match value {
        Value::Object(m) => {
            (m.len() == 2 && m.contains_key("__type__") && m.contains_key("__value__"))
                || m.values().any(has_typed_value)
        }
        Value::Array(items) => items.iter().any(has_typed_value),
        _ => false,
    }
}

fn object_has_typed_value(map: &Map<String, Value>) -> bool {
    has_typed_value(&Value::Object(map.clone()))
}

fn context_has_typed_value(context: &Context) -> bool {
    context.iter().any(|(_, v)| has_typed_value(v))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn request_round_trip(req in arb_request()) {
        let forbidden = object_has_typed_value(&req.args) || context_has_typed_value(&req.context);
        for codec in CODECS {
            match codec.encode_request(&req) {
                Ok(body) => {
                    prop_assert!(!forbidden);
                    prop_assert_eq!(codec.decode_request(&body).unwrap(), req.clone());
                }
                Err(CodecError::ForbiddenTypedValue { .. }) => prop_assert!(forbidden),
                Err(other) => prop_assert!(false, "{:?}: {}", codec, other),
            }
        }
    }

    #[test]
    fn arguments_as_json_text_encode_as_the_object_does(req in arb_request()) {
        // The client's shortcut: what serde_json wrote, embedded as it is, where it is safe.
        let plain = Codec::OsloJson.encode_request(&req);
        match json_arguments(&req.args) {
            Some(raw) => {
                prop_assert!(!object_has_typed_value(&req.args));
                let parts = RequestParts { args: Arguments::Json(&raw), ..RequestParts::from(&req) };
                for codec in CODECS {
                    prop_assert_eq!(
                        codec.encode_request_parts(parts),
                        codec.encode_request(&req),
                        "{:?}", codec
                    );
                }
            }
            // Left to the object, which is checked value by value.
            None => prop_assert!(
                object_has_typed_value(&req.args)
                    || serde_json::to_string(&req.args).unwrap().contains("\"__type__\""),
                "{:?}", plain
            ),
        }
    }

    #[test]
    fn payloads_as_json_text_encode_as_the_value_does(n in arb_notification()) {
        // The notifier's shortcut, as for a request's arguments.
        match json_payload(&n.payload) {
            Some(raw) => {
                prop_assert!(!has_typed_value(&n.payload));
                let parts = NotificationParts { payload: Payload::Json(&raw), ..NotificationParts::from(&n) };
                for codec in CODECS {
                    for format in [NotificationFormat::V1, NotificationFormat::V2] {
                        prop_assert_eq!(
                            codec.encode_notification_parts(parts, format),
                            codec.encode_notification(&n, format),
                            "{:?} {:?}", codec, format
                        );
                    }
                }
            }
            None => prop_assert!(
                has_typed_value(&n.payload)
                    || serde_json::to_string(&n.payload).unwrap().contains("\"__type__\"")
            ),
        }
    }

    #[test]
    fn reply_round_trip(reply in arb_reply()) {
        let forbidden = has_typed_value(&reply.result)
            || reply.failure.as_ref().is_some_and(|f| {
                f.args.iter().any(has_typed_value) || object_has_typed_value(&f.kwargs)
            });
        for codec in CODECS {
            match codec.encode_reply(&reply) {
                Ok(body) => {
                    prop_assert!(!forbidden);
                    prop_assert_eq!(codec.decode_reply(&body).unwrap(), reply.clone());
                }
                Err(CodecError::ForbiddenTypedValue { .. }) => prop_assert!(forbidden),
                Err(other) => prop_assert!(false, "{:?}: {}", codec, other),
            }
        }
    }

    #[test]
    fn notification_round_trip(n in arb_notification()) {
        let forbidden = has_typed_value(&n.payload) || context_has_typed_value(&n.context);
        for codec in CODECS {
            for format in [NotificationFormat::V2, NotificationFormat::V1] {
                match codec.encode_notification(&n, format) {
                    Ok(body) => {
                        prop_assert!(!forbidden);
                        prop_assert_eq!(codec.decode_notification(&body).unwrap(), n.clone());
                    }
                    Err(CodecError::ForbiddenTypedValue { .. }) => prop_assert!(forbidden),
                    Err(other) => prop_assert!(false, "{:?} {:?}: {}", codec, format, other),
                }
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them(
        text in any::<String>(),
        fill in prop::sample::select(vec!['x', '"', '\\', '\n', '\u{1}', '\u{1f}', 'é', '\u{7f}']),
        run in 0usize..70,
    ) {
        // Runs long enough to span whole chunks, in every alignment.
        let text = format!("{text}{}{text}", fill.to_string().repeat(run));
        let mut ours = Vec::new();
        oslo_json::write_json_string(&mut ours, &text);
        prop_assert_eq!(ours, serde_json::to_vec(&text).unwrap());
    }

    #[test]
    fn the_envelope_is_written_as_serde_json_writes_it(value in arb_json()) {
        let inner = serde_json::to_string(&value).unwrap();
        let expected = serde_json::to_vec(&wire::EnvelopeView(inner.as_str())).unwrap();
        prop_assert_eq!(oslo_json::encode_enveloped(&value).unwrap(), expected);
    }

    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&body);
    }

    #[test]
    fn random_json_never_panics(value in arb_json()) {
        // Well-formed JSON (and MessagePack) of any shape, enveloped or not.
        let enveloped = serde_json::json!({"oslo.version": "2.0", "oslo.message": value.to_string()});
        for v in [&value, &enveloped] {
            decode_all(&serde_json::to_vec(v).unwrap());
            decode_all(&rmp_serde::to_vec_named(v).unwrap());
        }
    }

    #[test]
    fn mutated_bodies_never_panic(
        req in arb_request(),
        reply in arb_reply(),
        n in arb_notification(),
        mutations in arb_mutations(),
    ) {
        for codec in CODECS {
            let bodies = [
                codec.encode_request(&req),
                codec.encode_reply(&reply),
                codec.encode_notification(&n, NotificationFormat::V2),
                codec.encode_notification(&n, NotificationFormat::V1),
            ];
            for body in bodies.into_iter().flatten() {
                decode_all(&mutate(body, &mutations));
            }
        }
    }
}
