//! The PostgreSQL store, for deployments that outgrow one machine: tokio-postgres, no TLS.
//!
//! Two connections: one for writes (transactions need one connection to themselves) and one
//! for reads (and a third for expiry, when samples expire), each re-established on the next call after it breaks, so a database restart
//! costs the calls in flight (the collector holds those batches and retries) and nothing
//! after. A failed write says whether the data or the database is at fault (see
//! [`StoreError::Refused`] and [`StoreError::Unavailable`]).
//!
//! The URL is libpq's (`postgres://user@host:port/db?options=...`); tables go into the first
//! schema of the connection's `search_path`, so `options=-c%20search_path%3Dmetering` keeps
//! them in a schema of their own.
//!
//! Samples live in day partitions, with a catalogue and roll-ups beside them, and expire by
//! whole partitions (module `store::postgres_samples`). Several collectors
//! (on several machines) may write at once: each batch is one transaction, and roll-up rows
//! are upserted in one global order, so concurrent batches wait for each other's rows rather
//! than deadlock.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row};

use chrono::{DateTime, Utc};

use super::config::StoreLayout;
use super::postgres_samples::{self, day_of, CatalogueWritten};
use super::retention::Expired;
use super::sql::{self, Param, SampleRow, StatsRow};
use super::{AlarmPage, Store, StoreError};
use crate::model::{Alarm, AlarmChange, MeterInfo, Sample, Statistics, StatisticsQuery};

/// The alarm tables; the samples side is `postgres_samples`'s.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id TEXT PRIMARY KEY,
    created BIGINT NOT NULL,
    body TEXT NOT NULL,
    project_id TEXT,
    user_id TEXT
);
CREATE TABLE IF NOT EXISTS alarm_history (
    seq BIGSERIAL PRIMARY KEY,
    alarm_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alarm_history_alarm ON alarm_history (alarm_id, seq);
";

/// Brings a database made by an older version up to date (run after [`SCHEMA`], under the
/// same lock): alarms gained owners; old rows keep none, so only admins see them.
const MIGRATIONS: &str = "
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS project_id TEXT;
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS user_id TEXT;
";

/// Serialises concurrent schema creation by several agents (`CREATE … IF NOT EXISTS` races
/// in PostgreSQL). An arbitrary constant: "tidings" in ASCII.
const SCHEMA_LOCK: i64 = 0x0074_6964_696e_6773;

/// One connection, re-established when broken.
struct Link {
    config: Config,
    client: Mutex<Option<Client>>,
}

impl Link {
    fn new(config: Config) -> Self {
        Self {
            config,
            client: Mutex::new(None),
        }
    }

    /// The connection, (re)connecting first if there is none or it broke. Held exclusively
    /// until the guard drops.
    async fn client(&self) -> Result<MappedMutexGuard<'_, Client>, StoreError> {
        let mut slot: MutexGuard<'_, Option<Client>> = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = self
                .config
                .connect(NoTls)
                .await
                .map_err(|e| StoreError::Unavailable(format!("postgres: {e}")))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "PostgreSQL connection of the metering store ended");
                }
            });
            *slot = Some(client);
        }
        MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| StoreError::Unavailable("postgres: no connection".into()))
    }

    /// Drops the connection (one whose call hung), so that the next call opens a fresh one.
    async fn reset(&self) {
        *self.client.lock().await = None;
    }
}

