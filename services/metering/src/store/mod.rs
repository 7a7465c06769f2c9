//! Storage of samples and alarms behind one trait, so every agent works on SQLite (embedded,
//! the default) or PostgreSQL (for deployments that outgrow one machine) alike.
//!
//! [`open`] picks the backend from a URL:
//! - `sqlite://PATH` — a database file (`sqlite:///var/lib/tidings/metering.sqlite` is absolute,
//!   `sqlite://metering.sqlite` relative), created with its directories if missing;
//! - `sqlite::memory:` — a private in-memory database, for tests and demos;
//! - `postgres://…` / `postgresql://…` — libpq's URL; see [`postgres`].
//!
//! The default, [`default_url`], is a file in the user's data directory:
//! `$TIDINGS_DATA_DIR/metering.sqlite`, else `$XDG_DATA_HOME/tidings/metering.sqlite`, else
//! `$HOME/.local/share/tidings/metering.sqlite`, else `./tidings-metering.sqlite`.
//!
//! Statistics follow Ceilometer's v2 API over its SQL driver: with period 0, one bucket per
//! unit over every matching sample, whose `period_start`/`period_end` are the first and last
//! sample's times; with period N, buckets of N seconds from the query's start (or the first
//! matching sample's time), empty ones left out. Two differences, on purpose: `end` is
//! inclusive (Ceilometer's default is `<`), and a sample at the very end of the range is always
//! counted (Ceilometer's period iterator can drop it, and drops everything when the first and
//! last sample coincide).
//!
//! Answers that must not grow with the samples kept do not read them: meters are listed from
//! a catalogue kept as samples arrive, and statistics come from roll-ups wherever the
//! query's period and range line up with them (raw samples otherwise, with the same result).
//! Samples past their time to live are removed in the background by [`retention`]; the
//! [`StoreLayout`] of a [`StoreConfig`] says how long they live and which roll-ups are kept.
//!
//! [`manifold`] offers a store to an agent's other manifolds, and runs the expiry.

mod catalogue;
mod config;
mod manifold;
pub mod postgres;
mod postgres_samples;
pub mod retention;
mod rollup;
mod sql;
pub mod sqlite;
mod sqlite_samples;
mod sqlite_series;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use config::{
    StoreConfig, StoreLayout, DEFAULT_EXPIRY_BATCH, DEFAULT_EXPIRY_INTERVAL, DEFAULT_ROLLUP_PERIODS,
};
pub use manifold::manifold;
pub use postgres::PostgresStore;
pub use retention::Expired;
pub use sqlite::SqliteStore;

use super::model::{
    Alarm, AlarmChange, AlarmState, MeterInfo, Sample, Statistics, StatisticsQuery,
};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store URL is not `sqlite://PATH`, `sqlite::memory:` or `postgres://…`.
    #[error("unsupported store URL {0:?}: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// No such alarm.
    #[error("no alarm {0}")]
    NoSuchAlarm(String),
    /// An alarm with that id is already stored.
    #[error("alarm {0} already exists")]
    AlarmExists(String),
    /// The database failed.
    #[error("storage error: {0}")]
    Backend(String),
    /// The store cannot take writes now, whatever they hold: it cannot be reached, is
    /// restarting, read-only, locked by another process, out of space. The same call may
    /// succeed later; the collector holds its samples and retries.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the data itself (a value it cannot hold, such as a NUL byte in a
    /// PostgreSQL text column; a constraint). The same data fails again; the collector finds the
    /// sample and dead-letters it with this reason.
    #[error("refused by the store: {0}")]
    Refused(String),
}

impl StoreError {
    /// Whether the failure is the store's state rather than the data: retrying the same call
    /// later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// What every metering store offers.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Answers once the database does (`SELECT 1`): for health checks. A database that cannot
    /// be reached is [`StoreError::Unavailable`].
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores samples in one transaction; a sample whose `message_id` is already stored is
    /// skipped. Returns how many were new. A failure stores none of them, and says which
    /// kind it is: [`StoreError::Unavailable`] (try again later) or [`StoreError::Refused`]
    /// (some sample cannot be stored as it is).
    async fn record(&self, samples: &[Sample]) -> Result<usize, StoreError>;

    /// Statistics buckets over the matching samples, computed by the database. With a period,
    /// buckets are aligned on `start` (or the first sample) and empty buckets are left out.
    async fn statistics(&self, query: &StatisticsQuery) -> Result<Vec<Statistics>, StoreError>;

    /// Meters seen, for one resource or all.
    async fn meters(&self, resource_id: Option<&str>) -> Result<Vec<MeterInfo>, StoreError>;

    /// One bounded step of expiry at `now` (see [`retention`]): removes some of what is past
    /// its time to live and says what; an empty answer means nothing is left to remove. The
    /// default removes nothing (a store that keeps everything).
    async fn expire_step(&self, now: DateTime<Utc>) -> Result<Expired, StoreError> {
        let _ = now;
        Ok(Expired::default())
    }

