//! From a definition's values to a sample, by the rules of Ceilometer's
//! `Sample.from_notification` and its pipeline's volume check:
//! - no metadata (every value empty) → a copy of the payload plus `event_type` and `host`
//!   (the publisher id);
//! - the timestamp is the definition's when it found one, else the notification's, written as
//!   `isoformat()` (see `timestamp`); one that does not parse is fatal;
//! - a type that is not gauge, delta or cumulative is fatal;
//! - a volume that is null or not a number is dropped; a numeric string becomes the number
//!   (Ceilometer passes the string on), `true`/`false` become 1/0; a list or an object is fatal.
//!
//! "Fatal" is where Ceilometer raises and requeues the notification forever; the agent
//! dead-letters it instead.

use serde_json::{Map, Number, Value};

use super::meter::TYPES;
use crate::notification::jsonpath::truthy;
use crate::notification::timestamp::{isoformat, parse_isotime};

/// One sample's values as a definition found them.
#[derive(Clone, Debug)]
pub(crate) struct Draft {
    pub(crate) name: Value,
    pub(crate) counter_type: Value,
    pub(crate) unit: Value,
    pub(crate) volume: Value,
    pub(crate) timestamp: Value,
    pub(crate) user_id: Value,
    pub(crate) project_id: Value,
    pub(crate) resource_id: Value,
    pub(crate) metadata: Map<String, Value>,
}

impl Draft {
    /// The field of one of [`ATTRIBUTES`](super::meter::ATTRIBUTES) (`metadata` and `message`
    /// are not attributes; anything else is `user_id`, which never happens).
    pub(crate) fn field(&mut self, attribute: &str) -> &mut Value {
        match attribute {
            "name" => &mut self.name,
            "type" => &mut self.counter_type,
            "volume" => &mut self.volume,
            "unit" => &mut self.unit,
            "timestamp" => &mut self.timestamp,
            "project_id" => &mut self.project_id,
            "resource_id" => &mut self.resource_id,
            _ => &mut self.user_id,
        }
    }
}

/// A sample as the `notifier://` publisher sends it, less its id and signature.
#[derive(Clone, Debug, PartialEq)]
pub struct MeterSample {
    /// `counter_name`.
    pub name: Value,
    /// `counter_type`.
    pub counter_type: String,
    /// `counter_unit`.
    pub unit: Value,
    /// `counter_volume`: a JSON number.
    pub volume: Value,
    /// `user_id`.
    pub user_id: Value,
    /// `user_name` (null: tidings does not look names up).
    pub user_name: Value,
    /// `project_id`.
    pub project_id: Value,
    /// `project_name` (null, as `user_name`).
    pub project_name: Value,
    /// `resource_id`.
    pub resource_id: Value,
    /// `timestamp`, as `isoformat()` writes it.
    pub timestamp: String,
    /// `resource_metadata`.
    pub resource_metadata: Map<String, Value>,
    /// `source`.
    pub source: String,
}

impl MeterSample {
    /// Ceilometer's meter message (`meter_message_from_counter`) with `message_id`, signed
    /// with `secret` as the collector checks it; `monotonic_time` null.
    pub fn to_message(&self, message_id: &str, secret: &str) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("source".into(), Value::String(self.source.clone()));
        map.insert("counter_name".into(), self.name.clone());
        map.insert(
            "counter_type".into(),
            Value::String(self.counter_type.clone()),
        );
        map.insert("counter_unit".into(), self.unit.clone());
        map.insert("counter_volume".into(), self.volume.clone());
        map.insert("user_id".into(), self.user_id.clone());
        map.insert("user_name".into(), self.user_name.clone());
        map.insert("project_id".into(), self.project_id.clone());
        map.insert("project_name".into(), self.project_name.clone());
        map.insert("resource_id".into(), self.resource_id.clone());
        map.insert("timestamp".into(), Value::String(self.timestamp.clone()));
        map.insert(
            "resource_metadata".into(),
            Value::Object(self.resource_metadata.clone()),
        );
        map.insert("message_id".into(), Value::String(message_id.to_owned()));
        map.insert("monotonic_time".into(), Value::Null);
        let signature = crate::sample::compute_signature(&map, secret);
        map.insert("message_signature".into(), Value::String(signature));
        map
    }
}

