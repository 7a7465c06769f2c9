//! The alarm endpoints: list (paged), create, show, change, delete, history; each scoped to what
//! the caller's [`Access`] may see. An alarm of another project answers 404, as one that does
//! not exist. Action URLs go out with their credentials masked, and a change that sends a
//! masked URL back keeps the stored one.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::{Extension, Json};
use chrono::Utc;
use serde_json::{Map, Value};

use super::auth::Access;
use super::body::{self, ACTION_FIELDS};
use super::{query, Api, ApiError};
use crate::model::{Alarm, AlarmChange, QueryTerm};
use crate::secrets;
use crate::store::{AlarmPage, StoreError};

/// An alarm as the API shows it: action URLs without credentials.
pub(super) fn masked(mut alarm: Alarm) -> Alarm {
    for list in [
        &mut alarm.alarm_actions,
        &mut alarm.ok_actions,
        &mut alarm.insufficient_data_actions,
    ] {
        for action in list.iter_mut() {
            *action = secrets::mask_url(action);
        }
    }
    alarm
}

/// The alarm `id` if the caller may see it; 404 alike for missing and not visible.
async fn visible(api: &Api, access: &Access, id: &str) -> Result<Alarm, ApiError> {
    match api.store.alarm(id).await {
        Ok(alarm) if access.may_see(&alarm) => Ok(alarm),
        Ok(_) | Err(StoreError::NoSuchAlarm(_)) => Err(ApiError::alarm_not_found(id)),
        Err(other) => Err(other.into()),
    }
}

/// `GET /v2/alarms?limit=N&marker=ID`: one page in creation order; a full page carries a
/// `Link: <…>; rel="next"` header.
pub(super) async fn list(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
) -> Result<(HeaderMap, Json<Vec<Alarm>>), ApiError> {
    let raw = raw.as_deref();
    let limit = query::limit(raw)?;
    let marker = query::param(raw, "marker");
    if let Some(marker) = &marker {
        visible(&api, &access, marker).await.map_err(|_| {
            ApiError::bad_request(format!("marker: no alarm {marker} to start after"))
        })?;
    }
    let page = AlarmPage {
        project_id: access.project_scope().map(str::to_owned),
        marker,
        limit,
    };
    let alarms = api.store.alarm_page(&page).await?;
    let mut headers = HeaderMap::new();
    if alarms.len() == limit {
        if let Some(last) = alarms.last() {
            let next = format!(
                "</v2/alarms?limit={limit}&marker={}>; rel=\"next\"",
                percent_encoding::utf8_percent_encode(
                    &last.alarm_id,
                    percent_encoding::NON_ALPHANUMERIC
                )
            );
            if let Ok(value) = HeaderValue::from_str(&next) {
                headers.insert(header::LINK, value);
            }
        }
    }
    Ok((headers, Json(alarms.into_iter().map(masked).collect())))
}

