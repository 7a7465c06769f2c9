//! # tidings-jobs
//!
//! Func-style asynchronous jobs on the oslo.messaging bus: run one method on many servers at
//! once, get a job id at once, follow the job `RUNNING` → `PARTIAL` → `FINISHED`, and read each
//! server's result or error later — from a store, without any remote call once it finished.
//!
//! Two levels, as in Func:
//! - **the caller's job** ([`JobClient`]): one record per job in a [`JobStore`] (SQLite,
//!   embedded) mapping each server to its part; it survives a restart of the caller, and
//!   [`JobClient::resume`] continues it.
//! - **the server's parts** ([`JobRunner`]): a server runs its share as a job of its own, with
//!   its own id and status, so a long method never holds a call open; it answers `start`,
//!   `wait`, `status`, `result`, `cancel` and `announce` in the `tidings.jobs` namespace
//!   ([`contract`]) next to its ordinary endpoints.
//!
//! Everything on the bus is an ordinary oslo.messaging call or cast. A server written with
//! Python oslo.messaging answers `start` with `UnsupportedVersion`; its part is then the plain
//! call, held open by the caller, in the same job.
//!
//! Servers are named (taken as given) or matched by globs against the servers that announce
//! themselves on the topic ([`discovery`]); no list means every one that announces itself.
//! Each part ends with a result or an error — a server that never accepts its part, or goes
//! silent while running it, ends it with a clear error ([`failure`]) rather than leaving the
//! job `PARTIAL` forever.
//!
//! ```
//! use std::time::Duration;
//! use serde_json::json;
//! use tidings::rpc::{Endpoint, RpcServer};
//! use tidings::{Context, RemoteError, Target, Transport};
//! use tidings_jobs::{JobClient, JobRunner, JobSpec, JobStatus, JobStore, Targets};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = Transport::connect("memory://jobs-doc").await?;
//! let target = Target::topic("inventory").with_server("host-1");
//! let endpoint = Endpoint::new().method("refresh", |_ctx: Context, _: tidings::rpc::NoArgs| async {
//!     tokio::time::sleep(Duration::from_millis(50)).await;
//!     Ok::<_, RemoteError>(json!({"items": 3}))
//! });
//! let runner = JobRunner::new(&target, vec![endpoint.clone()]);
//! let server = RpcServer::builder(&transport, target)
//!     .endpoint(endpoint)
//!     .endpoint(runner.endpoint())
//!     .start()
//!     .await?;
//!
//! let jobs = JobClient::new(&transport, JobStore::in_memory().await?);
//! let spec = JobSpec::new("inventory", "refresh").servers(Targets::parse("host-1"));
//! let id = jobs.start(spec).await?; // at once
//! let job = jobs.wait(&id, Some(Duration::from_secs(10))).await?;
//! assert_eq!(job.status, JobStatus::Finished);
//! assert_eq!(job.parts[0].outcome, Some(Ok(json!({"items": 3}))));
//! # server.stop(Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```
//!
//! `docs/jobs.md` in the repository draws the state machine and a job's status over time.

#![warn(missing_docs)]

mod client;
pub mod contract;
pub mod discovery;
mod driver;
mod error;
pub mod failure;
mod record;
mod server;
pub mod spec;
mod status;
mod store;

pub use client::{JobClient, JobEvent, JobEvents, MAX_FOLLOWED};
pub use driver::DEFAULT_LEASE_TTL;
pub use error::JobError;
pub use record::{
    error_value, HistoryEntry, JobSnapshot, JobSummary, PartKind, PartSnapshot, ResultLine,
};
pub use server::{JobLimits, JobRunner};
pub use spec::{JobOptions, JobSpec, Targets};
pub use status::{JobStatus, PartStatus, UnknownStatus};
pub use store::{JobStore, KEEP_FINISHED_FOR, MAX_FINISHED_JOBS};
