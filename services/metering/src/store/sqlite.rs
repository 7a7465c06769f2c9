//! The embedded store: SQLite through rusqlite, in WAL mode.
//!
//! SQLite calls block, so none runs on the async workers: the store owns a writer thread (one
//! connection, every write, each `record` one transaction) and, for a file, a reader thread
//! (its own connection; WAL lets it read while the writer writes). Callers send jobs over a
//! bounded channel and await the answer, so a burst of writes queues instead of piling up
//! threads. `sqlite::memory:` is one private database on one thread (an in-memory database is
//! per connection).
//!
//! How samples are laid out (series, metadata, hourly chunks of points) lives in
//! `store::sqlite_series`; roll-ups, statistics and expiry in `store::sqlite_samples`. A new
//! file gives the pages that expiry frees back to the file system (incremental vacuum).
//!
//! Durability: `synchronous=NORMAL`, SQLite's advice for WAL: a committed batch survives a
//! crash of the process; a power cut may lose the last batches, never corrupt the file.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::config::StoreLayout;
use super::retention::Expired;
use super::sql::{self, SampleRow};
use super::sqlite_samples;
use super::sqlite_series::{self, ExpiryProgress, SeriesCache};
use super::{AlarmPage, Store, StoreError};
use crate::model::{Alarm, AlarmChange, MeterInfo, Sample, Statistics, StatisticsQuery};

/// The alarm tables; the samples' are made by [`sqlite_samples::upgrade`].
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    body TEXT NOT NULL,
    project_id TEXT,
    user_id TEXT
);
CREATE TABLE IF NOT EXISTS alarm_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alarm_history_alarm ON alarm_history (alarm_id, seq);
";

/// Jobs queued per thread before callers wait.
const QUEUE: usize = 64;

/// Bytes the write-ahead log is cut back to after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// The page cache of each connection, in KiB.
const CACHE_KIB: i64 = 16 << 10;

/// How much of the file each connection maps into memory.
const MMAP_BYTES: i64 = 256 << 20;

/// How long a connection waits for another's lock before failing.
const BUSY_TIMEOUT_MS: u32 = 5_000;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The channel to one SQLite thread.
#[derive(Clone)]
struct DbThread {
    jobs: mpsc::Sender<Job>,
}

impl DbThread {
    /// Starts a thread that opens its connection with `open` and then runs jobs until every
    /// sender is gone.
    async fn start(
        name: &str,
        open: impl FnOnce() -> rusqlite::Result<Connection> + Send + 'static,
    ) -> Result<Self, StoreError> {
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
        let (opened, is_open) = oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut conn = match open() {
                    Ok(conn) => {
                        let _ = opened.send(Ok(()));
                        conn
                    }
                    Err(error) => {
                        let _ = opened.send(Err(error));
                        return;
                    }
                };
                while let Some(job) = queue.blocking_recv() {
                    // A panicking job drops its answer channel (the caller sees an error);
                    // the thread and its connection carry on.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the SQLite thread: {e}")))?;
        match is_open.await {
            Ok(Ok(())) => Ok(Self { jobs }),
            Ok(Err(error)) => Err(backend(error)),
            Err(_) => Err(StoreError::Backend(
                "the SQLite thread died while opening".into(),
            )),
        }
    }

    /// Runs `work` on the thread and returns its result.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, result) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = answer.send(work(conn));
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite thread has stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Unavailable("a SQLite job failed without an answer".into()))?
    }
}

