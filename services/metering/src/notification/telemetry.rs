//! The polling agent's samples (`telemetry.polling`, payload `{"samples": [...]}`) re-published
//! as Ceilometer's `TelemetryIpc` endpoint does: each sample kept as it came (its
//! `message_id`, its timestamp as written), re-signed with the agent's secret, the volume
//! checked as the pipeline checks it. A payload without a sample list, or a sample without one
//! of the fields, or with a type that is not gauge/delta/cumulative, is fatal (Ceilometer
//! raises): the notification is dead-lettered.

use serde_json::{Map, Value};

use super::definitions::{Fatal, Finished, MeterSample};

const TYPES: [&str; 3] = ["gauge", "delta", "cumulative"];

/// The meter messages to publish, and the kinds of the samples dropped.
pub(super) fn republish(
    payload: &Value,
    secret: &str,
) -> Result<(Vec<Value>, Vec<&'static str>), Fatal> {
    let bad = |reason: String| Fatal::new("bad_polling_sample", reason);
    let samples = payload
        .get("samples")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the payload has no samples list".to_owned()))?;
    let mut out = Vec::with_capacity(samples.len());
    let mut dropped = Vec::new();
    for sample in samples {
        let Value::Object(fields) = sample else {
            return Err(bad("a sample is not an object".to_owned()));
        };
        let field = |key: &'static str| {
            fields
                .get(key)
                .cloned()
                .ok_or_else(|| bad(format!("a sample has no {key}")))
        };
        let counter_type = match field("counter_type")? {
            Value::String(t) if TYPES.contains(&t.as_str()) => t,
            other => return Err(bad(format!("unsupported type {other}"))),
        };
        let timestamp = match field("timestamp")? {
            Value::String(t) => t,
            other => return Err(bad(format!("timestamp {other} is not a string"))),
        };
        let volume = match super::definitions::check_volume(field("counter_volume")?)? {
            Ok(volume) => volume,
            Err(Finished::Dropped { kind, .. }) => {
                dropped.push(kind);
                continue;
            }
            Err(Finished::Sample(_)) => continue,
        };
        let resource_metadata = match field("resource_metadata")? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let source = match field("source")? {
            Value::String(s) if !s.is_empty() => s,
            _ => "openstack".to_owned(),
        };
        let message_id = match field("message_id")? {
            Value::String(id) if !id.is_empty() => id,
            _ => uuid::Uuid::new_v4().to_string(),
        };
        let meter = MeterSample {
            name: field("counter_name")?,
            counter_type,
            unit: field("counter_unit")?,
            volume,
            user_id: field("user_id")?,
            user_name: fields.get("user_name").cloned().unwrap_or(Value::Null),
            project_id: field("project_id")?,
            project_name: fields.get("project_name").cloned().unwrap_or(Value::Null),
            resource_id: field("resource_id")?,
            timestamp,
            resource_metadata,
            source,
        };
        out.push(Value::Object(meter.to_message(&message_id, secret)));
    }
    Ok((out, dropped))
}
