//! The server side: runs methods of a server's own endpoints as parts, each with its own id
//! and status, and answers the `tidings.jobs` methods about them.
//!
//! A [`JobRunner`] holds a [`Dispatcher`] over the endpoints it may run (async and blocking
//! alike: a blocking method from `tidings-compat` is a service like any other) and serves the
//! jobs endpoint beside them on the server's normal target:
//!
//! ```
//! use tidings::rpc::{Endpoint, RpcServer};
//! use tidings::{Context, RemoteError, Target, Transport};
//! use tidings_jobs::JobRunner;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = Transport::connect("memory://jobs-server-doc").await?;
//! let target = Target::topic("inventory").with_server("host-1");
//! let endpoint = Endpoint::new().method("refresh", |_ctx: Context, _: tidings::rpc::NoArgs| async {
//!     Ok::<_, RemoteError>("refreshed")
//! });
//! let jobs = JobRunner::new(&target, vec![endpoint.clone()]);
//! let server = RpcServer::builder(&transport, target)
//!     .endpoint(endpoint)
//!     .endpoint(jobs.endpoint())
//!     .start()
//!     .await?;
//! # server.stop(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```
//!
//! What it keeps is bounded: parts running at once ([`JobLimits::max_running`]; `start` beyond
//! it is refused with `JobsBusy`), finished parts kept ([`JobLimits::max_kept`], oldest dropped
//! first) and for how long ([`JobLimits::keep_for`]), the size of a result
//! ([`JobLimits::max_result_bytes`]; a larger one ends the part with `ResultTooLarge`), and the
//! `wait` calls held at once ([`JobLimits::max_waiters`]; beyond it `wait` answers at once, so
//! long polls never take every dispatch slot of the server). Finished parts are pruned when
//! the runner is next used, not by a timer: an idle runner does no work.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use tidings::rpc::{ContractEndpoint, Dispatcher, Endpoint, NoArgs, State};
use tidings::{Context, RemoteError, Target};
use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::contract::{
    Announcement, JobsApi, PartId, PartIds, PartReport, PartStarted, StartPart, WaitPart, ANNOUNCE,
    CANCEL, MAX_STATUS_IDS, RESULT, START, STATUS, WAIT,
};
use crate::failure;
use crate::status::PartStatus;

/// What a jobs server keeps, and for how long.
#[derive(Clone, Debug)]
pub struct JobLimits {
    /// Parts running at once (default 256).
    pub max_running: usize,
    /// Finished parts kept for `result` and `wait` (default 1024; the oldest go first).
    pub max_kept: usize,
    /// How long a finished part is kept (default one hour).
    pub keep_for: Duration,
    /// The largest result of a part, in bytes of JSON (default 1 MiB).
    pub max_result_bytes: usize,
    /// `wait` calls held at once (default 32); beyond it `wait` answers at once.
    pub max_waiters: usize,
    /// The longest a `wait` call is held (default 30 s).
    pub max_wait: Duration,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            max_running: 256,
            max_kept: 1024,
            keep_for: Duration::from_secs(3600),
            max_result_bytes: 1024 * 1024,
            max_waiters: 32,
            max_wait: Duration::from_secs(30),
        }
    }
}

/// Runs methods of a server's endpoints as parts of jobs and serves the `tidings.jobs`
/// methods about them. Cheap to clone: clones share the parts.
#[derive(Clone, Debug)]
pub struct JobRunner {
    inner: Arc<Runner>,
}

#[derive(Debug)]
struct Runner {
    server: String,
    topic: String,
    dispatcher: Dispatcher,
    limits: JobLimits,
    parts: Mutex<Parts>,
    waiters: Semaphore,
}

#[derive(Debug, Default)]
struct Parts {
    by_id: HashMap<String, Arc<Part>>,
    /// Finished parts in the order they finished, for eviction by age and by count.
    finished: VecDeque<(String, Instant)>,
    running: usize,
}

#[derive(Debug)]
struct Part {
    id: String,
    method: String,
    started_at: DateTime<Utc>,
    state: watch::Sender<PartState>,
    abort: Mutex<Option<AbortHandle>>,
}

