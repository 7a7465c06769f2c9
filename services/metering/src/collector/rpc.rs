//! **Contract**: the collector's RPC API, [`CollectorApi`] (exchange `ceilometer`, topic
//! `metering`, version 1.0, no namespace): [`GET_STATISTICS`], [`LIST_METERS`] and
//! [`RECORD_METERING_DATA`]. Rust callers use these constants with a
//! [`ServiceClient<CollectorApi>`](tidings::rpc::ServiceClient); Python callers name the methods
//! as usual.
//!
//! Errors a Python caller can act on are builtins (`ValueError` for a bad time, `TypeError`
//! for arguments that do not fit); storage failures are `StorageError` from
//! `tidings.metering`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tidings::rpc::{Contract, ContractEndpoint, Method, State};
use tidings::{Context, RemoteError, Version};

use super::ingest::{Ingest, Tally};
use crate::model::{MeterInfo, Statistics, StatisticsQuery};
use crate::sample::contract::METERING_TOPIC;
use crate::sample::parse_timestamp;
use crate::store::StoreError;

/// The RPC topic on exchange [`EXCHANGE`](super::EXCHANGE): Ceilometer serves its collector
/// on the notifier publisher's topic.
pub const TOPIC: &str = METERING_TOPIC;
/// The collector's RPC API.
#[derive(Debug)]
pub struct CollectorApi;

impl Contract for CollectorApi {
    const NAMESPACE: Option<&'static str> = None;
    const VERSION: Version = Version::new(1, 0);
}

/// Statistics of a meter (period buckets, optional resource, project and time bounds).
pub const GET_STATISTICS: Method<CollectorApi, GetStatistics, Vec<Statistics>> =
    Method::new("get_statistics");
/// Meters stored, optionally of one resource.
pub const LIST_METERS: Method<CollectorApi, ListMeters, Vec<MeterInfo>> =
    Method::new("list_meters");
/// Stores samples: the old RPC publisher's cast (a call answers with what became of them).
pub const RECORD_METERING_DATA: Method<CollectorApi, RecordMeteringData, Tally> =
    Method::new("record_metering_data");

/// Arguments of `get_statistics`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GetStatistics {
    /// The meter's name.
    pub meter: String,
    /// Bucket length in seconds; 0 for one bucket over the whole range.
    #[serde(default, deserialize_with = "period")]
    pub period: u64,
    /// Only samples of this resource.
    #[serde(default)]
    pub resource_id: Option<String>,
    /// Only samples of this project.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Only samples at or after this ISO 8601 time.
    #[serde(default)]
    pub start: Option<String>,
    /// Only samples before this ISO 8601 time.
    #[serde(default)]
    pub end: Option<String>,
}

/// Arguments of `list_meters`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ListMeters {
    /// Only meters of this resource.
    #[serde(default)]
    pub resource_id: Option<String>,
}

/// Arguments of `record_metering_data`: a list of samples (or one).
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordMeteringData {
    /// Ceilometer samples, signed by the publisher.
    pub data: Value,
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

async fn get_statistics(
    State(ingest): State<Arc<Ingest>>,
    _ctx: Context,
    args: GetStatistics,
) -> Result<Vec<Statistics>, RemoteError> {
    let query = StatisticsQuery {
        meter: args.meter,
        period: args.period,
        resource_id: args.resource_id,
        project_id: args.project_id,
        start: time("start", args.start)?,
        end: time("end", args.end)?,
    };
    ingest.store().statistics(&query).await.map_err(storage)
}

async fn list_meters(
    State(ingest): State<Arc<Ingest>>,
    _ctx: Context,
    args: ListMeters,
) -> Result<Vec<MeterInfo>, RemoteError> {
    ingest
        .store()
        .meters(args.resource_id.as_deref())
        .await
        .map_err(storage)
}

async fn record_metering_data(
    State(ingest): State<Arc<Ingest>>,
    _ctx: Context,
    args: RecordMeteringData,
) -> Result<Tally, RemoteError> {
    let raw = match args.data {
        Value::Array(samples) => samples,
        one => vec![one],
    };
    ingest.ingest(raw).await.map_err(storage)
}

/// The endpoint serving the collector's methods over `ingest`.
pub(crate) fn endpoint(ingest: Arc<Ingest>) -> ContractEndpoint<CollectorApi, Arc<Ingest>> {
    ContractEndpoint::with_state(ingest)
        .handle(GET_STATISTICS, get_statistics)
        .handle(LIST_METERS, list_meters)
        .handle(RECORD_METERING_DATA, record_metering_data)
}
