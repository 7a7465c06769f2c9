//! `tidings meter check-definitions FILE`: what each definition makes of the notifications in
//! a file, for operators writing their own definitions. Nothing is published.
//!
//! The file holds one notification, a JSON list of them, or one per line, each in any of the
//! forms a notification is seen in: the oslo envelope (`{"oslo.version": "2.0", "oslo.message":
//! "…"}`), the message itself (`event_type`, `payload`, `publisher_id`, `priority`,
//! `timestamp`, `message_id`, `_context_*`), or Ceilometer's dispatcher form (`ctxt`,
//! `publisher_id`, `event_type`, `payload`, `metadata: {message_id, timestamp}`). A missing
//! priority is `info`, a missing message id a fixed one; a missing timestamp is reported as the
//! agent would treat it.
//!
//! The answer is one JSON object per line: first the definitions (`loaded`, `files`,
//! `problems`), then one per notification: its `verdict` (`published`, `nothing`,
//! `dead_letter` with the `reason`, `ignored` for a priority that is not metered) and, per
//! matching definition, the `samples` it makes (as published, less `message_id` and
//! `message_signature`), what it `dropped` and why, or the `fatal` reason.

use serde_json::{json, Map, Value};

use super::definitions::{self, DefinitionSet, Finished, SampleOptions};
use crate::sample::contract::POLLING_EVENT_TYPE;

/// Why the file could not be read as notifications.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckError(pub String);

/// A notification read from the file.
struct Read {
    context: Map<String, Value>,
    publisher_id: String,
    event_type: String,
    priority: String,
    payload: Value,
    message_id: String,
    timestamp: Option<String>,
}

/// The lines to print for `text` (the notifications file) against `set`.
pub fn check(
    set: &DefinitionSet,
    text: &str,
    options: &SampleOptions,
) -> Result<Vec<Value>, CheckError> {
    let mut lines = vec![json!({
        "definitions": {
            "loaded": set.len(),
            "names": set.names().collect::<Vec<_>>(),
            "files": set.files(),
            "problems": set.problems(),
        }
    })];
    for (index, value) in notifications(text)?.into_iter().enumerate() {
        let read = read(value).map_err(|e| CheckError(format!("notification {index}: {e}")))?;
        lines.push(evaluate(set, index, read, options));
    }
    Ok(lines)
}

fn notifications(text: &str) -> Result<Vec<Value>, CheckError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(list)) => Ok(list),
        Ok(one) => Ok(vec![one]),
        Err(whole) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| {
                    CheckError(format!(
                        "not JSON ({whole}), nor JSON lines (line {}: {e})",
                        i + 1
                    ))
                })
            })
            .collect(),
    }
}

fn read(value: Value) -> Result<Read, String> {
    let Value::Object(mut map) = value else {
        return Err("not a JSON object".to_owned());
    };
    if let Some(Value::String(inner)) = map.get("oslo.message") {
        let inner: Value =
            serde_json::from_str(inner).map_err(|e| format!("oslo.message is not JSON: {e}"))?;
        return read(inner);
    }
    let mut text = |key: &str| match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let event_type = text("event_type").ok_or("no event_type")?;
    let publisher_id = text("publisher_id").unwrap_or_default();
    let priority = text("priority").unwrap_or_else(|| "INFO".to_owned());
    let mut message_id = text("message_id");
    let mut timestamp = text("timestamp");
    if let Some(Value::Object(metadata)) = map.remove("metadata") {
        let field = |k: &str| metadata.get(k).and_then(Value::as_str).map(str::to_owned);
        message_id = message_id.or_else(|| field("message_id"));
        timestamp = timestamp.or_else(|| field("timestamp"));
    }
    let payload = map.remove("payload").unwrap_or(Value::Null);
    let mut context = match map.remove("ctxt") {
        Some(Value::Object(ctxt)) => ctxt,
        _ => Map::new(),
    };
    for (key, value) in map {
        if let Some(name) = key.strip_prefix("_context_") {
            context.insert(name.to_owned(), value);
        }
    }
    Ok(Read {
        context,
        publisher_id,
        event_type,
        priority,
        payload,
        message_id: message_id.unwrap_or_else(|| "00000000-0000-4000-8000-000000000000".to_owned()),
        timestamp,
    })
}

