//! The caller's side (Func's "overlord"): starts jobs, follows them, and answers questions
//! about them from its store.
//!
//! [`JobClient::start`] records the job and returns its id at once; a task of this process
//! then follows it (see the `driver` module) and records each step. Status, results and
//! history come from the store ([`JobStore`]), so they need no remote call, and a finished
//! job's results can be read long after its servers are gone. A job outlives the process that
//! started it: [`JobClient::resume`] in a later process continues it from what the store holds.
//!
//! Progress is a stream of [`JobEvent`]s ([`JobClient::events`]): live from this process's
//! follower when it follows the job, read from the store when another process does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tidings::transport::topology;
use tidings::Transport;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::driver::{self, Follower, DEFAULT_LEASE_TTL};
use crate::error::JobError;
use crate::failure;
use crate::record::{JobSnapshot, PartSnapshot};
use crate::spec::JobSpec;
use crate::status::JobStatus;
use crate::store::JobStore;

/// Jobs one process follows at once.
pub const MAX_FOLLOWED: usize = 1024;

/// Events buffered per followed job for each subscriber; a subscriber that falls further
/// behind catches up from the store.
const EVENT_BUFFER: usize = 256;

/// How often a reader checks the store for progress made by another process. SQLite offers no
/// change notification across processes; a check costs one `PRAGMA data_version`.
const STORE_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Every this many checks, the job is read whatever the data version says.
const FULL_READ_EVERY: u32 = 25;

/// Something happened to a job: a part moved, or the job's status changed.
#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    /// The job.
    pub job_id: String,
    /// The job's status after the change.
    pub status: JobStatus,
    /// The part that changed, as it now stands; `None` when only the job's status is told.
    pub part: Option<PartSnapshot>,
}

/// Starts and follows jobs over a transport, recording them in a store. Cheap to clone;
/// when the last clone is dropped, the jobs it followed are no longer followed (they stay in
/// the store, and [`resume`](Self::resume) continues them).
#[derive(Clone, Debug)]
pub struct JobClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    store: JobStore,
    holder: String,
    lease_ttl: Duration,
    followed: Arc<Mutex<HashMap<String, Followed>>>,
}

#[derive(Debug)]
struct Followed {
    events: broadcast::Sender<crate::client::JobEvent>,
    task: Option<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, followed) in lock(&self.followed).drain() {
            if let Some(task) = followed.task {
                task.abort();
            }
        }
    }
}

fn lock(map: &Mutex<HashMap<String, Followed>>) -> MutexGuard<'_, HashMap<String, Followed>> {
    // Each use is one insert, lookup or removal: never left half done.
    map.lock().unwrap_or_else(|e| e.into_inner())
}

impl JobClient {
    /// A client that sends over `transport` and records in `store`.
    pub fn new(transport: &Transport, store: JobStore) -> Self {
        let holder = format!("{}-{}", std::process::id(), &topology::new_id()[..12]);
        Self::build(transport.clone(), store, holder, DEFAULT_LEASE_TTL)
    }

