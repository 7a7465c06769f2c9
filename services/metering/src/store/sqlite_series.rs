//! How the SQLite store lays out samples: normalised, so that a sample costs its time, value
//! and id rather than a copy of every name it carries.
//!
//! - `meter_catalogue` is also the series table: one row per meter, resource, source, unit,
//!   counter type, project and user, with an integer `series_id` in its meter's range
//!   (`catalogue_meters` numbers the meters).
//! - `sample_metadata` holds each distinct resource metadata of a series once, with a bound
//!   on its samples' times (`until_ts`, exclusive, on an hour boundary) that expiry reads.
//! - `sample_points` is one row per sample: its hour (`chunk`), series, time, message id
//!   (16 bytes when it is a UUID) and value, clustered by hour, then series and time
//!   (`WITHOUT ROWID`). Samples arrive an hour at a time across every series, so a batch
//!   writes into the few pages of the current hour (clustered by series alone, each series'
//!   newest page would be a page of its own, and every batch would rewrite as many pages as
//!   it has samples); a series' samples in a time range are a run in each hour. A
//!   redelivered sample (same series, time and id) is stored once.
//! - `sample_chunks` lists the hours that hold samples, so that a query loops over the hours
//!   in its range (each a seek per series) instead of scanning.
//! - the view `samples` joins them back into the columns of a sample (and `chunk`), which the
//!   statistics and roll-up queries shared with PostgreSQL read; given a time range, they
//!   bound `chunk` too ([`CHUNK_US`]). Its joins are in a fixed order (`CROSS JOIN`): the
//!   series that match, then their hours in range, then a seek into each; left to itself,
//!   SQLite's planner (which has no statistics) would scan every sample of those hours.
//!
//! The writer keeps the series and metadata ids it has seen in a bounded [`SeriesCache`], so
//! a sample of a known series writes one row. Expiry deletes series and metadata rows; it then
//! bumps `catalogue_epoch`, and every writer (several stores may share a file) drops its cache
//! when it sees the epoch move at the start of its next write.

use std::collections::{HashMap, HashSet};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql};

use super::catalogue::CatalogueKey;
use super::rollup::bucket_start;
use super::sql::{chunk_of, SampleRow};
use crate::model::CounterType;

