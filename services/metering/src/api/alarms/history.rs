//! Alarm history as Aodh shows it: `GET /v2/alarms/{id}/history` (newest first; `q` filters on
//! `type`, `severity`, `user_id`, `project_id` and `timestamp` ranges; `sort`, `limit`, and
//! `marker` by `event_id`) and `POST /v2/query/alarms/history` (a complex query over the
//! history of every alarm the caller sees).
//!
//! Each entry has Aodh's fields — `event_id`, `alarm_id`, `type`, `detail` (a JSON document
//! in a string), `user_id`, `project_id`, `on_behalf_of`, `timestamp`, `severity` — and keeps
//! tidings' own (`previous`, `current`, `reason`, `reason_data`) beside them. Credentials are
//! masked in every one.

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::super::auth::Access;
use super::super::complex_query::ComplexQuery;
use super::super::{query, Api, ApiError};
use super::guard;
use crate::model::AlarmChange;
use crate::secrets;
use crate::store::StoreError;

/// The fields a history entry can be queried and sorted by.
const HISTORY_FIELDS: &[&str] = &[
    "event_id",
    "alarm_id",
    "type",
    "detail",
    "user_id",
    "project_id",
    "on_behalf_of",
    "timestamp",
    "severity",
];

/// The fields `q` may filter the history of one alarm on.
const FILTER_FIELDS: &[&str] = &["type", "severity", "user_id", "project_id", "timestamp"];

/// Most alarms whose history one search reads.
const MAX_SEARCHED_ALARMS: usize = 10_000;

/// One entry as the API shows it.
pub(in crate::api) fn shown(change: &AlarmChange) -> Value {
    let detail = change
        .detail
        .clone()
        .unwrap_or_else(|| derived_detail(change));
    let detail = secrets::mask_json(&detail);
    json!({
        "event_id": change.event_id,
        "alarm_id": change.alarm_id,
        "type": change.change_type,
        "detail": detail.to_string(),
        "user_id": change.user_id,
        "project_id": change.project_id,
        "on_behalf_of": change.on_behalf_of,
        "timestamp": change.timestamp,
        "severity": change.severity,
        "previous": change.previous,
        "current": change.current,
        "reason": secrets::mask_text(&change.reason),
        "reason_data": secrets::mask_json(&change.reason_data),
    })
}

/// Aodh's detail for an entry stored before tidings kept one: the alarm for a creation or rule
/// change, the new state and why for a transition.
fn derived_detail(change: &AlarmChange) -> Value {
    match change.change_type.as_str() {
        "creation" | "rule change" => change.reason_data.clone(),
        _ => json!({"state": change.current.as_str(), "transition_reason": change.reason}),
    }
}

/// `GET /v2/alarms/{id}/history`.
pub(in crate::api) async fn history(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let raw = raw.as_deref();
    let limit = query::limit(raw)?;
    let terms = query::query_terms(raw)?;
    let filter = filter_from_terms(&terms)?;
    let orderby = sort_keys(raw)?;
    guard::visible(&api, &access, &id).await?;
    let mut changes = api.store.history(&id).await?;
    // Newest first, as Aodh lists them.
    changes.reverse();
    let entries: Vec<Value> = changes
        .iter()
        .map(shown)
        .filter(|entry| filter.matches(entry))
        .collect();
    let entries = orderby.sort(entries, Value::clone);
    let start = match query::param(raw, "marker") {
        Some(marker) => {
            entries
                .iter()
                .position(|e| e["event_id"] == marker.as_str())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("marker: no history entry {marker}"))
                })?
                + 1
        }
        None => 0,
    };
    Ok(Json(entries.into_iter().skip(start).take(limit).collect()))
}

/// `POST /v2/query/alarms/history`: entries of every alarm the caller sees (for a user: those
/// on behalf of its project) that the filter matches, newest first unless `orderby` says.
pub(in crate::api) async fn search(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    body: axum::body::Bytes,
) -> Result<Json<Vec<Value>>, ApiError> {
    let query = ComplexQuery::parse(&body, HISTORY_FIELDS)?;
    let alarms = api.store.alarms().await?;
    let mut entries = Vec::new();
    for alarm in alarms
        .iter()
        .filter(|a| access.may_see(a))
        .take(MAX_SEARCHED_ALARMS)
    {
        let changes = match api.store.history(&alarm.alarm_id).await {
            Ok(changes) => changes,
            // Deleted since the listing: nothing to show.
            Err(StoreError::NoSuchAlarm(_)) => continue,
            Err(other) => return Err(other.into()),
        };
        for change in changes {
            let visible = access
                .project_scope()
                .is_none_or(|project| change.on_behalf_of.as_deref() == Some(project));
            let entry = shown(&change);
            if visible && query.matches(&entry) {
                entries.push(entry);
            }
        }
    }
    entries.sort_by(|a, b| b["timestamp"].as_str().cmp(&a["timestamp"].as_str()));
    let mut entries = query.sort(entries, Value::clone);
    entries.truncate(query.limit.unwrap_or(query::MAX_PAGE));
    Ok(Json(entries))
}

/// Aodh's history filters as a complex query: `eq` on the fields, `lt`/`le`/`gt`/`ge` on
/// `timestamp`.
fn filter_from_terms(terms: &[crate::model::QueryTerm]) -> Result<ComplexQuery, ApiError> {
    let mut clauses = Vec::new();
    for term in terms {
        let field = term.field.as_str();
        if !FILTER_FIELDS.contains(&field) {
            return Err(ApiError::bad_request(format!(
                "Unknown argument: \"{}\": unrecognized field in query, valid keys: {}",
                term.field.chars().take(64).collect::<String>(),
                FILTER_FIELDS.join(", ")
            )));
        }
        let op = match (field, term.op.as_str()) {
            (_, "eq") => "=",
            ("timestamp", "lt") => "<",
            ("timestamp", "le") => "<=",
            ("timestamp", "gt") => ">",
            ("timestamp", "ge") => ">=",
            (_, other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for field/attribute op. Value: '{}'. unimplemented operator \
                     for {field}",
                    other.chars().take(16).collect::<String>()
                )))
            }
        };
        if field == "timestamp" {
            query::timestamp(&term.value)?;
        }
        clauses.push(json!({ op: { field: term.value } }));
    }
    let filter = match clauses.len() {
        0 => return Ok(ComplexQuery::ordered_by(Vec::new())),
        1 => clauses.remove(0),
        _ => json!({ "and": clauses }),
    };
    let body = json!({"filter": filter.to_string()});
    ComplexQuery::parse(body.to_string().as_bytes(), HISTORY_FIELDS)
}

/// `sort=key[:dir]` over history fields.
fn sort_keys(raw: Option<&str>) -> Result<ComplexQuery, ApiError> {
    let keys: Vec<Value> = query::pairs(raw)
        .filter(|(k, _)| k == "sort")
        .take(9)
        .map(|(_, v)| {
            let (field, direction) = v.split_once(':').unwrap_or((v.as_str(), "asc"));
            let mut key = Map::new();
            key.insert(field.to_owned(), Value::String(direction.to_owned()));
            Value::Object(key)
        })
        .collect();
    if keys.is_empty() {
        return Ok(ComplexQuery::ordered_by(Vec::new()));
    }
    let body = json!({"orderby": Value::Array(keys).to_string()});
    ComplexQuery::parse(body.to_string().as_bytes(), HISTORY_FIELDS)
        .map_err(|e| ApiError::bad_request(format!("sort: {}", e.message())))
}
