//! The caller's job store: SQLite, embedded, one file that survives the caller's restarts.
//!
//! A job is a row of `jobs` (what was asked, its options, whether its servers are resolved, its
//! lease) and one row of `parts` per server. A part row keeps the server-side part id in its
//! own column from the moment the server accepted the part; the result or error goes into
//! other columns when the part ends, so recording some results never loses the ids still
//! needed to fetch the rest (the bug Func's overlord had, which wrote partial results over its
//! map of job ids). Every transition is one transaction that only moves a part forward
//! (`STARTING` → `RUNNING` → `FINISHED`, never back, never finished twice) and appends to
//! `history` the part's and, when it changed, the job's new status.
//!
//! Several processes may share a store: the one that follows a job holds its lease (renewed
//! while it lives); the others read, and may take the job over once the lease has expired.
//! SQLite runs in WAL mode so that readers never wait for the follower.
//!
//! Everything here is blocking SQLite work, run on Tokio's blocking threads, one statement
//! batch at a time under one connection lock.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{Map, Value};
use tidings::{Context, RemoteError};

use crate::error::JobError;
use crate::record::{HistoryEntry, JobSnapshot, JobSummary, PartKind, PartSnapshot};
use crate::spec::{JobOptions, JobSpec};
use crate::status::{JobStatus, PartStatus};

/// Finished jobs kept at most; older finished jobs are deleted when a store is opened.
pub const MAX_FINISHED_JOBS: usize = 10_000;

