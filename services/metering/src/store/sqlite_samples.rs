//! The samples side of the SQLite store: the catalogue and roll-up tables and their upgrade,
//! what each batch of new samples adds to them, statistics through the roll-ups, and bounded
//! expiry steps. Free functions over a connection, run on the store's writer or reader thread;
//! the alarm tables are not touched here.

use std::collections::BTreeMap;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::catalogue;
use super::config::StoreLayout;
use super::retention::{self, Expired};
use super::rollup::{self, Aggregate, Part, ROLLUP_COLUMNS, ROLLUP_KEY};
use super::sql::{self, Param, SampleRow, StatsRow};
use super::sqlite_series;
use super::StoreError;
use crate::model::{MeterInfo, Statistics, StatisticsQuery};

/// The roll-ups and the periods they are kept for (the catalogue is the series table of
/// [`sqlite_series`]).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sample_rollups (
    meter TEXT NOT NULL,
    scope INTEGER NOT NULL,
    period INTEGER NOT NULL,
    resource_id TEXT NOT NULL,
    project_key TEXT NOT NULL,
    unit TEXT NOT NULL,
    bucket_start INTEGER NOT NULL,
    n INTEGER NOT NULL,
    total REAL NOT NULL,
    low REAL NOT NULL,
    high REAL NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    UNIQUE (meter, scope, period, resource_id, project_key, unit, bucket_start)
);
CREATE INDEX IF NOT EXISTS sample_rollups_age ON sample_rollups (meter, bucket_start);
CREATE TABLE IF NOT EXISTS rollup_periods (period INTEGER PRIMARY KEY);
";

/// Pages given back to the file system per expiry step (4 MiB of 4 KiB pages).
const VACUUM_PAGES: i64 = 1_024;

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {error}"))
}

/// Whether the database has no table at all yet (a new file), checked before the schema is
/// made: only then can it be set to give freed pages back (`auto_vacuum` is fixed once a
/// table exists).
pub(super) fn prepare_new(conn: &Connection) -> rusqlite::Result<()> {
    let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |row| row.get(0))?;
    if tables == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    Ok(())
}