/// The series, metadata and sample tables, and the view over them.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meter_catalogue (
    series_id INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    source TEXT NOT NULL,
    unit TEXT NOT NULL,
    counter_type TEXT NOT NULL,
    project_key TEXT NOT NULL,
    user_key TEXT NOT NULL,
    UNIQUE (meter, resource_id, source, unit, counter_type, project_key, user_key)
);
CREATE INDEX IF NOT EXISTS meter_catalogue_resource ON meter_catalogue (resource_id);
CREATE TABLE IF NOT EXISTS sample_metadata (
    metadata_id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL,
    body TEXT NOT NULL,
    until_ts INTEGER NOT NULL,
    UNIQUE (series_id, body)
);
CREATE TABLE IF NOT EXISTS catalogue_meters (
    meter_id INTEGER PRIMARY KEY,
    meter TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS sample_chunks (chunk INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS sample_points (
    chunk INTEGER NOT NULL,
    series_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    message_id NOT NULL,
    volume REAL NOT NULL,
    metadata_id INTEGER NOT NULL,
    PRIMARY KEY (chunk, series_id, ts, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS catalogue_epoch (epoch INTEGER NOT NULL);
INSERT INTO catalogue_epoch (epoch) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM catalogue_epoch);
CREATE VIEW IF NOT EXISTS samples AS SELECT
    CASE WHEN typeof(p.message_id) = 'blob' AND length(p.message_id) = 16 THEN lower(
        substr(hex(p.message_id), 1, 8) || '-' || substr(hex(p.message_id), 9, 4) || '-' ||
        substr(hex(p.message_id), 13, 4) || '-' || substr(hex(p.message_id), 17, 4) || '-' ||
        substr(hex(p.message_id), 21, 12))
    ELSE p.message_id END AS message_id,
    c.meter AS meter,
    c.counter_type AS counter_type,
    c.unit AS unit,
    p.volume AS volume,
    c.source AS source,
    CASE WHEN c.user_key = '' THEN NULL ELSE substr(c.user_key, 2) END AS user_id,
    CASE WHEN c.project_key = '' THEN NULL ELSE substr(c.project_key, 2) END AS project_id,
    c.resource_id AS resource_id,
    p.ts AS ts,
    m.body AS resource_metadata,
    k.chunk AS chunk
FROM meter_catalogue c
CROSS JOIN sample_chunks k
CROSS JOIN sample_points p ON p.chunk = k.chunk AND p.series_id = c.series_id
LEFT JOIN sample_metadata m ON m.metadata_id = p.metadata_id;
";

/// The table that held whole samples before this layout, renamed while its rows move.
const OLD_SAMPLES: &str = "samples_before_series";

/// The length of a chunk of `sample_points` in µs: an hour.
pub(super) const CHUNK_US: i64 = 3_600_000_000;

/// Series ids are the meter's id shifted by this many bits, plus a number: a meter's series
/// are neighbours, so in each hour its samples are a run of pages of their own, and a query
/// of one meter reads those pages only. Ids stay below 2^47, six bytes on disk.
const SERIES_BITS: u32 = 24;

/// The bits left for the meter's id.
const METER_BITS: u32 = 23;

/// Series or metadata ids a writer keeps before it starts again from empty.
const CACHE_BOUND: usize = 100_000;

/// Metadata bounds move in steps of an hour, so a series' metadata row is rewritten about
/// once an hour rather than with every sample.
const UNTIL_STEP: i64 = CHUNK_US;

/// One metadata row of a series as the writer knows it.
#[derive(Debug)]
struct KnownMetadata {
    body: String,
    metadata_id: i64,
    until_ts: i64,
}

/// The series and metadata ids one writer has seen, valid for one catalogue epoch.
#[derive(Debug, Default)]
pub(super) struct SeriesCache {
    epoch: Option<i64>,
    series: HashMap<CatalogueKey, i64>,
    chunks: HashSet<i64>,
    metadata: HashMap<i64, Vec<KnownMetadata>>,
    metadata_entries: usize,
}

impl SeriesCache {
    /// Forgets everything (after a failed write, whose new ids were rolled back).
    pub(super) fn clear(&mut self) {
        self.epoch = None;
        self.series.clear();
        self.chunks.clear();
        self.metadata.clear();
        self.metadata_entries = 0;
    }
}

/// A message id as stored: the 16 bytes of a UUID written in its usual lower-case form (what
/// Ceilometer sends), its text otherwise, so that the view gives back the same text.
enum StoredId<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> StoredId<'a> {
    fn new(message_id: &'a str) -> Self {
        // Of the forms a UUID parses from, only the hyphenated one has this length; in lower
        // case it is the text the view writes back.
        let usual = message_id.len() == uuid::fmt::Hyphenated::LENGTH
            && !message_id.bytes().any(|b| b.is_ascii_uppercase());
        match uuid::Uuid::try_parse(message_id) {
            Ok(id) if usual => Self::Uuid(id.into_bytes()),
            _ => Self::Text(message_id),
        }
    }
}

impl ToSql for StoredId<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Self::Uuid(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
            Self::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        })
    }
}

fn column_exists(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        [table, column],
        |row| row.get(0),
    )
}

fn kind_of(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT type FROM sqlite_master WHERE name = ?1",
        [name],
        |row| row.get(0),
    )
    .optional()
}

/// Makes the layout, moving the samples of a database made by an older version (one wide
/// row per sample) into it. Runs in the caller's transaction, before the roll-ups are made
/// or filled (they read the view).
pub(super) fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let old = kind_of(conn, "samples")?.as_deref() == Some("table");
    if old {
        conn.execute_batch(&format!("ALTER TABLE samples RENAME TO {OLD_SAMPLES}"))?;
    }
    // The catalogue before it named series: rebuilt from the samples as they move.
    if kind_of(conn, "meter_catalogue")?.is_some()
        && !column_exists(conn, "meter_catalogue", "series_id")?
    {
        conn.execute_batch("DROP TABLE meter_catalogue")?;
    }
    conn.execute_batch(SCHEMA)?;
    if old {
        move_old_samples(conn)?;
        conn.execute_batch(&format!("DROP TABLE {OLD_SAMPLES}"))?;
    }
    Ok(())
}