fn evaluate(set: &DefinitionSet, index: usize, n: Read, options: &SampleOptions) -> Value {
    let mut line = Map::new();
    line.insert("notification".into(), json!(index));
    line.insert("event_type".into(), json!(n.event_type));
    line.insert("priority".into(), json!(n.priority));
    let verdict = |line: &mut Map<String, Value>, verdict: &str, reason: Option<String>| {
        line.insert("verdict".into(), json!(verdict));
        if let Some(reason) = reason {
            line.insert("reason".into(), json!(reason));
        }
    };
    let priority = n.priority.to_ascii_lowercase();
    if !matches!(priority.as_str(), "info" | "sample") {
        verdict(
            &mut line,
            "ignored",
            Some(format!(
                "priority {} is not metered (only info and sample are)",
                n.priority
            )),
        );
        return Value::Object(line);
    }
    if n.event_type == POLLING_EVENT_TYPE {
        verdict(
            &mut line,
            "published",
            Some("the polling agent's samples are re-published as they are".to_owned()),
        );
        return Value::Object(line);
    }
    if !set.any_match(&n.event_type) {
        verdict(
            &mut line,
            "nothing",
            Some("no definition matches the event type".to_owned()),
        );
        return Value::Object(line);
    }
    let Some(timestamp) = n.timestamp else {
        verdict(
            &mut line,
            "dead_letter",
            Some("the notification has no timestamp".to_owned()),
        );
        return Value::Object(line);
    };
    if !n.payload.is_object() {
        verdict(
            &mut line,
            "dead_letter",
            Some("the payload is not an object".to_owned()),
        );
        return Value::Object(line);
    }
    let root = definitions::root(
        n.context,
        n.publisher_id,
        n.event_type,
        n.payload,
        n.message_id,
        timestamp,
    );
    let outcomes = match set.evaluate(&root, options) {
        Ok(outcomes) => outcomes,
        Err(error) => {
            verdict(&mut line, "dead_letter", Some(error.to_string()));
            return Value::Object(line);
        }
    };
    let mut published = 0;
    let mut fatal = None;
    let mut shown = Vec::new();
    for outcome in outcomes {
        let mut entry = Map::new();
        entry.insert("definition".into(), json!(outcome.definition));
        match outcome.result {
            Err(f) => {
                entry.insert("fatal".into(), json!(f.reason));
                fatal.get_or_insert(format!("definition {}: {}", outcome.definition, f.reason));
            }
            Ok(finished) => {
                let mut samples = Vec::new();
                let mut dropped = Vec::new();
                for f in finished {
                    match f {
                        Finished::Sample(sample) => {
                            let mut message = sample.to_message("", "");
                            message.remove("message_id");
                            message.remove("message_signature");
                            samples.push(Value::Object(message));
                        }
                        Finished::Dropped { kind, reason } => {
                            dropped.push(json!({"kind": kind, "reason": reason}))
                        }
                    }
                }
                published += samples.len();
                entry.insert("samples".into(), Value::Array(samples));
                if !dropped.is_empty() {
                    entry.insert("dropped".into(), Value::Array(dropped));
                }
            }
        }
        shown.push(Value::Object(entry));
    }
    match fatal {
        Some(reason) => verdict(&mut line, "dead_letter", Some(reason)),
        None if published > 0 => verdict(&mut line, "published", None),
        None => verdict(
            &mut line,
            "nothing",
            Some("every sample was dropped".to_owned()),
        ),
    }
    line.insert("definitions".into(), Value::Array(shown));
    Value::Object(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_of_a_notification_read_alike() {
        let set = DefinitionSet::load(&[]).unwrap_or_else(|e| panic!("{e}"));
        let inner = json!({
            "message_id": "m", "publisher_id": "image.host", "event_type": "image.upload",
            "priority": "INFO", "timestamp": "2026-11-20 09:15:44.601733",
            "payload": {"id": "img", "size": 42, "owner": "p"}, "_context_user": "u",
        });
        let envelope = json!({"oslo.version": "2.0", "oslo.message": inner.to_string()});
        let dispatcher = json!({
            "ctxt": {"user": "u"}, "publisher_id": "image.host", "event_type": "image.upload",
            "payload": {"id": "img", "size": 42, "owner": "p"},
            "metadata": {"message_id": "m", "timestamp": "2026-11-20 09:15:44.601733"},
        });
        let text = Value::Array(vec![inner, envelope, dispatcher]).to_string();
        let lines = check(&set, &text, &SampleOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lines.len(), 4);
        for line in &lines[1..] {
            assert_eq!(line["verdict"], json!("published"), "{line}");
            let sample = &line["definitions"][0]["samples"][0];
            assert_eq!(sample["counter_name"], json!("image.size"));
            assert_eq!(sample["counter_volume"], json!(42));
            assert_eq!(sample["user_id"], json!("u"));
        }
    }

    #[test]
    fn bad_notifications_say_why() {
        let set = DefinitionSet::load(&[]).unwrap_or_else(|e| panic!("{e}"));
        let text = [
            json!({"event_type": "image.upload", "payload": {"id": "i", "size": 1}}),
            json!({"event_type": "image.upload", "payload": [1], "timestamp": "2026-01-01"}),
            json!({"event_type": "image.upload", "payload": {"id": "i", "size": {"a": 1}}, "timestamp": "2026-01-01"}),
            json!({"event_type": "image.upload", "priority": "ERROR", "payload": {}}),
            json!({"event_type": "nothing.here", "payload": {}}),
        ]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
        let lines = check(&set, &text, &SampleOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let verdicts: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l["verdict"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            verdicts,
            [
                "dead_letter",
                "dead_letter",
                "dead_letter",
                "ignored",
                "nothing"
            ]
        );
    }
}