/// Brings the samples side up to date, in one transaction, after the base schema: lays out
/// the samples ([`sqlite_series::upgrade`], moving those of an older version), creates the
/// roll-ups, fills the roll-ups of periods newly configured and drops those no longer
/// configured.
pub(super) fn upgrade(conn: &mut Connection, periods: &[u64]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    sqlite_series::upgrade(&tx)?;
    // Roll-ups clustered by their key (an older version) rewrote a page per sample once the
    // table outgrew the cache: each series' newest bucket sits on a page of its own. In
    // insertion order, the rows a batch updates are the current buckets', next to each other.
    let clustered: Option<String> = tx
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'sample_rollups'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let reorder = clustered.is_some_and(|sql| sql.contains("WITHOUT ROWID"));
    if reorder {
        tx.execute_batch(
            "ALTER TABLE sample_rollups RENAME TO sample_rollups_clustered; \
             DROP INDEX IF EXISTS sample_rollups_age;",
        )?;
    }
    tx.execute_batch(SCHEMA)?;
    if reorder {
        tx.execute_batch(&format!(
            "INSERT INTO sample_rollups ({ROLLUP_COLUMNS}) SELECT {ROLLUP_COLUMNS} \
             FROM sample_rollups_clustered; DROP TABLE sample_rollups_clustered;"
        ))?;
    }
    let kept: Vec<i64> = {
        let mut statement = tx.prepare("SELECT period FROM rollup_periods")?;
        let rows = statement.query_map([], |row| row.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for &period in periods {
        let seconds = i64::try_from(period).unwrap_or(i64::MAX);
        if !kept.contains(&seconds) {
            for statement in rollup::backfill_sql(period) {
                tx.execute_batch(&statement)?;
            }
            tx.execute("INSERT INTO rollup_periods (period) VALUES (?1)", [seconds])?;
        }
    }
    for period in kept {
        if !periods
            .iter()
            .any(|p| i64::try_from(*p).ok() == Some(period))
        {
            tx.execute("DELETE FROM sample_rollups WHERE period = ?1", [period])?;
            tx.execute("DELETE FROM rollup_periods WHERE period = ?1", [period])?;
        }
    }
    tx.commit()
}

/// Adds newly stored samples to the roll-ups of `periods`, in the caller's transaction (the
/// catalogue gained their series as they were written).
pub(super) fn summarise(
    conn: &Connection,
    fresh: &[&SampleRow],
    periods: &[u64],
) -> rusqlite::Result<()> {
    let mut rollup = conn.prepare_cached(&format!(
        "INSERT INTO sample_rollups ({ROLLUP_COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
         ON CONFLICT ({ROLLUP_KEY}) DO UPDATE SET n = n + excluded.n, \
         total = total + excluded.total, low = MIN(low, excluded.low), \
         high = MAX(high, excluded.high), first_ts = MIN(first_ts, excluded.first_ts), \
         last_ts = MAX(last_ts, excluded.last_ts)"
    ))?;
    for (key, a) in rollup::deltas(fresh.iter().copied(), periods) {
        rollup.execute(params![
            key.meter,
            key.scope,
            key.period,
            key.resource_id,
            key.project_key,
            key.unit,
            key.bucket_start,
            a.count,
            a.sum,
            a.min,
            a.max,
            a.first,
            a.last
        ])?;
    }
    Ok(())
}

fn question(n: usize) -> String {
    format!("?{n}")
}

fn to_sql(param: &Param) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match param {
        Param::Text(s) => V::Text(s.clone()),
        Param::Int(i) => V::Integer(*i),
        Param::OptInt(i) => i.map_or(V::Null, V::Integer),
    }
}

/// Statistics for `query`: through the roll-ups of `periods` where they line up, raw
/// samples otherwise.
pub(super) fn statistics(
    conn: &Connection,
    query: &StatisticsQuery,
    periods: &[u64],
) -> Result<Vec<Statistics>, StoreError> {
    let extent = match periods.last() {
        Some(&largest) if rollup::needs_extent(query) => {
            let (text, params) = rollup::extent_sql(query, largest, question);
            let row: (Option<i64>, Option<i64>) = conn
                .prepare_cached(&text)
                .and_then(|mut s| {
                    s.query_row(params_from_iter(params.iter().map(to_sql)), |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                })
                .map_err(backend)?;
            match row {
                (Some(first), Some(last)) => Some(rollup::Extent { first, last }),
                _ => None,
            }
        }
        _ => None,
    };
    let Some(plan) = rollup::plan(query, periods, extent) else {
        return raw_statistics(conn, query);
    };
    let mut parts = Vec::new();
    for segment in &plan.segments {
        let (text, params) = rollup::segment_sql(
            query,
            &plan,
            segment,
            Some(sqlite_series::CHUNK_US),
            question,
        );
        let mut statement = conn.prepare_cached(&text).map_err(backend)?;
        let rows = statement
            .query_map(params_from_iter(params.iter().map(to_sql)), |row| {
                Ok(Part {
                    bucket: row.get(0)?,
                    unit: row.get(1)?,
                    aggregate: Aggregate {
                        count: row.get(2)?,
                        sum: row.get(3)?,
                        min: row.get(4)?,
                        max: row.get(5)?,
                        first: row.get(6)?,
                        last: row.get(7)?,
                    },
                })
            })
            .map_err(backend)?;
        for part in rows {
            parts.push(part.map_err(backend)?);
        }
    }
    rollup::merge(&plan, parts)
        .into_iter()
        .map(|row| sql::to_statistics(row, query.period))
        .collect()
}

/// Statistics over the raw samples alone.
fn raw_statistics(
    conn: &Connection,
    query: &StatisticsQuery,
) -> Result<Vec<Statistics>, StoreError> {
    let filter = sql::sample_filter(query, Some(sqlite_series::CHUNK_US), question);
    if let (Some(start), true) = (&query.start, query.period > 0) {
        return bucketed_in_memory(conn, query, &filter, sql::micros(start));
    }
    let periodic = query.period > 0;
    let text = sql::statistics_sql(&filter, periodic, question);
    let mut params: Vec<rusqlite::types::Value> = filter.params.iter().map(to_sql).collect();
    if periodic {
        params.extend(sql::bucket_params(query).iter().map(to_sql));
    }
    let mut statement = conn.prepare_cached(&text).map_err(backend)?;
    let rows = statement
        .query_map(params_from_iter(params), |row| {
            Ok(StatsRow {
                bucket: row.get(0)?,
                unit: row.get(1)?,
                count: row.get(2)?,
                sum: row.get(3)?,
                avg: row.get(4)?,
                min: row.get(5)?,
                max: row.get(6)?,
                first: row.get(7)?,
                last: row.get(8)?,
                origin: row.get(9)?,
            })
        })
        .map_err(backend)?;
    rows.map(|row| sql::to_statistics(row.map_err(backend)?, query.period))
        .collect()
}

/// Periodic statistics from a known origin over raw samples, the buckets summed here as the
/// samples stream by: SQLite's `GROUP BY` would sort every sample first, which takes longer
/// than reading them (an evaluator's window of 7000 samples: 9 ms against 4). The buckets are
/// few (a statistics answer has at most 10 000), the samples are not held.
fn bucketed_in_memory(
    conn: &Connection,
    query: &StatisticsQuery,
    filter: &sql::SampleFilter,
    origin: i64,
) -> Result<Vec<Statistics>, StoreError> {
    let length = sql::period_micros(query.period);
    let text = format!("SELECT ts, unit, volume FROM samples WHERE {}", filter.sql);
    let mut statement = conn.prepare_cached(&text).map_err(backend)?;
    let mut rows = statement
        .query(params_from_iter(filter.params.iter().map(to_sql)))
        .map_err(backend)?;
    // Per unit (nearly always one), the buckets in order.
    let mut units: Vec<(String, BTreeMap<i64, Aggregate>)> = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        let ts: i64 = row.get(0).map_err(backend)?;
        let unit = row
            .get_ref(1)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(backend)?;
        let volume: f64 = row.get(2).map_err(backend)?;
        // `ts >= origin` by the filter: the same bucket as the SQL's truncating division.
        let bucket = ts.saturating_sub(origin) / length;
        let sample = Aggregate::of(ts, volume);
        let i = match units.iter().position(|(u, _)| u == unit) {
            Some(i) => i,
            None => {
                units.push((unit.to_owned(), BTreeMap::new()));
                units.len() - 1
            }
        };
        units[i]
            .1
            .entry(bucket)
            .and_modify(|a| a.add(&sample))
            .or_insert(sample);
    }
    let mut out: Vec<StatsRow> = Vec::new();
    for (unit, buckets) in units {
        for (bucket, a) in buckets {
            out.push(a.into_row(bucket, unit.clone(), origin));
        }
    }
    out.sort_by(|a, b| (a.bucket, &a.unit).cmp(&(b.bucket, &b.unit)));
    out.into_iter()
        .map(|row| sql::to_statistics(row, query.period))
        .collect()
}

/// The catalogue, for one resource or all.
pub(super) fn meters(
    conn: &Connection,
    resource: Option<&str>,
) -> Result<Vec<MeterInfo>, StoreError> {
    let text = catalogue::list_sql(resource.is_some(), "", question);
    let mut statement = conn.prepare_cached(&text).map_err(backend)?;
    let rows = statement
        .query_map(params_from_iter(resource), |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
            ))
        })
        .map_err(backend)?;
    rows.map(|row| {
        let (name, kind, unit, resource, project, user, source) = row.map_err(backend)?;
        catalogue::info(name, &kind, unit, resource, &project, &user, source)
    })
    .collect()
}