/// Longest wait for a connection, unless the URL sets `connect_timeout`: a server that drops
/// packets must not hold a write forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a batch of samples to be written. A connection that stops answering
/// without closing (a network partition) is dropped then, and the write reported as
/// unavailable; if it did commit, the samples' ids make the retry a no-op.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The PostgreSQL store.
pub struct PostgresStore {
    writer: Link,
    reader: Link,
    /// Expiry's own connection: dropping a partition waits for readers and writers of the
    /// table to finish, and must not hold the writer meanwhile.
    expirer: Link,
    layout: Arc<StoreLayout>,
    /// Roll-up periods (seconds, ascending), from the layout.
    periods: Arc<[u64]>,
    /// Days whose partition this store has seen exist (one entry a day: bounded by the
    /// retention, or by the days the store has written).
    partitions: std::sync::Mutex<BTreeSet<i64>>,
    /// The catalogue rows this store has written, so that it does not write them per sample.
    catalogue: CatalogueWritten,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        let config = &self.writer.config;
        f.debug_struct("PostgresStore")
            .field("user", &config.get_user())
            .field("dbname", &config.get_dbname())
            .field("hosts", &config.get_hosts())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` with the default layout and creates the tables if
    /// they are missing.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, StoreLayout::default()).await
    }

    /// Connects to the database at `url` with `layout` (see [`StoreLayout`]), creating the
    /// tables if they are missing and upgrading those an older version made.
    pub async fn connect_with(url: &str, layout: StoreLayout) -> Result<Self, StoreError> {
        let periods: Arc<[u64]> = layout.periods().map_err(StoreError::Backend)?.into();
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("postgres URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let store = Self {
            writer: Link::new(config.clone()),
            reader: Link::new(config.clone()),
            expirer: Link::new(config),
            layout: Arc::new(layout),
            catalogue: CatalogueWritten::new(&periods),
            periods,
            partitions: std::sync::Mutex::new(BTreeSet::new()),
        };
        {
            let mut client = store.writer.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await
                .map_err(backend)?;
            tx.batch_execute(SCHEMA).await.map_err(backend)?;
            tx.batch_execute(MIGRATIONS).await.map_err(backend)?;
            tx.batch_execute(sql::ALARM_OWNER_INDEX)
                .await
                .map_err(backend)?;
            postgres_samples::upgrade(&tx, &store.periods)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
        }
        Ok(store)
    }
}

impl PostgresStore {
    /// Notes that the partitions of `days` exist (`true`) or are gone (`false`).
    fn learn_partitions(&self, days: impl IntoIterator<Item = i64>, exist: bool) {
        if let Ok(mut known) = self.partitions.lock() {
            for day in days {
                if exist {
                    known.insert(day);
                } else {
                    known.remove(&day);
                }
            }
        }
    }

    /// Forgets every partition, so that the next write makes those it needs.
    fn forget_partitions(&self) {
        if let Ok(mut known) = self.partitions.lock() {
            known.clear();
        }
    }
}

/// What PostgreSQL says when a row has no partition (one dropped by another store's expiry).
const NO_PARTITION: &str = "no partition of relation";

fn backend(error: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("postgres: {error}"))
}

/// Sorts a failed write by SQLSTATE: the data's fault (class 22, data exception, such as
/// `22021` for a NUL byte in text; 23, integrity constraint; 54, a value past a limit) is
/// [`StoreError::Refused`]; everything else is the store's state (connection refused or lost,
/// `57P01` shutting down, `57P03` starting up, `25006` a read-only standby, `53xxx` out of
/// space, `42501` a revoked privilege) and [`StoreError::Unavailable`].
fn write_error(error: tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let text = format!("postgres {code}: {}", db.message());
            if db.message().contains(NO_PARTITION) {
                // The partition went between learning it and writing: try again.
                StoreError::Unavailable(text)
            } else if matches!(code.get(..2), Some("22" | "23" | "54")) {
                StoreError::Refused(text)
            } else {
                StoreError::Unavailable(text)
            }
        }
        None => StoreError::Unavailable(format!("postgres: {error}")),
    }
}

fn dollar(n: usize) -> String {
    format!("${n}")
}

fn as_sql(param: &Param) -> &(dyn ToSql + Sync) {
    match param {
        Param::Text(s) => s,
        Param::Int(i) => i,
        Param::OptInt(i) => i,
    }
}

fn stats_row(row: &Row) -> Result<StatsRow, tokio_postgres::Error> {
    Ok(StatsRow {
        bucket: row.try_get(0)?,
        unit: row.try_get(1)?,
        count: row.try_get(2)?,
        sum: row.try_get(3)?,
        avg: row.try_get(4)?,
        min: row.try_get(5)?,
        max: row.try_get(6)?,
        first: row.try_get(7)?,
        last: row.try_get(8)?,
        origin: row.try_get(9)?,
    })
}

fn body_of<T: serde::de::DeserializeOwned>(row: &Row) -> Result<T, StoreError> {
    let body: String = row.try_get(0).map_err(backend)?;
    sql::from_json(&body)
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.reader.client().await?;
        let answered = client.simple_query("SELECT 1").await;
        answered
            .map(drop)
            .map_err(|e| StoreError::Unavailable(format!("postgres: {e}")))
    }

    async fn record(&self, samples: &[Sample]) -> Result<usize, StoreError> {
        if samples.is_empty() {
            return Ok(0);
        }
        let rows: Vec<SampleRow> = samples.iter().map(SampleRow::new).collect();
        let missing: BTreeSet<i64> = {
            let known = self
                .partitions
                .lock()
                .map_err(|_| StoreError::Backend("partition cache poisoned".into()))?;
            rows.iter()
                .map(|r| day_of(r.ts))
                .filter(|day| !known.contains(day))
                .collect()
        };
        let write = async {
            let mut client = self.writer.client().await?;
            postgres_samples::create_partitions(&mut client, &missing, SCHEMA_LOCK)
                .await
                .map_err(write_error)?;
            self.learn_partitions(missing.iter().copied(), true);
            let tx = client.transaction().await.map_err(write_error)?;
            let (new, catalogued) =
                postgres_samples::insert(&tx, &rows, &self.periods, &self.catalogue)
                    .await
                    .map_err(write_error)?;
            tx.commit().await.map_err(write_error)?;
            self.catalogue.committed(catalogued);
            Ok::<usize, StoreError>(new)
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(new)) => Ok(new),
            Ok(Err(error)) => {
                if matches!(&error, StoreError::Unavailable(text) if text.contains(NO_PARTITION)) {
                    // Another store dropped a partition this one knew: learn again.
                    self.forget_partitions();
                }
                Err(error)
            }
            Err(_) => {
                self.writer.reset().await;
                Err(StoreError::Unavailable(format!(
                    "postgres: no answer to a write within {WRITE_TIMEOUT:?}"
                )))
            }
        }
    }

    async fn statistics(&self, query: &StatisticsQuery) -> Result<Vec<Statistics>, StoreError> {
        let client = self.reader.client().await?;
        if let Some(rows) = postgres_samples::rollup_rows(&client, query, &self.periods).await? {
            return rows
                .into_iter()
                .map(|row| sql::to_statistics(row, query.period))
                .collect();
        }
        let filter = sql::sample_filter(query, None, dollar);
        let periodic = query.period > 0;
        let text = sql::statistics_sql(&filter, periodic, dollar);
        let mut params = filter.params.clone();
        if periodic {
            params.extend(sql::bucket_params(query));
        }
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(as_sql).collect();
        let rows = client.query(&text, &refs).await.map_err(backend)?;
        rows.iter()
            .map(|row| sql::to_statistics(stats_row(row).map_err(backend)?, query.period))
            .collect()
    }

    async fn meters(&self, resource_id: Option<&str>) -> Result<Vec<MeterInfo>, StoreError> {
        let client = self.reader.client().await?;
        postgres_samples::meters(&client, resource_id).await
    }

    async fn expire_step(&self, now: DateTime<Utc>) -> Result<Expired, StoreError> {
        if !self.layout.expires() {
            return Ok(Expired::default());
        }
        let client = self.expirer.client().await?;
        let (step, dropped) =
            postgres_samples::expire_step(&client, &self.layout, &self.periods, now).await?;
        drop(client);
        self.learn_partitions(dropped, false);
        Ok(step)
    }

    async fn disk_usage(&self) -> Result<Option<u64>, StoreError> {
        let client = self.reader.client().await?;
        postgres_samples::disk_usage(&client).await.map(Some)
    }

    async fn create_alarm(&self, alarm: &Alarm) -> Result<(), StoreError> {
        let body = sql::to_json(alarm)?;
        let creation = sql::to_json(&sql::creation_change(alarm))?;
        let mut client = self.writer.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let inserted = tx
            .execute(
                "INSERT INTO alarms (alarm_id, created, body, project_id, user_id) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (alarm_id) DO NOTHING",
                &[
                    &alarm.alarm_id,
                    &sql::micros(&alarm.timestamp),
                    &body,
                    &alarm.project_id,
                    &alarm.user_id,
                ],
            )
            .await
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::AlarmExists(alarm.alarm_id.clone()));
        }
        tx.execute(
            "INSERT INTO alarm_history (alarm_id, body) VALUES ($1, $2)",
            &[&alarm.alarm_id, &creation],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn alarms(&self) -> Result<Vec<Alarm>, StoreError> {
        let client = self.reader.client().await?;
        let rows = client
            .query("SELECT body FROM alarms ORDER BY created, alarm_id", &[])
            .await
            .map_err(backend)?;
        rows.iter().map(body_of).collect()
    }

    async fn alarm(&self, alarm_id: &str) -> Result<Alarm, StoreError> {
        let client = self.reader.client().await?;
        let row = client
            .query_opt("SELECT body FROM alarms WHERE alarm_id = $1", &[&alarm_id])
            .await
            .map_err(backend)?;
        match row {
            Some(row) => body_of(&row),
            None => Err(StoreError::NoSuchAlarm(alarm_id.to_owned())),
        }
    }

    async fn delete_alarm(&self, alarm_id: &str) -> Result<(), StoreError> {
        let mut client = self.writer.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let deleted = tx
            .execute("DELETE FROM alarms WHERE alarm_id = $1", &[&alarm_id])
            .await
            .map_err(backend)?;
        if deleted == 0 {
            return Err(StoreError::NoSuchAlarm(alarm_id.to_owned()));
        }
        tx.execute(
            "DELETE FROM alarm_history WHERE alarm_id = $1",
            &[&alarm_id],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn set_state(&self, change: &AlarmChange) -> Result<(), StoreError> {
        let entry = sql::to_json(change)?;
        let mut client = self.writer.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let row = tx
            .query_opt(
                "SELECT body FROM alarms WHERE alarm_id = $1 FOR UPDATE",
                &[&change.alarm_id],
            )
            .await
            .map_err(backend)?
            .ok_or_else(|| StoreError::NoSuchAlarm(change.alarm_id.clone()))?;
        let alarm = sql::apply_change(body_of(&row)?, change);
        tx.execute(
            "UPDATE alarms SET body = $2 WHERE alarm_id = $1",
            &[&alarm.alarm_id, &sql::to_json(&alarm)?],
        )
        .await
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO alarm_history (alarm_id, body) VALUES ($1, $2)",
            &[&change.alarm_id, &entry],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn alarm_page(&self, page: &AlarmPage) -> Result<Vec<Alarm>, StoreError> {
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        let client = self.reader.client().await?;
        let rows = client
            .query(
                &sql::alarm_page_sql(dollar),
                &[&page.project_id, &page.marker, &limit],
            )
            .await
            .map_err(backend)?;
        rows.iter().map(body_of).collect()
    }

    async fn update_alarm(&self, alarm: &Alarm, change: &AlarmChange) -> Result<(), StoreError> {
        let body = sql::to_json(alarm)?;
        let entry = sql::to_json(change)?;
        let mut client = self.writer.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let updated = tx
            .execute(
                "UPDATE alarms SET body = $2, project_id = $3, user_id = $4 WHERE alarm_id = $1",
                &[&alarm.alarm_id, &body, &alarm.project_id, &alarm.user_id],
            )
            .await
            .map_err(backend)?;
        if updated == 0 {
            return Err(StoreError::NoSuchAlarm(alarm.alarm_id.clone()));
        }
        tx.execute(
            "INSERT INTO alarm_history (alarm_id, body) VALUES ($1, $2)",
            &[&alarm.alarm_id, &entry],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn history(&self, alarm_id: &str) -> Result<Vec<AlarmChange>, StoreError> {
        let client = self.reader.client().await?;
        let rows = client
            .query(
                "SELECT body FROM alarm_history WHERE alarm_id = $1 ORDER BY seq",
                &[&alarm_id],
            )
            .await
            .map_err(backend)?;
        // Every alarm has its creation entry: no history means no alarm.
        if rows.is_empty() {
            return Err(StoreError::NoSuchAlarm(alarm_id.to_owned()));
        }
        rows.iter().map(body_of).collect()
    }
}
