//! Following one job to its end: resolving its servers, starting its parts, following each
//! until it ends, and recording every step in the store as it happens.
//!
//! One task per part, all under one job task that also holds the job's lease and its
//! deadline. A part of a tidings jobs server is followed with `wait` requests that the server
//! holds until the part ends or half the liveness timeout passes, so a result arrives the
//! moment it exists and a server's silence is noticed within the liveness timeout; between
//! answers nothing runs. A server without the jobs namespace (a Python oslo.messaging server)
//! answers `start` with `UnsupportedVersion`; its part is then the plain call itself, held
//! open by this task with oslo's call monitor watching the server.
//!
//! Nothing is retried that could run a method twice: a `start` is sent once; only the
//! side-effect-free `wait` is asked again, with a bounded backoff, until the server answers or
//! its silence exceeds the liveness timeout.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tidings::rpc::{RpcClient, RpcError, ServiceClient};
use tidings::{Context, RemoteError, Target, Transport, Version};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::JobEvent;
use crate::contract::{JobsApi, PartId, PartStarted, StartPart, WaitPart, CANCEL, START, WAIT};
use crate::discovery;
use crate::error::JobError;
use crate::failure;
use crate::record::{PartKind, PartSnapshot};
use crate::spec::{Targets, DEFAULT_PLAIN_CALL_TIMEOUT, MAX_PARTS};
use crate::status::{JobStatus, PartStatus};
use crate::store::{now_ms, Change, JobRecord, JobStore};

/// How long a follower's lease lasts unless renewed; it is renewed every third of it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// How long a cancel sent to a server may take to leave.
const CANCEL_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause after a `wait` the server answered at once while the part still runs (it holds
/// as many waits as it allows), before asking again.
const BUSY_SERVER_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause between failed `wait` requests.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// What following a job needs.
#[derive(Clone, Debug)]
pub(crate) struct Follower {
    pub transport: Transport,
    pub store: JobStore,
    pub events: broadcast::Sender<JobEvent>,
    pub holder: String,
    pub lease_ttl: Duration,
}

/// One job being followed.
#[derive(Debug)]
struct Run {
    follower: Follower,
    record: JobRecord,
    version: Option<Version>,
    context: Context,
    /// Held from a store write to its event, so that events leave in the order of the writes.
    recording: tokio::sync::Mutex<()>,
}

/// Follows job `id` to its end (or until its lease is lost), with `context` for the parts it
/// starts (the recorded context when `None`). The caller must hold the job's lease.
pub(crate) async fn follow(
    follower: Follower,
    id: &str,
    context: Option<Context>,
) -> Result<JobStatus, JobError> {
    let record = follower.store.record(id).await?;
    let version = match record.version.as_deref().map(str::parse::<Version>) {
        Some(Ok(version)) => Some(version),
        Some(Err(error)) => {
            return Err(JobError::Corrupt {
                location: follower.store.location().to_owned(),
                job: id.to_owned(),
                detail: error.to_string(),
            })
        }
        None => None,
    };
    let context = context.unwrap_or_else(|| Context::from(record.context.clone()));
    let run = Arc::new(Run {
        follower: follower.clone(),
        record,
        version,
        context,
        recording: tokio::sync::Mutex::new(()),
    });
    let outcome = tokio::select! {
        outcome = run.clone().run() => outcome,
        lost = keep_lease(&follower, id) => Err(lost),
    };
    if let Err(error) = follower.store.release(id, &follower.holder).await {
        tracing::warn!(job = id, %error, "could not release the job's lease");
    }
    outcome
}

/// Renews the lease until it is lost; returns why.
async fn keep_lease(follower: &Follower, id: &str) -> JobError {
    let every = follower.lease_ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        match follower
            .store
            .lease(id, &follower.holder, follower.lease_ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => return JobError::Followed(id.to_owned()),
            // A store that cannot be written now may be written later: the lease lasts a
            // while yet, and the next renewal tries again.
            Err(error) => tracing::warn!(job = id, %error, "could not renew the job's lease"),
        }
    }
}

/// A wall-clock instant (milliseconds since the epoch) as a Tokio instant.
fn instant_at(ms: i64) -> Instant {
    let left = u64::try_from(ms.saturating_sub(now_ms())).unwrap_or(0);
    Instant::now() + Duration::from_millis(left)
}

fn started_ms(part: &PartSnapshot) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&part.started_at)
        .map_or_else(|_| now_ms(), |at| at.timestamp_millis())
}