fn move_old_samples(conn: &Connection) -> rusqlite::Result<()> {
    let mut cache = SeriesCache::default();
    let mut select = conn.prepare(&format!(
        "SELECT message_id, meter, counter_type, unit, volume, source, user_id, project_id, \
         resource_id, ts, resource_metadata FROM {OLD_SAMPLES}"
    ))?;
    let mut rows = select.query([])?;
    let mut batch = Vec::with_capacity(1024);
    while let Some(row) = rows.next()? {
        let named: String = row.get(2)?;
        let counter_type = CounterType::from_name(&named).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("stored counter_type {named:?} is not gauge, delta or cumulative").into(),
            )
        })?;
        batch.push(SampleRow {
            message_id: row.get(0)?,
            meter: row.get(1)?,
            counter_type: counter_type.as_str(),
            unit: row.get(3)?,
            volume: row.get(4)?,
            source: row.get(5)?,
            user_id: row.get(6)?,
            project_id: row.get(7)?,
            resource_id: row.get(8)?,
            ts: row.get(9)?,
            resource_metadata: row.get(10)?,
        });
        if batch.len() == batch.capacity() {
            insert(conn, &batch, &mut cache)?;
            batch.clear();
        }
    }
    insert(conn, &batch, &mut cache)?;
    Ok(())
}

/// Writes `rows` in the caller's transaction (which must hold the write lock, so that the
/// epoch read first stays current) and returns the positions of those that were new.
pub(super) fn insert(
    conn: &Connection,
    rows: &[SampleRow],
    cache: &mut SeriesCache,
) -> rusqlite::Result<Vec<usize>> {
    let epoch: i64 = conn
        .prepare_cached("SELECT epoch FROM catalogue_epoch")?
        .query_row([], |row| row.get(0))?;
    if cache.epoch != Some(epoch) {
        cache.clear();
        cache.epoch = Some(epoch);
    }
    let mut point = conn.prepare_cached(
        "INSERT INTO sample_points (chunk, series_id, ts, message_id, volume, metadata_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    )?;
    let mut fresh = Vec::with_capacity(rows.len());
    for (position, row) in rows.iter().enumerate() {
        let chunk = chunk_of(row.ts, CHUNK_US);
        if !cache.chunks.contains(&chunk) {
            conn.prepare_cached(
                "INSERT INTO sample_chunks (chunk) VALUES (?1) ON CONFLICT DO NOTHING",
            )?
            .execute([chunk])?;
            if cache.chunks.len() >= CACHE_BOUND {
                cache.chunks.clear();
            }
            cache.chunks.insert(chunk);
        }
        let series_id = series_id(conn, row, cache)?;
        let metadata_id = metadata_id(conn, series_id, row, cache)?;
        let new = point.execute(params![
            chunk,
            series_id,
            row.ts,
            StoredId::new(&row.message_id),
            row.volume,
            metadata_id
        ])?;
        if new > 0 {
            fresh.push(position);
        }
    }
    Ok(fresh)
}

fn series_id(conn: &Connection, row: &SampleRow, cache: &mut SeriesCache) -> rusqlite::Result<i64> {
    let key = CatalogueKey::of(row);
    if let Some(&id) = cache.series.get(&key) {
        return Ok(id);
    }
    let values = params![
        key.meter,
        key.resource_id,
        key.source,
        key.unit,
        key.counter_type,
        key.project_key,
        key.user_key
    ];
    let found: Option<i64> = conn
        .prepare_cached(
            "SELECT series_id FROM meter_catalogue WHERE meter = ?1 AND resource_id = ?2 \
             AND source = ?3 AND unit = ?4 AND counter_type = ?5 AND project_key = ?6 \
             AND user_key = ?7",
        )?
        .query_row(values, |r| r.get(0))
        .optional()?;
    let id = match found {
        Some(id) => id,
        None => {
            let id = next_series_id(conn, &key.meter)?;
            let mut with_id = values.to_vec();
            with_id.push(&id);
            conn.prepare_cached(
                "INSERT INTO meter_catalogue (series_id, meter, resource_id, source, unit, \
                 counter_type, project_key, user_key) VALUES (?8, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(with_id.as_slice())?;
            id
        }
    };
    if cache.series.len() >= CACHE_BOUND {
        cache.series.clear();
    }
    cache.series.insert(key, id);
    Ok(id)
}

/// A refusal of a sample that would pass one of the layout's bounds.
fn too_many(what: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG),
        Some(what),
    )
}

