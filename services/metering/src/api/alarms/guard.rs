//! What a caller may do with an alarm: which alarms it sees (an alarm of another project
//! answers 404, as one that does not exist), who owns what it creates, which samples its rules
//! may read, and whether its actions pass the action policy. Action URLs go out with their
//! credentials masked, and a change that sends a masked URL back keeps the stored one.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::super::auth::Access;
use super::super::body::{self, ACTION_FIELDS};
use super::super::{Api, ApiError};
use crate::model::{Alarm, QueryTerm};
use crate::secrets;
use crate::store::StoreError;

/// An alarm as the API shows it: action URLs without credentials.
pub(in crate::api) fn masked(mut alarm: Alarm) -> Alarm {
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
pub(in crate::api) async fn visible(
    api: &Api,
    access: &Access,
    id: &str,
) -> Result<Alarm, ApiError> {
    match api.store.alarm(id).await {
        Ok(alarm) if access.may_see(&alarm) => Ok(alarm),
        Ok(_) | Err(StoreError::NoSuchAlarm(_)) => Err(ApiError::alarm_not_found(id)),
        Err(other) => Err(other.into()),
    }
}

/// Who owns the alarm: a user's own project and self; an admin (or the operator without
/// authentication) may name `project_id`/`user_id`, else keeps the current owner or, for a new
/// alarm, its own.
pub(super) fn owner(
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
pub(super) fn scope_rule(alarm: &mut Alarm, access: &Access) -> Result<(), ApiError> {
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
pub(super) fn restore_masked(alarm: &mut Alarm, current: &Alarm) {
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
pub(super) async fn check_actions(api: &Api, alarm: &Alarm) -> Result<(), ApiError> {
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
