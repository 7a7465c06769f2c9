//! Golden vectors: every body in `tests/data/captured-scenario.jsonl` (what oslo.messaging
//! 18.3.1 published and RabbitMQ delivered, captured with the firehose tracer) decodes,
//! re-encodes with the same codec and format to a value-for-value equal envelope and inner
//! message, and survives a round trip through MessagePack.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use tidings::codec::{Codec, NotificationFormat};

const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/captured-scenario.jsonl"
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Request,
    Reply,
    Notification(NotificationFormat),
}

/// The message kind, told by the keys of the inner message (or of the bare body).
fn kind_of(outer: &Value) -> Kind {
    let (inner, enveloped) = match outer.get("oslo.message") {
        Some(Value::String(text)) => (serde_json::from_str::<Value>(text).unwrap(), true),
        Some(other) => panic!("oslo.message is not a string: {other}"),
        None => (outer.clone(), false),
    };
    let has = |key: &str| inner.get(key).is_some();
    if has("method") {
        assert!(enveloped, "bare RPC request in the capture");
        Kind::Request
    } else if has("event_type") {
        Kind::Notification(if enveloped {
            NotificationFormat::V2
        } else {
            NotificationFormat::V1
        })
    } else if has("ending") || has("failure") || has("result") {
        assert!(enveloped, "bare RPC reply in the capture");
        Kind::Reply
    } else {
        panic!("unknown message kind: {inner}")
    }
}

/// A body as one JSON value, with the envelope's `oslo.message` string replaced by the inner
/// message it holds (so that key order and spacing do not matter, values do).
fn normalised(body: &[u8]) -> Value {
    let mut outer: Value = serde_json::from_slice(body).unwrap();
    if let Some(message) = outer.get_mut("oslo.message") {
        let text = message.as_str().expect("oslo.message must be a string");
        *message = serde_json::from_str(text).unwrap();
    }
    outer
}

#[test]
fn every_captured_body_round_trips() {
    let text = std::fs::read_to_string(CAPTURE).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    let mut checked = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();

    for (n, line) in lines.iter().enumerate() {
        let record: Value = serde_json::from_str(line).unwrap();
        let body = record["body"].as_str().unwrap().as_bytes();
        let content_type = record["trace_headers"]["properties"]
            .get("content_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let codec = Codec::from_content_type(content_type).unwrap();
        assert_eq!(codec, Codec::OsloJson);
        let original = normalised(body);
        let kind = kind_of(&serde_json::from_slice(body).unwrap());
        *kinds.entry(format!("{kind:?}")).or_default() += 1;

        let (reencoded, msgpack_ok) = match kind {
            Kind::Request => {
                let req = codec.decode_request(body).unwrap();
                let mp = Codec::MessagePack.encode_request(&req).unwrap();
                let back = Codec::MessagePack.decode_request(&mp).unwrap();
                (codec.encode_request(&req).unwrap(), back == req)
            }
            Kind::Reply => {
                let reply = codec.decode_reply(body).unwrap();
                let mp = Codec::MessagePack.encode_reply(&reply).unwrap();
                let back = Codec::MessagePack.decode_reply(&mp).unwrap();
                (codec.encode_reply(&reply).unwrap(), back == reply)
            }
            Kind::Notification(format) => {
                let note = codec.decode_notification(body).unwrap();
                let mp = Codec::MessagePack
                    .encode_notification(&note, format)
                    .unwrap();
                let back = Codec::MessagePack.decode_notification(&mp).unwrap();
                (
                    codec.encode_notification(&note, format).unwrap(),
                    back == note,
                )
            }
        };
        assert_eq!(
            normalised(&reencoded),
            original,
            "line {}: {kind:?} re-encoded differs",
            n + 1
        );
        assert!(
            msgpack_ok,
            "line {}: {kind:?} MessagePack round trip differs",
            n + 1
        );
        checked += 1;
    }

    assert_eq!(checked, lines.len());
    // The scenario has every kind: calls and casts, replies (results, failures, heartbeats),
    // and notifications in both formats.
    for kind in ["Request", "Reply", "Notification(V2)", "Notification(V1)"] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} in {kinds:?}"
        );
    }
}

#[test]
fn capture_facts() {
    // Spot checks of what Python sends, beyond value equality.
    let text = std::fs::read_to_string(CAPTURE).unwrap();
    let mut failures = 0;
    let mut heartbeats = 0;
    let mut int_timeouts = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).unwrap();
        let body = record["body"].as_str().unwrap().as_bytes();
        let outer: Value = serde_json::from_slice(body).unwrap();
        match kind_of(&outer) {
            Kind::Reply => {
                let reply = Codec::OsloJson.decode_reply(body).unwrap();
                if let Some(failure) = &reply.failure {
                    failures += 1;
                    // The failure string we write is byte-identical to Python's.
                    let ours = normalised(&Codec::OsloJson.encode_reply(&reply).unwrap());
                    assert_eq!(
                        ours["oslo.message"]["failure"],
                        normalised(body)["oslo.message"]["failure"]
                    );
                    assert!(!failure.tb.is_empty());
                }
                if !reply.ending {
                    heartbeats += 1;
                    assert_eq!(reply.result, Value::Null);
                    assert!(reply.failure.is_none());
                }
            }
            Kind::Request => {
                let req = Codec::OsloJson.decode_request(body).unwrap();
                if let Some(t) = req.call.and_then(|c| c.timeout) {
                    assert!(t.is_u64(), "integer _timeout must stay an integer: {t}");
                    int_timeouts += 1;
                }
            }
            Kind::Notification(_) => {}
        }
    }
    assert!(failures > 0 && heartbeats > 0 && int_timeouts > 0);
}
