//! What the caller's store says of a job: a [`JobSnapshot`] with one [`PartSnapshot`] per
//! server, [`JobSummary`] lines for listings, and the [`HistoryEntry`]s of its transitions.
//! Reading them never touches the bus.

use serde::Serialize;
use serde_json::{json, Value};
use tidings::RemoteError;

use crate::status::{JobStatus, PartStatus};

/// How a part runs on its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartKind {
    /// Not known yet: the start has not been answered.
    Unknown,
    /// A server-side job with its own id (a tidings jobs server).
    Job,
    /// A plain call held open by the caller (a server without the jobs methods, e.g. a
    /// Python oslo.messaging server).
    Call,
}

impl PartKind {
    pub(crate) fn as_column(self) -> Option<&'static str> {
        match self {
            PartKind::Unknown => None,
            PartKind::Job => Some("job"),
            PartKind::Call => Some("call"),
        }
    }

    pub(crate) fn from_column(text: Option<&str>) -> Self {
        match text {
            Some("job") => PartKind::Job,
            Some("call") => PartKind::Call,
            _ => PartKind::Unknown,
        }
    }
}

/// One server's part of a job, as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct PartSnapshot {
    /// The server's name.
    pub server: String,
    /// Where the part stands.
    pub status: PartStatus,
    /// How it runs.
    pub kind: PartKind,
    /// Its id on the server (server-side jobs only). Kept after the part ended.
    pub remote_id: Option<String>,
    /// Its result or error, once finished.
    pub outcome: Option<Result<Value, RemoteError>>,
    /// When it was asked of its server (RFC 3339, UTC).
    pub started_at: String,
    /// When the server accepted it.
    pub accepted_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
}

impl PartSnapshot {
    /// Whether it ended with an error.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Some(Err(_)))
    }

    /// The part as one line of `tidings job results`: `server`, `status`, and `result` or
    /// `error` (`{class, module, message}`) once finished, in that order.
    ///
    /// ```
    /// # use tidings_jobs::{PartKind, PartSnapshot, PartStatus};
    /// let part = PartSnapshot {
    ///     server: "web-1".into(),
    ///     status: PartStatus::Finished,
    ///     kind: PartKind::Job,
    ///     remote_id: Some("1f".into()),
    ///     outcome: Some(Ok(serde_json::json!("done"))),
    ///     started_at: String::new(),
    ///     accepted_at: None,
    ///     finished_at: None,
    /// };
    /// let line = serde_json::to_string(&part.result_line()).unwrap();
    /// assert_eq!(line, r#"{"server":"web-1","status":"FINISHED","result":"done"}"#);
    /// ```
    pub fn result_line(&self) -> ResultLine {
        let (result, error) = match &self.outcome {
            Some(Ok(result)) => (Some(result.clone()), None),
            Some(Err(error)) => (None, Some(error_value(error))),
            None => (None, None),
        };
        ResultLine {
            server: self.server.clone(),
            status: self.status,
            result,
            error,
        }
    }
}

/// One line of `tidings job results` (see [`PartSnapshot::result_line`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResultLine {
    /// The server.
    pub server: String,
    /// Its part's status.
    pub status: PartStatus,
    /// The result, when the part succeeded (JSON `null` when the method returned nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error, when it failed: `{class, module, message}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// An error as results show it: class, module and message.
pub fn error_value(error: &RemoteError) -> Value {
    json!({"class": error.class, "module": error.module, "message": error.message})
}

/// A job as recorded in the caller's store.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSnapshot {
    /// The job's id.
    pub id: String,
    /// Its status, derived from its parts.
    pub status: JobStatus,
    /// The topic of its servers.
    pub topic: String,
    /// The method run.
    pub method: String,
    /// The servers asked for, as given (names and globs; empty for every server).
    pub servers: String,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
    /// An error of the job as a whole (no server matched, cancelled before it started).
    pub error: Option<RemoteError>,
    /// Whether its servers are known and their parts recorded.
    pub resolved: bool,
    /// Whether some process is following it now (holds its lease).
    pub followed: bool,
    /// One part per server, in the order the servers were resolved.
    pub parts: Vec<PartSnapshot>,
}

impl JobSnapshot {
    /// Whether every part ended.
    pub fn is_finished(&self) -> bool {
        self.status == JobStatus::Finished
    }

    /// Parts that ended.
    pub fn ended(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| p.status == PartStatus::Finished)
            .count()
    }

    /// Parts that ended with an error.
    pub fn failed(&self) -> usize {
        self.parts.iter().filter(|p| p.failed()).count()
    }

    /// Whether the job finished and every part succeeded (and the job itself had no error).
    pub fn succeeded(&self) -> bool {
        self.is_finished() && self.error.is_none() && self.failed() == 0
    }

    /// The part of `server`.
    pub fn part(&self, server: &str) -> Option<&PartSnapshot> {
        self.parts.iter().find(|p| p.server == server)
    }
}

/// One line of a listing of jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// The job's id.
    pub id: String,
    /// Its status.
    pub status: JobStatus,
    /// When it was created.
    pub created_at: String,
    /// The topic of its servers.
    pub topic: String,
    /// The method run.
    pub method: String,
    /// Its parts.
    pub parts: usize,
    /// Its parts that ended.
    pub ended: usize,
    /// Its parts that ended with an error.
    pub failed: usize,
}

/// One transition of a job or of one of its parts, in the order they were recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The server whose part changed; `None` for the job's own status.
    pub server: Option<String>,
    /// The new status: a job status or a part status.
    pub status: String,
    /// What happened (`ok`, the error's class, `plain call`, …).
    pub detail: String,
}
