//! Aodh's alarm endpoints for threshold alarms, as python-aodhclient uses them:
//! - `GET /v2/alarms` (filters, sort, paging) and `POST /v2/query/alarms` — [`listing`];
//! - `POST /v2/alarms`, `GET`/`PUT`/`DELETE /v2/alarms/{id}`, `GET`/`PUT
//!   /v2/alarms/{id}/state` — here;
//! - `GET /v2/alarms/{id}/history` and `POST /v2/query/alarms/history` — [`history`].
//!
//! Every one is scoped to what the caller's [`Access`] may see ([`guard`]); bodies are checked
//! by `body`, which names the field that is wrong.

mod guard;
pub(super) mod history;
pub(super) mod listing;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::{Extension, Json};
use chrono::Utc;
use serde_json::{json, Map, Value};

use super::auth::Access;
use super::body;
use super::{Api, ApiError};
use crate::model::{Alarm, AlarmChange, AlarmState};
use crate::secrets;

pub(super) use guard::masked;

/// Aodh's reason for a state set through the API.
pub const REASON_MANUAL: &str = "Manually set via API";

/// Aodh's reason for a new alarm.
pub const REASON_NEW: &str = "Not evaluated yet";

/// `GET /v2/alarms/{id}`.
pub(super) async fn show(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<Alarm>, ApiError> {
    Ok(Json(masked(guard::visible(&api, &access, &id).await?)))
}

/// `DELETE /v2/alarms/{id}`: the alarm and its history go (as in Aodh's SQL store).
pub(super) async fn delete(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let alarm = guard::visible(&api, &access, &id).await?;
    api.store.delete_alarm(&id).await?;
    // Aodh announces a deletion without recording it: the history goes with the alarm.
    let mut change = made_by(
        AlarmChange::new(&alarm, "deletion", alarm.state, "alarm deleted"),
        &access,
    );
    change.detail = Some(json!({"state": alarm.state.as_str()}));
    if let Some(identity) = access.identity() {
        change.on_behalf_of = Some(identity.project_id.clone());
    }
    api.publish(&change);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v2/alarms`: a new alarm owned by the caller's project (an admin may name another),
/// 201 with its `Location`.
pub(super) async fn create(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, HeaderMap, Json<Alarm>), ApiError> {
    let body = json_object(&body)?;
    let mut alarm = body::alarm_from_body(&Value::Object(body.clone()), Utc::now())?;
    let (project, user) = guard::owner(&body, &access, None)?;
    alarm.project_id = project;
    alarm.user_id = user;
    alarm.state_reason = REASON_NEW.to_owned();
    guard::scope_rule(&mut alarm, &access)?;
    guard::check_actions(&api, &alarm).await?;
    api.store.create_alarm(&alarm).await?;
    // The creation entry as stored, so that its event id is the one history shows.
    if let Some(created) = api.store.history(&alarm.alarm_id).await?.first() {
        api.publish(created);
    }
    let mut headers = HeaderMap::new();
    let location = format!(
        "/v2/alarms/{}",
        percent_encoding::utf8_percent_encode(&alarm.alarm_id, super::query::UNRESERVED)
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    Ok((StatusCode::CREATED, headers, Json(masked(alarm))))
}

/// `PUT /v2/alarms/{id}`: a new definition for an existing alarm (the whole body, as
/// aodhclient sends it: the alarm as `GET` showed it, with the changes). Its id and creation
/// time stay; its state too unless the body asks for another (then the reason is Aodh's
/// "Manually set via API"); its owner unless an admin names another. An action sent back
/// masked keeps its stored URL. The history entry's detail holds the fields that changed.
pub(super) async fn update(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Alarm>, ApiError> {
    let current = guard::visible(&api, &access, &id).await?;
    let body = json_object(&body)?;
    let mut alarm = body::alarm_from_body(&Value::Object(body.clone()), Utc::now())?;
    let (project, user) = guard::owner(&body, &access, Some(&current))?;
    alarm.project_id = project;
    alarm.user_id = user;
    alarm.alarm_id.clone_from(&current.alarm_id);
    alarm.timestamp = current.timestamp;
    alarm.evaluate_timestamp = current.evaluate_timestamp;
    match body::requested_state(&body)? {
        Some(state) if state != current.state => {
            alarm.state = state;
            alarm.state_reason = REASON_MANUAL.to_owned();
            alarm.state_timestamp = Utc::now();
        }
        _ => {
            alarm.state = current.state;
            alarm.state_reason.clone_from(&current.state_reason);
            alarm.state_timestamp = current.state_timestamp;
        }
    }
    guard::restore_masked(&mut alarm, &current);
    guard::scope_rule(&mut alarm, &access)?;
    guard::check_actions(&api, &alarm).await?;
    let mut change = made_by(
        AlarmChange::new(
            &current,
            "rule change",
            alarm.state,
            "alarm definition changed",
        ),
        &access,
    );
    change.reason_data = shown(&alarm);
    change.detail = Some(changed_fields(&current, &alarm));
    change.severity = Some(alarm.severity.clone());
    change.on_behalf_of.clone_from(&alarm.project_id);
    api.store.update_alarm(&alarm, &change).await?;
    api.publish(&change);
    Ok(Json(masked(alarm)))
}

/// `GET /v2/alarms/{id}/state`: the state as a JSON string.
pub(super) async fn get_state(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<AlarmState>, ApiError> {
    Ok(Json(guard::visible(&api, &access, &id).await?.state))
}

/// `PUT /v2/alarms/{id}/state` with a JSON string body (`"alarm"`): sets the state with
/// Aodh's "Manually set via API" reason and records a `state transition`.
pub(super) async fn put_state(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<AlarmState>, ApiError> {
    let alarm = guard::visible(&api, &access, &id).await?;
    let state =
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::String(text)) => body::parse_state(&text)?,
            _ => return Err(ApiError::bad_request(
                "state: the body must be a JSON string: \"ok\", \"alarm\" or \"insufficient data\"",
            )),
        };
    let mut change = made_by(
        AlarmChange::new(&alarm, "state transition", state, REASON_MANUAL),
        &access,
    );
    change.detail = Some(json!({"state": state.as_str(), "state_reason": REASON_MANUAL}));
    api.store.set_state(&change).await?;
    api.publish(&change);
    Ok(Json(state))
}

/// `change` as made by the caller (Aodh records the request's user and project).
fn made_by(mut change: AlarmChange, access: &Access) -> AlarmChange {
    if let Some(identity) = access.identity() {
        change.user_id = Some(identity.user_id.clone());
        change.project_id = Some(identity.project_id.clone());
    }
    change
}

/// The fields of `after` that differ from `before`, as shown (credentials masked); the
/// timestamps aside, as in Aodh.
fn changed_fields(before: &Alarm, after: &Alarm) -> Value {
    let fields = |alarm: &Alarm| match shown(alarm) {
        Value::Object(object) => object,
        _ => Map::new(),
    };
    let (old, new) = (fields(before), fields(after));
    let changed: Map<String, Value> = new
        .into_iter()
        .filter(|(key, value)| {
            !["timestamp", "state_timestamp", "evaluate_timestamp"].contains(&key.as_str())
                && old.get(key) != Some(value)
        })
        .collect();
    Value::Object(changed)
}

/// An alarm as history keeps it: as JSON, action credentials masked.
pub(super) fn shown(alarm: &Alarm) -> Value {
    serde_json::to_value(alarm)
        .map(|value| secrets::mask_json(&value))
        .unwrap_or_else(|_| json!({}))
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request("body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!(
            "body is not valid JSON: {e}"
        ))),
    }
}