/// The number of `meter`, `None` for a meter never stored.
fn meter_id(conn: &Connection, meter: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT meter_id FROM catalogue_meters WHERE meter = ?1")?
        .query_row([meter], |r| r.get(0))
        .optional()
}

/// The id for a new series of `meter`: the meter's own range (see [`SERIES_BITS`]), one past
/// the highest in use.
fn next_series_id(conn: &Connection, meter: &str) -> rusqlite::Result<i64> {
    let meter_id = match meter_id(conn, meter)? {
        Some(id) => id,
        None => {
            conn.prepare_cached("INSERT INTO catalogue_meters (meter) VALUES (?1)")?
                .execute([meter])?;
            conn.last_insert_rowid()
        }
    };
    if meter_id >= 1 << METER_BITS {
        return Err(too_many(format!(
            "the store holds {} meters, the most it can",
            1_i64 << METER_BITS
        )));
    }
    let first = meter_id << SERIES_BITS;
    let end = first + (1 << SERIES_BITS);
    let next: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(MAX(series_id) + 1, ?1) FROM meter_catalogue \
             WHERE series_id >= ?1 AND series_id < ?2",
        )?
        .query_row([first, end], |r| r.get(0))?;
    if next >= end {
        return Err(too_many(format!(
            "meter {meter:?} has {} series (resource, project, user, source, unit and type \
             together), the most one meter may have",
            1_i64 << SERIES_BITS
        )));
    }
    Ok(next)
}

/// The range of `meter`'s series ids, `None` for a meter never stored.
fn series_range(conn: &Connection, meter: &str) -> rusqlite::Result<Option<(i64, i64)>> {
    Ok(meter_id(conn, meter)?
        .filter(|id| (0..1 << METER_BITS).contains(id))
        .map(|id| (id << SERIES_BITS, (id + 1) << SERIES_BITS)))
}

/// The bound `until_ts` a sample at `ts` needs: the next hour boundary after it.
fn until_for(ts: i64) -> i64 {
    bucket_start(ts, UNTIL_STEP).saturating_add(UNTIL_STEP)
}

fn metadata_id(
    conn: &Connection,
    series_id: i64,
    row: &SampleRow,
    cache: &mut SeriesCache,
) -> rusqlite::Result<i64> {
    let body = row.resource_metadata.as_str();
    if let Some(known) = cache
        .metadata
        .get_mut(&series_id)
        .and_then(|known| known.iter_mut().find(|k| k.body == body))
    {
        if row.ts >= known.until_ts {
            known.until_ts = until_for(row.ts);
            conn.prepare_cached(
                "UPDATE sample_metadata SET until_ts = MAX(until_ts, ?2) WHERE metadata_id = ?1",
            )?
            .execute(params![known.metadata_id, known.until_ts])?;
        }
        return Ok(known.metadata_id);
    }
    let until_ts = until_for(row.ts);
    let metadata_id: i64 = conn
        .prepare_cached(
            "INSERT INTO sample_metadata (series_id, body, until_ts) VALUES (?1, ?2, ?3) \
             ON CONFLICT (series_id, body) DO UPDATE SET until_ts = MAX(until_ts, excluded.until_ts) \
             RETURNING metadata_id",
        )?
        .query_row(params![series_id, body, until_ts], |r| r.get(0))?;
    if cache.metadata_entries >= CACHE_BOUND {
        cache.metadata.clear();
        cache.metadata_entries = 0;
    }
    cache.metadata_entries += 1;
    cache
        .metadata
        .entry(series_id)
        .or_default()
        .push(KnownMetadata {
            body: body.to_owned(),
            metadata_id,
            until_ts,
        });
    Ok(metadata_id)
}

/// Where an expiry run has got to: per meter, the first chunk that may still hold samples
/// below its cutoff. Without it each step would seek through every chunk already emptied, and
/// a run would cost the square of the chunks. A run that found nothing left forgets it, so
/// that the next run starts from the oldest chunk again (and finds a sample that arrived late
/// below where this one had got to).
#[derive(Debug, Default)]
pub(super) struct ExpiryProgress {
    next_chunk: HashMap<String, i64>,
}