    /// Bytes the store's samples, roll-ups and catalogue take on disk now (the database file
    /// with its journal; the tables with their indexes). `None` when the store cannot tell
    /// (an in-memory database).
    async fn disk_usage(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Stores a new alarm and its `creation` history entry.
    async fn create_alarm(&self, alarm: &Alarm) -> Result<(), StoreError>;

    /// Every alarm.
    async fn alarms(&self) -> Result<Vec<Alarm>, StoreError>;

    /// One alarm.
    async fn alarm(&self, alarm_id: &str) -> Result<Alarm, StoreError>;

    /// Deletes an alarm and its history.
    async fn delete_alarm(&self, alarm_id: &str) -> Result<(), StoreError>;

    /// Records a state change (alarm row and history entry together).
    async fn set_state(&self, change: &AlarmChange) -> Result<(), StoreError>;

    /// An alarm's history, oldest first.
    async fn history(&self, alarm_id: &str) -> Result<Vec<AlarmChange>, StoreError>;

    /// One page of alarms in listing order (creation time, then id), optionally one project's.
    /// The default filters [`alarms`](Self::alarms); the SQL stores ask the database.
    async fn alarm_page(&self, page: &AlarmPage) -> Result<Vec<Alarm>, StoreError> {
        let alarms = self.alarms().await?;
        let start = match &page.marker {
            Some(marker) => alarms
                .iter()
                .position(|a| a.alarm_id == *marker)
                .map_or(alarms.len(), |i| i + 1),
            None => 0,
        };
        Ok(alarms
            .into_iter()
            .skip(start)
            .filter(|a| page.project_id.is_none() || a.project_id == page.project_id)
            .take(page.limit)
            .collect())
    }

    /// Replaces the stored alarm with `alarm`'s id by `alarm` (its rule, actions, name, owner,
    /// state…: the caller decides what is kept) and records `change` (a `rule change` saying
    /// what changed) in the same transaction. The default refuses: a store that cannot change
    /// alarms says so rather than pretend.
    async fn update_alarm(&self, alarm: &Alarm, change: &AlarmChange) -> Result<(), StoreError> {
        let _ = change;
        Err(StoreError::Backend(format!(
            "this store cannot change alarm {}",
            alarm.alarm_id
        )))
    }
}

/// Which alarms [`Store::alarm_page`] lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlarmPage {
    /// Only this project's alarms; `None` for every alarm (an admin's listing).
    pub project_id: Option<String>,
    /// Start after this alarm (by id), in listing order; `None` from the first.
    pub marker: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// The current state of an alarm (helper for evaluators).
pub async fn current_state(store: &dyn Store, alarm_id: &str) -> Result<AlarmState, StoreError> {
    Ok(store.alarm(alarm_id).await?.state)
}

/// Opens the store named by `url` (see the module docs for the forms) with the default
/// [`StoreLayout`], creating its tables if they are missing.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(&StoreConfig::new(url)).await
}

/// Opens the store of `config`: its URL, with its layout (roll-up periods, times to live).
/// Tables are created if missing, and a database made by an older version, or with other
/// roll-up periods, is brought up to date first.
pub async fn open_with(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    let url = config.url.trim();
    let layout = config.layout.clone();
    layout.periods().map_err(StoreError::Backend)?;
    if url == "sqlite::memory:" || url == "sqlite://:memory:" {
        return Ok(Arc::new(SqliteStore::open_in_memory_with(layout).await?));
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::UnsupportedUrl(redact(url)));
        }
        return Ok(Arc::new(SqliteStore::open_with(path, layout).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect_with(url, layout).await?));
    }
    Err(StoreError::UnsupportedUrl(redact(url)))
}

/// The default store URL: `sqlite://` and [`default_sqlite_path`].
pub fn default_url() -> String {
    format!("sqlite://{}", default_sqlite_path().display())
}

/// Where the embedded store lives by default: `$TIDINGS_DATA_DIR/metering.sqlite`, else
/// `$XDG_DATA_HOME/tidings/metering.sqlite`, else `$HOME/.local/share/tidings/metering.sqlite`,
/// else `tidings-metering.sqlite` in the working directory.
pub fn default_sqlite_path() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("TIDINGS_DATA_DIR") {
        return dir.join("metering.sqlite");
    }
    if let Some(dir) = var("XDG_DATA_HOME") {
        return dir.join("tidings").join("metering.sqlite");
    }
    if let Some(home) = var("HOME") {
        return home.join(".local/share/tidings/metering.sqlite");
    }
    PathBuf::from("tidings-metering.sqlite")
}

/// `url` without its credentials (the userinfo's password, and secret query parameters such
/// as libpq's `?password=`), for logs, errors, reports and banners; see
/// [`secrets::mask_url`](crate::secrets::mask_url).
pub fn redact(url: &str) -> String {
    crate::secrets::mask_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_leave_redact() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/metering"),
            "postgres://app:***@db:5432/metering"
        );
        assert_eq!(
            redact("postgres://app@db/m?password=s3cret&sslmode=disable"),
            "postgres://***@db/m?password=***&sslmode=disable"
        );
        assert_eq!(redact("sqlite:///var/x.sqlite"), "sqlite:///var/x.sqlite");
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused() {
        let error = open("mysql://u:pw@h/db").await.unwrap_err();
        assert!(matches!(error, StoreError::UnsupportedUrl(ref u) if !u.contains("pw")));
        assert!(open("sqlite://").await.is_err());
    }
}
