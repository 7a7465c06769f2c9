//! Alarm definitions from request bodies, checked field by field so that a 400 names the field
//! that is wrong, and bounded: names, lists of actions, query terms and time constraints have a
//! size limit. The fields are Aodh's alarm fields for threshold alarms; any other is refused by
//! name, as Aodh does. Fields the server sets (`alarm_id`, the timestamps, `state_reason`) are
//! accepted and ignored, because clients send an alarm back as `GET` showed it.
//!
//! Whether the actions may be called (the action policy) and who owns the alarm are decided by
//! the handlers in `alarms`, which know the policy and the caller.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::ApiError;
use crate::alarm_notifier::policy::MAX_ACTION_LEN;
use crate::evaluator::constraints::{self, MAX_CONSTRAINTS};
use crate::model::{
    Alarm, AlarmState, ComparisonOperator, QueryTerm, StatisticKind, ThresholdRule, TimeConstraint,
};

/// Longest alarm or constraint description.
pub const MAX_DESCRIPTION: usize = 4096;

/// Aodh's alarm fields: a body with any other is refused.
const ALARM_FIELDS: &[&str] = &[
    "alarm_id",
    "name",
    "description",
    "enabled",
    "ok_actions",
    "alarm_actions",
    "insufficient_data_actions",
    "repeat_actions",
    "type",
    "time_constraints",
    "project_id",
    "user_id",
    "timestamp",
    "state",
    "state_timestamp",
    "state_reason",
    "severity",
    "evaluate_timestamp",
    "threshold_rule",
];

/// Aodh's threshold rule fields.
const RULE_FIELDS: &[&str] = &[
    "meter_name",
    "threshold",
    "comparison_operator",
    "statistic",
    "period",
    "evaluation_periods",
    "query",
    "exclude_outliers",
];

/// A query term's fields (`type` is the value's type, as Aodh's clients send it).
const TERM_FIELDS: &[&str] = &["field", "op", "value", "type"];

/// A time constraint's fields.
const CONSTRAINT_FIELDS: &[&str] = &["name", "description", "start", "duration", "timezone"];

/// The first key of `object` not in `known`, as Aodh's error names it.
fn unknown_field(
    object: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
) -> Result<(), ApiError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(ApiError::bad_request(format!(
            "{prefix}{}: Unknown attribute for argument data: {}",
            truncated(key),
            truncated(key)
        ))),
        None => Ok(()),
    }
}

/// A peer's key, cut for an error message.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The `state` a body asks for, if any.
pub(super) fn requested_state(object: &Map<String, Value>) -> Result<Option<AlarmState>, ApiError> {
    optional_str(object, "state")?.map(parse_state).transpose()
}

/// A state by its wire name; the 400 names the accepted ones.
pub(super) fn parse_state(text: &str) -> Result<AlarmState, ApiError> {
    serde_json::from_value(json!(text)).map_err(|_| {
        ApiError::bad_request(format!(
            "state: {:?} is not one of ok, alarm, insufficient data",
            truncated(text)
        ))
    })
}

/// Most actions in one of an alarm's action lists.
pub const MAX_ACTIONS: usize = 10;

/// Longest alarm name, meter name or query value.
pub const MAX_TEXT: usize = 255;

/// Most terms in a threshold rule's query.
pub const MAX_RULE_TERMS: usize = 16;

/// The three action lists, by field name.
pub(super) const ACTION_FIELDS: [&str; 3] =
    ["alarm_actions", "ok_actions", "insufficient_data_actions"];