impl ExpiryProgress {
    /// The run is over.
    pub(super) fn clear(&mut self) {
        self.next_chunk.clear();
    }
}

/// Deletes at most `batch` samples of `meter` older than `cutoff` (µs), from the oldest chunk
/// that has any; 0 when none is left.
pub(super) fn expire_points(
    conn: &Connection,
    meter: &str,
    cutoff: i64,
    batch: i64,
    progress: &mut ExpiryProgress,
) -> rusqlite::Result<usize> {
    let Some((first_series, end_series)) = series_range(conn, meter)? else {
        return Ok(0);
    };
    let last = chunk_of(cutoff.saturating_sub(1), CHUNK_US);
    let mut from = progress.next_chunk.get(meter).copied().unwrap_or(i64::MIN);
    loop {
        let chunk: Option<i64> = conn
            .prepare_cached(
                "SELECT chunk FROM sample_chunks WHERE chunk >= ?1 AND chunk <= ?2 \
                 ORDER BY chunk LIMIT 1",
            )?
            .query_row([from, last], |r| r.get(0))
            .optional()?;
        let Some(chunk) = chunk else {
            progress
                .next_chunk
                .insert(meter.to_owned(), last.saturating_add(1));
            return Ok(0);
        };
        let deleted = conn
            .prepare_cached(
                "DELETE FROM sample_points WHERE (chunk, series_id, ts, message_id) IN \
                 (SELECT chunk, series_id, ts, message_id FROM sample_points WHERE chunk = ?1 \
                  AND series_id >= ?2 AND series_id < ?3 AND ts < ?4 LIMIT ?5)",
            )?
            .execute(params![chunk, first_series, end_series, cutoff, batch])?;
        if deleted > 0 {
            progress.next_chunk.insert(meter.to_owned(), chunk);
            return Ok(deleted);
        }
        from = chunk.saturating_add(1);
    }
}

/// Deletes `meter`'s metadata rows whose samples are all older than `cutoff` (µs), then its
/// series without metadata (so without samples: every sample names a metadata row of its
/// series), then the chunks before `cutoff` left empty, in one transaction that moves the
/// epoch when it deleted anything. Returns the rows deleted.
pub(super) fn expire_series(
    conn: &Connection,
    meter: &str,
    cutoff: i64,
) -> rusqlite::Result<usize> {
    let Some((first, end)) = series_range(conn, meter)? else {
        return Ok(0);
    };
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let mut deleted = conn
            .prepare_cached(
                "DELETE FROM sample_metadata WHERE series_id >= ?1 AND series_id < ?2 \
                 AND until_ts <= ?3",
            )?
            .execute(params![first, end, cutoff])?;
        // One lookup per series and per chunk, each a seek on a key: as a correlated
        // `NOT EXISTS`, SQLite may plan a scan of every sample instead.
        let series: Vec<i64> = conn
            .prepare_cached(
                "SELECT series_id FROM meter_catalogue WHERE series_id >= ?1 AND series_id < ?2",
            )?
            .query_map([first, end], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for series_id in series {
            let described: bool = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM sample_metadata WHERE series_id = ?1)",
                )?
                .query_row([series_id], |r| r.get(0))?;
            if !described {
                deleted += conn
                    .prepare_cached("DELETE FROM meter_catalogue WHERE series_id = ?1")?
                    .execute([series_id])?;
            }
        }
        let chunks: Vec<i64> = conn
            .prepare_cached("SELECT chunk FROM sample_chunks WHERE chunk <= ?1")?
            .query_map([chunk_of(cutoff.saturating_sub(1), CHUNK_US)], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for chunk in chunks {
            let filled: bool = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM sample_points WHERE chunk = ?1)")?
                .query_row([chunk], |r| r.get(0))?;
            if !filled {
                deleted += conn
                    .prepare_cached("DELETE FROM sample_chunks WHERE chunk = ?1")?
                    .execute([chunk])?;
            }
        }
        if deleted > 0 {
            conn.execute_batch("UPDATE catalogue_epoch SET epoch = epoch + 1")?;
        }
        Ok(deleted)
    })();
    match result {
        Ok(deleted) => {
            conn.execute_batch("COMMIT")?;
            Ok(deleted)
        }
        Err(error) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}
