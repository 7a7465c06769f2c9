//! The samples side of the PostgreSQL store: day partitions of `samples`, the catalogue and
//! roll-up tables and their upgrade, what each batch of new samples adds to them, statistics
//! through the roll-ups, and bounded expiry steps that drop whole partitions when they can.
//! The alarm tables are not touched here.
//!
//! `samples` is partitioned by range of `ts`, one partition per UTC day (`samples_d<days since
//! the epoch>`), made on demand by the writer that first needs it (under an advisory lock, so
//! collectors on several machines can race for it). A partition's primary key must hold the
//! partition key, so a sample is unique by `(ts, message_id)`: the same sample delivered
//! twice carries both, and is stored once. Time first, so that new keys go to the right edge
//! of the index rather than to a random page of it (message ids are random UUIDs).

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::catalogue::{self, CatalogueKey, CATALOGUE_COLUMNS, CATALOGUE_KEY};
use super::config::StoreLayout;
use super::retention::{self, Expired};
use super::rollup::{self, Aggregate, Part, RollupKey, ROLLUP_COLUMNS, ROLLUP_KEY};
use super::sql::{SampleRow, SAMPLE_COLUMNS};
use super::StoreError;
use crate::model::{MeterInfo, StatisticsQuery};

/// A day in µs: the width of a partition.
pub(super) const DAY: i64 = 86_400_000_000;

/// The partitioned samples table and its index (each partition gets its own copy).
const SAMPLES: &str = "
CREATE TABLE IF NOT EXISTS samples (
    message_id TEXT NOT NULL,
    meter TEXT NOT NULL,
    counter_type TEXT NOT NULL,
    unit TEXT NOT NULL,
    volume DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    user_id TEXT,
    project_id TEXT,
    resource_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    resource_metadata TEXT NOT NULL,
    PRIMARY KEY (ts, message_id)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS samples_meter_ts ON samples (meter, ts);
";

/// The catalogue, the roll-ups and the periods they are kept for.
///
/// A roll-up row is updated by every sample of its bucket. Pages kept half empty let
/// PostgreSQL put the new version beside the old one (a heap-only update): no index entries,
/// a third of the WAL and half the time of an update that moves the row, and dead versions
/// reclaimed as the page is next read. Full pages (the default) moved nearly every update.
/// Tables made before keep their full pages until their rows move once.
const SUMMARIES: &str = "
CREATE TABLE IF NOT EXISTS meter_catalogue (
    meter TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    source TEXT NOT NULL,
    unit TEXT NOT NULL,
    counter_type TEXT NOT NULL,
    project_key TEXT NOT NULL,
    user_key TEXT NOT NULL,
    last_ts BIGINT NOT NULL,
    PRIMARY KEY (meter, resource_id, source, unit, counter_type, project_key, user_key)
);
CREATE INDEX IF NOT EXISTS meter_catalogue_resource ON meter_catalogue (resource_id);
CREATE TABLE IF NOT EXISTS sample_rollups (
    meter TEXT NOT NULL,
    scope BIGINT NOT NULL,
    period BIGINT NOT NULL,
    resource_id TEXT NOT NULL,
    project_key TEXT NOT NULL,
    unit TEXT NOT NULL,
    bucket_start BIGINT NOT NULL,
    n BIGINT NOT NULL,
    total DOUBLE PRECISION NOT NULL,
    low DOUBLE PRECISION NOT NULL,
    high DOUBLE PRECISION NOT NULL,
    first_ts BIGINT NOT NULL,
    last_ts BIGINT NOT NULL,
    PRIMARY KEY (meter, scope, period, resource_id, project_key, unit, bucket_start)
);
ALTER TABLE sample_rollups SET (fillfactor = 50);
CREATE INDEX IF NOT EXISTS sample_rollups_age ON sample_rollups (meter, bucket_start);
CREATE TABLE IF NOT EXISTS rollup_periods (period BIGINT PRIMARY KEY);
";

fn backend(error: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("postgres: {error}"))
}

/// The partition holding day `day` (days since the epoch), quoted.
fn partition_name(day: i64) -> String {
    format!("\"samples_d{day}\"")
}