/// Builds an alarm from a POST body, naming the first field that is wrong. The alarm has a new
/// id, no owner yet and state `insufficient data`.
pub fn alarm_from_body(body: &Value, now: DateTime<Utc>) -> Result<Alarm, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("body must be a JSON object"))?;
    // The type first: another type's rule is not an unknown field but an unsupported type.
    let alarm_type = optional_str(object, "type")?.unwrap_or("threshold");
    if alarm_type != "threshold" {
        return Err(ApiError::bad_request(format!(
            "type: only \"threshold\" alarms are supported, got {alarm_type:?}"
        )));
    }
    unknown_field(object, ALARM_FIELDS, "")?;
    let name = required_str(object, "name")?;
    let rule = object
        .get("threshold_rule")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("threshold_rule: required object is missing"))?;
    unknown_field(rule, RULE_FIELDS, "threshold_rule.")?;
    if rule
        .get("exclude_outliers")
        .is_some_and(|v| v.as_bool() != Some(false))
    {
        return Err(ApiError::bad_request(
            "threshold_rule.exclude_outliers: only false is supported",
        ));
    }
    let comparison_operator =
        match optional_str(rule, "comparison_operator").map_err(prefix_rule)? {
            None => ComparisonOperator::Eq,
            Some(op) => serde_json::from_value(json!(op)).map_err(|_| {
                ApiError::bad_request(format!(
                "threshold_rule.comparison_operator: {op:?} is not one of lt, le, eq, ne, ge, gt"
            ))
            })?,
        };
    let statistic = match optional_str(rule, "statistic").map_err(prefix_rule)? {
        None => StatisticKind::Avg,
        Some(s) => serde_json::from_value(json!(s)).map_err(|_| {
            ApiError::bad_request(format!(
                "threshold_rule.statistic: {s:?} is not one of avg, min, max, sum, count"
            ))
        })?,
    };
    let threshold = rule
        .get("threshold")
        .and_then(Value::as_f64)
        .ok_or_else(|| ApiError::bad_request("threshold_rule.threshold: a number is required"))?;
    let period = positive_int(rule, "period", 60)?;
    let evaluation_periods = u32::try_from(positive_int(rule, "evaluation_periods", 1)?)
        .map_err(|_| ApiError::bad_request("threshold_rule.evaluation_periods: too large"))?;
    if let Some(Value::Array(terms)) = rule.get("query") {
        for (i, term) in terms.iter().enumerate() {
            if let Some(term) = term.as_object() {
                unknown_field(term, TERM_FIELDS, &format!("threshold_rule.query[{i}]."))?;
            }
        }
    }
    let query = match rule.get("query") {
        None | Some(Value::Null) => Vec::new(),
        Some(q) => serde_json::from_value::<Vec<QueryTerm>>(q.clone()).map_err(|e| {
            ApiError::bad_request(format!(
                "threshold_rule.query: expected a list of {{field, op, value}}: {e}"
            ))
        })?,
    };
    if query.len() > MAX_RULE_TERMS {
        return Err(ApiError::bad_request(format!(
            "threshold_rule.query: at most {MAX_RULE_TERMS} terms"
        )));
    }
    if query
        .iter()
        .any(|t| t.field.len() > MAX_TEXT || t.value.len() > MAX_TEXT || t.op.len() > MAX_TEXT)
    {
        return Err(ApiError::bad_request(format!(
            "threshold_rule.query: fields and values of at most {MAX_TEXT} bytes"
        )));
    }
    let severity = optional_str(object, "severity")?.unwrap_or("low");
    if !["low", "moderate", "critical"].contains(&severity) {
        return Err(ApiError::bad_request(format!(
            "severity: {severity:?} is not one of low, moderate, critical"
        )));
    }
    let [alarm_actions, ok_actions, insufficient_data_actions] =
        ACTION_FIELDS.map(|field| actions(object, field));
    let threshold_rule = ThresholdRule {
        meter_name: required_str(rule, "meter_name")
            .map_err(prefix_rule)?
            .to_owned(),
        threshold,
        comparison_operator,
        statistic,
        period,
        evaluation_periods,
        query,
    };
    let description = match optional_text(object, "description", MAX_DESCRIPTION)? {
        Some(text) if !text.is_empty() => text.to_owned(),
        _ => default_description(&threshold_rule),
    };
    Ok(Alarm {
        alarm_id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        description,
        alarm_type: "threshold".to_owned(),
        threshold_rule,
        state: requested_state(object)?.unwrap_or(AlarmState::InsufficientData),
        state_reason: "Not evaluated yet".to_owned(),
        state_timestamp: now,
        alarm_actions: alarm_actions?,
        ok_actions: ok_actions?,
        insufficient_data_actions: insufficient_data_actions?,
        repeat_actions: optional_bool(object, "repeat_actions", false)?,
        severity: severity.to_owned(),
        enabled: optional_bool(object, "enabled", true)?,
        timestamp: now,
        project_id: None,
        user_id: None,
        time_constraints: time_constraints(object)?,
        evaluate_timestamp: None,
    })
}

/// Aodh's description of a threshold alarm that has none.
fn default_description(rule: &ThresholdRule) -> String {
    let word = |v: Value| v.as_str().map(str::to_owned).unwrap_or_default();
    format!(
        "Alarm when {} is {} a {} of {:?} over {} seconds",
        rule.meter_name,
        word(json!(rule.comparison_operator)),
        word(json!(rule.statistic)),
        rule.threshold,
        rule.period
    )
}

