//! Why a part ended without a result when its method did not say so itself: the remote errors
//! of module `tidings.jobs` that the caller records (a dead server, a timeout, a cancellation)
//! and that a jobs server raises (an unknown part, a full server, a result too large).
//!
//! They are [`RemoteError`]s like any a method raises, so a part's outcome has one shape
//! whoever decided it; the class names below are what scripts can match on.

use std::time::Duration;

use tidings::RemoteError;

use crate::contract::MODULE;

/// The server never accepted its part: no queue, or no answer within the start timeout.
pub const SERVER_UNREACHABLE: &str = "ServerUnreachable";
/// The server accepted the part, then stopped answering for longer than the liveness timeout.
pub const SERVER_LOST: &str = "ServerLost";
/// The server no longer knows the part (it restarted, or the result expired there).
pub const UNKNOWN_PART: &str = "UnknownPart";
/// The part ran longer than the part timeout.
pub const PART_TIMEOUT: &str = "PartTimeout";
/// The job ran longer than the job timeout before this part ended.
pub const JOB_TIMEOUT: &str = "JobTimeout";
/// The job or the part was cancelled.
pub const CANCELLED: &str = "Cancelled";
/// A plain call was in flight when the caller stopped; its reply went to a reply queue that is
/// gone.
pub const CALLER_RESTARTED: &str = "CallerRestarted";
/// The result is larger than the limit of a part.
pub const RESULT_TOO_LARGE: &str = "ResultTooLarge";
/// The server runs as many parts as it allows.
pub const JOBS_BUSY: &str = "JobsBusy";
/// No server matched the job's targets.
pub const NO_SERVERS: &str = "NoServers";
/// The caller's transport failed while following the part.
pub const TRANSPORT_FAILED: &str = "TransportFailed";

fn error(class: &str, message: String) -> RemoteError {
    RemoteError::new(class, MODULE, message)
}

/// `ServerUnreachable`: `server` did not accept its part, for the reason `why`.
pub fn server_unreachable(server: &str, why: impl std::fmt::Display) -> RemoteError {
    error(
        SERVER_UNREACHABLE,
        format!("server {server} did not accept its part: {why}"),
    )
}

/// `ServerLost`: `server` was silent for `silent_for` while running its part.
pub fn server_lost(server: &str, silent_for: Duration) -> RemoteError {
    error(
        SERVER_LOST,
        format!(
            "server {server} stopped answering while running its part (no answer for {:.1}s): \
             it died or lost its connection",
            silent_for.as_secs_f64()
        ),
    )
}

/// `UnknownPart`: the server does not know `part_id`.
pub fn unknown_part(server: &str, part_id: &str) -> RemoteError {
    error(
        UNKNOWN_PART,
        format!(
            "server {server} does not know part {part_id}: it restarted, or the result expired"
        ),
    )
}

/// `PartTimeout`: the part ran longer than `limit`.
pub fn part_timeout(limit: Duration) -> RemoteError {
    error(
        PART_TIMEOUT,
        format!(
            "the part did not end within its timeout of {:.1}s",
            limit.as_secs_f64()
        ),
    )
}

/// `JobTimeout`: the job ran longer than `limit`.
pub fn job_timeout(limit: Duration) -> RemoteError {
    error(
        JOB_TIMEOUT,
        format!(
            "the job did not end within its timeout of {:.1}s",
            limit.as_secs_f64()
        ),
    )
}

/// `Cancelled`.
pub fn cancelled() -> RemoteError {
    error(CANCELLED, "the part was cancelled".to_owned())
}

/// `CallerRestarted`: a plain call's reply is lost with the caller that sent it.
pub fn caller_restarted(server: &str) -> RemoteError {
    error(
        CALLER_RESTARTED,
        format!(
            "the caller stopped while its plain call to {server} ran; the reply went to a reply \
             queue that is gone (servers without tidings jobs cannot be asked again)"
        ),
    )
}

/// `ResultTooLarge`: `size` bytes of JSON, above `limit`.
pub fn result_too_large(size: usize, limit: usize) -> RemoteError {
    error(
        RESULT_TOO_LARGE,
        format!("the result is {size} bytes of JSON, above the limit of {limit} bytes per part"),
    )
}

/// `JobsBusy`: `server` runs `running` parts, its limit.
pub fn jobs_busy(server: &str, running: usize) -> RemoteError {
    error(
        JOBS_BUSY,
        format!("server {server} already runs {running} parts, its limit; try again later"),
    )
}

/// `NoServers`: nothing matched `requested` on `topic`.
pub fn no_servers(topic: &str, requested: &str) -> RemoteError {
    let requested = if requested.is_empty() {
        "every server"
    } else {
        requested
    };
    error(
        NO_SERVERS,
        format!("no server on topic {topic} matched {requested}"),
    )
}

/// `TransportFailed`: the caller's own connection failed.
pub fn transport_failed(detail: impl std::fmt::Display) -> RemoteError {
    error(
        TRANSPORT_FAILED,
        format!("the caller's transport failed: {detail}"),
    )
}

/// Whether `error` is the jobs layer's own error of `class`.
pub fn is(error: &RemoteError, class: &str) -> bool {
    error.module == MODULE && error.class == class
}