    fn build(transport: Transport, store: JobStore, holder: String, lease_ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                transport,
                store,
                holder,
                lease_ttl,
                followed: Arc::default(),
            }),
        }
    }

    /// The same client following jobs as `holder`: a process handed a job by the one that
    /// created it (see [`create`](Self::create)) continues under the same lease.
    #[must_use]
    pub fn with_holder(self, holder: impl Into<String>) -> Self {
        Self::build(
            self.inner.transport.clone(),
            self.inner.store.clone(),
            holder.into(),
            self.inner.lease_ttl,
        )
    }

    /// The same client with leases lasting `ttl` unless renewed (default 15 s): how soon
    /// another process may take over a job whose follower died.
    #[must_use]
    pub fn with_lease_ttl(self, ttl: Duration) -> Self {
        Self::build(
            self.inner.transport.clone(),
            self.inner.store.clone(),
            self.inner.holder.clone(),
            ttl.max(Duration::from_millis(300)),
        )
    }

    /// The name this client follows jobs under.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The store.
    pub fn store(&self) -> &JobStore {
        &self.inner.store
    }

    /// Records `spec` as a new job, leased to this client's holder, without following it:
    /// for a caller that hands the following to another process (which uses the same holder
    /// name) or follows it later with [`follow`](Self::follow).
    pub async fn create(&self, spec: &JobSpec) -> Result<String, JobError> {
        spec.check()?;
        let id = topology::new_id();
        let store = &self.inner.store;
        store.insert(&id, spec).await?;
        store
            .lease(&id, &self.inner.holder, self.inner.lease_ttl)
            .await?;
        Ok(id)
    }

    /// Starts `spec`: records it and returns its id at once; a task of this process follows
    /// it to its end.
    pub async fn start(&self, spec: JobSpec) -> Result<String, JobError> {
        if lock(&self.inner.followed).len() >= MAX_FOLLOWED {
            return Err(JobError::TooManyJobs(MAX_FOLLOWED));
        }
        let id = self.create(&spec).await?;
        self.spawn_follower(&id, Some(spec.context));
        Ok(id)
    }

    /// Follows job `id` in the background if it is unfinished and nobody else follows it (its
    /// follower's lease expired): what a restarted caller does for the jobs it left. True when
    /// this client follows it now.
    pub async fn resume(&self, id: &str) -> Result<bool, JobError> {
        if lock(&self.inner.followed).contains_key(id) {
            return Ok(true);
        }
        let job = self.inner.store.snapshot(id).await?;
        if job.is_finished() {
            return Ok(false);
        }
        if lock(&self.inner.followed).len() >= MAX_FOLLOWED {
            return Err(JobError::TooManyJobs(MAX_FOLLOWED));
        }
        let store = &self.inner.store;
        if !store
            .lease(id, &self.inner.holder, self.inner.lease_ttl)
            .await?
        {
            return Ok(false);
        }
        self.spawn_follower(id, None);
        Ok(true)
    }

    /// Follows job `id` in this task until it ends, and returns how it stands then. The lease
    /// must be free or this client's (see [`create`](Self::create)).
    pub async fn follow(&self, id: &str) -> Result<JobSnapshot, JobError> {
        let store = &self.inner.store;
        if !store
            .lease(id, &self.inner.holder, self.inner.lease_ttl)
            .await?
        {
            return Err(JobError::Followed(id.to_owned()));
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        driver::follow(self.follower(events), id, None).await?;
        store.snapshot(id).await
    }

    fn follower(&self, events: broadcast::Sender<JobEvent>) -> Follower {
        Follower {
            transport: self.inner.transport.clone(),
            store: self.inner.store.clone(),
            events,
            holder: self.inner.holder.clone(),
            lease_ttl: self.inner.lease_ttl,
        }
    }

    fn spawn_follower(&self, id: &str, context: Option<tidings::Context>) {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let follower = self.follower(events.clone());
        let followed = self.inner.followed.clone();
        // Registered before the task runs, so that it is known to `events` at once.
        lock(&followed).insert(id.to_owned(), Followed { events, task: None });
        let job = id.to_owned();
        let map = followed.clone();
        let task = tokio::spawn(async move {
            match driver::follow(follower, &job, context).await {
                Ok(status) => tracing::debug!(job, %status, "stopped following a job"),
                Err(error) => tracing::warn!(job, %error, "stopped following a job"),
            }
            lock(&map).remove(&job);
        });
        let mut map = lock(&followed);
        if let Some(entry) = map.get_mut(id) {
            entry.task = Some(task.abort_handle());
        }
    }

    /// The job as recorded (no remote call).
    pub async fn status(&self, id: &str) -> Result<JobSnapshot, JobError> {
        self.inner.store.snapshot(id).await
    }

    /// The job's progress from now on: first its current status, then every change.
    pub async fn events(&self, id: &str) -> Result<JobEvents, JobError> {
        // Subscribe before reading the store, so no change falls between the two.
        let live = lock(&self.inner.followed)
            .get(id)
            .map(|f| f.events.subscribe());
        let snapshot = self.inner.store.snapshot(id).await?;
        Ok(JobEvents::new(self.inner.store.clone(), snapshot, live))
    }

    /// Waits until the job has finished, at most `timeout` (no limit when `None`), and returns
    /// it as it stands then. A job that nobody follows any more (its follower died) is taken
    /// over first.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<JobSnapshot, JobError> {
        let started = Instant::now();
        let job = self.inner.store.snapshot(id).await?;
        if !job.is_finished() && !job.followed {
            self.resume(id).await?;
        }
        let mut events = self.events(id).await?;
        loop {
            if events.status() == JobStatus::Finished {
                return self.inner.store.snapshot(id).await;
            }
            let next = match timeout {
                Some(limit) => {
                    match tokio::time::timeout_at(started + limit, events.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            return Err(JobError::WaitTimedOut {
                                job: id.to_owned(),
                                status: events.status(),
                                waited: limit,
                            })
                        }
                    }
                }
                None => events.next().await,
            };
            if next?.is_none() {
                return self.inner.store.snapshot(id).await;
            }
        }
    }

    /// Cancels the job: every part not ended ends with `Cancelled`, and servers running parts
    /// are asked to stop them. A process following the job elsewhere finds its parts ended.
    pub async fn cancel(&self, id: &str) -> Result<JobSnapshot, JobError> {
        let local = lock(&self.inner.followed).remove(id);
        if let Some(Followed {
            task: Some(task), ..
        }) = &local
        {
            task.abort();
        }
        let store = &self.inner.store;
        let record = store.record(id).await?;
        let (remote, changes) = store.end_all(id, failure::cancelled()).await?;
        if let Some(followed) = local {
            for change in changes {
                let _ = followed.events.send(JobEvent {
                    job_id: id.to_owned(),
                    status: change.status,
                    part: change.part,
                });
            }
            store.release(id, &self.inner.holder).await?;
        }
        driver::cancel_parts(
            &self.inner.transport,
            &tidings::Context::from(record.context),
            &record.topic,
            record.exchange.as_deref(),
            remote,
        )
        .await;
        store.snapshot(id).await
    }

    /// Stops following every job this client follows and gives their leases up, so that
    /// another process may continue them at once.
    pub async fn close(&self) {
        let followed: Vec<(String, Followed)> = lock(&self.inner.followed).drain().collect();
        for (id, followed) in followed {
            if let Some(task) = followed.task {
                task.abort();
            }
            if let Err(error) = self.inner.store.release(&id, &self.inner.holder).await {
                tracing::warn!(job = id, %error, "could not release a job's lease");
            }
        }
    }
}