/// `time_constraints`: a list of `{name, start, duration[, description][, timezone]}` with
/// distinct names, each checked by [`constraints::check`]. `duration` may come as a string of
/// digits, as the command-line client sends it.
fn time_constraints(object: &Map<String, Value>) -> Result<Vec<TimeConstraint>, ApiError> {
    let items = match object.get("time_constraints") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() > MAX_CONSTRAINTS => {
            return Err(ApiError::bad_request(format!(
                "time_constraints: at most {MAX_CONSTRAINTS} constraints"
            )))
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::bad_request(
                "time_constraints: must be a list of {name, start, duration}",
            ))
        }
    };
    let mut parsed: Vec<TimeConstraint> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("time_constraints[{i}]");
        let at = |error: ApiError| ApiError(error.0, format!("{field}.{}", error.1));
        let object = item
            .as_object()
            .ok_or_else(|| ApiError::bad_request(format!("{field}: must be an object")))?;
        unknown_field(object, CONSTRAINT_FIELDS, &format!("{field}."))?;
        let name = required_str(object, "name").map_err(at)?.to_owned();
        let start = required_str(object, "start").map_err(at)?.to_owned();
        let duration = match object.get("duration") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::bad_request(format!("{field}.duration: an integer ≥ 0 is required"))
        })?;
        let timezone = optional_str(object, "timezone").map_err(at)?.unwrap_or("");
        let description = match optional_text(object, "description", MAX_DESCRIPTION).map_err(at)? {
            Some(text) if !text.is_empty() => text.to_owned(),
            _ => format!("Time constraint at {start} lasting for {duration} seconds"),
        };
        let constraint = TimeConstraint {
            name,
            description,
            start,
            duration,
            timezone: timezone.to_owned(),
        };
        constraints::check(&constraint)
            .map_err(|reason| ApiError::bad_request(format!("{field}: {reason}")))?;
        if parsed.iter().any(|c| c.name == constraint.name) {
            return Err(ApiError::bad_request(format!(
                "{field}.name: Time constraint names must be unique for a given alarm."
            )));
        }
        parsed.push(constraint);
    }
    Ok(parsed)
}

/// An optional string of at most `max` bytes.
fn optional_text<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<&'a str>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > max => Err(ApiError::bad_request(format!(
            "{field}: at most {max} bytes"
        ))),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{field}: must be a string"))),
    }
}

fn prefix_rule(error: ApiError) -> ApiError {
    ApiError(error.0, format!("threshold_rule.{}", error.1))
}

fn required_str<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match object.get(field) {
        Some(Value::String(s)) if s.len() > MAX_TEXT => Err(ApiError::bad_request(format!(
            "{field}: at most {MAX_TEXT} bytes"
        ))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ApiError::bad_request(format!("{field}: must not be empty"))),
        Some(_) => Err(ApiError::bad_request(format!("{field}: must be a string"))),
        None => Err(ApiError::bad_request(format!(
            "{field}: required field is missing"
        ))),
    }
}

/// An optional string field (at most [`MAX_TEXT`] bytes).
pub(super) fn optional_str<'a>(
    object: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_TEXT => Err(ApiError::bad_request(format!(
            "{field}: at most {MAX_TEXT} bytes"
        ))),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{field}: must be a string"))),
    }
}

fn optional_bool(
    object: &Map<String, Value>,
    field: &str,
    default: bool,
) -> Result<bool, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request(format!(
            "{field}: must be true or false"
        ))),
    }
}

fn positive_int(rule: &Map<String, Value>, field: &str, default: u64) -> Result<u64, ApiError> {
    match rule.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::bad_request(format!("threshold_rule.{field}: must be an integer ≥ 1"))
        }),
    }
}