/// The embedded SQLite store.
pub struct SqliteStore {
    location: String,
    /// The database file; `None` in memory.
    path: Option<PathBuf>,
    layout: Arc<StoreLayout>,
    /// Roll-up periods (seconds, ascending), from the layout.
    periods: Arc<[u64]>,
    /// The series ids the writer has seen; used only on the writer thread.
    series: Arc<Mutex<SeriesCache>>,
    /// How far the current expiry run has got; used only on the writer thread.
    expiry: Arc<Mutex<ExpiryProgress>>,
    writer: DbThread,
    reader: DbThread,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it and its parent directories if needed) the database file at `path`,
    /// with the default layout.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, StoreLayout::default()).await
    }

    /// Opens the database file at `path` with `layout` (see [`StoreLayout`]), upgrading it
    /// first if an older version made it or its roll-up periods changed.
    pub async fn open_with(
        path: impl AsRef<Path>,
        layout: StoreLayout,
    ) -> Result<Self, StoreError> {
        let periods: Arc<[u64]> = layout.periods().map_err(StoreError::Backend)?.into();
        let path: PathBuf = path.as_ref().to_owned();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let write_path = path.clone();
        let upgrade_periods = periods.clone();
        let writer = DbThread::start("metering-sqlite-writer", move || {
            let mut conn = Connection::open(&write_path)?;
            sqlite_samples::prepare_new(&conn)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // The log is truncated back to this after a checkpoint that emptied it.
            conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
            prepare(&conn)?;
            conn.execute_batch(SCHEMA)?;
            migrate(&conn)?;
            sqlite_samples::upgrade(&mut conn, &upgrade_periods)?;
            Ok(conn)
        })
        .await?;
        let read_path = path.clone();
        let reader = DbThread::start("metering-sqlite-reader", move || {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&read_path, flags)?;
            prepare(&conn)?;
            Ok(conn)
        })
        .await?;
        Ok(Self {
            location: path.display().to_string(),
            path: Some(path),
            layout: Arc::new(layout),
            periods,
            series: Arc::default(),
            expiry: Arc::default(),
            writer,
            reader,
        })
    }

    /// A fresh private in-memory database (gone when the store is dropped).
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        Self::open_in_memory_with(StoreLayout::default()).await
    }

    /// A fresh private in-memory database with `layout`.
    pub async fn open_in_memory_with(layout: StoreLayout) -> Result<Self, StoreError> {
        let periods: Arc<[u64]> = layout.periods().map_err(StoreError::Backend)?.into();
        let upgrade_periods = periods.clone();
        let thread = DbThread::start("metering-sqlite-memory", move || {
            let mut conn = Connection::open_in_memory()?;
            prepare(&conn)?;
            conn.execute_batch(SCHEMA)?;
            migrate(&conn)?;
            sqlite_samples::upgrade(&mut conn, &upgrade_periods)?;
            Ok(conn)
        })
        .await?;
        Ok(Self {
            location: ":memory:".to_owned(),
            path: None,
            layout: Arc::new(layout),
            periods,
            series: Arc::default(),
            expiry: Arc::default(),
            writer: thread.clone(),
            reader: thread,
        })
    }
}

fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(u64::from(BUSY_TIMEOUT_MS)))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The pages a batch of samples touches (the current hour of every series, its roll-ups)
    // stay in the cache; reads of the file go through memory mapping, not a system call
    // per page. Both are bounds, reached only as the file grows.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    Ok(())
}

/// Brings a database made by an older version up to date: alarms gained owners
/// (`project_id`, `user_id`); SQLite has no `ADD COLUMN IF NOT EXISTS`, so the columns are
/// looked up first. Runs on the writer's connection, after [`SCHEMA`].
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let mut columns = Vec::new();
    {
        let mut statement = conn.prepare("PRAGMA table_info(alarms)")?;
        let names = statement.query_map([], |row| row.get::<_, String>(1))?;
        for name in names {
            columns.push(name?);
        }
    }
    for column in ["project_id", "user_id"] {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE alarms ADD COLUMN {column} TEXT"))?;
        }
    }
    conn.execute_batch(sql::ALARM_OWNER_INDEX)
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {error}"))
}

/// Sorts a failed write: a constraint, a value too big or of the wrong type, or a value that
/// does not convert is the data's fault ([`StoreError::Refused`]); any other SQLite failure is
/// the database's state (`SQLITE_BUSY`/`LOCKED` while another process holds the write lock,
/// `SQLITE_READONLY`, `SQLITE_FULL`, `SQLITE_IOERR`, `SQLITE_CANTOPEN`) and
/// [`StoreError::Unavailable`].
fn write_error(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let refused = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => matches!(
            failure.code,
            ErrorCode::ConstraintViolation
                | ErrorCode::TooBig
                | ErrorCode::TypeMismatch
                | ErrorCode::ParameterOutOfRange
        ),
        _ => true,
    };
    if refused {
        StoreError::Refused(format!("sqlite: {error}"))
    } else {
        StoreError::Unavailable(format!("sqlite: {error}"))
    }
}

fn question(n: usize) -> String {
    format!("?{n}")
}

fn load_alarm(conn: &Connection, alarm_id: &str) -> Result<Alarm, StoreError> {
    let body: Option<String> = conn
        .query_row(
            "SELECT body FROM alarms WHERE alarm_id = ?1",
            [alarm_id],
            |row| row.get(0),
        )
        .optional()
        .map_err(backend)?;
    match body {
        Some(body) => sql::from_json(&body),
        None => Err(StoreError::NoSuchAlarm(alarm_id.to_owned())),
    }
}

