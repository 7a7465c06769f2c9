//! The meter catalogue: one row per meter, resource, source, unit, counter type, project and
//! user ever stored (and not expired), kept as samples arrive, so that listing meters costs
//! what the catalogue holds rather than what the samples hold.
//!
//! On PostgreSQL each row carries the time of its newest sample (`last_ts`) and expiry removes
//! the rows whose newest sample has gone; on SQLite the catalogue is the series table that
//! samples point to, and expiry removes series left without samples. Either way it lists
//! what a `DISTINCT` over the samples would. Project and user ids are stored as
//! [`owner_key`]s.

use std::collections::BTreeMap;

use super::rollup::{from_owner_key, owner_key, owner_key_sql};
use super::sql::{meter_info, SampleRow};
use super::StoreError;
use crate::model::MeterInfo;

/// Columns of `meter_catalogue`, in the order [`CatalogueKey`] holds them, then `last_ts`.
pub(super) const CATALOGUE_COLUMNS: &str =
    "meter, resource_id, source, unit, counter_type, project_key, user_key, last_ts";

/// The primary key of `meter_catalogue`.
pub(super) const CATALOGUE_KEY: &str =
    "meter, resource_id, source, unit, counter_type, project_key, user_key";

/// One catalogue row's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct CatalogueKey {
    pub meter: String,
    pub resource_id: String,
    pub source: String,
    pub unit: String,
    pub counter_type: &'static str,
    pub project_key: String,
    pub user_key: String,
}

impl CatalogueKey {
    /// The catalogue row (on SQLite, the series) of a sample.
    pub fn of(row: &SampleRow) -> Self {
        Self {
            meter: row.meter.clone(),
            resource_id: row.resource_id.clone(),
            source: row.source.clone(),
            unit: row.unit.clone(),
            counter_type: row.counter_type,
            project_key: owner_key(row.project_id.as_deref()),
            user_key: owner_key(row.user_id.as_deref()),
        }
    }
}

/// The catalogue rows newly stored samples touch, with their newest time, in key order.
pub(super) fn deltas<'a>(
    rows: impl IntoIterator<Item = &'a SampleRow>,
) -> BTreeMap<CatalogueKey, i64> {
    let mut out: BTreeMap<CatalogueKey, i64> = BTreeMap::new();
    for row in rows {
        let key = CatalogueKey::of(row);
        out.entry(key)
            .and_modify(|last| *last = (*last).max(row.ts))
            .or_insert(row.ts);
    }
    out
}

/// Fills the catalogue from the stored samples (a database made before it existed).
pub(super) fn backfill_sql() -> String {
    let project = owner_key_sql("project_id");
    let user = owner_key_sql("user_id");
    format!(
        "INSERT INTO meter_catalogue ({CATALOGUE_COLUMNS}) SELECT meter, resource_id, source, \
         unit, counter_type, {project}, {user}, MAX(ts) FROM samples \
         GROUP BY meter, resource_id, source, unit, counter_type, {project}, {user}"
    )
}

/// The listing query, optionally for one resource (one parameter); `collate` makes the
/// order the same on every backend (bytewise).
pub(super) fn list_sql(
    by_resource: bool,
    collate: &str,
    placeholder: fn(usize) -> String,
) -> String {
    let filter = if by_resource {
        format!(" WHERE resource_id = {}", placeholder(1))
    } else {
        String::new()
    };
    let order = CATALOGUE_KEY
        .split(", ")
        .map(|c| format!("{c}{collate}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT meter, counter_type, unit, resource_id, project_key, user_key, source \
         FROM meter_catalogue{filter} ORDER BY {order}"
    )
}

/// One row of [`list_sql`] as a [`MeterInfo`].
pub(super) fn info(
    name: String,
    counter_type: &str,
    unit: String,
    resource_id: String,
    project_key: &str,
    user_key: &str,
    source: String,
) -> Result<MeterInfo, StoreError> {
    meter_info(
        name,
        counter_type,
        unit,
        resource_id,
        from_owner_key(project_key),
        from_owner_key(user_key),
        source,
    )
}