#[derive(Clone, Debug)]
enum PartState {
    Running,
    Finished {
        outcome: Result<Value, RemoteError>,
        at: DateTime<Utc>,
    },
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl JobRunner {
    /// A runner for the server of `target` (its name and topic are what `announce` says) that
    /// runs the methods of `endpoints`, with the default limits.
    pub fn new(target: &Target, endpoints: Vec<Endpoint>) -> Self {
        Self::with_limits(target, endpoints, JobLimits::default())
    }

    /// A runner with `limits`.
    pub fn with_limits(target: &Target, endpoints: Vec<Endpoint>, limits: JobLimits) -> Self {
        let max_waiters = limits.max_waiters;
        Self {
            inner: Arc::new(Runner {
                server: target.server.clone().unwrap_or_default(),
                topic: target.topic.clone(),
                dispatcher: Dispatcher::new(endpoints),
                limits,
                parts: Mutex::default(),
                waiters: Semaphore::new(max_waiters),
            }),
        }
    }

    /// The `tidings.jobs` endpoint, to add to the server beside the endpoints it runs.
    pub fn endpoint(&self) -> Endpoint {
        ContractEndpoint::<JobsApi, JobRunner>::with_state(self.clone())
            .handle(START, start)
            .handle(WAIT, wait)
            .handle(STATUS, status)
            .handle(RESULT, result)
            .handle(CANCEL, cancel)
            .handle(ANNOUNCE, announce)
            .into_inner()
            .into_stateless()
    }

    /// Parts running now.
    pub fn running(&self) -> usize {
        self.inner.lock().running
    }

    /// Starts `method` as a part and returns its id; the part runs on its own task. A method
    /// the dispatcher cannot serve ends the part at once with the dispatcher's error.
    pub fn start_part(&self, context: Context, request: StartPart) -> Result<String, RemoteError> {
        let runner = &self.inner;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (state, _) = watch::channel(PartState::Running);
        let part = Arc::new(Part {
            id: id.clone(),
            method: request.method.clone(),
            started_at: Utc::now(),
            state,
            abort: Mutex::new(None),
        });
        {
            let mut parts = runner.lock();
            parts.prune(&runner.limits);
            if parts.running >= runner.limits.max_running {
                return Err(failure::jobs_busy(&runner.server, parts.running));
            }
            parts.running += 1;
            parts.by_id.insert(id.clone(), part.clone());
        }
        // The part outlives the call that started it: it must not inherit its deadline.
        let mut context = context;
        context.set_deadline(None);
        let task_runner = self.inner.clone();
        let task_part = part.clone();
        let handle = tokio::spawn(async move {
            let StartPart {
                method,
                args,
                namespace,
                version,
            } = request;
            let outcome = task_runner
                .dispatcher
                .dispatch(
                    namespace.as_deref(),
                    version.as_deref(),
                    &method,
                    context,
                    args,
                )
                .await;
            let outcome = outcome.and_then(|value| task_runner.bounded(value));
            task_runner.finish(&task_part, outcome);
        });
        *part.abort.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle.abort_handle());
        tracing::debug!(part_id = %id, method = %part.method, "started a part");
        Ok(id)
    }

    /// Stops every running part (they end with `Cancelled`): for a server that is going away.
    pub fn cancel_all(&self) {
        let running: Vec<Arc<Part>> = self
            .inner
            .lock()
            .by_id
            .values()
            .filter(|part| matches!(*part.state.borrow(), PartState::Running))
            .cloned()
            .collect();
        for part in running {
            self.inner.cancel(&part);
        }
    }

    fn report(&self, part_id: &str) -> Result<PartReport, RemoteError> {
        let part = self.inner.part(part_id)?;
        Ok(part.report(true))
    }
}

impl Runner {
    fn lock(&self) -> MutexGuard<'_, Parts> {
        // Each update is a few map operations that cannot leave the map half changed.
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn part(&self, part_id: &str) -> Result<Arc<Part>, RemoteError> {
        let mut parts = self.lock();
        parts.prune(&self.limits);
        parts
            .by_id
            .get(part_id)
            .cloned()
            .ok_or_else(|| failure::unknown_part(&self.server, part_id))
    }

    /// The result, unless its JSON is larger than the limit.
    fn bounded(&self, value: Value) -> Result<Value, RemoteError> {
        let size = serde_json::to_vec(&value).map_or(usize::MAX, |bytes| bytes.len());
        if size > self.limits.max_result_bytes {
            return Err(failure::result_too_large(
                size,
                self.limits.max_result_bytes,
            ));
        }
        Ok(value)
    }

