//! Meters and their statistics, Ceilometer v2 style, scoped to the caller's project: a user who
//! is not an admin sees its project's meters, and statistics over its project's samples only;
//! asking for another project's answers 404.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::auth::Access;
use super::{query, Api, ApiError};
use crate::model::{MeterInfo, Statistics, StatisticsQuery};

/// Most statistics buckets in one answer; more asks for a longer period or a shorter range.
pub const MAX_BUCKETS: usize = 10_000;

/// `GET /v2/meters[?q.field=resource_id&q.value=…][&limit=N]`.
pub(super) async fn list(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<MeterInfo>>, ApiError> {
    let raw = raw.as_deref();
    let limit = query::limit(raw)?;
    let terms = query::query_terms(raw)?;
    let resource = terms
        .iter()
        .find(|t| t.field == "resource_id")
        .map(|t| t.value.as_str());
    let project = access.project_scope();
    let meters = api.store.meters(resource).await?;
    Ok(Json(
        meters
            .into_iter()
            .filter(|m| project.is_none() || m.project_id.as_deref() == project)
            .take(limit)
            .collect(),
    ))
}

/// `GET /v2/meters/{name}/statistics[?period=S][&q.field=…&q.op=…&q.value=…]`.
pub(super) async fn statistics(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Statistics>>, ApiError> {
    let raw = raw.as_deref();
    let period = match query::param(raw, "period") {
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("period must be a non-negative integer, got {v:?}"))
        })?,
        None => 0,
    };
    let mut stats = StatisticsQuery {
        meter: name,
        period,
        ..StatisticsQuery::default()
    };
    for term in query::query_terms(raw)? {
        match (term.field.as_str(), term.op.as_str()) {
            ("resource_id", "eq") => stats.resource_id = Some(term.value),
            ("project_id", "eq") => stats.project_id = Some(term.value),
            ("timestamp", "ge" | "gt") => stats.start = Some(query::timestamp(&term.value)?),
            ("timestamp", "le" | "lt") => stats.end = Some(query::timestamp(&term.value)?),
            (field, op) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported query q.field={field} q.op={op}"
                )))
            }
        }
    }
    if let Some(own) = access.project_scope() {
        match &stats.project_id {
            Some(asked) if asked != own => {
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    format!("No statistics of project {asked} found"),
                ))
            }
            _ => stats.project_id = Some(own.to_owned()),
        }
    }
    let buckets = api.store.statistics(&stats).await?;
    if buckets.len() > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "period: {} buckets, more than {MAX_BUCKETS}; ask for a longer period or a shorter time range",
            buckets.len()
        )));
    }
    Ok(Json(buckets))
}