/// How long a finished job is kept (30 days); older ones are deleted when a store is opened.
pub const KEEP_FINISHED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    exchange TEXT,
    namespace TEXT,
    version TEXT,
    method TEXT NOT NULL,
    args TEXT NOT NULL,
    context TEXT NOT NULL,
    servers TEXT NOT NULL,
    options TEXT NOT NULL,
    resolved INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    finished_at TEXT,
    finished_ms INTEGER,
    lease_holder TEXT,
    lease_until_ms INTEGER
);
CREATE TABLE IF NOT EXISTS parts (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    server TEXT NOT NULL,
    status TEXT NOT NULL,
    kind TEXT,
    remote_id TEXT,
    started_at TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    accepted_at TEXT,
    finished_at TEXT,
    result TEXT,
    error TEXT,
    PRIMARY KEY (job_id, server)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    at TEXT NOT NULL,
    server TEXT,
    status TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_job ON history(job_id);
";

/// The caller's record of jobs. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct JobStore {
    conn: Arc<Mutex<Connection>>,
    location: Arc<str>,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// A failure inside a store operation, before the store's location is attached.
enum Fault {
    Sql(rusqlite::Error),
    NotFound(String),
    Corrupt { job: String, detail: String },
}

impl From<rusqlite::Error> for Fault {
    fn from(error: rusqlite::Error) -> Self {
        Fault::Sql(error)
    }
}

type Done<T> = Result<T, Fault>;

/// What the job's driver reads back to run it: the request and its options.
#[derive(Clone, Debug)]
pub(crate) struct JobRecord {
    pub id: String,
    pub topic: String,
    pub exchange: Option<String>,
    pub namespace: Option<String>,
    pub version: Option<String>,
    pub method: String,
    pub args: Map<String, Value>,
    pub context: Map<String, Value>,
    pub servers: String,
    pub options: JobOptions,
    pub created_ms: i64,
    pub resolved: bool,
}

/// The outcome of a transition: the job's status after it, and the part it changed.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub status: JobStatus,
    pub part: Option<PartSnapshot>,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl JobStore {
    /// Opens (creating it if needed) the store at `path`, and deletes finished jobs older than
    /// [`KEEP_FINISHED_FOR`] or beyond the newest [`MAX_FINISHED_JOBS`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, JobError> {
        let path = path.as_ref().to_path_buf();
        let location: Arc<str> = Arc::from(path.display().to_string());
        let opened = {
            let location = location.clone();
            tokio::task::spawn_blocking(move || {
                Connection::open(&path).map_err(|source| JobError::Store {
                    location: location.to_string(),
                    source,
                })
            })
            .await
            .map_err(|e| JobError::Task(e.to_string()))??
        };
        Self::prepare(opened, location).await
    }

    /// A store in memory, gone with the process (for tests and one-shot programs).
    pub async fn in_memory() -> Result<Self, JobError> {
        let location: Arc<str> = Arc::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| JobError::Store {
            location: location.to_string(),
            source,
        })?;
        Self::prepare(conn, location).await
    }

    async fn prepare(conn: Connection, location: Arc<str>) -> Result<Self, JobError> {
        let store = Self {
            conn: Arc::new(Mutex::new(conn)),
            location,
        };
        store
            .with(|conn| {
                conn.busy_timeout(Duration::from_secs(10))?;
                // WAL lets other processes read while the follower writes; in memory it is
                // refused, which is fine.
                let _ = conn.query_row("PRAGMA journal_mode=WAL", [], |row| {
                    row.get::<_, String>(0)
                });
                conn.execute_batch("PRAGMA foreign_keys=ON;")?;
                conn.execute_batch(SCHEMA)?;
                let oldest = now_ms() - duration_ms(KEEP_FINISHED_FOR);
                conn.execute(
                    "DELETE FROM jobs WHERE finished_ms IS NOT NULL AND (finished_ms < ?1 OR id NOT IN \
                     (SELECT id FROM jobs WHERE finished_ms IS NOT NULL ORDER BY created_ms DESC LIMIT ?2))",
                    params![oldest, MAX_FINISHED_JOBS as i64],
                )?;
                Ok(())
            })
            .await?;
        Ok(store)
    }

    /// Where the store is (a path, or `:memory:`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Runs `work` on the connection, on a blocking thread.
    async fn with<T, F>(&self, work: F) -> Result<T, JobError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Done<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            // A panic in a statement leaves SQLite consistent (transactions roll back).
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| JobError::Task(e.to_string()))?;
        outcome.map_err(|fault| match fault {
            Fault::Sql(source) => JobError::Store {
                location: self.location.to_string(),
                source,
            },
            Fault::NotFound(job) => JobError::NotFound(job),
            Fault::Corrupt { job, detail } => JobError::Corrupt {
                location: self.location.to_string(),
                job,
                detail,
            },
        })
    }

    /// Records a new job, `RUNNING`, its servers not resolved yet.
    pub(crate) async fn insert(&self, id: &str, spec: &JobSpec) -> Result<(), JobError> {
        let id = id.to_owned();
        let context: Map<String, Value> = spec
            .context
            .iter()
            .filter(|(key, _)| !Context::is_secret_key(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let row = (
            spec.topic.clone(),
            spec.exchange.clone(),
            spec.namespace.clone(),
            spec.version.map(|v| v.to_string()),
            spec.method.clone(),
            Value::Object(spec.args.clone()).to_string(),
            Value::Object(context).to_string(),
            spec.servers.as_list(),
            serde_json::to_string(&spec.options).unwrap_or_else(|_| "{}".to_owned()),
        );
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let at = now_text();
            tx.execute(
                "INSERT INTO jobs (id, created_at, created_ms, topic, exchange, namespace, version, \
                 method, args, context, servers, options) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    id, at, now_ms(), row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7,
                    row.8
                ],
            )?;
            history(&tx, &id, None, JobStatus::Running.as_str(), "created")?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The job's request and options, for its driver.
    pub(crate) async fn record(&self, id: &str) -> Result<JobRecord, JobError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let row = conn
                .query_row(
                    "SELECT topic, exchange, namespace, version, method, args, context, servers, \
                     options, created_ms, resolved FROM jobs WHERE id = ?1",
                    [&id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, String>(6)?,
                            r.get::<_, String>(7)?,
                            r.get::<_, String>(8)?,
                            r.get::<_, i64>(9)?,
                            r.get::<_, bool>(10)?,
                        ))
                    },
                )
                .optional()?
                .ok_or_else(|| Fault::NotFound(id.clone()))?;
            let corrupt = |detail: String| Fault::Corrupt {
                job: id.clone(),
                detail,
            };
            let object = |text: &str, what: &str| match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(corrupt(format!("its {what} are not a JSON object"))),
            };
            Ok(JobRecord {
                id: id.clone(),
                topic: row.0,
                exchange: row.1,
                namespace: row.2,
                version: row.3,
                method: row.4,
                args: object(&row.5, "arguments")?,
                context: object(&row.6, "context keys")?,
                servers: row.7,
                options: serde_json::from_str(&row.8)
                    .map_err(|e| corrupt(format!("its options do not read: {e}")))?,
                created_ms: row.9,
                resolved: row.10,
            })
        })
        .await
    }

    /// Records the job's servers (one `STARTING` part each), or, with `error`, that it has
    /// none. Does nothing when they were recorded already.
    pub(crate) async fn resolve(
        &self,
        id: &str,
        servers: Vec<String>,
        error: Option<RemoteError>,
    ) -> Result<Change, JobError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let before = status_of(&tx, &id)?;
            let resolved: bool =
                tx.query_row("SELECT resolved FROM jobs WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })?;
            if !resolved {
                let (at, ms) = (now_text(), now_ms());
                for (seq, server) in servers.iter().enumerate() {
                    tx.execute(
                        "INSERT OR IGNORE INTO parts (job_id, seq, server, status, started_at, started_ms) \
                         VALUES (?1, ?2, ?3, 'STARTING', ?4, ?5)",
                        params![id, seq as i64, server, at, ms],
                    )?;
                    history(&tx, &id, Some(server), PartStatus::Starting.as_str(), "asked")?;
                }
                let error = error.map(|e| serde_json::to_string(&e).unwrap_or_default());
                tx.execute(
                    "UPDATE jobs SET resolved = 1, error = ?2 WHERE id = ?1",
                    params![id, error],
                )?;
            }
            let status = after_change(&tx, &id, before)?;
            tx.commit()?;
            Ok(Change { status, part: None })
        })
        .await
    }

    /// The server accepted its part: it runs as `kind`, with `remote_id` on the server. Only a
    /// `STARTING` part moves; `None` when the part had moved on (cancelled meanwhile).
    pub(crate) async fn accepted(
        &self,
        id: &str,
        server: &str,
        kind: PartKind,
        remote_id: Option<String>,
    ) -> Result<Option<Change>, JobError> {
        let (id, server) = (id.to_owned(), server.to_owned());
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let before = status_of(&tx, &id)?;
            let moved = tx.execute(
                "UPDATE parts SET status = 'RUNNING', kind = ?3, remote_id = ?4, accepted_at = ?5 \
                 WHERE job_id = ?1 AND server = ?2 AND status = 'STARTING'",
                params![id, server, kind.as_column(), remote_id, now_text()],
            )?;
            if moved == 0 {
                return Ok(None);
            }
            let detail = match (kind, &remote_id) {
                (PartKind::Job, Some(part)) => format!("part {part}"),
                (PartKind::Call, _) => "plain call".to_owned(),
                _ => String::new(),
            };
            history(
                &tx,
                &id,
                Some(&server),
                PartStatus::Running.as_str(),
                &detail,
            )?;
            let status = after_change(&tx, &id, before)?;
            let part = read_part(&tx, &id, &server)?;
            tx.commit()?;
            Ok(Some(Change { status, part }))
        })
        .await
    }

    /// The part ended with `outcome`. A part that had ended already keeps its first outcome;
    /// `None` then.
    pub(crate) async fn finished(
        &self,
        id: &str,
        server: &str,
        outcome: Result<Value, RemoteError>,
    ) -> Result<Option<Change>, JobError> {
        let (id, server) = (id.to_owned(), server.to_owned());
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let before = status_of(&tx, &id)?;
            let (result, error, detail) = match &outcome {
                Ok(value) => (Some(value.to_string()), None, "ok".to_owned()),
                Err(error) => (
                    None,
                    Some(serde_json::to_string(error).unwrap_or_default()),
                    format!("{}: {}", error.class, error.message),
                ),
            };
            let moved = tx.execute(
                "UPDATE parts SET status = 'FINISHED', finished_at = ?3, result = ?4, error = ?5 \
                 WHERE job_id = ?1 AND server = ?2 AND status != 'FINISHED'",
                params![id, server, now_text(), result, error],
            )?;
            if moved == 0 {
                return Ok(None);
            }
            history(
                &tx,
                &id,
                Some(&server),
                PartStatus::Finished.as_str(),
                &detail,
            )?;
            let status = after_change(&tx, &id, before)?;
            let part = read_part(&tx, &id, &server)?;
            tx.commit()?;
            Ok(Some(Change { status, part }))
        })
        .await
    }

    /// Ends every part that has not ended with `error` (the servers resolved with none when
    /// they were not yet), returning the `(server, part id)` of server-side parts that were
    /// running, so that the caller can stop them there.
    pub(crate) async fn end_all(
        &self,
        id: &str,
        error: RemoteError,
    ) -> Result<(Vec<(String, String)>, Vec<Change>), JobError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let before = status_of(&tx, &id)?;
            let encoded = serde_json::to_string(&error).unwrap_or_default();
            tx.execute(
                "UPDATE jobs SET resolved = 1, error = COALESCE(error, ?2) \
                 WHERE id = ?1 AND resolved = 0",
                params![id, encoded],
            )?;
            let open: Vec<(String, Option<String>, Option<String>)> = {
                let mut stmt = tx.prepare(
                    "SELECT server, kind, remote_id FROM parts \
                     WHERE job_id = ?1 AND status != 'FINISHED' ORDER BY seq",
                )?;
                let rows = stmt.query_map([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let detail = format!("{}: {}", error.class, error.message);
            let mut remote = Vec::new();
            let mut changes = Vec::new();
            for (server, kind, remote_id) in open {
                tx.execute(
                    "UPDATE parts SET status = 'FINISHED', finished_at = ?3, error = ?4 \
                     WHERE job_id = ?1 AND server = ?2",
                    params![id, server, now_text(), encoded],
                )?;
                history(
                    &tx,
                    &id,
                    Some(&server),
                    PartStatus::Finished.as_str(),
                    &detail,
                )?;
                if let (Some("job"), Some(part)) = (kind.as_deref(), remote_id) {
                    remote.push((server.clone(), part));
                }
                changes.push(read_part(&tx, &id, &server)?);
            }
            let status = after_change(&tx, &id, before)?;
            tx.commit()?;
            let changes = changes
                .into_iter()
                .map(|part| Change { status, part })
                .collect();
            Ok((remote, changes))
        })
        .await
    }

    /// The job as recorded.
    pub async fn snapshot(&self, id: &str) -> Result<JobSnapshot, JobError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let row = tx
                .query_row(
                    "SELECT topic, method, servers, created_at, finished_at, error, resolved, \
                     lease_holder, lease_until_ms FROM jobs WHERE id = ?1",
                    [&id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, bool>(6)?,
                            r.get::<_, Option<String>>(7)?,
                            r.get::<_, Option<i64>>(8)?,
                        ))
                    },
                )
                .optional()?
                .ok_or_else(|| Fault::NotFound(id.clone()))?;
            let parts = read_parts(&tx, &id)?;
            let status = JobStatus::of(row.6, parts.iter().map(|p| p.status));
            let error = match row.5 {
                Some(text) => Some(decode_error(&id, &text)?),
                None => None,
            };
            Ok(JobSnapshot {
                id: id.clone(),
                status,
                topic: row.0,
                method: row.1,
                servers: row.2,
                created_at: row.3,
                finished_at: row.4,
                error,
                resolved: row.6,
                followed: row.7.is_some() && row.8.is_some_and(|until| until >= now_ms()),
                parts,
            })
        })
        .await
    }

    /// The newest `limit` jobs, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<JobSummary>, JobError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT j.id, j.created_at, j.topic, j.method, j.resolved, \
                 (SELECT COUNT(*) FROM parts p WHERE p.job_id = j.id), \
                 (SELECT COUNT(*) FROM parts p WHERE p.job_id = j.id AND p.status = 'FINISHED'), \
                 (SELECT COUNT(*) FROM parts p WHERE p.job_id = j.id AND p.error IS NOT NULL), \
                 (SELECT COUNT(*) FROM parts p WHERE p.job_id = j.id AND p.status = 'STARTING') \
                 FROM jobs j ORDER BY j.created_ms DESC, j.id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                let count = |i| r.get::<_, i64>(i).map(|n| usize::try_from(n).unwrap_or(0));
                let (parts, ended, failed, starting) = (count(5)?, count(6)?, count(7)?, count(8)?);
                let running = parts.saturating_sub(ended + starting);
                let statuses = std::iter::repeat_n(PartStatus::Starting, starting)
                    .chain(std::iter::repeat_n(PartStatus::Running, running))
                    .chain(std::iter::repeat_n(PartStatus::Finished, ended));
                Ok(JobSummary {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    topic: r.get(2)?,
                    method: r.get(3)?,
                    status: JobStatus::of(r.get(4)?, statuses),
                    parts,
                    ended,
                    failed,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The job's transitions, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, JobError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT at, server, status, detail FROM history WHERE job_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([&id], |r| {
                Ok(HistoryEntry {
                    at: r.get(0)?,
                    server: r.get(1)?,
                    status: r.get(2)?,
                    detail: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Takes (or renews) the job's lease for `holder` until `ttl` from now: granted when nobody
    /// holds it, `holder` does, or the holder's lease expired.
    pub(crate) async fn lease(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, JobError> {
        let (id, holder) = (id.to_owned(), holder.to_owned());
        self.with(move |conn| {
            let now = now_ms();
            let granted = conn.execute(
                "UPDATE jobs SET lease_holder = ?2, lease_until_ms = ?3 WHERE id = ?1 AND \
                 (lease_holder IS NULL OR lease_holder = ?2 OR lease_until_ms < ?4)",
                params![id, holder, now + duration_ms(ttl), now],
            )?;
            if granted == 0 {
                let exists: Option<i64> = conn
                    .query_row("SELECT 1 FROM jobs WHERE id = ?1", [&id], |r| r.get(0))
                    .optional()?;
                if exists.is_none() {
                    return Err(Fault::NotFound(id));
                }
            }
            Ok(granted == 1)
        })
        .await
    }

    /// Gives the lease up, if `holder` holds it.
    pub(crate) async fn release(&self, id: &str, holder: &str) -> Result<(), JobError> {
        let (id, holder) = (id.to_owned(), holder.to_owned());
        self.with(move |conn| {
            conn.execute(
                "UPDATE jobs SET lease_holder = NULL, lease_until_ms = NULL \
                 WHERE id = ?1 AND lease_holder = ?2",
                params![id, holder],
            )?;
            Ok(())
        })
        .await
    }

    /// A number that changes whenever another connection (another process) changed the store:
    /// how a reader in another process notices progress without reading every job.
    pub async fn data_version(&self) -> Result<i64, JobError> {
        self.with(|conn| Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?))
            .await
    }
}

/// Appends one transition to the job's history.
fn history(
    tx: &Transaction<'_>,
    id: &str,
    server: Option<&str>,
    status: &str,
    detail: &str,
) -> Done<()> {
    tx.execute(
        "INSERT INTO history (job_id, at, server, status, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, now_text(), server, status, detail],
    )?;
    Ok(())
}

fn status_of(tx: &Transaction<'_>, id: &str) -> Done<JobStatus> {
    let resolved: bool = tx
        .query_row("SELECT resolved FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or_else(|| Fault::NotFound(id.to_owned()))?;
    let mut stmt = tx.prepare("SELECT status FROM parts WHERE job_id = ?1")?;
    let statuses: Vec<String> = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let statuses = statuses
        .iter()
        .map(|s| s.parse::<PartStatus>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Fault::Corrupt {
            job: id.to_owned(),
            detail: e.to_string(),
        })?;
    Ok(JobStatus::of(resolved, statuses))
}

/// Records the job's new status in its history when it differs from `before`, and when it
/// finished.
fn after_change(tx: &Transaction<'_>, id: &str, before: JobStatus) -> Done<JobStatus> {
    let after = status_of(tx, id)?;
    if after != before {
        history(tx, id, None, after.as_str(), "")?;
        if after == JobStatus::Finished {
            tx.execute(
                "UPDATE jobs SET finished_at = ?2, finished_ms = ?3 WHERE id = ?1",
                params![id, now_text(), now_ms()],
            )?;
        }
    }
    Ok(after)
}

fn decode_error(id: &str, text: &str) -> Done<RemoteError> {
    serde_json::from_str(text).map_err(|e| Fault::Corrupt {
        job: id.to_owned(),
        detail: format!("an error does not read: {e}"),
    })
}

const PART_COLUMNS: &str = "server, status, kind, remote_id, started_at, accepted_at, \
                            finished_at, result, error";

type PartRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn part_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PartRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn part_of(id: &str, row: PartRow) -> Done<PartSnapshot> {
    let corrupt = |detail: String| Fault::Corrupt {
        job: id.to_owned(),
        detail,
    };
    let status: PartStatus = row.1.parse().map_err(|e| corrupt(format!("{e}")))?;
    let outcome = if status == PartStatus::Finished {
        Some(match (row.7, row.8) {
            (_, Some(error)) => Err(decode_error(id, &error)?),
            (Some(result), None) => Ok(serde_json::from_str(&result)
                .map_err(|e| corrupt(format!("a result does not read: {e}")))?),
            (None, None) => Ok(Value::Null),
        })
    } else {
        None
    };
    Ok(PartSnapshot {
        server: row.0,
        status,
        kind: PartKind::from_column(row.2.as_deref()),
        remote_id: row.3,
        outcome,
        started_at: row.4,
        accepted_at: row.5,
        finished_at: row.6,
    })
}

fn read_parts(tx: &Transaction<'_>, id: &str) -> Done<Vec<PartSnapshot>> {
    let mut stmt = tx.prepare(&format!(
        "SELECT {PART_COLUMNS} FROM parts WHERE job_id = ?1 ORDER BY seq"
    ))?;
    let rows: Vec<PartRow> = stmt.query_map([id], part_row)?.collect::<Result<_, _>>()?;
    rows.into_iter().map(|row| part_of(id, row)).collect()
}

fn read_part(tx: &Transaction<'_>, id: &str, server: &str) -> Done<Option<PartSnapshot>> {
    let row = tx
        .query_row(
            &format!("SELECT {PART_COLUMNS} FROM parts WHERE job_id = ?1 AND server = ?2"),
            [id, server],
            part_row,
        )
        .optional()?;
    row.map(|row| part_of(id, row)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::spec::Targets;

    fn spec() -> JobSpec {
        JobSpec::new("t", "work")
            .servers(Targets::parse("a,b"))
            .context(
                Context::new()
                    .with("auth_token", "secret")
                    .with("user", "u"),
            )
    }

    #[tokio::test]
    async fn parts_move_forward_only_and_the_job_status_follows() {
        let store = JobStore::in_memory().await.unwrap();
        store.insert("j1", &spec()).await.unwrap();
        assert_eq!(
            store.snapshot("j1").await.unwrap().status,
            JobStatus::Running
        );
        let servers = vec!["a".to_owned(), "b".to_owned()];
        store.resolve("j1", servers, None).await.unwrap();
        let a = store
            .accepted("j1", "a", PartKind::Job, Some("p-a".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.status, JobStatus::Running, "b has not accepted yet");
        let b = store
            .accepted("j1", "b", PartKind::Call, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.status, JobStatus::Partial);
        let a = store
            .finished("j1", "a", Ok(json!({"n": 1})))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.status, JobStatus::Partial);
        let a = a.part.unwrap();
        assert_eq!(
            a.remote_id.as_deref(),
            Some("p-a"),
            "the id survives the result"
        );
        assert!(store
            .finished("j1", "a", Ok(json!("again")))
            .await
            .unwrap()
            .is_none());
        assert!(store
            .accepted("j1", "a", PartKind::Job, Some("other".into()))
            .await
            .unwrap()
            .is_none());
        let b = store
            .finished("j1", "b", Err(crate::failure::cancelled()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.status, JobStatus::Finished);

        let job = store.snapshot("j1").await.unwrap();
        assert_eq!(job.part("a").unwrap().outcome, Some(Ok(json!({"n": 1}))));
        assert!(job.part("b").unwrap().failed());
        assert!(job.finished_at.is_some());
        let statuses: Vec<String> = store
            .history("j1")
            .await
            .unwrap()
            .into_iter()
            .filter(|h| h.server.is_none())
            .map(|h| h.status)
            .collect();
        assert_eq!(statuses, ["RUNNING", "PARTIAL", "FINISHED"]);
    }

    #[tokio::test]
    async fn secret_context_keys_are_not_stored() {
        let store = JobStore::in_memory().await.unwrap();
        store.insert("j1", &spec()).await.unwrap();
        let record = store.record("j1").await.unwrap();
        assert_eq!(record.context.get("user"), Some(&json!("u")));
        assert!(!record.context.contains_key("auth_token"));
    }

    #[tokio::test]
    async fn a_lease_is_held_until_released_or_expired() {
        let store = JobStore::in_memory().await.unwrap();
        store.insert("j1", &spec()).await.unwrap();
        let long = Duration::from_secs(60);
        assert!(store.lease("j1", "me", long).await.unwrap());
        assert!(!store.lease("j1", "other", long).await.unwrap());
        assert!(store.snapshot("j1").await.unwrap().followed);
        store.release("j1", "me").await.unwrap();
        assert!(store.lease("j1", "other", Duration::ZERO).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(store.lease("j1", "me", long).await.unwrap(), "expired");
        assert!(matches!(
            store.lease("nope", "me", long).await,
            Err(JobError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn ending_all_parts_lists_the_server_side_parts_to_stop() {
        let store = JobStore::in_memory().await.unwrap();
        store.insert("j1", &spec()).await.unwrap();
        let servers = vec!["a".to_owned(), "b".to_owned()];
        store.resolve("j1", servers, None).await.unwrap();
        store
            .accepted("j1", "a", PartKind::Job, Some("p-a".into()))
            .await
            .unwrap();
        let (remote, changes) = store
            .end_all("j1", crate::failure::cancelled())
            .await
            .unwrap();
        assert_eq!(remote, [("a".to_owned(), "p-a".to_owned())]);
        assert_eq!(changes.len(), 2);
        let job = store.snapshot("j1").await.unwrap();
        assert_eq!(job.status, JobStatus::Finished);
        assert_eq!(job.failed(), 2);
    }

    #[tokio::test]
    async fn listing_shows_newest_first_with_counts() {
        let store = JobStore::in_memory().await.unwrap();
        store.insert("j1", &spec()).await.unwrap();
        store.resolve("j1", vec!["a".into()], None).await.unwrap();
        let list = store.list(10).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].parts, list[0].ended), (1, 0));
        assert_eq!(list[0].status, JobStatus::Running);
    }
}