/// What became of one draft.
#[derive(Clone, Debug, PartialEq)]
pub enum Finished {
    /// A sample to publish.
    Sample(Box<MeterSample>),
    /// Dropped, as Ceilometer drops it: no volume (`no_volume`), a volume that is not a number
    /// (`volume_not_a_number`), values of unequal counts in a `lookup` definition
    /// (`lookup_mismatch`).
    Dropped {
        /// A short, stable label for counters.
        kind: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// Why a notification cannot give samples where Ceilometer raises (and so requeues it forever):
/// the agent dead-letters it with this reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Fatal {
    /// A short, stable label for counters: `bad_timestamp`, `unsupported_type`,
    /// `volume_not_a_scalar`, `payload_not_an_object`, `too_many_matches`,
    /// `bad_polling_sample`.
    pub kind: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl Fatal {
    pub(crate) fn new(kind: &'static str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }
}

/// The notification's parts a sample takes from it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Origin<'a> {
    pub(crate) payload: &'a Value,
    pub(crate) event_type: &'a str,
    pub(crate) publisher_id: &'a str,
    pub(crate) timestamp: &'a str,
}

impl Draft {
    /// Applies the rules of the module docs; `Err` is fatal for the whole notification.
    pub(crate) fn finish(self, origin: Origin<'_>, source: &str) -> Result<Finished, Fatal> {
        let metadata = if self.metadata.is_empty() {
            let mut copy = match origin.payload {
                Value::Object(payload) => payload.clone(),
                _ => Map::new(),
            };
            copy.insert(
                "event_type".into(),
                Value::String(origin.event_type.to_owned()),
            );
            copy.insert("host".into(), Value::String(origin.publisher_id.to_owned()));
            copy
        } else {
            self.metadata
        };
        let timestamp = if truthy(&self.timestamp) {
            match &self.timestamp {
                Value::String(text) => text.as_str(),
                other => {
                    return Err(Fatal::new(
                        "bad_timestamp",
                        format!("timestamp {} is not a date", brief(other)),
                    ))
                }
            }
        } else {
            origin.timestamp
        };
        let timestamp = parse_isotime(timestamp)
            .map(|t| isoformat(&t))
            .ok_or_else(|| {
                Fatal::new(
                    "bad_timestamp",
                    format!("timestamp {:?} is not an ISO 8601 date", cut(timestamp)),
                )
            })?;
        let counter_type = match self.counter_type.as_str() {
            Some(t) if TYPES.contains(&t) => t.to_owned(),
            _ => {
                return Err(Fatal::new(
                    "unsupported_type",
                    format!("unsupported type {}", brief(&self.counter_type)),
                ))
            }
        };
        let volume = match check_volume(self.volume)? {
            Ok(volume) => volume,
            Err(dropped) => return Ok(dropped),
        };
        Ok(Finished::Sample(Box::new(MeterSample {
            name: self.name,
            counter_type,
            unit: self.unit,
            volume,
            user_id: self.user_id,
            user_name: Value::Null,
            project_id: self.project_id,
            project_name: Value::Null,
            resource_id: self.resource_id,
            timestamp,
            resource_metadata: metadata,
            source: source.to_owned(),
        })))
    }
}

/// Ceilometer's pipeline volume check: the volume to publish, or the sample dropped
/// (`Ok(Err(_))`), or fatal (a list or an object, on which Python's `float()` raises).
pub(crate) fn check_volume(volume: Value) -> Result<Result<Value, Finished>, Fatal> {
    Ok(Ok(match volume {
        Value::Null => {
            return Ok(Err(Finished::Dropped {
                kind: "no_volume",
                reason: "no volume".to_owned(),
            }))
        }
        Value::Number(n) => Value::Number(n),
        Value::Bool(b) => Value::from(u8::from(b)),
        Value::String(text) => match python_float(&text) {
            Some(number) => number,
            None => {
                return Ok(Err(Finished::Dropped {
                    kind: "volume_not_a_number",
                    reason: format!("volume {:?} is not a number", cut(&text)),
                }))
            }
        },
        other @ (Value::Array(_) | Value::Object(_)) => {
            return Err(Fatal::new(
                "volume_not_a_scalar",
                format!("volume {} is not a number", brief(&other)),
            ))
        }
    }))
}

/// A numeric string as the number Python's `float()` reads in it (an integer stays one);
/// `None` where `float()` raises, or for infinities and NaN, which JSON cannot carry.
fn python_float(text: &str) -> Option<Value> {
    let cleaned: String = text.trim().chars().filter(|&c| c != '_').collect();
    if let Ok(i) = cleaned.parse::<i64>() {
        return Some(Value::from(i));
    }
    let f: f64 = cleaned.parse().ok()?;
    Number::from_f64(f).map(Value::Number)
}

fn cut(text: &str) -> String {
    text.chars().take(64).collect()
}

fn brief(value: &Value) -> String {
    cut(&value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn draft(volume: Value) -> Draft {
        Draft {
            name: json!("m"),
            counter_type: json!("gauge"),
            unit: json!("B"),
            volume,
            timestamp: Value::Null,
            user_id: Value::Null,
            project_id: Value::Null,
            resource_id: json!("r"),
            metadata: Map::new(),
        }
    }

    fn origin(payload: &Value) -> Origin<'_> {
        Origin {
            payload,
            event_type: "e.x",
            publisher_id: "svc.host",
            timestamp: "2026-11-20 09:15:44.601733",
        }
    }

    #[test]
    fn empty_metadata_is_the_payload_with_event_type_and_host() {
        let payload = json!({"a": 1, "host": "overwritten"});
        let Ok(Finished::Sample(sample)) = draft(json!(1)).finish(origin(&payload), "openstack")
        else {
            panic!("no sample");
        };
        assert_eq!(
            Value::Object(sample.resource_metadata),
            json!({"a": 1, "event_type": "e.x", "host": "svc.host"})
        );
        assert_eq!(sample.timestamp, "2026-11-20T09:15:44.601733+00:00");
    }

    #[test]
    fn volumes_follow_the_pipeline_check() {
        let payload = json!({});
        let finish = |v: Value| draft(v).finish(origin(&payload), "openstack");
        assert!(matches!(finish(Value::Null), Ok(Finished::Dropped { .. })));
        assert!(matches!(
            finish(json!("lots")),
            Ok(Finished::Dropped { .. })
        ));
        assert!(finish(json!({"a": 1})).is_err());
        assert!(finish(json!([1])).is_err());
        let volume = |v: Value| match finish(v) {
            Ok(Finished::Sample(s)) => s.volume,
            other => panic!("{other:?}"),
        };
        assert_eq!(volume(json!(" 40 ")), json!(40));
        assert_eq!(volume(json!("1.5e3")), json!(1500.0));
        assert_eq!(volume(json!(true)), json!(1));
        assert_eq!(volume(json!(2.5)), json!(2.5));
    }

    #[test]
    fn bad_timestamps_and_types_are_fatal() {
        let payload = json!({});
        let mut bad = draft(json!(1));
        bad.timestamp = json!("yesterday");
        assert!(bad.finish(origin(&payload), "s").is_err());
        let mut bad = draft(json!(1));
        bad.counter_type = json!("rate");
        assert!(bad.finish(origin(&payload), "s").is_err());
    }
}