/// An action list: strings, at most [`MAX_ACTIONS`] of them, each at most [`MAX_ACTION_LEN`]
/// bytes. Schemes and hosts are the action policy's to judge.
fn actions(object: &Map<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() > MAX_ACTIONS => Err(ApiError::bad_request(
            format!("{field}: at most {MAX_ACTIONS} actions"),
        )),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_str() {
                Some(url) if url.len() > MAX_ACTION_LEN => Err(ApiError::bad_request(format!(
                    "{field}[{i}]: longer than {MAX_ACTION_LEN} bytes"
                ))),
                Some(url) if url.contains("://") => Ok(url.to_owned()),
                _ => Err(ApiError::bad_request(format!(
                    "{field}[{i}]: every action must be a URL such as log:// or http://host/path"
                ))),
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(format!(
            "{field}: must be a list of URLs"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn body() -> Value {
        json!({
            "name": "cpu-high",
            "type": "threshold",
            "threshold_rule": {
                "meter_name": "cpu_util", "threshold": 80.0, "comparison_operator": "gt",
                "statistic": "avg", "period": 60, "evaluation_periods": 2,
                "query": [{"field": "resource_id", "op": "eq", "value": "vm-1"}]
            },
            "alarm_actions": ["log://"],
            "severity": "critical"
        })
    }

    #[test]
    fn a_valid_body_makes_an_alarm_in_insufficient_data() {
        let alarm = alarm_from_body(&body(), Utc::now()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(alarm.state, AlarmState::InsufficientData);
        assert_eq!(alarm.threshold_rule.evaluation_periods, 2);
        assert_eq!(
            alarm.threshold_rule.comparison_operator,
            ComparisonOperator::Gt
        );
        assert!(alarm.enabled && !alarm.repeat_actions);
        assert_eq!(alarm.project_id, None);
        assert_eq!(
            alarm.description,
            "Alarm when cpu_util is gt a avg of 80.0 over 60 seconds"
        );
    }

    #[test]
    fn state_description_and_time_constraints_are_taken_as_given() {
        let mut body = body();
        body["state"] = json!("alarm");
        body["description"] = json!("hot");
        body["time_constraints"] = json!([{"name": "night", "start": "0 23 * * *", "duration": "10800",
                    "timezone": "Europe/Ljubljana"}]);
        let alarm = alarm_from_body(&body, Utc::now()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(alarm.state, AlarmState::Alarm);
        assert_eq!(alarm.description, "hot");
        assert_eq!(alarm.time_constraints[0].duration, 10800);
        assert_eq!(
            alarm.time_constraints[0].description,
            "Time constraint at 0 23 * * * lasting for 10800 seconds"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let long = json!("x".repeat(MAX_TEXT + 1));
        let many: Vec<&str> = vec!["log://"; MAX_ACTIONS + 1];
        let cases: &[(&str, Value, &str)] = &[
            ("/name", Value::Null, "name"),
            ("/name", long.clone(), "name"),
            (
                "/threshold_rule/meter_name",
                json!(5),
                "threshold_rule.meter_name",
            ),
            (
                "/threshold_rule/threshold",
                json!("high"),
                "threshold_rule.threshold",
            ),
            (
                "/threshold_rule/comparison_operator",
                json!("bigger"),
                "threshold_rule.comparison_operator",
            ),
            (
                "/threshold_rule/statistic",
                json!("median"),
                "threshold_rule.statistic",
            ),
            ("/threshold_rule/period", json!(0), "threshold_rule.period"),
            (
                "/threshold_rule/evaluation_periods",
                json!(-1),
                "threshold_rule.evaluation_periods",
            ),
            ("/alarm_actions", json!(["not a url"]), "alarm_actions[0]"),
            ("/ok_actions", json!(many), "ok_actions"),
            ("/severity", json!("meh"), "severity"),
            ("/repeat_actions", json!("yes"), "repeat_actions"),
            ("/type", json!("event"), "type"),
            ("/colour", json!("red"), "colour"),
            (
                "/threshold_rule/colour",
                json!("red"),
                "threshold_rule.colour",
            ),
            ("/state", json!("on fire"), "state"),
            (
                "/time_constraints",
                json!([{"name": "n", "start": "0 23 * *", "duration": 60}]),
                "time_constraints[0]",
            ),
            (
                "/time_constraints",
                json!([{"name": "n", "start": "0 23 * * *", "duration": "x"}]),
                "time_constraints[0].duration",
            ),
            (
                "/time_constraints",
                json!([{"name": "n", "start": "0 1 * * *", "duration": 1, "timezone": "Nowhere"}]),
                "time_constraints[0]",
            ),
            (
                "/time_constraints",
                json!([{"name": "n", "start": "0 1 * * *", "duration": 1},
                       {"name": "n", "start": "0 2 * * *", "duration": 1}]),
                "time_constraints[1].name",
            ),
        ];
        for (pointer, value, field) in cases {
            let mut body = body();
            let (parent, key) = pointer.rsplit_once('/').unwrap_or_default();
            let object = body
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .unwrap_or_else(|| panic!("{pointer}"));
            if value.is_null() {
                object.remove(key);
            } else {
                object.insert(key.to_owned(), value.clone());
            }
            let error = alarm_from_body(&body, Utc::now()).unwrap_err();
            assert_eq!(error.0, StatusCode::BAD_REQUEST);
            assert!(error.1.starts_with(field), "{pointer}: {}", error.1);
        }
    }
}
