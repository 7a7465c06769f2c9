//! Samples on the wire: Ceilometer's meter message (`source`, `counter_name`, `counter_type`,
//! `counter_unit`, `counter_volume`, `user_id`, `project_id`, `resource_id`, `timestamp`,
//! `resource_metadata`, `message_id`, and optionally `user_name`, `project_name`,
//! `monotonic_time`, `message_signature`), turned into a validated [`Sample`] by [`from_wire`]
//! and back by [`to_wire`]; signed and verified as Ceilometer does by [`compute_signature`] and
//! [`verify_signature`].
//!
//! Parsing never panics: anything a peer can send either becomes a [`Sample`] or a
//! [`Rejection`] saying why, with a short [`Rejection::kind`] for counters.
//!
//! This module owns the wire form only, and the names samples travel under on the bus
//! ([`contract`]); storage is `store`'s, transport is the collector's.

pub mod contract;
mod pyrepr;
mod signature;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Number, Value};

use super::model::{CounterType, Sample};

pub use signature::{compute_signature, verify_signature, DEFAULT_TELEMETRY_SECRET};

/// Why a wire sample was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The sample is not a JSON object.
    #[error("sample is not a JSON object")]
    NotAnObject,
    /// A required field is absent (or null where null is not allowed).
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A field has the wrong JSON type (or is empty where a value is needed).
    #[error("field {field} must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// `counter_volume` is not a number.
    #[error("counter_volume {0} is not a number")]
    NonNumericVolume(String),
    /// `counter_type` is not `gauge`, `delta` or `cumulative`.
    #[error("unknown counter_type {0:?}")]
    UnknownType(String),
    /// `timestamp` is not an ISO 8601 date and time.
    #[error("bad timestamp {0:?}")]
    BadTimestamp(String),
}

impl Rejection {
    /// A short, stable label for counters and logs: `not_an_object`, `missing_field`,
    /// `wrong_type`, `non_numeric_volume`, `unknown_type` or `bad_timestamp`.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::NotAnObject => "not_an_object",
            Rejection::MissingField(_) => "missing_field",
            Rejection::WrongType { .. } => "wrong_type",
            Rejection::NonNumericVolume(_) => "non_numeric_volume",
            Rejection::UnknownType(_) => "unknown_type",
            Rejection::BadTimestamp(_) => "bad_timestamp",
        }
    }
}

/// Parses and validates one wire sample.
///
/// Rules: `source`, `counter_name`, `counter_type`, `counter_unit`, `counter_volume`,
/// `resource_id`, `timestamp` and `message_id` must be present; `counter_name` and
/// `message_id` must be non-empty strings; `counter_volume` must be a JSON number;
/// `counter_unit` may be null (Ceilometer's `ceilometer-send-sample` sends null without `-U`),
/// read as `""`; `user_id` and `project_id` may be null or absent; `resource_metadata` may be
/// null or absent (read as `{}`) but otherwise must be an object. The signature is not checked
/// here: see [`verify_signature`].
///
/// ```
/// use serde_json::json;
/// use tidings_metering::sample::{from_wire, Rejection};
///
/// let mut wire = json!({
///     "source": "openstack", "counter_name": "cpu_util", "counter_type": "gauge",
///     "counter_unit": "%", "counter_volume": 42, "user_id": null, "project_id": "p-1",
///     "resource_id": "vm-1", "timestamp": "2026-11-22T19:53:05.297642",
///     "resource_metadata": {}, "message_id": "5547405e-e6ae-11f1-9a31-02fc00000001",
/// });
/// let sample = from_wire(&wire).unwrap();
/// assert_eq!(sample.volume, 42.0);
/// wire["counter_volume"] = json!("lots");
/// assert!(matches!(from_wire(&wire), Err(Rejection::NonNumericVolume(_))));
/// ```
pub fn from_wire(value: &Value) -> Result<Sample, Rejection> {
    let map = value.as_object().ok_or(Rejection::NotAnObject)?;
    let named = required_str(map, "counter_type")?;
    let counter_type =
        CounterType::from_name(named).ok_or_else(|| Rejection::UnknownType(named.to_owned()))?;
    let volume = match map.get("counter_volume") {
        None | Some(Value::Null) => return Err(Rejection::MissingField("counter_volume")),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| Rejection::NonNumericVolume(n.to_string()))?,
        Some(other) => return Err(Rejection::NonNumericVolume(brief(other))),
    };
    let timestamp_text = required_str(map, "timestamp")?;
    let timestamp = parse_timestamp(timestamp_text)
        .ok_or_else(|| Rejection::BadTimestamp(timestamp_text.chars().take(64).collect()))?;
    let unit = match map.get("counter_unit") {
        None => return Err(Rejection::MissingField("counter_unit")),
        Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(Rejection::WrongType {
                field: "counter_unit",
                expected: "a string or null",
            })
        }
    };
    let resource_metadata = match map.get("resource_metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(Rejection::WrongType {
                field: "resource_metadata",
                expected: "an object",
            })
        }
    };
    Ok(Sample {
        source: required_str(map, "source")?.to_owned(),
        name: non_empty_str(map, "counter_name")?.to_owned(),
        counter_type,
        unit,
        volume,
        user_id: optional_str(map, "user_id")?,
        project_id: optional_str(map, "project_id")?,
        resource_id: required_str(map, "resource_id")?.to_owned(),
        timestamp,
        resource_metadata,
        message_id: non_empty_str(map, "message_id")?.to_owned(),
    })
}