    /// Ends `part` with `outcome`, unless it has ended already (a cancel raced its end).
    fn finish(&self, part: &Part, outcome: Result<Value, RemoteError>) {
        let mut parts = self.lock();
        if !matches!(*part.state.borrow(), PartState::Running) {
            return;
        }
        let failed = outcome.is_err();
        part.state.send_replace(PartState::Finished {
            outcome,
            at: Utc::now(),
        });
        parts.running = parts.running.saturating_sub(1);
        parts.finished.push_back((part.id.clone(), Instant::now()));
        parts.prune(&self.limits);
        tracing::debug!(part_id = %part.id, method = %part.method, failed, "a part finished");
    }

    fn cancel(&self, part: &Part) {
        if let Some(abort) = part.abort.lock().unwrap_or_else(|e| e.into_inner()).take() {
            abort.abort();
        }
        self.finish(part, Err(failure::cancelled()));
    }
}

impl Parts {
    /// Drops finished parts past their time or beyond the count kept.
    fn prune(&mut self, limits: &JobLimits) {
        let now = Instant::now();
        while let Some((id, at)) = self.finished.front() {
            let expired = now.saturating_duration_since(*at) >= limits.keep_for;
            if !expired && self.finished.len() <= limits.max_kept {
                break;
            }
            self.by_id.remove(id);
            self.finished.pop_front();
        }
    }
}

impl Part {
    fn report(&self, with_result: bool) -> PartReport {
        let state = self.state.borrow().clone();
        let mut report = PartReport {
            part_id: self.id.clone(),
            status: PartStatus::Running,
            method: self.method.clone(),
            result: None,
            error: None,
            started_at: rfc3339(self.started_at),
            finished_at: None,
        };
        if let PartState::Finished { outcome, at } = state {
            report.status = PartStatus::Finished;
            report.finished_at = Some(rfc3339(at));
            match outcome {
                Ok(value) if with_result => report.result = Some(value),
                Ok(_) => {}
                Err(error) => report.error = Some(error),
            }
        }
        report
    }
}

async fn start(
    State(runner): State<JobRunner>,
    context: Context,
    request: StartPart,
) -> Result<PartStarted, RemoteError> {
    let part_id = runner.start_part(context, request)?;
    Ok(PartStarted { part_id })
}

async fn wait(
    State(runner): State<JobRunner>,
    context: Context,
    WaitPart { part_id, timeout }: WaitPart,
) -> Result<PartReport, RemoteError> {
    let part = runner.inner.part(&part_id)?;
    let limits = &runner.inner.limits;
    let mut wait_for = Duration::try_from_secs_f64(timeout)
        .unwrap_or_default()
        .min(limits.max_wait);
    // Answer before the caller gives up on the call, or the answer is wasted.
    if let Some(left) = context.time_left() {
        wait_for = wait_for.min(left.saturating_sub(Duration::from_millis(500)));
    }
    // Beyond the waiters allowed, answer at once: the caller asks again later.
    if let Ok(_permit) = runner.inner.waiters.try_acquire() {
        let mut state = part.state.subscribe();
        let ended = state.wait_for(|state| matches!(state, PartState::Finished { .. }));
        let _ = tokio::time::timeout(wait_for, ended).await;
    }
    Ok(part.report(true))
}

async fn status(
    State(runner): State<JobRunner>,
    _context: Context,
    PartIds { part_ids }: PartIds,
) -> Result<Vec<PartReport>, RemoteError> {
    if part_ids.len() > MAX_STATUS_IDS {
        return Err(RemoteError::new(
            "ValueError",
            "builtins",
            format!(
                "status names {} parts; at most {MAX_STATUS_IDS} per request",
                part_ids.len()
            ),
        ));
    }
    part_ids
        .iter()
        .map(|id| runner.inner.part(id).map(|part| part.report(false)))
        .collect()
}

async fn result(
    State(runner): State<JobRunner>,
    _context: Context,
    PartId { part_id }: PartId,
) -> Result<PartReport, RemoteError> {
    runner.report(&part_id)
}

async fn cancel(
    State(runner): State<JobRunner>,
    _context: Context,
    PartId { part_id }: PartId,
) -> Result<PartReport, RemoteError> {
    let part = runner.inner.part(&part_id)?;
    runner.inner.cancel(&part);
    Ok(part.report(true))
}

