//! Example-based tests of both codecs: each message kind, golden oslo bodies, and every error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Map, Number, Value};

use super::*;
use crate::{Context, RemoteError};

const CODECS: [Codec; 2] = [Codec::OsloJson, Codec::MessagePack];

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn call_request() -> RpcRequest {
    RpcRequest {
        method: "echo".into(),
        args: obj(json!({"x": [1, "a"], "nested": {"k": null, "f": 1.5}})),
        namespace: Some("ns".into()),
        version: Some("1.2".into()),
        call: Some(CallInfo {
            msg_id: "433c55c40f074a0386cc7eec0b5be2df".into(),
            reply_q: "reply_27aa562be58e414fa2b982f85df46fdd".into(),
            timeout: Some(Number::from(2)),
        }),
        unique_id: "bbdbe96b0bdc44ccb88521e41343e40f".into(),
        context: Context::new()
            .with("user", "u1")
            .with("request_id", "req-1"),
    }
}

fn cast_request() -> RpcRequest {
    RpcRequest {
        namespace: None,
        version: None,
        call: None,
        ..call_request()
    }
}

fn failed_reply() -> RpcReply {
    RpcReply {
        result: Value::Null,
        failure: Some(
            RemoteError::new("ValueError", "builtins", "('bad value', 42)")
                .with_traceback(vec!["Traceback (most recent call last):\n".into()])
                .with_kwargs(obj(json!({"code": 409}))),
        ),
        ending: true,
        msg_id: "433c55c40f074a0386cc7eec0b5be2df".into(),
        unique_id: "e9320afa0866470cb85f5460eba550c2".into(),
    }
}

fn ok_reply() -> RpcReply {
    RpcReply {
        result: json!({"got": [1, "a"]}),
        failure: None,
        ..failed_reply()
    }
}

fn notification() -> Notification {
    Notification {
        message_id: "c021f5f4-b55b-4263-92e1-9727988dcac3".into(),
        publisher_id: "probe.host1".into(),
        event_type: "probe.event.v2".into(),
        priority: "INFO".into(),
        payload: json!({"a": 1, "list": [true, "é"]}),
        timestamp: "2026-11-22 19:28:40.220652".into(),
        unique_id: Some("7f4ff03271184ba987c16e097404fbb1".into()),
        context: Context::new()
            .with("auth_token", "secret")
            .with("is_admin", true),
    }
}

/// The inner message of an oslo JSON body, parsed.
fn inner_of(body: &[u8]) -> Value {
    let outer: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(outer["oslo.version"], "2.0");
    serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap()
}

/// Wraps an inner message (as JSON text) in an oslo JSON envelope.
fn envelope(version: &str, inner: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"oslo.version": version, "oslo.message": inner})).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Content types.

