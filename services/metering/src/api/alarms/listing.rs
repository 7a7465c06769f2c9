//! Listing alarms: `GET /v2/alarms` with Aodh's simple filters (`q.field`/`q.op`/`q.value`,
//! `eq` only, on the fields Aodh allows), `sort=key:dir`, `limit` and `marker`; and
//! `POST /v2/query/alarms` with a complex query (see `complex_query`).
//!
//! Both work on the caller's visible alarms in memory: the store gives them in creation order
//! and the API filters, sorts and pages them. Alarm counts are those of a deployment's
//! operators (hundreds, thousands), not of its samples.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::{Extension, Json};
use serde_json::Value;

use super::super::auth::Access;
use super::super::complex_query::ComplexQuery;
use super::super::{query, Api, ApiError};
use super::masked;
use crate::model::{Alarm, QueryTerm};

/// The fields `GET /v2/alarms` filters on, as in Aodh.
const FILTER_FIELDS: &[&str] = &[
    "all_projects",
    "user_id",
    "project_id",
    "type",
    "name",
    "enabled",
    "state",
    "severity",
    "timestamp",
    "repeat_actions",
];

/// The fields an alarm can be sorted on or queried by.
pub(in crate::api) const ALARM_FIELDS: &[&str] = &[
    "alarm_id",
    "name",
    "description",
    "type",
    "enabled",
    "state",
    "state_reason",
    "severity",
    "timestamp",
    "state_timestamp",
    "evaluate_timestamp",
    "user_id",
    "project_id",
    "repeat_actions",
    "ok_actions",
    "alarm_actions",
    "insufficient_data_actions",
    "time_constraints",
];

/// Most `sort` keys in one request.
const MAX_SORT_KEYS: usize = 8;

/// Every alarm the caller may see, in creation order.
async fn visible_alarms(api: &Api, access: &Access) -> Result<Vec<Alarm>, ApiError> {
    let alarms = api.store.alarms().await?;
    Ok(alarms.into_iter().filter(|a| access.may_see(a)).collect())
}

/// `GET /v2/alarms?q.field=…&sort=name:asc&limit=N&marker=ID`: one page; a full page carries a
/// `Link: <…>; rel="next"` header.
pub(in crate::api) async fn list(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
) -> Result<(HeaderMap, Json<Vec<Alarm>>), ApiError> {
    let raw = raw.as_deref();
    let terms = query::query_terms(raw)?;
    check_filters(&terms)?;
    let sorts = sort_keys(raw)?;
    let limit = query::limit(raw)?;
    let marker = query::param(raw, "marker");
    let mut alarms: Vec<Alarm> = visible_alarms(&api, &access)
        .await?
        .into_iter()
        .filter(|alarm| passes(alarm, &terms, &access))
        .collect();
    if !sorts.is_empty() {
        alarms = sorted(alarms, &sorts);
    }
    let start = match &marker {
        Some(marker) => {
            alarms
                .iter()
                .position(|a| a.alarm_id == *marker)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("marker: no alarm {marker} to start after"))
                })?
                + 1
        }
        None => 0,
    };
    let page: Vec<Alarm> = alarms.into_iter().skip(start).take(limit).collect();
    let mut headers = HeaderMap::new();
    if page.len() == limit {
        if let Some(last) = page.last() {
            let next = format!(
                "</v2/alarms?limit={limit}&marker={}>; rel=\"next\"",
                percent_encoding::utf8_percent_encode(&last.alarm_id, query::UNRESERVED)
            );
            if let Ok(value) = HeaderValue::from_str(&next) {
                headers.insert(header::LINK, value);
            }
        }
    }
    Ok((headers, Json(page.into_iter().map(masked).collect())))
}

