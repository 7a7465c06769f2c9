//! Errors of the jobs library itself (a store that cannot be read, an unknown job, a bad
//! request). How a part ended is never one of these: it is the part's outcome, recorded in the
//! store (see [`failure`](crate::failure)).

use std::time::Duration;

use tidings::transport::TransportError;

use crate::status::JobStatus;

/// What went wrong with a jobs operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The store could not be opened, read or written.
    #[error("job store {location}: {source}")]
    Store {
        /// The store's path (or `:memory:`).
        location: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A record in the store could not be read back (written by something else?).
    #[error("job store {location}: job {job} has an unreadable record: {detail}")]
    Corrupt {
        /// The store's path.
        location: String,
        /// The job.
        job: String,
        /// What was wrong.
        detail: String,
    },
    /// No job of that id in the store.
    #[error("no job {0} in the store")]
    NotFound(String),
    /// The job asked for cannot be run as given.
    #[error("invalid job: {0}")]
    InvalidSpec(String),
    /// The job did not finish within the time waited.
    #[error("job {job} is still {status} after {waited:?}")]
    WaitTimedOut {
        /// The job.
        job: String,
        /// Its status when the wait ended.
        status: JobStatus,
        /// How long was waited.
        waited: Duration,
    },
    /// Another process follows the job (holds its lease).
    #[error("job {0} is followed by another process")]
    Followed(String),
    /// This process follows as many jobs as it may at once.
    #[error("this process already follows {0} jobs, its limit")]
    TooManyJobs(usize),
    /// The transport failed before the job could be followed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A blocking store task was lost (the runtime is shutting down).
    #[error("a job store task did not complete: {0}")]
    Task(String),
}