fn insert_change(conn: &Connection, change: &AlarmChange) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO alarm_history (alarm_id, body) VALUES (?1, ?2)",
        params![change.alarm_id, sql::to_json(change)?],
    )
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.reader
            .run(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))
                    .map_err(|e| StoreError::Unavailable(format!("sqlite: {e}")))
            })
            .await
    }

    async fn record(&self, samples: &[Sample]) -> Result<usize, StoreError> {
        if samples.is_empty() {
            return Ok(0);
        }
        let rows: Vec<SampleRow> = samples.iter().map(SampleRow::new).collect();
        let periods = self.periods.clone();
        let series = self.series.clone();
        self.writer
            .run(move |conn| {
                let mut cache = series.lock().unwrap_or_else(PoisonError::into_inner);
                // The write lock first: the catalogue epoch read next must stay current.
                let written = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .and_then(|tx| {
                        let fresh = sqlite_series::insert(&tx, &rows, &mut cache)?;
                        let fresh: Vec<&SampleRow> = fresh.iter().map(|&i| &rows[i]).collect();
                        sqlite_samples::summarise(&tx, &fresh, &periods)?;
                        tx.commit()?;
                        Ok(fresh.len())
                    });
                if written.is_err() {
                    // Ids made in the rolled-back transaction are gone.
                    cache.clear();
                }
                written.map_err(write_error)
            })
            .await
    }

    async fn statistics(&self, query: &StatisticsQuery) -> Result<Vec<Statistics>, StoreError> {
        let query = query.clone();
        let periods = self.periods.clone();
        self.reader
            .run(move |conn| sqlite_samples::statistics(conn, &query, &periods))
            .await
    }

    async fn meters(&self, resource_id: Option<&str>) -> Result<Vec<MeterInfo>, StoreError> {
        let resource = resource_id.map(str::to_owned);
        self.reader
            .run(move |conn| sqlite_samples::meters(conn, resource.as_deref()))
            .await
    }

    async fn expire_step(&self, now: DateTime<Utc>) -> Result<Expired, StoreError> {
        if !self.layout.expires() {
            return Ok(Expired::default());
        }
        let layout = self.layout.clone();
        let periods = self.periods.clone();
        let expiry = self.expiry.clone();
        self.writer
            .run(move |conn| {
                let mut progress = expiry.lock().unwrap_or_else(PoisonError::into_inner);
                sqlite_samples::expire_step(conn, &layout, &periods, now, &mut progress)
            })
            .await
    }

    async fn disk_usage(&self) -> Result<Option<u64>, StoreError> {
        match &self.path {
            Some(path) => sqlite_samples::disk_usage(path).map(Some),
            None => Ok(None),
        }
    }

    async fn create_alarm(&self, alarm: &Alarm) -> Result<(), StoreError> {
        let alarm = alarm.clone();
        self.writer
            .run(move |conn| {
                let tx = conn.transaction().map_err(backend)?;
                let inserted = tx
                    .execute(
                        "INSERT INTO alarms (alarm_id, created, body, project_id, user_id) \
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (alarm_id) DO NOTHING",
                        params![
                            alarm.alarm_id,
                            sql::micros(&alarm.timestamp),
                            sql::to_json(&alarm)?,
                            alarm.project_id,
                            alarm.user_id,
                        ],
                    )
                    .map_err(backend)?;
                if inserted == 0 {
                    return Err(StoreError::AlarmExists(alarm.alarm_id));
                }
                insert_change(&tx, &sql::creation_change(&alarm))?;
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn alarms(&self) -> Result<Vec<Alarm>, StoreError> {
        self.reader
            .run(|conn| {
                let mut statement = conn
                    .prepare_cached("SELECT body FROM alarms ORDER BY created, alarm_id")
                    .map_err(backend)?;
                let rows = statement
                    .query_map([], |row| row.get::<_, String>(0))
                    .map_err(backend)?;
                rows.map(|body| sql::from_json(&body.map_err(backend)?))
                    .collect()
            })
            .await
    }

    async fn alarm(&self, alarm_id: &str) -> Result<Alarm, StoreError> {
        let alarm_id = alarm_id.to_owned();
        self.reader
            .run(move |conn| load_alarm(conn, &alarm_id))
            .await
    }

    async fn delete_alarm(&self, alarm_id: &str) -> Result<(), StoreError> {
        let alarm_id = alarm_id.to_owned();
        self.writer
            .run(move |conn| {
                let tx = conn.transaction().map_err(backend)?;
                let deleted = tx
                    .execute("DELETE FROM alarms WHERE alarm_id = ?1", [&alarm_id])
                    .map_err(backend)?;
                if deleted == 0 {
                    return Err(StoreError::NoSuchAlarm(alarm_id));
                }
                tx.execute("DELETE FROM alarm_history WHERE alarm_id = ?1", [&alarm_id])
                    .map_err(backend)?;
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn set_state(&self, change: &AlarmChange) -> Result<(), StoreError> {
        let change = change.clone();
        self.writer
            .run(move |conn| {
                let tx = conn.transaction().map_err(backend)?;
                let alarm = sql::apply_change(load_alarm(&tx, &change.alarm_id)?, &change);
                tx.execute(
                    "UPDATE alarms SET body = ?2 WHERE alarm_id = ?1",
                    params![alarm.alarm_id, sql::to_json(&alarm)?],
                )
                .map_err(backend)?;
                insert_change(&tx, &change)?;
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn alarm_page(&self, page: &AlarmPage) -> Result<Vec<Alarm>, StoreError> {
        let page = page.clone();
        self.reader
            .run(move |conn| {
                let mut statement = conn
                    .prepare_cached(&sql::alarm_page_sql(question))
                    .map_err(backend)?;
                let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
                let rows = statement
                    .query_map(params![page.project_id, page.marker, limit], |row| {
                        row.get::<_, String>(0)
                    })
                    .map_err(backend)?;
                rows.map(|body| sql::from_json(&body.map_err(backend)?))
                    .collect()
            })
            .await
    }

    async fn update_alarm(&self, alarm: &Alarm, change: &AlarmChange) -> Result<(), StoreError> {
        let alarm = alarm.clone();
        let change = change.clone();
        self.writer
            .run(move |conn| {
                let tx = conn.transaction().map_err(backend)?;
                let updated = tx
                    .execute(
                        "UPDATE alarms SET body = ?2, project_id = ?3, user_id = ?4 \
                         WHERE alarm_id = ?1",
                        params![
                            alarm.alarm_id,
                            sql::to_json(&alarm)?,
                            alarm.project_id,
                            alarm.user_id,
                        ],
                    )
                    .map_err(backend)?;
                if updated == 0 {
                    return Err(StoreError::NoSuchAlarm(alarm.alarm_id));
                }
                insert_change(&tx, &change)?;
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn history(&self, alarm_id: &str) -> Result<Vec<AlarmChange>, StoreError> {
        let alarm_id = alarm_id.to_owned();
        self.reader
            .run(move |conn| {
                let mut statement = conn
                    .prepare_cached(
                        "SELECT body FROM alarm_history WHERE alarm_id = ?1 ORDER BY seq",
                    )
                    .map_err(backend)?;
                let rows = statement
                    .query_map([&alarm_id], |row| row.get::<_, String>(0))
                    .map_err(backend)?;
                let changes: Vec<AlarmChange> = rows
                    .map(|body| sql::from_json(&body.map_err(backend)?))
                    .collect::<Result<_, _>>()?;
                // Every alarm has its creation entry: no history means no alarm.
                if changes.is_empty() {
                    return Err(StoreError::NoSuchAlarm(alarm_id));
                }
                Ok(changes)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_a_table() -> (PathBuf, Connection) {
        let path =
            std::env::temp_dir().join(format!("tidings-sqlite-{:016x}.db", fastrand::u64(..)));
        let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        conn.execute_batch("CREATE TABLE t (a TEXT NOT NULL)")
            .unwrap_or_else(|e| panic!("{e}"));
        (path, conn)
    }

    #[test]
    fn a_read_only_or_locked_database_is_unavailable_and_a_constraint_is_refused() {
        let (path, conn) = file_with_a_table();
        let read_only = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{e}"));
        let error = read_only
            .execute("INSERT INTO t VALUES ('x')", [])
            .unwrap_err();
        assert!(write_error(error).is_unavailable());

        let locked = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        conn.execute_batch("BEGIN IMMEDIATE")
            .unwrap_or_else(|e| panic!("{e}"));
        let error = locked
            .execute("INSERT INTO t VALUES ('x')", [])
            .unwrap_err();
        assert!(write_error(error).is_unavailable());
        conn.execute_batch("ROLLBACK")
            .unwrap_or_else(|e| panic!("{e}"));

        let error = conn.execute("INSERT INTO t VALUES (NULL)", []).unwrap_err();
        assert!(matches!(write_error(error), StoreError::Refused(_)));
        let _ = std::fs::remove_file(&path);
    }
}