/// `POST /v2/query/alarms`: the alarms a complex query matches, sorted and limited as it says.
pub(in crate::api) async fn query(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    body: axum::body::Bytes,
) -> Result<Json<Vec<Alarm>>, ApiError> {
    let query = ComplexQuery::parse(&body, ALARM_FIELDS)?;
    let matching: Vec<Alarm> = visible_alarms(&api, &access)
        .await?
        .into_iter()
        .map(masked)
        .filter(|alarm| query.matches(&shown(alarm)))
        .collect();
    let mut sorted = query.sort(matching, shown);
    sorted.truncate(query.limit.unwrap_or(query::MAX_PAGE));
    Ok(Json(sorted))
}

fn shown(alarm: &Alarm) -> Value {
    serde_json::to_value(alarm).unwrap_or(Value::Null)
}

/// Aodh's checks: known fields, `eq` only, `all_projects` a boolean.
fn check_filters(terms: &[QueryTerm]) -> Result<(), ApiError> {
    for term in terms {
        if !FILTER_FIELDS.contains(&term.field.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute field. Value: '{}'. only fields {} are \
                 allowed",
                cut(&term.field),
                FILTER_FIELDS.join(", ")
            )));
        }
        if term.op != "eq" {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute op. Value: '{}'. only operations eq are \
                 allowed",
                cut(&term.op)
            )));
        }
        if ["all_projects", "enabled", "repeat_actions"].contains(&term.field.as_str())
            && boolean(&term.value).is_none()
        {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {}. Value: '{}'. not a boolean",
                term.field,
                cut(&term.value)
            )));
        }
    }
    Ok(())
}

fn cut(text: &str) -> String {
    text.chars().take(64).collect()
}

fn boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// Whether `alarm` passes every filter. `all_projects=false` limits even an admin to its own
/// project; without it an admin sees every project, as tidings' admins always have.
fn passes(alarm: &Alarm, terms: &[QueryTerm], access: &Access) -> bool {
    terms.iter().all(|term| {
        let value = term.value.as_str();
        match term.field.as_str() {
            "all_projects" => {
                boolean(value) != Some(false)
                    || access.identity().is_none_or(|identity| {
                        alarm.project_id.as_deref() == Some(identity.project_id.as_str())
                    })
            }
            "user_id" => alarm.user_id.as_deref() == Some(value),
            "project_id" => alarm.project_id.as_deref() == Some(value),
            "type" => alarm.alarm_type == value,
            "name" => alarm.name == value,
            "enabled" => boolean(value) == Some(alarm.enabled),
            "repeat_actions" => boolean(value) == Some(alarm.repeat_actions),
            "state" => alarm.state.as_str() == value,
            "severity" => alarm.severity == value,
            "timestamp" => query::timestamp(value).is_ok_and(|t| t == alarm.timestamp),
            _ => false,
        }
    })
}

/// `sort=key[:asc|desc]`, repeated; 400 naming a key that is not an alarm field.
fn sort_keys(raw: Option<&str>) -> Result<Vec<(String, bool)>, ApiError> {
    let keys: Vec<String> = query::pairs(raw)
        .filter(|(k, _)| k == "sort")
        .map(|(_, v)| v)
        .collect();
    if keys.len() > MAX_SORT_KEYS {
        return Err(ApiError::bad_request(format!(
            "sort: at most {MAX_SORT_KEYS} keys"
        )));
    }
    keys.iter()
        .map(|key| {
            let (field, direction) = key.split_once(':').unwrap_or((key, "asc"));
            if !ALARM_FIELDS.contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "sort: {:?} is not an alarm field",
                    cut(field)
                )));
            }
            match direction {
                "asc" => Ok((field.to_owned(), false)),
                "desc" => Ok((field.to_owned(), true)),
                other => Err(ApiError::bad_request(format!(
                    "sort: the direction of {field} is asc or desc, not {:?}",
                    cut(other)
                ))),
            }
        })
        .collect()
}

/// `alarms` sorted by `keys`, with the complex query's comparisons.
fn sorted(alarms: Vec<Alarm>, keys: &[(String, bool)]) -> Vec<Alarm> {
    ComplexQuery::ordered_by(keys.to_vec()).sort(alarms, shown)
}
