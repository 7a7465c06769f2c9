//! **Contract**: the collector's RPC methods (exchange `ceilometer`, topic `metering`,
//! version 1.0, no namespace): [`GET_STATISTICS`], [`LIST_METERS`] and
//! [`RECORD_METERING_DATA`]. Callers name them with these constants.
//!
//! Errors a Python caller can act on are builtins (`ValueError` for a bad time, `TypeError`
//! for arguments that do not fit); storage failures are `StorageError` from
//! `tidings.metering`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use tidings::rpc::Endpoint;
use tidings::{Context, RemoteError};

use super::ingest::Ingest;
use crate::model::{MeterInfo, Statistics, StatisticsQuery};
use crate::sample::contract::METERING_TOPIC;
use crate::sample::parse_timestamp;
use crate::store::StoreError;

/// The RPC topic on exchange [`EXCHANGE`](super::EXCHANGE): Ceilometer serves its collector
/// on the notifier publisher's topic.
pub const TOPIC: &str = METERING_TOPIC;
/// Statistics of a meter (period buckets, optional resource, project and time bounds).
pub const GET_STATISTICS: &str = "get_statistics";
/// Meters stored, optionally of one resource.
pub const LIST_METERS: &str = "list_meters";
/// Stores samples: the old RPC publisher's cast.
pub const RECORD_METERING_DATA: &str = "record_metering_data";

/// Arguments of `get_statistics`.
#[derive(Debug, Deserialize)]
struct GetStatistics {
    meter: String,
    #[serde(default, deserialize_with = "period")]
    period: u64,
    #[serde(default)]
    resource_id: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
}

/// Arguments of `list_meters`.
#[derive(Debug, Deserialize)]
struct ListMeters {
    #[serde(default)]
    resource_id: Option<String>,
}

/// Arguments of `record_metering_data`: a list of samples (or one).
#[derive(Debug, Deserialize)]
struct RecordMeteringData {
    data: Value,
}

/// A period given as null, an integer or an integral float (`60.0` from Python), never
/// negative.
fn period<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(p), _) => Ok(p),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => Ok(f as u64),
            _ => Err(D::Error::custom(format!(
                "period must be a whole number of seconds ≥ 0, not {n}"
            ))),
        },
        Some(other) => Err(D::Error::custom(format!(
            "period must be a whole number of seconds ≥ 0, not {other}"
        ))),
    }
}

fn time(field: &str, text: Option<String>) -> Result<Option<DateTime<Utc>>, RemoteError> {
    text.map(|t| {
        parse_timestamp(&t).ok_or_else(|| {
            RemoteError::new(
                "ValueError",
                "builtins",
                format!("{field} {t:?} is not an ISO 8601 date and time"),
            )
        })
    })
    .transpose()
}

fn storage(error: StoreError) -> RemoteError {
    RemoteError::new("StorageError", "tidings.metering", error.to_string())
}

/// The endpoint serving the collector's methods over `ingest`.
pub(crate) fn endpoint(ingest: Arc<Ingest>) -> Endpoint {
    let stats = ingest.clone();
    let meters = ingest.clone();
    let recorder = ingest;
    Endpoint::new()
        .method(GET_STATISTICS, move |_ctx: Context, args: GetStatistics| {
            let ingest = stats.clone();
            async move {
                let query = StatisticsQuery {
                    meter: args.meter,
                    period: args.period,
                    resource_id: args.resource_id,
                    project_id: args.project_id,
                    start: time("start", args.start)?,
                    end: time("end", args.end)?,
                };
                let buckets: Vec<Statistics> =
                    ingest.store().statistics(&query).await.map_err(storage)?;
                Ok::<_, RemoteError>(buckets)
            }
        })
        .method(LIST_METERS, move |_ctx: Context, args: ListMeters| {
            let ingest = meters.clone();
            async move {
                let found: Vec<MeterInfo> = ingest
                    .store()
                    .meters(args.resource_id.as_deref())
                    .await
                    .map_err(storage)?;
                Ok::<_, RemoteError>(found)
            }
        })
        .method(
            RECORD_METERING_DATA,
            move |_ctx: Context, args: RecordMeteringData| {
                let ingest = recorder.clone();
                async move {
                    let raw = match args.data {
                        Value::Array(samples) => samples,
                        one => vec![one],
                    };
                    let tally = ingest.ingest(&raw).await.map_err(storage)?;
                    Ok::<_, RemoteError>(json!(tally))
                }
            },
        )
}