#[test]
fn content_types() {
    assert_eq!(Codec::default(), Codec::OsloJson);
    assert_eq!(NotificationFormat::default(), NotificationFormat::V2);
    for codec in CODECS {
        assert_eq!(Codec::from_content_type(codec.content_type()), Ok(codec));
    }
    assert_eq!(Codec::OsloJson.content_type(), "application/json");
    assert_eq!(Codec::MessagePack.content_type(), "application/msgpack");
    assert_eq!(Codec::from_content_type(""), Ok(Codec::OsloJson));
    for bad in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "text/plain",
        "application/x-msgpack",
    ] {
        assert_eq!(
            Codec::from_content_type(bad),
            Err(CodecError::UnsupportedContentType(bad.into()))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

#[test]
fn request_json_layout() {
    let body = Codec::OsloJson.encode_request(&call_request()).unwrap();
    assert_eq!(
        inner_of(&body),
        json!({
            "method": "echo",
            "args": {"x": [1, "a"], "nested": {"k": null, "f": 1.5}},
            "namespace": "ns",
            "version": "1.2",
            "_msg_id": "433c55c40f074a0386cc7eec0b5be2df",
            "_reply_q": "reply_27aa562be58e414fa2b982f85df46fdd",
            "_timeout": 2,
            "_unique_id": "bbdbe96b0bdc44ccb88521e41343e40f",
            "_context_user": "u1",
            "_context_request_id": "req-1",
        })
    );
    // The integer timeout stays an integer on the wire.
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains(r#"\"_timeout\":2,"#), "{text}");

    let cast = inner_of(&Codec::OsloJson.encode_request(&cast_request()).unwrap());
    let keys: Vec<&str> = cast
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for absent in ["namespace", "version", "_msg_id", "_reply_q", "_timeout"] {
        assert!(!keys.contains(&absent), "{keys:?}");
    }
}

#[test]
fn request_round_trips() {
    let mut null_timeout = call_request();
    if let Some(call) = &mut null_timeout.call {
        call.timeout = None;
    }
    let mut float_timeout = call_request();
    if let Some(call) = &mut float_timeout.call {
        call.timeout = Number::from_f64(2.5);
    }
    for codec in CODECS {
        for req in [
            call_request(),
            cast_request(),
            null_timeout.clone(),
            float_timeout.clone(),
        ] {
            let body = codec.encode_request(&req).unwrap();
            assert_eq!(codec.decode_request(&body).unwrap(), req, "{codec:?}");
        }
    }
}

#[test]
fn request_golden_python_body() {
    // Verbatim from the capture (publish of `echo` with a context).
    let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"echo\", \"args\": {\"x\": [1, \"a\"]}, \"version\": \"1.2\", \"_msg_id\": \"433c55c40f074a0386cc7eec0b5be2df\", \"_reply_q\": \"reply_27aa562be58e414fa2b982f85df46fdd\", \"_timeout\": null, \"_unique_id\": \"bbdbe96b0bdc44ccb88521e41343e40f\", \"_context_user\": \"u1\", \"_context_request_id\": \"req-1\"}"}"#;
    let req = Codec::OsloJson.decode_request(body).unwrap();
    assert_eq!(req.method, "echo");
    assert_eq!(req.args, obj(json!({"x": [1, "a"]})));
    assert_eq!(req.version.as_deref(), Some("1.2"));
    assert_eq!(req.namespace, None);
    let call = req.call.as_ref().unwrap();
    assert_eq!(call.msg_id, "433c55c40f074a0386cc7eec0b5be2df");
    assert_eq!(call.reply_q, "reply_27aa562be58e414fa2b982f85df46fdd");
    assert_eq!(call.timeout, None);
    assert_eq!(req.unique_id, "bbdbe96b0bdc44ccb88521e41343e40f");
    assert_eq!(req.context.get_str("user"), Some("u1"));
    assert_eq!(req.context.get_str("request_id"), Some("req-1"));
    assert_eq!(req.context.len(), 2);
}

#[test]
fn request_lenient_decoding() {
    // Missing args is {}, unknown keys are ignored, null namespace/version are absent, a 2.x
    // envelope is accepted, and a bare (un-enveloped) request is read as oslo.messaging reads it.
    let inner = r#"{"method": "m", "namespace": null, "version": null, "extra": [1], "_unique_id": "u", "_reply_q": "stray"}"#;
    for body in [
        envelope("2.0", inner),
        envelope("2.1", inner),
        envelope("2.10.3", inner),
        inner.as_bytes().to_vec(),
    ] {
        let req = Codec::OsloJson.decode_request(&body).unwrap();
        assert_eq!(req.method, "m");
        assert!(req.args.is_empty());
        assert_eq!((req.namespace, req.version, req.call), (None, None, None));
        assert!(req.context.is_empty());
    }
    // A call without _timeout (an older sender) has no timeout.
    let body = envelope(
        "2.0",
        r#"{"method": "m", "args": {}, "_msg_id": "a", "_reply_q": "r", "_unique_id": "u"}"#,
    );
    let call = Codec::OsloJson.decode_request(&body).unwrap().call.unwrap();
    assert_eq!(call.timeout, None);
}

#[test]
fn integers_beyond_64_bits_are_read_as_floats() {
    let body = envelope(
        "2.0",
        r#"{"method": "m", "args": {"big": 123456789012345678901234567890}, "_unique_id": "u"}"#,
    );
    let req = Codec::OsloJson.decode_request(&body).unwrap();
    assert_eq!(req.args["big"].as_f64(), Some(1.2345678901234568e29));
}

// ---------------------------------------------------------------------------------------------
// Replies.

#[test]
fn reply_json_failure_is_a_python_style_string() {
    let body = Codec::OsloJson.encode_reply(&failed_reply()).unwrap();
    let inner = inner_of(&body);
    let failure = inner["failure"]
        .as_str()
        .expect("failure must be a JSON string");
    assert_eq!(
        failure,
        r#"{"class": "ValueError", "module": "builtins", "message": "('bad value', 42)", "tb": ["Traceback (most recent call last):\n"], "args": ["('bad value', 42)"], "kwargs": {"code": 409}}"#
    );
    assert_eq!(inner["result"], Value::Null);
    assert_eq!(inner["ending"], true);

    let ok = inner_of(&Codec::OsloJson.encode_reply(&ok_reply()).unwrap());
    assert_eq!(
        ok,
        json!({"result": {"got": [1, "a"]}, "failure": null, "ending": true,
               "_msg_id": "433c55c40f074a0386cc7eec0b5be2df",
               "_unique_id": "e9320afa0866470cb85f5460eba550c2"})
    );
}

#[test]
fn reply_msgpack_failure_is_a_nested_map() {
    let body = Codec::MessagePack.encode_reply(&failed_reply()).unwrap();
    let outer: Value = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(outer["oslo.version"], "2.0");
    let inner = &outer["oslo.message"];
    assert!(
        inner.is_object(),
        "inner must be a map, not a string: {inner}"
    );
    assert_eq!(inner["failure"]["class"], "ValueError");
    assert_eq!(inner["failure"]["kwargs"], json!({"code": 409}));
}

#[test]
fn reply_round_trips() {
    let heartbeat = RpcReply {
        ending: false,
        ..ok_reply()
    };
    let heartbeat = RpcReply {
        result: Value::Null,
        ..heartbeat
    };
    for codec in CODECS {
        for reply in [ok_reply(), failed_reply(), heartbeat.clone()] {
            let body = codec.encode_reply(&reply).unwrap();
            assert_eq!(codec.decode_reply(&body).unwrap(), reply, "{codec:?}");
        }
    }
}

#[test]
fn reply_lenient_failure_forms() {
    // A failure given as an object (not a string) is accepted on the JSON wire too; missing
    // result/failure/ending are null/none/false, as oslo.messaging reads them.
    let body = envelope(
        "2.0",
        r#"{"failure": {"class": "E", "module": "m", "message": "x"}, "_msg_id": "a", "_unique_id": "u"}"#,
    );
    let reply = Codec::OsloJson.decode_reply(&body).unwrap();
    assert_eq!(reply.failure.unwrap().class, "E");
    assert_eq!(reply.result, Value::Null);
    assert!(!reply.ending);
}

#[test]
fn reply_bad_failures() {
    let cases = [
        (
            r#"{"failure": 3, "_msg_id": "a", "_unique_id": "u"}"#,
            "wrong",
        ),
        (
            r#"{"failure": "not json", "_msg_id": "a", "_unique_id": "u"}"#,
            "invalid",
        ),
        (
            r#"{"failure": "{\"class\": \"E\"}", "_msg_id": "a", "_unique_id": "u"}"#,
            "invalid",
        ),
        (
            r#"{"failure": "{\"class\": \"E\", \"module\": \"m\", \"message\": \"x\", \"args\": [NaN]}", "_msg_id": "a", "_unique_id": "u"}"#,
            "nan",
        ),
    ];
    for (inner, kind) in cases {
        let err = Codec::OsloJson
            .decode_reply(&envelope("2.0", inner))
            .unwrap_err();
        match kind {
            "wrong" => assert!(
                matches!(
                    err,
                    CodecError::WrongType {
                        field: "failure",
                        ..
                    }
                ),
                "{err}"
            ),
            "invalid" => assert!(matches!(err, CodecError::InvalidFailure(_)), "{err}"),
            _ => assert!(matches!(err, CodecError::NonFiniteNumber(_)), "{err}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications.

#[test]
fn notification_layouts() {
    let n = notification();
    let v2 = Codec::OsloJson
        .encode_notification(&n, NotificationFormat::V2)
        .unwrap();
    let expected = json!({
        "message_id": "c021f5f4-b55b-4263-92e1-9727988dcac3",
        "publisher_id": "probe.host1",
        "event_type": "probe.event.v2",
        "priority": "INFO",
        "payload": {"a": 1, "list": [true, "é"]},
        "timestamp": "2026-11-22 19:28:40.220652",
        "_unique_id": "7f4ff03271184ba987c16e097404fbb1",
        "_context_auth_token": "secret",
        "_context_is_admin": true,
    });
    assert_eq!(inner_of(&v2), expected);
    let v1 = Codec::OsloJson
        .encode_notification(&n, NotificationFormat::V1)
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&v1).unwrap(), expected);

    let without_id = Notification {
        unique_id: None,
        ..notification()
    };
    let v1 = Codec::OsloJson
        .encode_notification(&without_id, NotificationFormat::V1)
        .unwrap();
    let v1: Value = serde_json::from_slice(&v1).unwrap();
    assert!(v1.get("_unique_id").is_none());
}

#[test]
fn notification_round_trips_both_formats() {
    let without_id = Notification {
        unique_id: None,
        context: Context::new(),
        payload: json!([1, 2]),
        ..notification()
    };
    for codec in CODECS {
        for format in [NotificationFormat::V2, NotificationFormat::V1] {
            for n in [notification(), without_id.clone()] {
                let body = codec.encode_notification(&n, format).unwrap();
                assert_eq!(
                    codec.decode_notification(&body).unwrap(),
                    n,
                    "{codec:?} {format:?}"
                );
            }
        }
    }
}

#[test]
fn notification_ceilometer_sample() {
    // Shape of what Ceilometer 27.0.0 publishes: a list payload, no context.
    let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"message_id\": \"1c12ca16-a881-498a-9b1a-3df1e65b1cec\", \"publisher_id\": \"telemetry.publisher.vm\", \"event_type\": \"metering\", \"priority\": \"SAMPLE\", \"payload\": [{\"counter_name\": \"cpu_util\", \"counter_volume\": 42, \"user_name\": null}], \"timestamp\": \"2026-11-22 19:53:05.463496\", \"_unique_id\": \"7f4ff03271184ba987c16e097404fbb1\"}"}"#;
    let n = Codec::OsloJson.decode_notification(body).unwrap();
    assert_eq!(n.priority, "SAMPLE");
    assert_eq!(n.payload[0]["counter_volume"], 42);
    assert!(n.context.is_empty());
}

#[test]
fn notification_null_publisher_is_empty() {
    let body = br#"{"message_id": "m", "publisher_id": null, "event_type": "e", "priority": "INFO", "payload": {}, "timestamp": "t"}"#;
    let n = Codec::OsloJson.decode_notification(body).unwrap();
    assert_eq!(n.publisher_id, "");
    assert_eq!(n.unique_id, None);
}

// ---------------------------------------------------------------------------------------------
// Errors.

#[test]
fn not_json() {
    for body in [
        &b""[..],
        b"nope",
        b"{\"oslo.version\": ",
        b"\xff\xfe",
        b"{} trailing",
    ] {
        for result in [
            Codec::OsloJson.decode_request(body).map(|_| ()),
            Codec::OsloJson.decode_reply(body).map(|_| ()),
            Codec::OsloJson.decode_notification(body).map(|_| ()),
        ] {
            assert!(
                matches!(result, Err(CodecError::InvalidBody(_))),
                "{result:?}"
            );
        }
    }
    // JSON but not an object.
    let err = Codec::OsloJson.decode_request(b"[1, 2]").unwrap_err();
    assert_eq!(
        err,
        CodecError::WrongType {
            field: "body",
            expected: "a JSON object"
        }
    );
}

#[test]
fn wrong_envelope_versions() {
    let inner = r#"{"method": "m", "args": {}, "_unique_id": "u"}"#;
    for version in ["1.0", "3.0", "2", "2.", "2.x", "20.0", ""] {
        let err = Codec::OsloJson
            .decode_request(&envelope(version, inner))
            .unwrap_err();
        assert_eq!(err, CodecError::UnsupportedEnvelopeVersion(version.into()));
        assert!(err.to_string().contains("2.x"));
    }
    let body = serde_json::to_vec(&json!({"oslo.version": 2.0, "oslo.message": inner})).unwrap();
    assert!(matches!(
        Codec::OsloJson.decode_request(&body),
        Err(CodecError::WrongType {
            field: "oslo.version",
            ..
        })
    ));
    let body = serde_json::to_vec(&json!({"oslo.message": inner})).unwrap();
    assert_eq!(
        Codec::OsloJson.decode_request(&body),
        Err(CodecError::MissingField("oslo.version"))
    );
    let body = serde_json::to_vec(&json!({"oslo.version": "2.0"})).unwrap();
    assert_eq!(
        Codec::OsloJson.decode_request(&body),
        Err(CodecError::MissingField("oslo.message"))
    );
}

#[test]
fn inner_not_an_object() {
    for inner in ["[1]", "\"s\"", "42", "null"] {
        let err = Codec::OsloJson
            .decode_request(&envelope("2.0", inner))
            .unwrap_err();
        assert_eq!(
            err,
            CodecError::WrongType {
                field: "oslo.message",
                expected: "a JSON object"
            }
        );
    }
    // Inner not JSON at all.
    let err = Codec::OsloJson
        .decode_reply(&envelope("2.0", "{oops"))
        .unwrap_err();
    assert!(matches!(err, CodecError::InvalidBody(_)), "{err}");
    // Inner given as an object rather than a string.
    let body = br#"{"oslo.version": "2.0", "oslo.message": {"method": "m"}}"#;
    assert!(matches!(
        Codec::OsloJson.decode_request(body),
        Err(CodecError::WrongType {
            field: "oslo.message",
            ..
        })
    ));
}

#[test]
fn wrong_types() {
    let request_cases = [
        (r#"{"method": 1, "args": {}, "_unique_id": "u"}"#, "method"),
        (r#"{"method": "m", "args": [1], "_unique_id": "u"}"#, "args"),
        (
            r#"{"method": "m", "args": null, "_unique_id": "u"}"#,
            "args",
        ),
        (
            r#"{"method": "m", "namespace": 3, "_unique_id": "u"}"#,
            "namespace",
        ),
        (
            r#"{"method": "m", "version": 1.2, "_unique_id": "u"}"#,
            "version",
        ),
        (
            r#"{"method": "m", "_msg_id": 5, "_reply_q": "r", "_unique_id": "u"}"#,
            "_msg_id",
        ),
        (
            r#"{"method": "m", "_msg_id": "a", "_reply_q": "r", "_timeout": "60", "_unique_id": "u"}"#,
            "_timeout",
        ),
        (r#"{"method": "m", "_unique_id": 7}"#, "_unique_id"),
    ];
    for (inner, field) in request_cases {
        for codec in CODECS {
            let body = reencode(codec, inner);
            match codec.decode_request(&body) {
                Err(CodecError::WrongType { field: f, .. }) if f == field => {}
                other => panic!("{codec:?} {inner}: {other:?}"),
            }
        }
    }
    let reply_cases = [
        (
            r#"{"result": 1, "failure": null, "ending": "yes", "_msg_id": "a", "_unique_id": "u"}"#,
            "ending",
        ),
        (
            r#"{"result": 1, "failure": null, "ending": true, "_msg_id": [], "_unique_id": "u"}"#,
            "_msg_id",
        ),
    ];
    for (inner, field) in reply_cases {
        for codec in CODECS {
            match codec.decode_reply(&reencode(codec, inner)) {
                Err(CodecError::WrongType { field: f, .. }) if f == field => {}
                other => panic!("{codec:?} {inner}: {other:?}"),
            }
        }
    }
    let n = r#"{"message_id": "m", "publisher_id": "p", "event_type": {}, "priority": "INFO", "payload": 1, "timestamp": "t"}"#;
    for codec in CODECS {
        assert!(matches!(
            codec.decode_notification(&reencode(codec, n)),
            Err(CodecError::WrongType {
                field: "event_type",
                ..
            })
        ));
    }
}

/// An inner message (JSON text) enveloped for `codec`.
fn reencode(codec: Codec, inner: &str) -> Vec<u8> {
    match codec {
        Codec::OsloJson => envelope("2.0", inner),
        Codec::MessagePack => {
            let inner: Value = serde_json::from_str(inner).unwrap();
            rmp_serde::to_vec_named(&json!({"oslo.version": "2.0", "oslo.message": inner})).unwrap()
        }
    }
}

#[test]
fn missing_fields() {
    for codec in CODECS {
        let cases: [(&str, &str, &str); 6] = [
            ("req", r#"{"args": {}, "_unique_id": "u"}"#, "method"),
            ("req", r#"{"method": "m", "args": {}}"#, "_unique_id"),
            (
                "req",
                r#"{"method": "m", "_msg_id": "a", "_unique_id": "u"}"#,
                "_reply_q",
            ),
            ("reply", r#"{"result": 1, "_unique_id": "u"}"#, "_msg_id"),
            ("reply", r#"{"result": 1, "_msg_id": "a"}"#, "_unique_id"),
            (
                "notif",
                r#"{"message_id": "m", "event_type": "e", "priority": "INFO"}"#,
                "timestamp",
            ),
        ];
        for (kind, inner, field) in cases {
            let body = reencode(codec, inner);
            let err = match kind {
                "req" => codec.decode_request(&body).map(|_| ()),
                "reply" => codec.decode_reply(&body).map(|_| ()),
                _ => codec.decode_notification(&body).map(|_| ()),
            };
            assert_eq!(
                err,
                Err(CodecError::MissingField(field)),
                "{codec:?} {inner}"
            );
        }
    }
}

#[test]
fn forbidden_typed_values() {
    let typed = json!({"__type__": "datetime", "__value__": "2024-01-01"});
    for codec in CODECS {
        // In args, at the top and nested.
        let mut req = call_request();
        req.args.insert("when".into(), typed.clone());
        assert_eq!(
            codec.encode_request(&req),
            Err(CodecError::ForbiddenTypedValue { field: "args" })
        );
        let mut req = call_request();
        req.args = obj(typed.clone());
        assert!(codec.encode_request(&req).is_err());
        let mut req = call_request();
        req.args
            .insert("deep".into(), json!([{"a": [1, {"b": typed.clone()}]}]));
        assert!(codec.encode_request(&req).is_err());
        // In the context.
        let mut req = call_request();
        req.context.insert("odd", json!({"x": typed.clone()}));
        assert_eq!(
            codec.encode_request(&req),
            Err(CodecError::ForbiddenTypedValue { field: "context" })
        );
        // In a result, a failure, a payload.
        let reply = RpcReply {
            result: json!([typed.clone()]),
            ..ok_reply()
        };
        assert_eq!(
            codec.encode_reply(&reply),
            Err(CodecError::ForbiddenTypedValue { field: "result" })
        );
        let mut reply = failed_reply();
        if let Some(f) = &mut reply.failure {
            f.args.push(typed.clone());
        }
        assert_eq!(
            codec.encode_reply(&reply),
            Err(CodecError::ForbiddenTypedValue { field: "failure" })
        );
        let n = Notification {
            payload: typed.clone(),
            ..notification()
        };
        for format in [NotificationFormat::V1, NotificationFormat::V2] {
            assert_eq!(
                codec.encode_notification(&n, format),
                Err(CodecError::ForbiddenTypedValue { field: "payload" })
            );
        }
        // Only *exactly* those two keys are refused.
        let mut req = call_request();
        req.args.insert(
            "ok".into(),
            json!({"__type__": 1, "__value__": 2, "more": 3}),
        );
        req.args.insert("ok2".into(), json!({"__type__": 1}));
        assert!(codec.encode_request(&req).is_ok());
    }
}

#[test]
fn arguments_as_json_text_are_only_taken_when_plain() {
    // Objects without a `__type__` key; anything else is left to the checked object path.
    assert!(json_arguments(&json!({"a": [1, {"b": "__value__"}]})).is_some());
    // The search is on the text: a mere string is enough to take the longer road.
    assert!(json_arguments(&json!({"a": "__type__"})).is_none());
    assert!(json_arguments(&json!({"a": {"__type__": 1, "__value__": 2}})).is_none());
    assert!(json_arguments(&json!({"a": {"__type__": 1}})).is_none());
    assert!(json_arguments(&json!([1, 2])).is_none());
    assert!(json_arguments(&Value::Null).is_none());
    assert!(json_arguments(&"text").is_none());
}

#[test]
fn nan_and_infinity_are_clear_errors() {
    let inners = [
        r#"{"method": "m", "args": {"x": NaN}, "_unique_id": "u"}"#,
        r#"{"method": "m", "args": {"x": [Infinity]}, "_unique_id": "u"}"#,
        r#"{"method": "m", "args": {"x": -Infinity}, "_unique_id": "u"}"#,
    ];
    for inner in inners {
        let err = Codec::OsloJson
            .decode_request(&envelope("2.0", inner))
            .unwrap_err();
        assert!(matches!(err, CodecError::NonFiniteNumber(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("NaN") && text.contains("Infinity"), "{text}");
    }
    // A bare v1 notification.
    let body = br#"{"message_id": "m", "publisher_id": "p", "event_type": "e", "priority": "INFO", "payload": {"v": NaN}, "timestamp": "t"}"#;
    assert!(matches!(
        Codec::OsloJson.decode_notification(body),
        Err(CodecError::NonFiniteNumber(_))
    ));
    // A string that merely says NaN is fine.
    let ok = r#"{"method": "NaN", "args": {"Infinity": "NaN"}, "_unique_id": "u"}"#;
    assert!(Codec::OsloJson.decode_request(&envelope("2.0", ok)).is_ok());
}

#[test]
fn msgpack_specific_errors() {
    // A NaN float: refused, not turned into null.
    #[derive(serde::Serialize)]
    struct WithNan {
        method: &'static str,
        args: std::collections::BTreeMap<&'static str, f64>,
        _unique_id: &'static str,
    }
    let nan = WithNan {
        method: "m",
        args: [("x", f64::NAN)].into(),
        _unique_id: "u",
    };
    let body = rmp_serde::to_vec_named(&nan).unwrap();
    let err = Codec::MessagePack.decode_request(&body).unwrap_err();
    assert!(matches!(err, CodecError::NonFiniteNumber(_)), "{err:?}");
    assert!(err.to_string().contains("NaN"));

    // Binary strings, trailing bytes, JSON bodies, inner as a string, non-map bodies.
    #[derive(serde::Serialize)]
    struct WithBytes<'a> {
        method: &'a str,
        #[serde(with = "serde_bytes_like")]
        args: &'a [u8],
    }
    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b)
        }
    }
    let body = rmp_serde::to_vec_named(&WithBytes {
        method: "m",
        args: b"\x00\x01",
    })
    .unwrap();
    assert!(matches!(
        Codec::MessagePack.decode_request(&body),
        Err(CodecError::InvalidBody(_))
    ));

    let mut body = Codec::MessagePack.encode_request(&call_request()).unwrap();
    body.push(0xc0);
    assert!(matches!(
        Codec::MessagePack.decode_request(&body),
        Err(CodecError::InvalidBody(_))
    ));

    let json_body = Codec::OsloJson.encode_request(&call_request()).unwrap();
    assert!(Codec::MessagePack.decode_request(&json_body).is_err());
    let msgpack_body = Codec::MessagePack.encode_request(&call_request()).unwrap();
    assert!(Codec::OsloJson.decode_request(&msgpack_body).is_err());

    let body =
        rmp_serde::to_vec_named(&json!({"oslo.version": "2.0", "oslo.message": "{}"})).unwrap();
    assert!(matches!(
        Codec::MessagePack.decode_request(&body),
        Err(CodecError::WrongType {
            field: "oslo.message",
            ..
        })
    ));
    let body = rmp_serde::to_vec_named(&json!([1, 2])).unwrap();
    assert!(matches!(
        Codec::MessagePack.decode_request(&body),
        Err(CodecError::WrongType { field: "body", .. })
    ));
    let body =
        rmp_serde::to_vec_named(&json!({"oslo.version": "3.0", "oslo.message": {}})).unwrap();
    assert_eq!(
        Codec::MessagePack.decode_request(&body),
        Err(CodecError::UnsupportedEnvelopeVersion("3.0".into()))
    );
    // Integer map keys.
    let body = rmp_serde::to_vec(&std::collections::BTreeMap::from([(1u8, 2u8)])).unwrap();
    assert!(matches!(
        Codec::MessagePack.decode_request(&body),
        Err(CodecError::InvalidBody(_))
    ));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let inner = format!(r#"{{"method": "m", "args": {{"x": {deep_json}}}, "_unique_id": "u"}}"#);
    assert!(Codec::OsloJson
        .decode_request(&envelope("2.0", &inner))
        .is_err());
    // 100 000 nested msgpack arrays of one element: 0x91 each.
    let mut body = vec![0x91u8; 100_000];
    body.push(0xc0);
    assert!(Codec::MessagePack.decode_request(&body).is_err());
}

#[test]
fn errors_display_without_the_body() {
    let body = envelope("2.0", r#"{"method": 1, "_context_auth_token": "sekrit"}"#);
    let err = Codec::OsloJson.decode_request(&body).unwrap_err();
    assert!(!err.to_string().contains("sekrit"));
}

// ---------------------------------------------------------------------------------------------
// Hostile input: every field a peer controls is checked, and decoding is bounded.

/// An oslo JSON request with `inner` as its inner message.
fn enveloped(inner: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"oslo.version": "2.0", "oslo.message": inner.to_string()})).unwrap()
}

fn hostile_call(field: &str, value: Value) -> Value {
    let mut inner = json!({
        "method": "echo", "args": {}, "_msg_id": "m1", "_reply_q": "reply_q1",
        "_timeout": null, "_unique_id": "u1",
    });
    inner[field] = value;
    inner
}

#[test]
fn an_unusable_timeout_is_refused_with_the_call_kept_for_the_error_reply() {
    for bad in [json!(1e20), json!(-1), json!(1e300), json!(31_536_001)] {
        let body = enveloped(&hostile_call("_timeout", bad.clone()));
        let (error, call) = Codec::OsloJson.decode_request_salvaging(&body).unwrap_err();
        assert!(
            matches!(
                error,
                CodecError::InvalidField {
                    field: "_timeout",
                    ..
                }
            ),
            "{bad}: {error}"
        );
        let call = call.expect("the call is known, so the caller can be told");
        assert_eq!(
            (call.msg_id.as_str(), call.reply_q.as_str()),
            ("m1", "reply_q1")
        );
    }
    let ok = enveloped(&hostile_call("_timeout", json!(60)));
    assert!(Codec::OsloJson.decode_request(&ok).is_ok());
}

#[test]
fn an_unusable_reply_queue_or_message_id_leaves_nobody_to_tell() {
    for (field, value) in [
        ("_reply_q", json!("q".repeat(300))),
        ("_reply_q", json!("reply\u{0}q")),
        ("_msg_id", json!("m".repeat(100 * 1024))),
    ] {
        let body = enveloped(&hostile_call(field, value));
        let (error, call) = Codec::OsloJson.decode_request_salvaging(&body).unwrap_err();
        assert!(call.is_none(), "{field}: {error}");
    }
}

#[test]
fn long_names_and_ids_and_large_contexts_are_refused() {
    let long = json!("x".repeat(64 * 1024));
    for field in ["method", "namespace", "version", "_unique_id"] {
        let body = enveloped(&hostile_call(field, long.clone()));
        let error = Codec::OsloJson.decode_request(&body).unwrap_err();
        assert!(
            matches!(error, CodecError::FieldTooLong { .. }),
            "{field}: {error}"
        );
    }
    let mut inner = hostile_call("method", json!("echo"));
    for i in 0..(limits::MAX_CONTEXT_KEYS + 1) {
        inner[format!("_context_k{i}")] = json!(1);
    }
    let error = Codec::OsloJson
        .decode_request(&enveloped(&inner))
        .unwrap_err();
    assert!(
        matches!(
            error,
            CodecError::InvalidField {
                field: "context",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_body_of_tiny_values_is_refused_before_it_is_decoded() {
    // 4 MiB of MessagePack nils: about 32 times that as decoded values.
    let mut body = vec![0xdd];
    let count: u32 = 4 * 1024 * 1024;
    body.extend_from_slice(&count.to_be_bytes());
    body.resize(body.len() + count as usize, 0xc0);
    let error = Codec::MessagePack.decode_request(&body).unwrap_err();
    assert!(matches!(error, CodecError::TooComplex { .. }), "{error}");
    // JSON's smallest values take two bytes each, within the budget: this one decodes, and fails
    // on its type.
    let text = format!("[{}0]", "0,".repeat(1_000_000));
    let error = Codec::OsloJson
        .decode_notification(text.as_bytes())
        .unwrap_err();
    assert!(
        matches!(
            error,
            CodecError::TooComplex { .. } | CodecError::WrongType { .. }
        ),
        "{error}"
    );
}