/// `GET /v2/alarms/{id}`.
pub(super) async fn show(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<Alarm>, ApiError> {
    Ok(Json(masked(visible(&api, &access, &id).await?)))
}

/// `DELETE /v2/alarms/{id}`.
pub(super) async fn delete(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    visible(&api, &access, &id).await?;
    api.store.delete_alarm(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v2/alarms/{id}/history?limit=N`: the oldest N changes, details masked.
pub(super) async fn history(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<AlarmChange>>, ApiError> {
    let limit = query::limit(raw.as_deref())?;
    visible(&api, &access, &id).await?;
    let changes = api.store.history(&id).await?;
    Ok(Json(
        changes
            .into_iter()
            .take(limit)
            .map(|mut change| {
                change.reason = secrets::mask_text(&change.reason);
                change.reason_data = secrets::mask_json(&change.reason_data);
                change
            })
            .collect(),
    ))
}

/// `POST /v2/alarms`: a new alarm owned by the caller's project (an admin may name another).
pub(super) async fn create(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Alarm>), ApiError> {
    let body = json_object(&body)?;
    let mut alarm = body::alarm_from_body(&Value::Object(body.clone()), Utc::now())?;
    let (project, user) = owner(&body, &access, None)?;
    alarm.project_id = project;
    alarm.user_id = user;
    scope_rule(&mut alarm, &access)?;
    check_actions(&api, &alarm).await?;
    api.store.create_alarm(&alarm).await?;
    Ok((StatusCode::CREATED, Json(masked(alarm))))
}

/// `PUT /v2/alarms/{id}`: a new definition for an existing alarm (the whole body, as for a
/// create). Its id, state and creation time stay; so does its owner unless an admin names
/// another. An action sent back masked, as `GET` showed it, keeps its stored URL.
pub(super) async fn update(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Alarm>, ApiError> {
    let current = visible(&api, &access, &id).await?;
    let body = json_object(&body)?;
    let mut alarm = body::alarm_from_body(&Value::Object(body.clone()), Utc::now())?;
    let (project, user) = owner(&body, &access, Some(&current))?;
    alarm.project_id = project;
    alarm.user_id = user;
    alarm.alarm_id.clone_from(&current.alarm_id);
    alarm.state = current.state;
    alarm.state_reason.clone_from(&current.state_reason);
    alarm.state_timestamp = current.state_timestamp;
    alarm.timestamp = current.timestamp;
    restore_masked(&mut alarm, &current);
    scope_rule(&mut alarm, &access)?;
    check_actions(&api, &alarm).await?;
    api.store.update_alarm(&alarm).await?;
    Ok(Json(masked(alarm)))
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

/// Who owns the alarm: a user's own project and self; an admin (or the operator without
/// authentication) may name `project_id`/`user_id`, else keeps the current owner or, for a new
/// alarm, its own.
fn owner(
    body: &Map<String, Value>,
    access: &Access,
    current: Option<&Alarm>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let asked_project = body::optional_str(body, "project_id")?.map(str::to_owned);
    let asked_user = body::optional_str(body, "user_id")?.map(str::to_owned);
    let kept = |field: fn(&Alarm) -> &Option<String>| current.and_then(|a| field(a).clone());
    match access {
        Access::Operator => Ok((
            asked_project.or_else(|| kept(|a| &a.project_id)),
            asked_user.or_else(|| kept(|a| &a.user_id)),
        )),
        Access::User(identity) if identity.is_admin() => Ok((
            asked_project
                .or_else(|| kept(|a| &a.project_id))
                .or_else(|| Some(identity.project_id.clone())),
            asked_user
                .or_else(|| kept(|a| &a.user_id))
                .or_else(|| Some(identity.user_id.clone())),
        )),
        Access::User(identity) => {
            if asked_project
                .as_deref()
                .is_some_and(|p| p != identity.project_id)
            {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "project_id: only an admin can give an alarm to another project".to_owned(),
                ));
            }
            if asked_user.as_deref().is_some_and(|u| u != identity.user_id) {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "user_id: only an admin can give an alarm to another user".to_owned(),
                ));
            }
            Ok((
                Some(identity.project_id.clone()),
                kept(|a| &a.user_id).or_else(|| Some(identity.user_id.clone())),
            ))
        }
    }
}

/// A user's alarm evaluates its own project's samples only: a `project_id` term must name the
/// caller's project, and one is added when the rule has none (as Aodh does for non-admins).
fn scope_rule(alarm: &mut Alarm, access: &Access) -> Result<(), ApiError> {
    let Some(project) = access.project_scope() else {
        return Ok(());
    };
    let query = &mut alarm.threshold_rule.query;
    let mut scoped = false;
    for term in query.iter() {
        if term.field == "project_id" {
            if term.op != "eq" || term.value != project {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "threshold_rule.query: project_id can only be your own project".to_owned(),
                ));
            }
            scoped = true;
        }
    }
    if !scoped {
        query.push(QueryTerm {
            field: "project_id".to_owned(),
            op: "eq".to_owned(),
            value: project.to_owned(),
        });
    }
    Ok(())
}

/// Actions sent back as `GET` showed them (masked) are the stored ones.
fn restore_masked(alarm: &mut Alarm, current: &Alarm) {
    let stored: Vec<&String> = current
        .alarm_actions
        .iter()
        .chain(&current.ok_actions)
        .chain(&current.insufficient_data_actions)
        .collect();
    for list in [
        &mut alarm.alarm_actions,
        &mut alarm.ok_actions,
        &mut alarm.insufficient_data_actions,
    ] {
        for action in list.iter_mut() {
            if action.contains(secrets::MASK) {
                if let Some(real) = stored.iter().find(|s| secrets::mask_url(s) == *action) {
                    action.clone_from(real);
                }
            }
        }
    }
}

/// Every action against the policy; the 400 names the list, the position and the rule.
async fn check_actions(api: &Api, alarm: &Alarm) -> Result<(), ApiError> {
    let lists = [
        &alarm.alarm_actions,
        &alarm.ok_actions,
        &alarm.insufficient_data_actions,
    ];
    for (field, list) in ACTION_FIELDS.iter().zip(lists) {
        for (i, action) in list.iter().enumerate() {
            if let Err(refusal) = api.policy.check_action(action).await {
                return Err(ApiError::bad_request(format!(
                    "{field}[{i}]: {}: {refusal}",
                    secrets::mask_url(action)
                )));
            }
        }
    }
    Ok(())
}