/// The meter message Ceilometer's `meter_message_from_counter` builds for `sample`, signed
/// with `secret` (an empty secret gives an empty signature, as in Ceilometer). `user_name`,
/// `project_name` and `monotonic_time` are null; the timestamp is written as Python's
/// `isoformat()` of a naive UTC time (`2026-11-22T19:53:05.297642`).
pub fn to_wire(sample: &Sample, secret: &str) -> Map<String, Value> {
    let mut map = Map::new();
    let text = |s: &str| Value::String(s.to_owned());
    let nullable = |s: &Option<String>| s.as_deref().map_or(Value::Null, text);
    map.insert("source".into(), text(&sample.source));
    map.insert("counter_name".into(), text(&sample.name));
    map.insert("counter_type".into(), text(sample.counter_type.as_str()));
    map.insert("counter_unit".into(), text(&sample.unit));
    map.insert(
        "counter_volume".into(),
        Number::from_f64(sample.volume).map_or(Value::Null, Value::Number),
    );
    map.insert("user_id".into(), nullable(&sample.user_id));
    map.insert("user_name".into(), Value::Null);
    map.insert("project_id".into(), nullable(&sample.project_id));
    map.insert("project_name".into(), Value::Null);
    map.insert("resource_id".into(), text(&sample.resource_id));
    map.insert(
        "timestamp".into(),
        text(&python_isoformat(&sample.timestamp)),
    );
    map.insert(
        "resource_metadata".into(),
        Value::Object(sample.resource_metadata.clone()),
    );
    map.insert("message_id".into(), text(&sample.message_id));
    map.insert("monotonic_time".into(), Value::Null);
    let signature = compute_signature(&map, secret);
    map.insert("message_signature".into(), Value::String(signature));
    map
}

/// Parses an ISO 8601 date and time as Ceilometer and oslo write them: with an offset or `Z`
/// (RFC 3339), or without one (then UTC), with `T` or a space between date and time, with or
/// without fractional seconds (`2026-11-22T19:53:05.297642`, `2026-11-22 19:53:05`,
/// `2026-11-22T19:53:05+01:00`).
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    None
}

/// Python's `datetime.isoformat()` of a naive UTC datetime with microseconds.
fn python_isoformat(t: &DateTime<Utc>) -> String {
    t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

fn required_str<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, Rejection> {
    match map.get(field) {
        None | Some(Value::Null) => Err(Rejection::MissingField(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Rejection::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn non_empty_str<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, Rejection> {
    let s = required_str(map, field)?;
    if s.is_empty() {
        return Err(Rejection::WrongType {
            field,
            expected: "a non-empty string",
        });
    }
    Ok(s)
}

fn optional_str(
    map: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, Rejection> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::WrongType {
            field,
            expected: "a string or null",
        }),
    }
}

/// A value shortened for a rejection message.
fn brief(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 64 {
        format!("{}…", text.chars().take(64).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;
    use serde_json::json;

    #[test]
    fn timestamps_without_offset_are_utc() {
        let expected = "2026-11-22T19:53:05.297642Z";
        for text in [
            "2026-11-22T19:53:05.297642",
            "2026-11-22 19:53:05.297642",
            "2026-11-22T19:53:05.297642Z",
            "2026-11-22T19:53:05.297642+00:00",
            "2026-11-22T20:53:05.297642+01:00",
            "2026-11-22T20:53:05.297642+0100",
        ] {
            let parsed = parse_timestamp(text).unwrap();
            assert_eq!(
                parsed.to_rfc3339_opts(SecondsFormat::Micros, true),
                expected,
                "{text}"
            );
        }
        assert!(parse_timestamp("2026-11-22T19:53").is_some());
        assert!(parse_timestamp("yesterday").is_none());
        assert!(parse_timestamp("2026-13-01T00:00:00").is_none());
    }

    #[test]
    fn to_wire_round_trips_and_verifies() {
        let wire = json!({
            "source": "openstack", "counter_name": "cpu", "counter_type": "cumulative",
            "counter_unit": "ns", "counter_volume": 1.5e10, "user_id": null,
            "project_id": "p", "resource_id": "host-1",
            "timestamp": "2026-11-22T19:53:05.000001", "resource_metadata": {"a": [1, "b"]},
            "message_id": "m-1",
        });
        let sample = from_wire(&wire).unwrap();
        let back = to_wire(&sample, "s3cret");
        assert!(verify_signature(&back, "s3cret"));
        assert_eq!(back["timestamp"], json!("2026-11-22T19:53:05.000001"));
        assert_eq!(from_wire(&Value::Object(back)).unwrap(), sample);
    }
}
