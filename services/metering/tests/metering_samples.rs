//! Wire samples: validation rules, and signatures checked against Ceilometer itself — a real
//! capture of `ceilometer-send-sample`, and Ceilometer 27.0.0's `compute_signature` and
//! `meter_message_from_counter` run in the interop venv over a table of tricky messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ceilometer/python.rs"]
mod python;

use chrono::{TimeZone, Utc};
use serde_json::{json, Map, Value};
use tidings_metering::model::CounterType;
use tidings_metering::sample::{
    compute_signature, from_wire, to_wire, verify_signature, Rejection, DEFAULT_TELEMETRY_SECRET,
};

fn valid() -> Value {
    json!({
        "source": "openstack", "counter_name": "cpu_util", "counter_type": "gauge",
        "counter_unit": "%", "counter_volume": 42, "user_id": "u-1", "user_name": null,
        "project_id": "p-1", "project_name": null, "resource_id": "vm-1",
        "timestamp": "2026-11-22T19:53:05.297642", "resource_metadata": {"host": "h"},
        "message_id": "5547405e-e6ae-11f1-9a31-02fc00000001", "monotonic_time": null,
        "message_signature": "x",
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut sample = valid();
    sample[field] = value;
    sample
}

fn without(field: &str) -> Value {
    let mut sample = valid();
    sample.as_object_mut().unwrap().remove(field);
    sample
}

#[test]
fn invalid_samples_are_rejected_with_a_reason() {
    let wrong = |field, expected| Rejection::WrongType { field, expected };
    let cases: Vec<(&str, Value, Rejection)> = vec![
        ("not an object", json!([1, 2]), Rejection::NotAnObject),
        ("a string", json!("sample"), Rejection::NotAnObject),
        (
            "no volume",
            without("counter_volume"),
            Rejection::MissingField("counter_volume"),
        ),
        (
            "null volume",
            with("counter_volume", Value::Null),
            Rejection::MissingField("counter_volume"),
        ),
        (
            "string volume",
            with("counter_volume", json!("42")),
            Rejection::NonNumericVolume("\"42\"".into()),
        ),
        (
            "boolean volume",
            with("counter_volume", json!(true)),
            Rejection::NonNumericVolume("true".into()),
        ),
        (
            "unknown type",
            with("counter_type", json!("rate")),
            Rejection::UnknownType("rate".into()),
        ),
        (
            "no type",
            without("counter_type"),
            Rejection::MissingField("counter_type"),
        ),
        (
            "bad timestamp",
            with("timestamp", json!("last tuesday")),
            Rejection::BadTimestamp("last tuesday".into()),
        ),
        (
            "impossible date",
            with("timestamp", json!("2026-02-30T00:00:00")),
            Rejection::BadTimestamp("2026-02-30T00:00:00".into()),
        ),
        (
            "numeric timestamp",
            with("timestamp", json!(1_700_000_000)),
            wrong("timestamp", "a string"),
        ),
        (
            "no resource",
            without("resource_id"),
            Rejection::MissingField("resource_id"),
        ),
        (
            "no source",
            without("source"),
            Rejection::MissingField("source"),
        ),
        (
            "no unit",
            without("counter_unit"),
            Rejection::MissingField("counter_unit"),
        ),
        (
            "empty message id",
            with("message_id", json!("")),
            wrong("message_id", "a non-empty string"),
        ),
        (
            "empty name",
            with("counter_name", json!("")),
            wrong("counter_name", "a non-empty string"),
        ),
        (
            "metadata not an object",
            with("resource_metadata", json!("flavor=m1")),
            wrong("resource_metadata", "an object"),
        ),
        (
            "numeric user",
            with("user_id", json!(7)),
            wrong("user_id", "a string or null"),
        ),
    ];
    for (case, wire, expected) in cases {
        assert_eq!(from_wire(&wire), Err(expected), "{case}");
    }
}

#[test]
fn rejection_kinds_are_stable_labels() {
    let kinds: Vec<&str> = [
        Rejection::NotAnObject,
        Rejection::MissingField("x"),
        Rejection::WrongType {
            field: "x",
            expected: "y",
        },
        Rejection::NonNumericVolume("x".into()),
        Rejection::UnknownType("x".into()),
        Rejection::BadTimestamp("x".into()),
    ]
    .iter()
    .map(Rejection::kind)
    .collect();
    assert_eq!(
        kinds,
        [
            "not_an_object",
            "missing_field",
            "wrong_type",
            "non_numeric_volume",
            "unknown_type",
            "bad_timestamp"
        ]
    );
}

#[test]
fn lenient_fields_take_their_defaults() {
    let sample = from_wire(&valid()).unwrap();
    assert_eq!(sample.name, "cpu_util");
    assert_eq!(sample.counter_type, CounterType::Gauge);
    assert_eq!(sample.volume, 42.0);
    assert_eq!(
        sample.timestamp,
        Utc.with_ymd_and_hms(2026, 11, 22, 19, 53, 5).unwrap()
            + chrono::Duration::microseconds(297_642)
    );
    let mut loose = without("user_id");
    loose["project_id"] = Value::Null;
    loose["counter_unit"] = Value::Null;
    loose["resource_metadata"] = Value::Null;
    loose["counter_volume"] = json!(-1.5e-7);
    loose["timestamp"] = json!("2026-11-22T21:53:05+02:00");
    let sample = from_wire(&loose).unwrap();
    assert_eq!(sample.user_id, None);
    assert_eq!(sample.project_id, None);
    assert_eq!(sample.unit, "");
    assert!(sample.resource_metadata.is_empty());
    assert_eq!(sample.volume, -1.5e-7);
    assert_eq!(
        sample.timestamp,
        Utc.with_ymd_and_hms(2026, 11, 22, 19, 53, 5).unwrap()
    );
}

/// The payload of the real capture in `metering/ceilometer-notifier-publisher.json`.
fn captured_sample() -> Map<String, Value> {
    let capture: Value = serde_json::from_str(include_str!(
        "ceilometer/ceilometer-notifier-publisher.json"
    ))
    .unwrap();
    let body: Value = serde_json::from_str(capture["body"].as_str().unwrap()).unwrap();
    let message: Value = serde_json::from_str(body["oslo.message"].as_str().unwrap()).unwrap();
    assert_eq!(message["event_type"], "metering");
    message["payload"][0].as_object().unwrap().clone()
}

#[test]
fn the_captured_ceilometer_signature_verifies_with_the_default_secret() {
    let sample = captured_sample();
    assert_eq!(
        compute_signature(&sample, DEFAULT_TELEMETRY_SECRET),
        "0b468c10da6c7a379279b5d9f6171f56e89c6323322a18e8e7f5334af6e70178"
    );
    assert!(verify_signature(&sample, DEFAULT_TELEMETRY_SECRET));
    assert!(!verify_signature(&sample, "another secret"));
    let mut tampered = sample.clone();
    tampered.insert("counter_volume".into(), json!(43));
    assert!(!verify_signature(&tampered, DEFAULT_TELEMETRY_SECRET));
    let parsed = from_wire(&Value::Object(sample)).unwrap();
    assert_eq!(parsed.resource_id, "vm-1");
    assert_eq!(parsed.volume, 42.0);
}

/// Messages that exercise every rule of Python's `str()` the signature depends on, as JSON
/// text so that Python and Rust parse exactly the same thing.
const TRICKY: &[&str] = &[
    r#"{"counter_volume": 42, "user_id": null, "project_id": null, "ok": true, "no": false}"#,
    r#"{"a": 42.0, "b": 0.1, "c": 1e-05, "d": 0.0001, "e": 1e16, "f": 1e15, "g": 1.5e16}"#,
    r#"{"a": -2.5, "b": 123456789.123456789, "c": 2.5e-7, "d": 1e22, "e": 5e-324, "f": 1.7976931348623157e308}"#,
    r#"{"a": 0.3333333333333333, "b": -0.0, "c": 0.0, "d": 100.0, "e": 1e100, "f": 9007199254740993.0}"#,
    r#"{"i": 9223372036854775807, "j": -9223372036854775808, "k": 18446744073709551615, "l": 0}"#,
    r#"{"resource_metadata": {"flavor": {"name": "m1", "vcpus": 2, "extra": {"k": "v"}}, "empty": {}}}"#,
    r#"{"m": {"b": 1, "a": {"z": null, "y": [1, "two"]}}, "a:b": "flat", "a": {"b": "nested"}}"#,
    r#"{"list": ["x", 1, 2.5, null, true, {"k": "v", "a": [1]}, [], {}]}"#,
    r#"{"quotes": ["it's", "say \"hi\"", "both ' and \"", "back\\slash", "tab\there", "nl\nx", "cr\rx"]}"#,
    r#"{"unicode": ["é", "日本", "🙂", "\u0001", "\u007f", "\u0080"], "rés": "ü", "emoji": "🙂"}"#,
    r#"{"nested_list": [[["deep"]], {"b": {"c": ["d"]}}], "floats_in_list": [1e-05, 1e+16, 42.0]}"#,
    r#"{"Upper": 1, "lower": 2, "_under": 3, "1digit": 4, "": 5, " space": 6}"#,
    r#"{"message_signature": "ignored", "x": "y"}"#,
];

#[test]
fn signatures_match_ceilometer_on_tricky_messages() {
    let mut ceilometer = python::Helper::spawn("ceilometer_sign.py");
    let secrets = [DEFAULT_TELEMETRY_SECRET, "sécret ünïcode"];
    for text in TRICKY {
        let message: Value = serde_json::from_str(text).unwrap();
        for secret in secrets {
            let answer = ceilometer.ask(&json!({"op": "sign", "secret": secret, "text": text}));
            assert_eq!(
                compute_signature(message.as_object().unwrap(), secret),
                answer["signature"].as_str().unwrap(),
                "signature of {text} with {secret:?}"
            );
        }
    }
    // Empty secret: Ceilometer signs nothing.
    let answer = ceilometer.ask(&json!({"op": "sign", "secret": "", "text": TRICKY[0]}));
    assert_eq!(answer["signature"], "");
}

#[test]
fn meter_messages_made_by_ceilometer_verify_and_parse() {
    let mut ceilometer = python::Helper::spawn("ceilometer_sign.py");
    let fields = json!({
        "name": "disk.read.bytes", "type": "cumulative", "unit": "B", "volume": 1.5e-05,
        "user_id": null, "project_id": "p-ü", "resource_id": "vm-1/vda",
        "timestamp": "2026-11-22T19:53:05.297642+00:00", "source": "hypervisor",
        "resource_metadata": {"device": ["vda", 1, null], "flavor": {"name": "m1", "ram": 512.0}},
        "id": "b5c1e6f0-0000-11f1-9a31-02fc00000001", "user_name": "alice",
        "monotonic_time": 12345.678,
    });
    let answer = ceilometer.ask(&json!({
        "op": "meter", "secret": DEFAULT_TELEMETRY_SECRET, "sample": fields,
    }));
    let message = answer["message"].as_object().unwrap();
    assert!(verify_signature(message, DEFAULT_TELEMETRY_SECRET));
    let sample = from_wire(&answer["message"]).unwrap();
    assert_eq!(sample.name, "disk.read.bytes");
    assert_eq!(sample.counter_type, CounterType::Cumulative);
    assert_eq!(sample.volume, 1.5e-05);
    assert_eq!(sample.project_id.as_deref(), Some("p-ü"));
    assert_eq!(sample.message_id, "b5c1e6f0-0000-11f1-9a31-02fc00000001");
}

#[test]
fn what_to_wire_signs_ceilometer_verifies() {
    let mut ceilometer = python::Helper::spawn("ceilometer_sign.py");
    let mut sample = from_wire(&valid()).unwrap();
    sample.volume = 1e16;
    sample.resource_metadata = json!({"cpus": [0, 1], "load": {"1m": 0.25}, "name": "hôte"})
        .as_object()
        .unwrap()
        .clone();
    let wire = to_wire(&sample, DEFAULT_TELEMETRY_SECRET);
    let text = Value::Object(wire.clone()).to_string();
    let answer = ceilometer.ask(&json!({
        "op": "sign", "secret": DEFAULT_TELEMETRY_SECRET, "text": text,
    }));
    assert_eq!(wire["message_signature"], answer["signature"]);
}