async fn announce(
    State(runner): State<JobRunner>,
    _context: Context,
    _: NoArgs,
) -> Result<Announcement, RemoteError> {
    Ok(Announcement {
        server: runner.inner.server.clone(),
        topic: runner.inner.topic.clone(),
        running: runner.running(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn runner(limits: JobLimits) -> JobRunner {
        let endpoint = Endpoint::new()
            .method(
                "sleep",
                |_ctx: Context, args: Map<String, Value>| async move {
                    let secs = args.get("secs").and_then(Value::as_f64).unwrap_or(0.0);
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    Ok::<_, RemoteError>(json!("slept"))
                },
            )
            .method("big", |_ctx: Context, _: NoArgs| async move {
                Ok::<_, RemoteError>("x".repeat(100))
            });
        JobRunner::with_limits(
            &Target::topic("t").with_server("s1"),
            vec![endpoint],
            limits,
        )
    }

    fn request(method: &str, args: Value) -> StartPart {
        StartPart {
            method: method.to_owned(),
            args: match args {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            namespace: None,
            version: None,
        }
    }

    async fn ended(runner: &JobRunner, id: &str) -> PartReport {
        let part = runner.inner.part(id).unwrap();
        let mut state = part.state.subscribe();
        state
            .wait_for(|s| matches!(s, PartState::Finished { .. }))
            .await
            .unwrap();
        runner.report(id).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_runs_after_start_returned_and_keeps_its_result() {
        let runner = runner(JobLimits::default());
        let id = runner
            .start_part(Context::new(), request("sleep", json!({"secs": 5})))
            .unwrap();
        assert_eq!(runner.report(&id).unwrap().status, PartStatus::Running);
        assert_eq!(runner.running(), 1);
        let report = ended(&runner, &id).await;
        assert_eq!(report.outcome(), Some(Ok(json!("slept"))));
        assert_eq!(runner.running(), 0);
    }

    #[tokio::test]
    async fn an_unknown_method_ends_the_part_with_the_dispatchers_error() {
        let runner = runner(JobLimits::default());
        let id = runner
            .start_part(Context::new(), request("nope", json!({})))
            .unwrap();
        let error = ended(&runner, &id).await.outcome().unwrap().unwrap_err();
        assert!(error.is_no_such_method(), "{error:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn starts_beyond_the_running_limit_are_refused() {
        let runner = runner(JobLimits {
            max_running: 1,
            ..JobLimits::default()
        });
        runner
            .start_part(Context::new(), request("sleep", json!({"secs": 60})))
            .unwrap();
        let refused = runner
            .start_part(Context::new(), request("sleep", json!({"secs": 60})))
            .unwrap_err();
        assert!(failure::is(&refused, failure::JOBS_BUSY));
    }

    #[tokio::test]
    async fn results_beyond_the_size_limit_end_the_part_with_an_error() {
        let runner = runner(JobLimits {
            max_result_bytes: 10,
            ..JobLimits::default()
        });
        let id = runner
            .start_part(Context::new(), request("big", json!({})))
            .unwrap();
        let error = ended(&runner, &id).await.outcome().unwrap().unwrap_err();
        assert!(failure::is(&error, failure::RESULT_TOO_LARGE), "{error:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn finished_parts_are_kept_within_count_and_age() {
        let runner = runner(JobLimits {
            max_kept: 2,
            keep_for: Duration::from_secs(10),
            ..JobLimits::default()
        });
        let mut ids = Vec::new();
        for _ in 0..3 {
            let id = runner
                .start_part(Context::new(), request("sleep", json!({"secs": 0})))
                .unwrap();
            ended(&runner, &id).await;
            ids.push(id);
        }
        assert!(runner.report(&ids[0]).is_err(), "the oldest was dropped");
        assert!(runner.report(&ids[2]).is_ok());
        tokio::time::sleep(Duration::from_secs(11)).await;
        let gone = runner.report(&ids[2]).unwrap_err();
        assert!(failure::is(&gone, failure::UNKNOWN_PART));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_part_ends_with_cancelled_and_stops_running() {
        let runner = runner(JobLimits::default());
        let id = runner
            .start_part(Context::new(), request("sleep", json!({"secs": 600})))
            .unwrap();
        runner.cancel_all();
        let error = runner.report(&id).unwrap().outcome().unwrap().unwrap_err();
        assert!(failure::is(&error, failure::CANCELLED));
        assert_eq!(runner.running(), 0);
    }
}