/// The day of a partition from its (unquoted) name.
fn partition_day(name: &str) -> Option<i64> {
    name.strip_prefix("samples_d")?.parse().ok()
}

/// The day (since the epoch) holding `ts` (µs).
pub(super) fn day_of(ts: i64) -> i64 {
    ts.div_euclid(DAY)
}

/// Makes the partition of each of `days` unless it exists (in its own short transaction).
pub(super) async fn create_partitions(
    client: &mut Client,
    days: &BTreeSet<i64>,
    lock: i64,
) -> Result<(), tokio_postgres::Error> {
    if days.is_empty() {
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await?;
    for &day in days {
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF samples FOR VALUES FROM ({}) TO ({})",
            partition_name(day),
            day.saturating_mul(DAY),
            day.saturating_add(1).saturating_mul(DAY)
        ))
        .await?;
    }
    tx.commit().await
}

/// Brings the samples side up to date inside the caller's schema transaction: a `samples`
/// table made by an older version (not partitioned) is moved into day partitions; the
/// catalogue and roll-ups are made and filled from the samples stored before they existed;
/// roll-ups of newly configured periods are filled, those of dropped periods deleted.
pub(super) async fn upgrade(
    tx: &tokio_postgres::Transaction<'_>,
    periods: &[u64],
) -> Result<(), tokio_postgres::Error> {
    let kind: Option<i8> = tx
        .query_opt(
            "SELECT c.relkind::\"char\" AS kind FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = 'samples' AND n.nspname = current_schema()",
            &[],
        )
        .await?
        .map(|row| row.try_get::<_, i8>(0))
        .transpose()?;
    let plain_table = kind == Some(b'r' as i8);
    if plain_table {
        tx.batch_execute(
            "ALTER TABLE samples RENAME TO samples_unpartitioned;
             ALTER INDEX IF EXISTS samples_pkey RENAME TO samples_unpartitioned_pkey;
             DROP INDEX IF EXISTS samples_meter_ts;
             DROP INDEX IF EXISTS samples_resource;",
        )
        .await?;
    }
    tx.batch_execute(SAMPLES).await?;
    if !plain_table {
        time_first_key(tx).await?;
    } else {
        let days: Vec<i64> = tx
            .query(
                &format!(
                    "SELECT DISTINCT FLOOR(ts::numeric / {DAY})::bigint FROM samples_unpartitioned"
                ),
                &[],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        for day in days {
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF samples FOR VALUES FROM ({}) TO ({})",
                partition_name(day),
                day.saturating_mul(DAY),
                day.saturating_add(1).saturating_mul(DAY)
            ))
            .await?;
        }
        tx.batch_execute(&format!(
            "INSERT INTO samples ({SAMPLE_COLUMNS}) SELECT {SAMPLE_COLUMNS} FROM samples_unpartitioned \
             ON CONFLICT DO NOTHING;
             DROP TABLE samples_unpartitioned;"
        ))
        .await?;
    }
    let had_catalogue: bool = tx
        .query_one("SELECT to_regclass('meter_catalogue') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    tx.batch_execute(SUMMARIES).await?;
    if !had_catalogue {
        tx.batch_execute(&catalogue::backfill_sql()).await?;
    }
    let kept: Vec<i64> = tx
        .query("SELECT period FROM rollup_periods", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    for &period in periods {
        let seconds = i64::try_from(period).unwrap_or(i64::MAX);
        if !kept.contains(&seconds) {
            for statement in rollup::backfill_sql(period) {
                tx.batch_execute(&statement).await?;
            }
            tx.execute(
                "INSERT INTO rollup_periods (period) VALUES ($1)",
                &[&seconds],
            )
            .await?;
        }
    }
    for period in kept {
        if !periods
            .iter()
            .any(|p| i64::try_from(*p).ok() == Some(period))
        {
            tx.execute("DELETE FROM sample_rollups WHERE period = $1", &[&period])
                .await?;
            tx.execute("DELETE FROM rollup_periods WHERE period = $1", &[&period])
                .await?;
        }
    }
    Ok(())
}

/// Most catalogue rows a store remembers writing; past it, it forgets them all and writes
/// each once more.
const CATALOGUE_REMEMBERED: usize = 100_000;

/// The catalogue rows this store has written, each with the retention step
/// ([`retention::alignment`]) of the newest time written to it, so that a row is upserted
/// once a step rather than once a sample (at five-minute polling and the default day, one
/// write in 288). Only what has committed is remembered.
///
/// Skipping leaves a row's `last_ts` behind within one step, which expiry cannot tell
/// apart: a cutoff is a step boundary, so the row's newest time is below it exactly when
/// the stored one is. If expiry deletes a row, every time this store remembers for it lay
/// below the cutoff, so a sample whose write it skips is itself past its time to live, and
/// expiry's next run takes it.
pub(super) struct CatalogueWritten {
    step: i64,
    steps: std::sync::Mutex<std::collections::HashMap<CatalogueKey, i64>>,
}

impl CatalogueWritten {
    pub fn new(periods: &[u64]) -> Self {
        Self {
            step: retention::alignment(periods),
            steps: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The rows of `deltas` (row → newest time of the batch) not known to hold a time of
    /// that step or later: those to write.
    fn unwritten(&self, deltas: BTreeMap<CatalogueKey, i64>) -> Vec<(CatalogueKey, i64)> {
        let Ok(steps) = self.steps.lock() else {
            return deltas.into_iter().collect();
        };
        deltas
            .into_iter()
            .filter(|(key, last)| {
                let step = rollup::bucket_start(*last, self.step);
                steps.get(key).is_none_or(|written| *written < step)
            })
            .collect()
    }

    /// Remembers rows of a committed write.
    pub fn committed(&self, rows: Vec<(CatalogueKey, i64)>) {
        let Ok(mut steps) = self.steps.lock() else {
            return;
        };
        if steps.len() + rows.len() > CATALOGUE_REMEMBERED {
            steps.clear();
        }
        for (key, last) in rows {
            let step = rollup::bucket_start(last, self.step);
            let written = steps.entry(key).or_insert(step);
            *written = (*written).max(step);
        }
    }
}

/// Rebuilds the primary key of `samples` with time first when an older version made it
/// message id first (every partition's index is rebuilt, once).
async fn time_first_key(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    let old_key: Option<String> = tx
        .query_opt(
            "SELECT c.conname::text FROM pg_constraint c \
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
             WHERE c.conrelid = 'samples'::regclass AND c.contype = 'p' \
             AND a.attname = 'message_id'",
            &[],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    if let Some(name) = old_key {
        let name = name.replace('"', "\"\"");
        tx.batch_execute(&format!(
            "ALTER TABLE samples DROP CONSTRAINT \"{name}\", ADD PRIMARY KEY (ts, message_id)"
        ))
        .await?;
    }
    Ok(())
}

/// Inserts `rows` and adds the new ones to the catalogue and roll-ups, in the caller's
/// transaction; returns how many were new and the catalogue rows written, for
/// [`CatalogueWritten::committed`] once the transaction commits.
pub(super) async fn insert(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[SampleRow],
    periods: &[u64],
    catalogue: &CatalogueWritten,
) -> Result<(usize, Vec<(CatalogueKey, i64)>), tokio_postgres::Error> {
    // A meter's samples of one batch side by side in the heap: a window of one meter then
    // reads a tenth of the pages it would in polling order (resource by resource).
    let mut rows: Vec<&SampleRow> = rows.iter().collect();
    rows.sort_by(|a, b| (&a.meter, &a.resource_id, a.ts).cmp(&(&b.meter, &b.resource_id, b.ts)));
    let column = |f: fn(&SampleRow) -> String| rows.iter().map(|r| f(r)).collect::<Vec<String>>();
    let message_ids = column(|r| r.message_id.clone());
    let meters = column(|r| r.meter.clone());
    let types = column(|r| r.counter_type.to_owned());
    let units = column(|r| r.unit.clone());
    let volumes: Vec<f64> = rows.iter().map(|r| r.volume).collect();
    let sources = column(|r| r.source.clone());
    let users: Vec<Option<String>> = rows.iter().map(|r| r.user_id.clone()).collect();
    let projects: Vec<Option<String>> = rows.iter().map(|r| r.project_id.clone()).collect();
    let resources = column(|r| r.resource_id.clone());
    let times: Vec<i64> = rows.iter().map(|r| r.ts).collect();
    let metadata = column(|r| r.resource_metadata.clone());
    // One statement for the whole batch; duplicates (stored before, or twice in this batch)
    // are skipped by the primary key, and the first copy in the batch (in the order above,
    // which keeps the batch's order among equals) is the one kept.
    let statement = format!(
        "INSERT INTO samples ({SAMPLE_COLUMNS}) SELECT * FROM UNNEST(\
         $1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::int8[], $11::text[]) \
         ON CONFLICT (message_id, ts) DO NOTHING RETURNING message_id, ts"
    );
    let new = tx
        .query(
            &statement,
            &[
                &message_ids,
                &meters,
                &types,
                &units,
                &volumes,
                &sources,
                &users,
                &projects,
                &resources,
                &times,
                &metadata,
            ],
        )
        .await?;
    let mut stored: BTreeSet<(String, i64)> = BTreeSet::new();
    for row in &new {
        stored.insert((row.try_get(0)?, row.try_get(1)?));
    }
    let count = stored.len();
    let fresh: Vec<&SampleRow> = rows
        .into_iter()
        .filter(|r| stored.remove(&(r.message_id.clone(), r.ts)))
        .collect();
    let written = summarise(tx, &fresh, periods, catalogue).await?;
    Ok((count, written))
}

/// Adds `fresh` samples to the catalogue (the rows `catalogue` does not know to be current)
/// and the roll-ups, rows in key order; returns the catalogue rows written.
async fn summarise(
    tx: &tokio_postgres::Transaction<'_>,
    fresh: &[&SampleRow],
    periods: &[u64],
    catalogue: &CatalogueWritten,
) -> Result<Vec<(CatalogueKey, i64)>, tokio_postgres::Error> {
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    let entries = catalogue.unwritten(catalogue::deltas(fresh.iter().copied()));
    if !entries.is_empty() {
        upsert_catalogue(tx, &entries).await?;
    }
    upsert_rollups(tx, fresh, periods).await?;
    Ok(entries)
}

/// Adds catalogue rows, or moves their newest time on.
async fn upsert_catalogue(
    tx: &tokio_postgres::Transaction<'_>,
    entries: &[(CatalogueKey, i64)],
) -> Result<(), tokio_postgres::Error> {
    let text = |f: fn(&CatalogueKey) -> &str| {
        entries
            .iter()
            .map(|(k, _)| f(k).to_owned())
            .collect::<Vec<String>>()
    };
    let lasts: Vec<i64> = entries.iter().map(|(_, last)| *last).collect();
    tx.execute(
        &format!(
            "INSERT INTO meter_catalogue ({CATALOGUE_COLUMNS}) SELECT * FROM UNNEST(\
             $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::int8[]) ON CONFLICT ({CATALOGUE_KEY}) DO UPDATE \
             SET last_ts = EXCLUDED.last_ts WHERE EXCLUDED.last_ts > meter_catalogue.last_ts"
        ),
        &[
            &text(|k| &k.meter),
            &text(|k| &k.resource_id),
            &text(|k| &k.source),
            &text(|k| &k.unit),
            &text(|k| k.counter_type),
            &text(|k| &k.project_key),
            &text(|k| &k.user_key),
            &lasts,
        ],
    )
    .await?;
    Ok(())
}

/// Adds `fresh` samples to the roll-ups of `periods`.
async fn upsert_rollups(
    tx: &tokio_postgres::Transaction<'_>,
    fresh: &[&SampleRow],
    periods: &[u64],
) -> Result<(), tokio_postgres::Error> {
    if periods.is_empty() {
        return Ok(());
    }
    let rollups: Vec<(RollupKey, Aggregate)> = rollup::deltas(fresh.iter().copied(), periods)
        .into_iter()
        .collect();
    let text = |f: fn(&RollupKey) -> &str| {
        rollups
            .iter()
            .map(|(k, _)| f(k).to_owned())
            .collect::<Vec<String>>()
    };
    let int = |f: fn(&RollupKey, &Aggregate) -> i64| {
        rollups.iter().map(|(k, a)| f(k, a)).collect::<Vec<i64>>()
    };
    let float = |f: fn(&Aggregate) -> f64| rollups.iter().map(|(_, a)| f(a)).collect::<Vec<f64>>();
    tx.execute(
        &format!(
            "INSERT INTO sample_rollups ({ROLLUP_COLUMNS}) SELECT * FROM UNNEST(\
             $1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::text[], \
             $7::int8[], $8::int8[], $9::float8[], $10::float8[], $11::float8[], \
             $12::int8[], $13::int8[]) ON CONFLICT ({ROLLUP_KEY}) DO UPDATE SET \
             n = sample_rollups.n + EXCLUDED.n, total = sample_rollups.total + EXCLUDED.total, \
             low = LEAST(sample_rollups.low, EXCLUDED.low), \
             high = GREATEST(sample_rollups.high, EXCLUDED.high), \
             first_ts = LEAST(sample_rollups.first_ts, EXCLUDED.first_ts), \
             last_ts = GREATEST(sample_rollups.last_ts, EXCLUDED.last_ts)"
        ),
        &[
            &text(|k| &k.meter),
            &int(|k, _| k.scope),
            &int(|k, _| k.period),
            &text(|k| &k.resource_id),
            &text(|k| &k.project_key),
            &text(|k| &k.unit),
            &int(|k, _| k.bucket_start),
            &int(|_, a| a.count),
            &float(|a| a.sum),
            &float(|a| a.min),
            &float(|a| a.max),
            &int(|_, a| a.first),
            &int(|_, a| a.last),
        ],
    )
    .await?;
    Ok(())
}

fn dollar(n: usize) -> String {
    format!("${n}")
}

fn as_sql(param: &super::sql::Param) -> &(dyn ToSql + Sync) {
    use super::sql::Param;
    match param {
        Param::Text(s) => s,
        Param::Int(i) => i,
        Param::OptInt(i) => i,
    }
}

/// The parts of `query` answered through the roll-ups, or `None` when the roll-ups cannot
/// help and the raw query must answer.
pub(super) async fn rollup_rows(
    client: &Client,
    query: &StatisticsQuery,
    periods: &[u64],
) -> Result<Option<Vec<super::sql::StatsRow>>, StoreError> {
    let extent = match periods.last() {
        Some(&largest) if rollup::needs_extent(query) => {
            let (text, params) = rollup::extent_sql(query, largest, dollar);
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(as_sql).collect();
            let row = client.query_one(&text, &refs).await.map_err(backend)?;
            let first: Option<i64> = row.try_get(0).map_err(backend)?;
            let last: Option<i64> = row.try_get(1).map_err(backend)?;
            first
                .zip(last)
                .map(|(first, last)| rollup::Extent { first, last })
        }
        _ => None,
    };
    let Some(plan) = rollup::plan(query, periods, extent) else {
        return Ok(None);
    };
    let mut parts = Vec::new();
    for segment in &plan.segments {
        let (text, params) = rollup::segment_sql(query, &plan, segment, None, dollar);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(as_sql).collect();
        for row in client.query(&text, &refs).await.map_err(backend)? {
            parts.push(part(&row).map_err(backend)?);
        }
    }
    Ok(Some(rollup::merge(&plan, parts)))
}

fn part(row: &Row) -> Result<Part, tokio_postgres::Error> {
    Ok(Part {
        bucket: row.try_get(0)?,
        unit: row.try_get(1)?,
        aggregate: Aggregate {
            count: row.try_get(2)?,
            sum: row.try_get(3)?,
            min: row.try_get(4)?,
            max: row.try_get(5)?,
            first: row.try_get(6)?,
            last: row.try_get(7)?,
        },
    })
}

/// The catalogue, for one resource or all, in bytewise order.
pub(super) async fn meters(
    client: &Client,
    resource: Option<&str>,
) -> Result<Vec<MeterInfo>, StoreError> {
    let text = catalogue::list_sql(resource.is_some(), " COLLATE \"C\"", dollar);
    let rows = match resource {
        Some(resource) => client.query(&text, &[&resource]).await,
        None => client.query(&text, &[]).await,
    }
    .map_err(backend)?;
    rows.iter()
        .map(|row| {
            let kind: String = row.try_get(1).map_err(backend)?;
            let project: String = row.try_get(4).map_err(backend)?;
            let user: String = row.try_get(5).map_err(backend)?;
            catalogue::info(
                row.try_get(0).map_err(backend)?,
                &kind,
                row.try_get(2).map_err(backend)?,
                row.try_get(3).map_err(backend)?,
                &project,
                &user,
                row.try_get(6).map_err(backend)?,
            )
        })
        .collect()
}

/// One bounded expiry step (see [`retention`]), and the day whose partition it dropped.
pub(super) async fn expire_step(
    client: &Client,
    layout: &StoreLayout,
    periods: &[u64],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(Expired, Option<i64>), StoreError> {
    let batch = i64::try_from(layout.expiry_batch.max(1)).unwrap_or(i64::MAX);
    let meters: Vec<String> = client
        .query("SELECT DISTINCT meter FROM meter_catalogue", &[])
        .await
        .map_err(backend)?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    if let Some(common) = retention::common_cutoff(layout, periods, &meters, now) {
        let partitions: Vec<String> = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'samples'::regclass",
                &[],
            )
            .await
            .map_err(backend)?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        let expired = partitions
            .iter()
            .filter_map(|name| partition_day(name))
            .filter(|day| day.saturating_add(1).saturating_mul(DAY) <= common)
            .min();
        if let Some(day) = expired {
            let name = partition_name(day);
            // Concurrently: inserts into other days go on while the partition is detached.
            let detached = client
                .batch_execute(&format!(
                    "ALTER TABLE samples DETACH PARTITION {name} CONCURRENTLY"
                ))
                .await;
            if detached.is_err() {
                client
                    .batch_execute(&format!("ALTER TABLE samples DETACH PARTITION {name}"))
                    .await
                    .map_err(backend)?;
            }
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await
                .map_err(backend)?;
            let step = Expired {
                partitions: 1,
                ..Expired::default()
            };
            return Ok((step, Some(day)));
        }
    }
    let cutoffs: Vec<(&String, i64)> = meters
        .iter()
        .filter_map(|m| Some((m, retention::cutoff(layout, periods, m, now)?)))
        .collect();
    for (meter, cutoff) in &cutoffs {
        let deleted = client
            .execute(
                "DELETE FROM samples WHERE (message_id, ts) IN \
                 (SELECT message_id, ts FROM samples WHERE meter = $1 AND ts < $2 LIMIT $3)",
                &[meter, cutoff, &batch],
            )
            .await
            .map_err(backend)?;
        if deleted > 0 {
            let step = Expired {
                samples: deleted,
                ..Expired::default()
            };
            return Ok((step, None));
        }
    }
    for (meter, cutoff) in &cutoffs {
        let mut deleted = client
            .execute(
                &format!(
                    "DELETE FROM sample_rollups WHERE ({ROLLUP_KEY}) IN (SELECT {ROLLUP_KEY} \
                     FROM sample_rollups WHERE meter = $1 AND bucket_start < $2 LIMIT $3)"
                ),
                &[meter, cutoff, &batch],
            )
            .await
            .map_err(backend)?;
        deleted += client
            .execute(
                "DELETE FROM meter_catalogue WHERE meter = $1 AND last_ts < $2",
                &[meter, cutoff],
            )
            .await
            .map_err(backend)?;
        if deleted > 0 {
            let step = Expired {
                summaries: deleted,
                ..Expired::default()
            };
            return Ok((step, None));
        }
    }
    Ok((Expired::default(), None))
}

/// Bytes the samples (every partition), roll-ups and catalogue take, with indexes.
pub(super) async fn disk_usage(client: &Client) -> Result<u64, StoreError> {
    let row = client
        .query_one(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind = 'r' \
             AND (c.relname LIKE 'samples%' OR c.relname IN \
             ('sample_rollups', 'meter_catalogue', 'rollup_periods'))",
            &[],
        )
        .await
        .map_err(backend)?;
    let bytes: i64 = row.try_get(0).map_err(backend)?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}
