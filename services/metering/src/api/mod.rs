//! The HTTP API, Aodh v2 style: alarms (create, list, show, delete, history), meters and their
//! statistics, `/health`, and the engine's report at `/v2/status`.
//!
//! Request bodies are checked field by field so a 400 names the field that is wrong.
//!
//! [`start`] serves it without the engine; [`manifold`] declares it for the engine, and
//! [`ApiConfig`] says where it listens.

mod config;
mod manifold;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tidings_runtime::{TaskWorker, WorkerError};
use tokio_util::sync::CancellationToken;

use super::model::{
    Alarm, AlarmChange, AlarmState, ComparisonOperator, QueryTerm, StatisticKind, StatisticsQuery,
    ThresholdRule,
};
use super::store::{Store, StoreError};

pub use config::{ApiConfig, StatusFn, DEFAULT_LISTEN};
pub use manifold::{manifold, ApiInputs};

#[derive(Clone)]
struct Api {
    store: Arc<dyn Store>,
    status: StatusFn,
}

/// The API's routes over `store`.
pub fn router(store: Arc<dyn Store>, status: StatusFn) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v2/status", get(status_report))
        .route("/v2/alarms", get(list_alarms).post(create_alarm))
        .route("/v2/alarms/{id}", get(show_alarm).delete(delete_alarm))
        .route("/v2/alarms/{id}/history", get(alarm_history))
        .route("/v2/meters", get(list_meters))
        .route("/v2/meters/{name}/statistics", get(meter_statistics))
        .with_state(Api { store, status })
}

/// An error response: a status and a message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"error_message": {"faultstring": self.1}})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NoSuchAlarm(id) => {
                Self(StatusCode::NOT_FOUND, format!("Alarm {id} not found"))
            }
            other => Self(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn status_report(State(api): State<Api>) -> Json<Value> {
    Json((api.status)())
}

async fn list_alarms(State(api): State<Api>) -> Result<Json<Vec<Alarm>>, ApiError> {
    Ok(Json(api.store.alarms().await?))
}

async fn show_alarm(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Alarm>, ApiError> {
    Ok(Json(api.store.alarm(&id).await?))
}

async fn delete_alarm(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    api.store.delete_alarm(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn alarm_history(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Vec<AlarmChange>>, ApiError> {
    api.store.alarm(&id).await?;
    Ok(Json(api.store.history(&id).await?))
}

async fn create_alarm(
    State(api): State<Api>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Alarm>), ApiError> {
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    let alarm = alarm_from_body(&body, Utc::now())?;
    api.store.create_alarm(&alarm).await?;
    Ok((StatusCode::CREATED, Json(alarm)))
}

async fn list_meters(
    State(api): State<Api>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let terms = query_terms(query.as_deref())?;
    let resource = terms
        .iter()
        .find(|t| t.field == "resource_id")
        .map(|t| t.value.as_str());
    Ok(Json(
        serde_json::to_value(api.store.meters(resource).await?).unwrap_or(Value::Null),
    ))
}

async fn meter_statistics(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let raw = query.as_deref();
    let period = match pairs(raw).find(|(k, _)| k == "period") {
        Some((_, v)) => v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("period must be a non-negative integer, got {v:?}"))
        })?,
        None => 0,
    };
    let mut stats = StatisticsQuery {
        meter: name,
        period,
        ..StatisticsQuery::default()
    };
    for term in query_terms(raw)? {
        match (term.field.as_str(), term.op.as_str()) {
            ("resource_id", "eq") => stats.resource_id = Some(term.value),
            ("project_id", "eq") => stats.project_id = Some(term.value),
            ("timestamp", "ge" | "gt") => stats.start = Some(timestamp(&term.value)?),
            ("timestamp", "le" | "lt") => stats.end = Some(timestamp(&term.value)?),
            (field, op) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported query q.field={field} q.op={op}"
                )))
            }
        }
    }
    Ok(Json(
        serde_json::to_value(api.store.statistics(&stats).await?).unwrap_or(Value::Null),
    ))
}

fn timestamp(text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        .map_err(|_| {
            ApiError::bad_request(format!("q.value {text:?} is not an ISO 8601 timestamp"))
        })
}

fn pairs(raw: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
}