impl JobStore {
    /// The job's progress as the store records it, written by whichever process follows the
    /// job: its current status first, then every change (checked every 200 ms).
    pub async fn events(&self, id: &str) -> Result<JobEvents, JobError> {
        let snapshot = self.snapshot(id).await?;
        Ok(JobEvents::new(self.clone(), snapshot, None))
    }
}

/// A job's progress: its current status first, then each change as it happens, until the job
/// has finished. Live when this process follows the job; otherwise read from the store, which
/// the process that follows it writes.
#[derive(Debug)]
pub struct JobEvents {
    store: JobStore,
    live: Option<broadcast::Receiver<JobEvent>>,
    last: JobSnapshot,
    pending: VecDeque<JobEvent>,
    /// The job as the store last said, once the events queued from it are handed out.
    latest: Option<JobSnapshot>,
    data_version: Option<i64>,
    checks: u32,
    ended: bool,
}

impl JobEvents {
    fn new(
        store: JobStore,
        snapshot: JobSnapshot,
        live: Option<broadcast::Receiver<JobEvent>>,
    ) -> Self {
        let first = JobEvent {
            job_id: snapshot.id.clone(),
            status: snapshot.status,
            part: None,
        };
        Self {
            store,
            live,
            last: snapshot,
            pending: VecDeque::from([first]),
            latest: None,
            data_version: None,
            checks: 0,
            ended: false,
        }
    }

    /// The job's status as of the last event handed out.
    pub fn status(&self) -> JobStatus {
        self.last.status
    }

    /// The job as of the last event handed out.
    pub fn snapshot(&self) -> &JobSnapshot {
        &self.last
    }

    /// The next event; `None` once the job has finished and its last event was handed out.
    pub async fn next(&mut self) -> Result<Option<JobEvent>, JobError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.apply(&event);
                if self.pending.is_empty() {
                    if let Some(latest) = self.latest.take() {
                        self.last = latest;
                    }
                }
                return Ok(Some(event));
            }
            if self.ended || self.last.is_finished() {
                self.ended = true;
                return Ok(None);
            }
            match &mut self.live {
                Some(live) => match live.recv().await {
                    Ok(event) if event.part.is_some() => {
                        self.apply(&event);
                        return Ok(Some(event));
                    }
                    // A change of the job as a whole (its servers resolved): the store has
                    // the rest.
                    Ok(event) => {
                        self.catch_up().await?;
                        if self.pending.is_empty() {
                            self.apply(&event);
                            return Ok(Some(event));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await?,
                    Err(broadcast::error::RecvError::Closed) => {
                        // The follower stopped: read what it left, then watch the store.
                        self.live = None;
                        self.catch_up().await?;
                    }
                },
                None => {
                    tokio::time::sleep(STORE_CHECK_INTERVAL).await;
                    self.checks = self.checks.wrapping_add(1);
                    let version = self.store.data_version().await?;
                    if self.data_version != Some(version) || self.checks % FULL_READ_EVERY == 0 {
                        self.data_version = Some(version);
                        self.catch_up().await?;
                    }
                }
            }
        }
    }

    fn apply(&mut self, event: &JobEvent) {
        self.last.status = event.status;
        if let Some(part) = &event.part {
            match self.last.parts.iter_mut().find(|p| p.server == part.server) {
                Some(known) => *known = part.clone(),
                None => self.last.parts.push(part.clone()),
            }
        }
    }

    /// Reads the job from the store and queues one event per part that changed since the last
    /// event handed out, in the order of the parts, each with the job's status as it stood
    /// after that change (and one for the job's status when only it changed).
    async fn catch_up(&mut self) -> Result<(), JobError> {
        let now = self.store.snapshot(&self.last.id).await?;
        let base = self.latest.as_ref().unwrap_or(&self.last);
        let mut working = base.clone();
        working.resolved = now.resolved;
        let mut changed_parts = 0;
        for part in &now.parts {
            if working.part(&part.server) == Some(part) {
                continue;
            }
            changed_parts += 1;
            match working.parts.iter_mut().find(|p| p.server == part.server) {
                Some(known) => *known = part.clone(),
                None => working.parts.push(part.clone()),
            }
            let status = JobStatus::of(working.resolved, working.parts.iter().map(|p| p.status));
            self.pending.push_back(JobEvent {
                job_id: now.id.clone(),
                status,
                part: Some(part.clone()),
            });
        }
        if changed_parts == 0 && now.status != base.status {
            self.pending.push_back(JobEvent {
                job_id: now.id.clone(),
                status: now.status,
                part: None,
            });
        }
        if self.pending.is_empty() {
            self.last = now;
        } else {
            self.latest = Some(now);
        }
        Ok(())
    }
}