/// One bounded expiry step (see [`retention`]).
pub(super) fn expire_step(
    conn: &Connection,
    layout: &StoreLayout,
    periods: &[u64],
    now: chrono::DateTime<chrono::Utc>,
    progress: &mut sqlite_series::ExpiryProgress,
) -> Result<Expired, StoreError> {
    let step = expire_one_step(conn, layout, periods, now, progress);
    if matches!(&step, Ok(done) if done.is_empty()) {
        progress.clear();
    }
    step
}

fn expire_one_step(
    conn: &Connection,
    layout: &StoreLayout,
    periods: &[u64],
    now: chrono::DateTime<chrono::Utc>,
    progress: &mut sqlite_series::ExpiryProgress,
) -> Result<Expired, StoreError> {
    let batch = i64::try_from(layout.expiry_batch.max(1)).unwrap_or(i64::MAX);
    let meters: Vec<String> = {
        let mut statement = conn
            .prepare_cached("SELECT DISTINCT meter FROM meter_catalogue")
            .map_err(backend)?;
        let rows = statement.query_map([], |row| row.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)?
    };
    let cutoffs: Vec<(&String, i64)> = meters
        .iter()
        .filter_map(|m| Some((m, retention::cutoff(layout, periods, m, now)?)))
        .collect();
    for (meter, cutoff) in &cutoffs {
        let deleted =
            sqlite_series::expire_points(conn, meter, *cutoff, batch, progress).map_err(backend)?;
        if deleted > 0 {
            return Ok(Expired {
                samples: deleted as u64,
                ..Expired::default()
            });
        }
    }
    for (meter, cutoff) in &cutoffs {
        let mut deleted = conn
            .prepare_cached(
                "DELETE FROM sample_rollups WHERE rowid IN (SELECT rowid \
                 FROM sample_rollups WHERE meter = ?1 AND bucket_start < ?2 LIMIT ?3)",
            )
            .and_then(|mut s| s.execute(params![meter, cutoff, batch]))
            .map_err(backend)?;
        deleted += sqlite_series::expire_series(conn, meter, *cutoff).map_err(backend)?;
        if deleted > 0 {
            return Ok(Expired {
                summaries: deleted as u64,
                ..Expired::default()
            });
        }
    }
    let incremental: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
        .map_err(backend)?;
    if incremental == 2 {
        let free = |conn: &Connection| -> Result<i64, StoreError> {
            conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))
                .map_err(backend)
        };
        let before = free(conn)?;
        if before > 0 {
            // The pragma frees one page per step of its statement: step it to the end
            // (a batch would run one step, one page).
            let mut vacuum = conn
                .prepare(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))
                .map_err(backend)?;
            let mut steps = vacuum.query([]).map_err(backend)?;
            while steps.next().map_err(backend)?.is_some() {}
            let after = free(conn)?;
            return Ok(Expired {
                pages: u64::try_from(before - after).unwrap_or(0),
                ..Expired::default()
            });
        }
    }
    // Nothing left to remove: the log of the deletions goes back to the file system too.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .map_err(backend)?;
    Ok(Expired::default())
}

/// Bytes of the database file and its write-ahead log.
pub(super) fn disk_usage(path: &std::path::Path) -> Result<u64, StoreError> {
    let mut total = 0;
    for suffix in ["", "-wal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::metadata(&name) {
            Ok(meta) => total += meta.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(StoreError::Backend(format!(
                    "cannot measure {}: {error}",
                    path.display()
                )))
            }
        }
    }
    Ok(total)
}
