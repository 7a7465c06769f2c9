//! Structured generation: valid RPC requests, replies, notifications and metering samples as
//! oslo.messaging lays them out (WIRE.md), random values of any shape, and the seed corpus of
//! real bodies captured from Python. Everything here is drawn from one `fastrand::Rng`, so a
//! message is a function of its seed.

use chrono::{TimeZone, Utc};
use serde_json::{json, Map, Value};
use tidings_metering::model::{CounterType, Sample};
use tidings_metering::sample::{compute_signature, to_wire, DEFAULT_TELEMETRY_SECRET};

use crate::value::Gv;

/// What a message is meant to be; it decides where it is most interesting to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An RPC call or cast.
    Request,
    /// An RPC reply (or call-monitor heartbeat).
    Reply,
    /// A notification.
    Notification,
    /// A metering sample notification (either of Ceilometer's paths).
    Sample,
    /// A random value, no particular message.
    Random,
}

/// What the generator knows of the bus it feeds: names worth aiming at.
#[derive(Clone, Debug, Default)]
pub struct Aim {
    /// The reply queue of the rig's client, so that generated calls are answered into it.
    pub reply_queue: Option<String>,
}

/// Known method names of the fuzzed server, plus the ones it must refuse.
const METHODS: &[&str] = &["echo", "fail", "returns_none", "nope", "_private", ""];
const PRIORITIES: &[&str] = &[
    "AUDIT", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL", "SAMPLE", "info", "WARNING", "bogus",
];
const CONTEXT_KEYS: &[&str] = &[
    "user",
    "project_id",
    "request_id",
    "global_request_id",
    "auth_token",
    "roles",
    "is_admin",
    "traceparent",
    "tracestate",
    "client_timeout",
];

/// 32 lower-case hex chars, as oslo's ids.
pub fn hex_id(rng: &mut fastrand::Rng) -> String {
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.usize(..16)]))
        .collect()
}

/// A string of `len` chars drawn from a mix of ASCII, escapes and non-ASCII.
pub fn random_text(rng: &mut fastrand::Rng, len: usize) -> String {
    const SPECIAL: &[char] = &[
        '"', '\\', '\n', '\u{0}', '\u{7f}', 'é', '€', '😀', '\u{2028}', '\u{fffd}', '%', '.', '_',
    ];
    (0..len)
        .map(|_| match rng.u8(..10) {
            0 => SPECIAL[rng.usize(..SPECIAL.len())],
            1 => rng.char(..),
            _ => rng.alphanumeric(),
        })
        .collect()
}

/// A non-empty string of up to `max` chars.
pub fn random_word(rng: &mut fastrand::Rng, max: usize) -> String {
    let len = 1 + rng.usize(..max.max(1));
    random_text(rng, len)
}

/// A random value nested up to `depth` levels, any type.
pub fn random_value(rng: &mut fastrand::Rng, depth: usize) -> Gv {
    let leaf_only = depth == 0;
    match rng.u8(..if leaf_only { 6 } else { 9 }) {
        0 => Gv::Null,
        1 => Gv::Bool(rng.bool()),
        2 => Gv::Int(match rng.u8(..4) {
            0 => rng.i64(..),
            _ => rng.i64(-1000..1000),
        }),
        3 => Gv::Float(match rng.u8(..3) {
            0 => f64::from_bits(rng.u64(..)),
            _ => rng.f64() * 1000.0 - 500.0,
        }),
        4 | 5 => {
            let len = rng.usize(..24);
            Gv::Str(random_text(rng, len))
        }
        6 => {
            let n = rng.usize(..5);
            Gv::Arr((0..n).map(|_| random_value(rng, depth - 1)).collect())
        }
        _ => {
            let n = rng.usize(..5);
            Gv::Map(
                (0..n)
                    .map(|_| {
                        let key = random_word(rng, 8);
                        (Gv::Str(key), random_value(rng, depth - 1))
                    })
                    .collect(),
            )
        }
    }
}

/// A random object (keyword arguments, payloads).
fn random_object(rng: &mut fastrand::Rng) -> Gv {
    let n = rng.usize(..5);
    Gv::Map(
        (0..n)
            .map(|_| {
                let key = random_word(rng, 8);
                (Gv::Str(key), random_value(rng, 3))
            })
            .collect(),
    )
}

fn context_entries(rng: &mut fastrand::Rng, map: &mut Vec<(Gv, Gv)>) {
    for _ in 0..rng.usize(..4) {
        let key = CONTEXT_KEYS[rng.usize(..CONTEXT_KEYS.len())];
        let value = match key {
            "traceparent" if rng.bool() => {
                Gv::str(format!("00-{}-{}-01", hex_id(rng), &hex_id(rng)[..16]))
            }
            _ => random_value(rng, 1),
        };
        map.push((Gv::str(format!("_context_{key}")), value));
    }
}

