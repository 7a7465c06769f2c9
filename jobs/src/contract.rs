//! The jobs contract on the bus: what a jobs server serves in the `tidings.jobs` namespace, next
//! to its own endpoints on its normal RPC target, and what a caller sends. Both sides import
//! these constants, so no name is spelled twice.
//!
//! Every message is an ordinary oslo.messaging call: a Python peer can call these methods too,
//! and a Python server that does not serve them answers `UnsupportedVersion`, which tells the
//! caller to run its part as a plain call instead.
//!
//! | method     | arguments                                   | result                |
//! |------------|---------------------------------------------|-----------------------|
//! | `start`    | `method`, `args`, `namespace`?, `version`?  | `{part_id}` at once   |
//! | `wait`     | `part_id`, `timeout` (seconds, bounded)     | a [`PartReport`]      |
//! | `status`   | `part_ids` (a list, bounded)                | reports, no results   |
//! | `result`   | `part_id`                                   | a [`PartReport`]      |
//! | `cancel`   | `part_id`                                   | a [`PartReport`]      |
//! | `announce` | none                                        | an [`Announcement`]   |
//!
//! A part the server does not know (never started, expired, or the server restarted) is the
//! remote error `UnknownPart` of module `tidings.jobs`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tidings::rpc::{Contract, Method, NoArgs};
use tidings::{RemoteError, Version};

use crate::status::PartStatus;

/// The namespace of the jobs methods.
pub const NAMESPACE: &str = "tidings.jobs";

/// The module of the remote errors the jobs layer raises itself.
pub const MODULE: &str = "tidings.jobs";

/// The jobs API: namespace `tidings.jobs`, version 1.0.
#[derive(Debug)]
pub struct JobsApi;

impl Contract for JobsApi {
    const NAMESPACE: Option<&'static str> = Some(NAMESPACE);
    const VERSION: Version = Version::new(1, 0);
}

/// Arguments of `start`: the method to run as a part, as a plain call would name it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartPart {
    /// The method, served by one of the server's endpoints.
    pub method: String,
    /// Its keyword arguments.
    #[serde(default)]
    pub args: Map<String, Value>,
    /// The namespace of the method (none: oslo's default namespace).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The version requested, `X.Y` (none: 1.0, as oslo treats a missing version).
    #[serde(default)]
    pub version: Option<String>,
}

/// Result of `start`: the server-side id of the part, which runs on after the call returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartStarted {
    /// The part's id on that server.
    pub part_id: String,
}

/// Arguments of `wait`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaitPart {
    /// The part's id on the server.
    pub part_id: String,
    /// Seconds to wait at most for the part to end; the server caps it (see
    /// [`JobLimits::max_wait`](crate::JobLimits)) and answers sooner when it ends.
    #[serde(default)]
    pub timeout: f64,
}

/// Arguments of `result` and `cancel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartId {
    /// The part's id on the server.
    pub part_id: String,
}

/// Arguments of `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartIds {
    /// The parts asked about (at most [`MAX_STATUS_IDS`]).
    pub part_ids: Vec<String>,
}

/// The most part ids one `status` request may name.
pub const MAX_STATUS_IDS: usize = 1000;

/// What a server says of one part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartReport {
    /// The part's id on the server.
    pub part_id: String,
    /// `RUNNING` or `FINISHED`.
    pub status: PartStatus,
    /// The method the part runs.
    pub method: String,
    /// The result, when the part finished without error (`status` leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error, when the part failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RemoteError>,
    /// When the part started (RFC 3339, UTC).
    pub started_at: String,
    /// When it finished (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl PartReport {
    /// The part's outcome once finished: its result (JSON `null` when it returned nothing) or
    /// its error.
    pub fn outcome(&self) -> Option<Result<Value, RemoteError>> {
        if self.status != PartStatus::Finished {
            return None;
        }
        Some(match &self.error {
            Some(error) => Err(error.clone()),
            None => Ok(self.result.clone().unwrap_or(Value::Null)),
        })
    }
}

/// What a jobs server answers to `announce`: who it is, so that a caller can address it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The server's name (its queue is `<topic>.<server>`).
    pub server: String,
    /// The topic it serves.
    pub topic: String,
    /// Parts it runs now.
    pub running: usize,
}

/// Starts a method as a part and answers its id at once.
pub const START: Method<JobsApi, StartPart, PartStarted> = Method::new("start");
/// Answers when the part ends or the timeout passes, whichever is first.
pub const WAIT: Method<JobsApi, WaitPart, PartReport> = Method::new("wait");
/// Reports on several parts at once, without their results.
pub const STATUS: Method<JobsApi, PartIds, Vec<PartReport>> = Method::new("status");
/// Reports on one part, with its result or error once finished.
pub const RESULT: Method<JobsApi, PartId, PartReport> = Method::new("result");
/// Stops a running part; it ends with the error `Cancelled`.
pub const CANCEL: Method<JobsApi, PartId, PartReport> = Method::new("cancel");
/// Says who the server is; sent by fanout to find a topic's jobs servers.
pub const ANNOUNCE: Method<JobsApi, NoArgs, Announcement> = Method::new("announce");
