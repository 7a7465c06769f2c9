//! The PostgreSQL store, for deployments that outgrow one machine: tokio-postgres, no TLS.
//!
//! Two connections: one for writes (transactions need one connection to themselves) and one
//! for reads, each re-established on the next call after it breaks, so a database restart
//! costs the calls in flight (the collector holds those batches and retries) and nothing
//! after. A failed write says whether the data or the database is at fault (see
//! [`StoreError::Refused`] and [`StoreError::Unavailable`]).
//!
//! The URL is libpq's (`postgres://user@host:port/db?options=...`); tables go into the first
//! schema of the connection's `search_path`, so `options=-c%20search_path%3Dmetering` keeps
//! them in a schema of their own.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row};

use super::sql::{self, Param, SampleRow, StatsRow, SAMPLE_COLUMNS};
use super::{AlarmPage, Store, StoreError};
use crate::model::{Alarm, AlarmChange, MeterInfo, Sample, Statistics, StatisticsQuery};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS samples (
    message_id TEXT PRIMARY KEY,
    meter TEXT NOT NULL,
    counter_type TEXT NOT NULL,
    unit TEXT NOT NULL,
    volume DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    user_id TEXT,
    project_id TEXT,
    resource_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    resource_metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_meter_ts ON samples (meter, ts);
CREATE INDEX IF NOT EXISTS samples_resource ON samples (resource_id);
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
    /// Connects to the database at `url` and creates the tables if they are missing.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("postgres URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let store = Self {
            writer: Link::new(config.clone()),
            reader: Link::new(config),
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
            tx.commit().await.map_err(backend)?;
        }
        Ok(store)
    }
}

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
            if matches!(code.get(..2), Some("22" | "23" | "54")) {
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
        let column = |f: fn(&SampleRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
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
        // One statement for the whole batch: atomic, one round trip; duplicates (stored
        // before, or twice in this batch) are skipped by the primary key.
        let statement = format!(
            "INSERT INTO samples ({SAMPLE_COLUMNS}) SELECT * FROM UNNEST(\
             $1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[], \
             $7::text[], $8::text[], $9::text[], $10::int8[], $11::text[]) \
             ON CONFLICT (message_id) DO NOTHING"
        );
        let client = self.writer.client().await?;
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            client.execute(
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
            ),
        )
        .await;
        drop(client);
        match written {
            Ok(Ok(new)) => Ok(usize::try_from(new).unwrap_or(usize::MAX)),
            Ok(Err(error)) => Err(write_error(error)),
            Err(_) => {
                self.writer.reset().await;
                Err(StoreError::Unavailable(format!(
                    "postgres: no answer to a write within {WRITE_TIMEOUT:?}"
                )))
            }
        }
    }

    async fn statistics(&self, query: &StatisticsQuery) -> Result<Vec<Statistics>, StoreError> {
        let filter = sql::sample_filter(query, dollar);
        let periodic = query.period > 0;
        let text = sql::statistics_sql(&filter, periodic, dollar);
        let mut params = filter.params.clone();
        if periodic {
            params.extend(sql::bucket_params(query));
        }
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(as_sql).collect();
        let client = self.reader.client().await?;
        let rows = client.query(&text, &refs).await.map_err(backend)?;
        rows.iter()
            .map(|row| sql::to_statistics(stats_row(row).map_err(backend)?, query.period))
            .collect()
    }

    async fn meters(&self, resource_id: Option<&str>) -> Result<Vec<MeterInfo>, StoreError> {
        let text = sql::meters_sql(resource_id.is_some(), dollar);
        let client = self.reader.client().await?;
        let rows = match resource_id {
            Some(resource) => client.query(&text, &[&resource]).await,
            None => client.query(&text, &[]).await,
        }
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get(1).map_err(backend)?;
                sql::meter_info(
                    row.try_get(0).map_err(backend)?,
                    &kind,
                    row.try_get(2).map_err(backend)?,
                    row.try_get(3).map_err(backend)?,
                    row.try_get(4).map_err(backend)?,
                    row.try_get(5).map_err(backend)?,
                    row.try_get(6).map_err(backend)?,
                )
            })
            .collect()
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