/// A valid RPC request for the fuzzed server: known or unknown method, call or cast.
pub fn request(rng: &mut fastrand::Rng, aim: &Aim) -> Gv {
    let method = if rng.u8(..8) == 0 {
        random_word(rng, 12)
    } else {
        METHODS[rng.usize(..METHODS.len())].to_owned()
    };
    let mut map = vec![
        (Gv::str("method"), Gv::Str(method)),
        (Gv::str("args"), random_object(rng)),
    ];
    if rng.u8(..4) == 0 {
        map.push((
            Gv::str("namespace"),
            Gv::str(["ns", "other"][rng.usize(..2)]),
        ));
    }
    if rng.u8(..5) != 0 {
        let version = [
            "1.0", "1.2", "1.4", "1.9", "2.0", "0.1", "1", "x.y", "1.2.3",
        ];
        map.push((
            Gv::str("version"),
            Gv::str(version[rng.usize(..version.len())]),
        ));
    }
    if rng.bool() {
        let reply_q = match (rng.u8(..4), &aim.reply_queue) {
            (0 | 1, Some(queue)) => queue.clone(),
            (2, _) => format!("reply_{}", hex_id(rng)),
            _ => "notifications.info".to_owned(),
        };
        let timeout = match rng.u8(..4) {
            0 => Gv::Null,
            1 => Gv::UInt(rng.u64(..120)),
            2 => Gv::Float(rng.f64() * 60.0),
            _ => Gv::Null,
        };
        map.push((Gv::str("_msg_id"), Gv::Str(hex_id(rng))));
        map.push((Gv::str("_reply_q"), Gv::Str(reply_q)));
        map.push((Gv::str("_timeout"), timeout));
    }
    map.push((Gv::str("_unique_id"), Gv::Str(hex_id(rng))));
    context_entries(rng, &mut map);
    Gv::Map(map)
}

/// A remote error as a reply's `failure` describes it.
fn failure_object(rng: &mut fastrand::Rng) -> Value {
    let class = ["ValueError", "NoSuchMethod", "RemoteError", "KeyError"][rng.usize(..4)];
    let module = [
        "builtins",
        "oslo_messaging.rpc.dispatcher",
        "nova.exception",
    ][rng.usize(..3)];
    let message_len = rng.usize(..20);
    json!({
        "class": class,
        "module": module,
        "message": random_text(rng, message_len),
        "tb": ["Traceback (most recent call last):\n", "  File \"x.py\"\n"],
        "args": [random_text(rng, 4)],
        "kwargs": {},
    })
}

/// A valid reply (or heartbeat); `failure` as a JSON string or a nested map.
pub fn reply(rng: &mut fastrand::Rng) -> Gv {
    let failure = match rng.u8(..3) {
        0 => Gv::Str(failure_object(rng).to_string()),
        1 => Gv::from(&failure_object(rng)),
        _ => Gv::Null,
    };
    let heartbeat = rng.u8(..5) == 0;
    Gv::object([
        (
            "result",
            if heartbeat {
                Gv::Null
            } else {
                random_value(rng, 3)
            },
        ),
        ("failure", if heartbeat { Gv::Null } else { failure }),
        ("ending", Gv::Bool(!heartbeat)),
        ("_msg_id", Gv::Str(hex_id(rng))),
        ("_unique_id", Gv::Str(hex_id(rng))),
    ])
}