fn decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// `q.field`/`q.op`/`q.value` triples, in order.
fn query_terms(raw: Option<&str>) -> Result<Vec<QueryTerm>, ApiError> {
    let (mut fields, mut ops, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in pairs(raw) {
        match key.as_str() {
            "q.field" => fields.push(value),
            "q.op" => ops.push(value),
            "q.value" => values.push(value),
            _ => {}
        }
    }
    if fields.len() != values.len() || (!ops.is_empty() && ops.len() != fields.len()) {
        return Err(ApiError::bad_request(
            "q.field, q.op and q.value must come in matching numbers",
        ));
    }
    Ok(fields
        .into_iter()
        .enumerate()
        .map(|(i, field)| QueryTerm {
            field,
            op: ops.get(i).cloned().unwrap_or_else(|| "eq".to_owned()),
            value: values[i].clone(),
        })
        .collect())
}

/// Builds an alarm from a POST body, naming the first field that is wrong.
pub fn alarm_from_body(body: &Value, now: DateTime<Utc>) -> Result<Alarm, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("body must be a JSON object"))?;
    let name = required_str(object, "name")?;
    let alarm_type = optional_str(object, "type")?.unwrap_or("threshold");
    if alarm_type != "threshold" {
        return Err(ApiError::bad_request(format!(
            "type: only \"threshold\" alarms are supported, got {alarm_type:?}"
        )));
    }
    let rule = object
        .get("threshold_rule")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("threshold_rule: required object is missing"))?;
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
    let query = match rule.get("query") {
        None | Some(Value::Null) => Vec::new(),
        Some(q) => serde_json::from_value::<Vec<QueryTerm>>(q.clone()).map_err(|e| {
            ApiError::bad_request(format!(
                "threshold_rule.query: expected a list of {{field, op, value}}: {e}"
            ))
        })?,
    };
    let severity = optional_str(object, "severity")?.unwrap_or("low");
    if !["low", "moderate", "critical"].contains(&severity) {
        return Err(ApiError::bad_request(format!(
            "severity: {severity:?} is not one of low, moderate, critical"
        )));
    }
    Ok(Alarm {
        alarm_id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        alarm_type: "threshold".to_owned(),
        threshold_rule: ThresholdRule {
            meter_name: required_str(rule, "meter_name")
                .map_err(prefix_rule)?
                .to_owned(),
            threshold,
            comparison_operator,
            statistic,
            period,
            evaluation_periods,
            query,
        },
        state: AlarmState::InsufficientData,
        state_reason: "Not evaluated yet".to_owned(),
        state_timestamp: now,
        alarm_actions: actions(object, "alarm_actions")?,
        ok_actions: actions(object, "ok_actions")?,
        insufficient_data_actions: actions(object, "insufficient_data_actions")?,
        repeat_actions: optional_bool(object, "repeat_actions", false)?,
        severity: severity.to_owned(),
        enabled: optional_bool(object, "enabled", true)?,
        timestamp: now,
    })
}

fn prefix_rule(error: ApiError) -> ApiError {
    ApiError(error.0, format!("threshold_rule.{}", error.1))
}

fn required_str<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match object.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ApiError::bad_request(format!("{field}: must not be empty"))),
        Some(_) => Err(ApiError::bad_request(format!("{field}: must be a string"))),
        None => Err(ApiError::bad_request(format!(
            "{field}: required field is missing"
        ))),
    }
}

fn optional_str<'a>(
    object: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
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

fn actions(object: &Map<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .filter(|url| url.contains("://"))
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request(format!("{field}: every action must be a URL such as log:// or http://host/path")))
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(format!("{field}: must be a list of URLs"))),
    }
}

/// Serves the API on `listen` until the worker is killed.
pub async fn start(
    listen: SocketAddr,
    store: Arc<dyn Store>,
    status: StatusFn,
) -> Result<(TaskWorker, SocketAddr), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = router(store, status);
    let worker = TaskWorker::spawn(move |stop: CancellationToken| async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(WorkerError::failed)
    });
    tracing::info!(%bound, "metering API listening");
    Ok((worker, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let alarm = alarm_from_body(&body(), Utc::now()).unwrap();
        assert_eq!(alarm.state, AlarmState::InsufficientData);
        assert_eq!(alarm.threshold_rule.evaluation_periods, 2);
        assert_eq!(
            alarm.threshold_rule.comparison_operator,
            ComparisonOperator::Gt
        );
        assert!(alarm.enabled && !alarm.repeat_actions);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, Value, &str)] = &[
            ("/name", Value::Null, "name"),
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
            ("/alarm_actions", json!(["not a url"]), "alarm_actions"),
            ("/severity", json!("meh"), "severity"),
            ("/repeat_actions", json!("yes"), "repeat_actions"),
            ("/type", json!("event"), "type"),
        ];
        for (pointer, value, field) in cases {
            let mut body = body();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let object = body
                .pointer_mut(if parent.is_empty() { "" } else { parent })
                .unwrap();
            let object = object.as_object_mut().unwrap();
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

    #[test]
    fn query_strings_decode_repeated_terms() {
        let terms = query_terms(Some(
            "period=60&q.field=resource_id&q.op=eq&q.value=vm%2D1&q.field=project_id&q.value=p+1",
        ))
        .unwrap_err();
        assert!(
            terms.1.contains("matching"),
            "ops and fields must match when ops are given"
        );
        let terms = query_terms(Some("q.field=resource_id&q.op=eq&q.value=vm%2D1")).unwrap();
        assert_eq!(terms[0].value, "vm-1");
    }
}