impl Run {
    fn id(&self) -> &str {
        &self.record.id
    }

    fn emit(&self, change: Change) {
        // Nobody listening is fine: the store has it all.
        let _ = self.follower.events.send(JobEvent {
            job_id: self.record.id.clone(),
            status: change.status,
            part: change.part,
        });
    }

    async fn run(self: Arc<Self>) -> Result<JobStatus, JobError> {
        let store = &self.follower.store;
        let options = &self.record.options;
        let job_deadline = options.job_timeout.map(|limit| {
            instant_at(
                self.record
                    .created_ms
                    .saturating_add(limit.as_millis() as i64),
            )
        });
        if !self.record.resolved {
            self.resolve().await?;
        }
        let job = store.snapshot(self.id()).await?;
        let mut parts = JoinSet::new();
        for part in job.parts {
            if part.status != PartStatus::Finished {
                parts.spawn(self.clone().run_part(part));
            }
        }
        let deadline = async {
            match job_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut first_error = None;
        loop {
            tokio::select! {
                joined = parts.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(error))) => {
                        tracing::warn!(job = self.id(), %error, "a part could not be recorded");
                        first_error.get_or_insert(error);
                    }
                    Some(Err(error)) => {
                        tracing::warn!(job = self.id(), %error, "a part's task failed");
                    }
                },
                () = &mut deadline => {
                    parts.abort_all();
                    let limit = options.job_timeout.unwrap_or_default();
                    self.end_all(failure::job_timeout(limit)).await?;
                    break;
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        Ok(store.snapshot(self.id()).await?.status)
    }

    /// Records the job's servers: the names given, and the discovered servers its globs
    /// match.
    async fn resolve(&self) -> Result<(), JobError> {
        let targets = Targets::parse(&self.record.servers);
        let discovered = if targets.needs_discovery() {
            match discovery::discover(
                &self.follower.transport,
                &self.record.topic,
                self.record.options.discovery_window,
            )
            .await
            {
                Ok(servers) => servers,
                Err(error) => {
                    tracing::warn!(job = self.id(), %error, "discovery failed");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let mut servers = targets.resolve(&discovered);
        servers.truncate(MAX_PARTS);
        let error = servers
            .is_empty()
            .then(|| failure::no_servers(&self.record.topic, &self.record.servers));
        let _recording = self.recording.lock().await;
        let change = self
            .follower
            .store
            .resolve(self.id(), servers, error)
            .await?;
        self.emit(change);
        Ok(())
    }

    /// Ends every open part with `error` and stops those running on servers.
    async fn end_all(&self, error: RemoteError) -> Result<(), JobError> {
        let recording = self.recording.lock().await;
        let (remote, changes) = self.follower.store.end_all(self.id(), error).await?;
        for change in changes {
            self.emit(change);
        }
        drop(recording);
        cancel_parts(
            &self.follower.transport,
            &self.context,
            &self.record.topic,
            self.record.exchange.as_deref(),
            remote,
        )
        .await;
        Ok(())
    }

    /// Runs one part to its end and records how it ended.
    async fn run_part(self: Arc<Self>, part: PartSnapshot) -> Result<(), JobError> {
        let server = part.server.clone();
        let part_timeout = self.record.options.part_timeout;
        let deadline = part_timeout
            .map(|limit| instant_at(started_ms(&part).saturating_add(limit.as_millis() as i64)));
        let work = self.clone().outcome(part);
        let outcome = match deadline {
            Some(at) => match tokio::time::timeout_at(at, work).await {
                Ok(outcome) => outcome?,
                Err(_) => {
                    let limit = part_timeout.unwrap_or_default();
                    self.stop_remote_part(&server).await;
                    Err(failure::part_timeout(limit))
                }
            },
            None => work.await?,
        };
        let _recording = self.recording.lock().await;
        if let Some(change) = self
            .follower
            .store
            .finished(self.id(), &server, outcome)
            .await?
        {
            self.emit(change);
        }
        Ok(())
    }

    /// How the part ends (its result or error); `Err` only when the store fails.
    async fn outcome(
        self: Arc<Self>,
        part: PartSnapshot,
    ) -> Result<Result<Value, RemoteError>, JobError> {
        let server = part.server.as_str();
        Ok(match (part.status, part.kind, part.remote_id) {
            (PartStatus::Starting, _, _) => return self.start(server).await,
            (_, PartKind::Job, Some(part_id)) => self.watch(server, &part_id).await,
            (_, PartKind::Job, None) => Err(failure::unknown_part(server, "(none recorded)")),
            // A plain call in flight when the caller stopped: its reply went to the reply queue
            // of the process that sent it.
            (_, _, _) => Err(failure::caller_restarted(server)),
        })
    }

    fn client(&self, server: &str) -> RpcClient {
        let mut target = Target::topic(&self.record.topic).with_server(server);
        target.exchange = self.record.exchange.clone();
        target.namespace = self.record.namespace.clone();
        target.version = self.version;
        RpcClient::new(&self.follower.transport, target)
    }

    fn jobs_client(&self, server: &str, timeout: Duration) -> ServiceClient<JobsApi> {
        ServiceClient::from_client(self.client(server).timeout(timeout))
    }

    /// Asks `server` to start its part; follows it as a server-side job, or as a plain call
    /// when the server has no jobs namespace.
    async fn start(&self, server: &str) -> Result<Result<Value, RemoteError>, JobError> {
        let options = &self.record.options;
        let client = self
            .jobs_client(server, options.start_timeout)
            .prepare(|c| c.mandatory(true));
        let request = StartPart {
            method: self.record.method.clone(),
            args: self.record.args.clone(),
            namespace: self.record.namespace.clone(),
            version: self.version.map(|v| v.to_string()),
        };
        match client.call(&self.context, START, request).await {
            Ok(PartStarted { part_id }) => {
                if !self.accept(server, PartKind::Job, Some(&part_id)).await? {
                    // Ended meanwhile (cancelled, timed out): stop it there too.
                    self.cancel_remote(server, part_id).await;
                    return Ok(Err(failure::cancelled()));
                }
                Ok(self.watch(server, &part_id).await)
            }
            Err(error)
                if error
                    .remote()
                    .is_some_and(|r| r.is_unsupported_version() || r.is_no_such_method()) =>
            {
                if !self.accept(server, PartKind::Call, None).await? {
                    return Ok(Err(failure::cancelled()));
                }
                Ok(self.plain_call(server).await)
            }
            Err(error) => Ok(Err(self.unreachable(server, error))),
        }
    }

    /// Records that `server` accepted its part; false when the part had ended meanwhile.
    async fn accept(
        &self,
        server: &str,
        kind: PartKind,
        part_id: Option<&str>,
    ) -> Result<bool, JobError> {
        let _recording = self.recording.lock().await;
        let accepted = self
            .follower
            .store
            .accepted(self.id(), server, kind, part_id.map(str::to_owned))
            .await?;
        Ok(match accepted {
            Some(change) => {
                self.emit(change);
                true
            }
            None => false,
        })
    }

    fn unreachable(&self, server: &str, error: RpcError) -> RemoteError {
        let options = &self.record.options;
        match error {
            RpcError::NoServer { .. } => failure::server_unreachable(
                server,
                format_args!(
                    "no queue {}.{server} takes its messages (no such server)",
                    self.record.topic
                ),
            ),
            error if error.is_timeout() => failure::server_unreachable(
                server,
                format_args!(
                    "no answer within {:.1}s: it is not running, or too busy to take requests",
                    options.start_timeout.as_secs_f64()
                ),
            ),
            RpcError::Remote { error, .. } => error,
            other => failure::transport_failed(other),
        }
    }

    /// Follows a server-side part until it ends, the server forgets it, or the server stays
    /// silent longer than the liveness timeout.
    async fn watch(&self, server: &str, part_id: &str) -> Result<Value, RemoteError> {
        let options = &self.record.options;
        let liveness = options.liveness_timeout;
        // The server answers within half the liveness timeout, so its answers alone prove it
        // alive; its call-monitor keepalives (when the timeout allows them) are a bonus.
        let hold = options.poll_window.min(liveness / 2);
        let mut client = self.jobs_client(server, hold + liveness);
        if liveness >= Duration::from_secs(2) {
            client = client.prepare(|c| c.call_monitor_timeout(liveness));
        }
        let mut last_heard = Instant::now();
        let mut failures: u32 = 0;
        loop {
            let asked = Instant::now();
            let request = WaitPart {
                part_id: part_id.to_owned(),
                timeout: hold.as_secs_f64(),
            };
            match client.call(&self.context, WAIT, request).await {
                Ok(report) => {
                    last_heard = Instant::now();
                    failures = 0;
                    if let Some(outcome) = report.outcome() {
                        return outcome.and_then(|value| self.bounded(value));
                    }
                    if asked.elapsed() < hold / 2 {
                        tokio::time::sleep(jitter(BUSY_SERVER_PAUSE)).await;
                    }
                }
                Err(error) => {
                    if let Some(remote) = error.remote() {
                        if failure::is(remote, failure::UNKNOWN_PART)
                            || remote.is_unsupported_version()
                            || remote.is_no_such_method()
                        {
                            return Err(failure::unknown_part(server, part_id));
                        }
                    }
                    let silent = last_heard.elapsed();
                    if silent >= liveness {
                        return Err(failure::server_lost(server, silent));
                    }
                    failures = failures.saturating_add(1);
                    tracing::debug!(server, part_id, %error, failures, "no answer about a part; asking again");
                    let pause = Duration::from_millis(250)
                        .saturating_mul(failures)
                        .min(MAX_RETRY_PAUSE);
                    tokio::time::sleep(jitter(pause).min(liveness.saturating_sub(silent))).await;
                }
            }
        }
    }

    /// The part as a plain call, held open until the server answers.
    async fn plain_call(&self, server: &str) -> Result<Value, RemoteError> {
        let options = &self.record.options;
        let timeout = options.part_timeout.unwrap_or(DEFAULT_PLAIN_CALL_TIMEOUT);
        let mut client = self.client(server).timeout(timeout).mandatory(true);
        // oslo servers send keepalives every int(timeout)/2 s, none below 2 s.
        if options.liveness_timeout >= Duration::from_secs(2) {
            client = client.call_monitor_timeout(options.liveness_timeout);
        }
        match client
            .call::<Value>(&self.context, &self.record.method, &self.record.args)
            .await
        {
            Ok(value) => self.bounded(value),
            Err(RpcError::Remote { error, .. }) => Err(error),
            Err(RpcError::MonitorTimeout { after, .. }) => Err(failure::server_lost(server, after)),
            Err(RpcError::Timeout { timeout, .. }) => Err(failure::part_timeout(timeout)),
            Err(RpcError::NoServer { .. }) => Err(failure::server_unreachable(
                server,
                format_args!("no queue {}.{server} takes its messages", self.record.topic),
            )),
            Err(other) => Err(failure::transport_failed(other)),
        }
    }

    /// The result, unless its JSON is larger than the job allows per part.
    fn bounded(&self, value: Value) -> Result<Value, RemoteError> {
        let limit = self.record.options.max_result_bytes;
        let size = serde_json::to_vec(&value).map_or(usize::MAX, |bytes| bytes.len());
        if size > limit {
            return Err(failure::result_too_large(size, limit));
        }
        Ok(value)
    }

    /// Stops the part of `server` there, if it runs as a server-side job.
    async fn stop_remote_part(&self, server: &str) {
        let Ok(job) = self.follower.store.snapshot(self.id()).await else {
            return;
        };
        if let Some(PartSnapshot {
            kind: PartKind::Job,
            remote_id: Some(part_id),
            ..
        }) = job.part(server).cloned()
        {
            self.cancel_remote(server, part_id).await;
        }
    }

    /// Casts `cancel` for `part_id` to `server` (waiting for the broker to take it, not for
    /// the server).
    async fn cancel_remote(&self, server: &str, part_id: String) {
        let parts = vec![(server.to_owned(), part_id)];
        let exchange = self.record.exchange.as_deref();
        cancel_parts(
            &self.follower.transport,
            &self.context,
            &self.record.topic,
            exchange,
            parts,
        )
        .await;
    }
}

/// `pause` ± 20%, so that many followers do not ask in step.
fn jitter(pause: Duration) -> Duration {
    pause.mul_f64(0.8 + fastrand::f64() * 0.4)
}

/// Casts `cancel` to each `(server, part id)` at once, each given a few seconds to leave.
pub(crate) async fn cancel_parts(
    transport: &Transport,
    context: &Context,
    topic: &str,
    exchange: Option<&str>,
    parts: Vec<(String, String)>,
) {
    let casts = parts.into_iter().map(|(server, part_id)| async move {
        let mut target = Target::topic(topic).with_server(&server);
        target.exchange = exchange.map(str::to_owned);
        let client = ServiceClient::<JobsApi>::new(transport, target).timeout(CANCEL_SEND_TIMEOUT);
        let sent = tokio::time::timeout(
            CANCEL_SEND_TIMEOUT,
            client.cast(context, CANCEL, PartId { part_id }),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(server, "could not send a part's cancellation");
        }
    });
    futures::future::join_all(casts).await;
}