fn uuid_text(rng: &mut fastrand::Rng) -> String {
    let h = hex_id(rng);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn timestamp_text(rng: &mut fastrand::Rng) -> String {
    format!(
        "2026-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        rng.u8(1..13),
        rng.u8(1..29),
        rng.u8(..24),
        rng.u8(..60),
        rng.u8(..60),
        rng.u32(..1_000_000)
    )
}

/// A valid notification of any priority.
pub fn notification(rng: &mut fastrand::Rng) -> Gv {
    let mut map = vec![
        (Gv::str("message_id"), Gv::Str(uuid_text(rng))),
        (
            Gv::str("publisher_id"),
            Gv::str(format!("compute.host-{}", rng.u8(..10))),
        ),
        (
            Gv::str("event_type"),
            Gv::str(
                [
                    "compute.instance.create.end",
                    "compute.instance.delete.start",
                    "probe.event.v2",
                    "telemetry.polling",
                ][rng.usize(..4)],
            ),
        ),
        (
            Gv::str("priority"),
            Gv::str(PRIORITIES[rng.usize(..PRIORITIES.len())]),
        ),
        (Gv::str("payload"), random_value(rng, 3)),
        (Gv::str("timestamp"), Gv::Str(timestamp_text(rng))),
        (Gv::str("_unique_id"), Gv::Str(hex_id(rng))),
    ];
    context_entries(rng, &mut map);
    Gv::Map(map)
}

/// One valid sample as Ceilometer publishes it, signed with Ceilometer's default secret.
pub fn wire_sample(rng: &mut fastrand::Rng, message_id: String, resource_id: String) -> Value {
    let seconds = rng.i64(0..86_400 * 365);
    let sample = Sample {
        source: "openstack".into(),
        name: ["cpu_util", "memory.usage", "disk.read.bytes"][rng.usize(..3)].into(),
        counter_type: [
            CounterType::Gauge,
            CounterType::Delta,
            CounterType::Cumulative,
        ][rng.usize(..3)],
        unit: "%".into(),
        volume: rng.f64() * 100.0,
        user_id: rng.bool().then(|| "u-1".to_owned()),
        project_id: Some("p-1".into()),
        resource_id,
        timestamp: Utc
            .timestamp_opt(1_700_000_000 + seconds, 0)
            .single()
            .unwrap_or_default(),
        resource_metadata: Map::new(),
        message_id,
    };
    Value::Object(to_wire(&sample, DEFAULT_TELEMETRY_SECRET))
}

/// A sample, one time in three with a field given an odd value and (mostly) signed again, so
/// that validation, not only the signature check, sees it.
fn fuzzed_sample(rng: &mut fastrand::Rng, message_id: String, resource_id: String) -> Value {
    let mut sample = wire_sample(rng, message_id, resource_id);
    let Value::Object(wire) = &mut sample else {
        return sample;
    };
    if rng.u8(..3) == 0 {
        let fields = [
            "counter_volume",
            "counter_type",
            "timestamp",
            "resource_id",
            "counter_name",
            "resource_metadata",
            "message_id",
            "user_id",
        ];
        let field = fields[rng.usize(..fields.len())];
        let odd = match rng.u8(..7) {
            0 => json!("lots"),
            1 => json!(1e300),
            2 => json!(-1),
            3 => json!(null),
            4 => json!(["a"]),
            5 => json!("2026-13-45T99:99:99"),
            _ => json!(random_text(rng, 40)),
        };
        wire.insert(field.into(), odd);
        if rng.u8(..4) != 0 {
            wire.remove("message_signature");
            let signature = compute_signature(wire, DEFAULT_TELEMETRY_SECRET);
            wire.insert("message_signature".into(), json!(signature));
        }
    }
    sample
}

/// A sample notification on either of Ceilometer's paths: `{"samples": [...]}` (polling) or
/// a bare list (the notifier publisher).
pub fn sample_notification(rng: &mut fastrand::Rng) -> Gv {
    let samples: Vec<Value> = (0..rng.usize(..4))
        .map(|_| {
            let id = uuid_text(rng);
            let resource = format!("vm-{}", rng.u8(..8));
            fuzzed_sample(rng, id, resource)
        })
        .collect();
    let polling = rng.bool();
    let payload = if polling {
        json!({ "samples": samples })
    } else {
        Value::Array(samples)
    };
    Gv::object([
        ("message_id", Gv::Str(uuid_text(rng))),
        (
            "publisher_id",
            Gv::str(if polling {
                "ceilometer.polling"
            } else {
                "telemetry.publisher.host"
            }),
        ),
        (
            "event_type",
            Gv::str(if polling {
                "telemetry.polling"
            } else {
                "metering"
            }),
        ),
        ("priority", Gv::str("SAMPLE")),
        ("payload", Gv::from(&payload)),
        ("timestamp", Gv::Str(timestamp_text(rng))),
        ("_unique_id", Gv::Str(hex_id(rng))),
    ])
}

/// A `record_metering_data` request to the collector's RPC server.
pub fn metering_request(rng: &mut fastrand::Rng) -> Gv {
    let data: Vec<Value> = (0..rng.usize(..3))
        .map(|_| {
            let id = uuid_text(rng);
            fuzzed_sample(rng, id, "vm-rpc".into())
        })
        .collect();
    let method = ["record_metering_data", "get_statistics", "list_meters"][rng.usize(..3)];
    let args = match method {
        "record_metering_data" => json!({ "data": data }),
        "get_statistics" => {
            json!({"meter": "cpu_util", "period": rng.u64(..100_000), "start": timestamp_text(rng)})
        }
        _ => json!({}),
    };
    Gv::object([
        ("method", Gv::str(method)),
        ("args", Gv::from(&args)),
        ("_unique_id", Gv::Str(hex_id(rng))),
    ])
}

/// A random structured message of `kind`.
pub fn message(rng: &mut fastrand::Rng, kind: Kind, aim: &Aim) -> Gv {
    match kind {
        Kind::Request if rng.u8(..6) == 0 => metering_request(rng),
        Kind::Request => request(rng, aim),
        Kind::Reply => reply(rng),
        Kind::Notification => notification(rng),
        Kind::Sample => sample_notification(rng),
        Kind::Random => random_value(rng, 4),
    }
}
