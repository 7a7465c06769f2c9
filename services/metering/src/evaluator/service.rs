//! The running evaluator: joins the group, then two periodic tasks — `heartbeat` every
//! heartbeat interval, and `evaluate`, which runs each cycle at its wall-clock boundary — and
//! on a clean stop announces its departure. [`start`] is the plain API; `manifold` puts the
//! same thing under the runtime's engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tidings::transport::TransportError;
use tidings::Transport;
use tidings_runtime::{PeriodicTasks, Schedule, ScheduleError, TaskWorker, Worker, WorkerError};
use tokio_util::sync::CancellationToken;

use super::config::{Clock, ConfigError, EvaluatorConfig};
use super::cycle::{next_cycle, Counters, CycleRunner, CycleView};
use super::group::{with_membership, Group, SharedMembership};
use super::handoff::Handoff;
use super::membership::Membership;
use crate::alarm_changes::ChangeNotifier;
use crate::store::Store;

/// Why an evaluator did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvaluatorError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The group's queue could not be declared.
    #[error("cannot join the alarm evaluator group: {0}")]
    Transport(#[from] TransportError),
}

/// What an evaluator reports: counters, and the group as of its last cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EvaluatorReport {
    /// This evaluator's member id.
    pub member_id: String,
    /// The last cycle run.
    pub cycle: Option<u64>,
    /// The members of that cycle, sorted.
    pub members: Vec<String>,
    /// How many alarms were this evaluator's share in that cycle.
    pub share: usize,
    /// Members heard from within the member timeout (including ones still joining).
    pub live_members: Vec<String>,
    /// Cycles run.
    pub cycles: u64,
    /// Cycles skipped because a cycle ran over a whole interval.
    pub skipped_cycles: u64,
    /// Alarm evaluations.
    pub evaluated: u64,
    /// State transitions recorded.
    pub transitions: u64,
    /// `alarm.update` notifications sent.
    pub notifications_sent: u64,
    /// Failed fetches, records and sends.
    pub failures: u64,
    /// Heartbeats that could not be sent.
    pub heartbeat_failures: u64,
}

/// A cheap handle on a running evaluator's report.
#[derive(Clone, Debug)]
pub struct EvaluatorStatus {
    member_id: String,
    clock: Clock,
    counters: Arc<Counters>,
    view: Arc<Mutex<CycleView>>,
    membership: SharedMembership,
}

impl EvaluatorStatus {
    /// The report now.
    pub fn report(&self) -> EvaluatorReport {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let now = self.clock.now_ms();
        let view = self
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        EvaluatorReport {
            member_id: self.member_id.clone(),
            cycle: view.cycle,
            members: view.members,
            share: view.share,
            live_members: with_membership(&self.membership, |m| m.live_members(now)),
            cycles: load(&self.counters.cycles),
            skipped_cycles: load(&self.counters.skipped_cycles),
            evaluated: load(&self.counters.evaluated),
            transitions: load(&self.counters.transitions),
            notifications_sent: load(&self.counters.notifications),
            failures: load(&self.counters.failures),
            heartbeat_failures: load(&self.counters.heartbeat_failures),
        }
    }
}

/// A running alarm evaluator. As a [`Worker`], `kill` is a clean stop: the current cycle
/// finishes, the group is told this member leaves, then the evaluator ends.
#[derive(Debug)]
pub struct Evaluator {
    worker: TaskWorker,
    status: EvaluatorStatus,
    abort: Arc<AtomicBool>,
}

impl Evaluator {
    /// This evaluator's member id.
    pub fn member_id(&self) -> &str {
        &self.status.member_id
    }

    /// A handle on the report that outlives the evaluator.
    pub fn status(&self) -> EvaluatorStatus {
        self.status.clone()
    }

    /// Stops cleanly (see the type's docs) and waits for the end.
    pub async fn stop(self) -> Result<(), WorkerError> {
        self.worker.kill();
        self.worker.wait().await
    }

    /// Stops at once without announcing the departure, as a crashed process would: the
    /// others take over its alarms when its heartbeats are missed.
    pub async fn abort(self) -> Result<(), WorkerError> {
        self.abort.store(true, Ordering::Release);
        self.stop().await
    }
}

impl Worker for Evaluator {
    fn kill(&self) {
        self.worker.kill();
    }

    fn wait(&self) -> BoxFuture<'_, Result<(), WorkerError>> {
        self.worker.wait()
    }

    fn report(&self) -> Option<Value> {
        serde_json::to_value(self.status.report()).ok()
    }
}

/// Starts an evaluator on `transport` over `store`: joins the group on the bus, then
/// evaluates its share of the alarms every cycle.
pub async fn start(
    transport: &Transport,
    store: Arc<dyn Store>,
    config: EvaluatorConfig,
) -> Result<Evaluator, EvaluatorError> {
    config.validate()?;
    let heartbeat = config.heartbeat();
    let interval = config.evaluation_interval;
    let member_id = config
        .member_id
        .clone()
        .unwrap_or_else(|| format!("evaluator-{}", uuid::Uuid::new_v4().simple()));
    let membership: SharedMembership = Arc::new(Mutex::new(Membership::new(
        interval,
        heartbeat,
        config.timeout(),
    )));
    let group = Arc::new(
        Group::join(
            transport,
            member_id.clone(),
            interval,
            config.clock,
            membership.clone(),
        )
        .await?,
    );
    let counters = Arc::new(Counters::default());
    let view = Arc::new(Mutex::new(CycleView::default()));
    let runner = Arc::new(CycleRunner {
        member_id: member_id.clone(),
        store,
        handoff: Handoff::new(transport),
        changes: ChangeNotifier::evaluator(transport),
        membership: membership.clone(),
        clock: config.clock,
        ingestion_lag: config.ingestion_lag,
        max_concurrency: config.max_concurrency,
        counters: counters.clone(),
        view: view.clone(),
    });
    let last_cycle = Arc::new(Mutex::new(None));
    let tasks = periodic_tasks(&group, &runner, &last_cycle, interval, heartbeat)
        .map_err(|_| ConfigError::IntervalTooShort(interval))?;
    let abort = Arc::new(AtomicBool::new(false));
    let aborted = abort.clone();
    let clock = config.clock;
    let worker = TaskWorker::spawn(move |stop| async move {
        let tasks = tasks.spawn();
        let ended = tokio::select! {
            () = stop.cancelled() => None,
            ended = tasks.wait() => Some(ended),
        };
        tasks.kill();
        let ended = match ended {
            Some(ended) => ended,
            None => tasks.wait().await,
        };
        if aborted.load(Ordering::Acquire) {
            group.close().await;
        } else {
            let current = next_cycle(millis(interval), None, clock.now_ms())
                .cycle
                .saturating_sub(1);
            let last = lock(&last_cycle).unwrap_or(current);
            group.leave(last).await;
        }
        ended
    });
    Ok(Evaluator {
        worker,
        status: EvaluatorStatus {
            member_id,
            clock: config.clock,
            counters,
            view,
            membership,
        },
        abort,
    })
}

/// The heartbeat and evaluation timers.
///
/// The evaluation task is spaced three quarters of an interval so that each run starts
/// between two boundaries and then waits for the next one: cycles stay on the wall-clock
/// boundaries however long runs take, instead of drifting with the timer.
fn periodic_tasks(
    group: &Arc<Group>,
    runner: &Arc<CycleRunner>,
    last_cycle: &Arc<Mutex<Option<u64>>>,
    interval: Duration,
    heartbeat: Duration,
) -> Result<PeriodicTasks, ScheduleError> {
    let beating = group.clone();
    let pruning = runner.membership.clone();
    let counters = runner.counters.clone();
    let failing = Arc::new(AtomicBool::new(false));
    let clock = runner.clock;
    let heartbeats = Schedule::every(heartbeat)?.run_immediately(true);
    let cycles = Schedule::every(interval * 3 / 4)?.run_immediately(true);
    let runner = runner.clone();
    let last_cycle = last_cycle.clone();
    Ok(PeriodicTasks::new()
        .add("heartbeat", heartbeats, move |_stop| {
            let (group, counters, failing) = (beating.clone(), counters.clone(), failing.clone());
            with_membership(&pruning, |m| m.prune(clock.now_ms()));
            async move {
                // Logged when heartbeats stop and start again, not at every beat of an outage.
                match group.heartbeat().await {
                    Ok(()) if failing.swap(false, Ordering::AcqRel) => {
                        tracing::info!(member = %group.member_id(), "heartbeats sent again");
                    }
                    Ok(()) => {}
                    Err(error) => {
                        counters.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                        if !failing.swap(true, Ordering::AcqRel) {
                            tracing::warn!(%error, member = %group.member_id(), "heartbeat failed; the group will drop this member if it goes on");
                        }
                    }
                }
                Ok(())
            }
        })
        .add("evaluate", cycles, move |stop| {
            let runner = runner.clone();
            let last_cycle = last_cycle.clone();
            async move {
                evaluate_next_cycle(&runner, &last_cycle, interval, &stop).await;
                Ok(())
            }
        }))
}

/// Waits for the next cycle's boundary (or the stop), then runs the cycle.
async fn evaluate_next_cycle(
    runner: &CycleRunner,
    last_cycle: &Mutex<Option<u64>>,
    interval: Duration,
    stop: &CancellationToken,
) {
    let next = next_cycle(millis(interval), lock(last_cycle), runner.clock.now_ms());
    if next.skipped > 0 {
        tracing::warn!(
            skipped = next.skipped,
            "alarm evaluation fell behind by more than an interval; skipping cycles"
        );
        runner
            .counters
            .skipped_cycles
            .fetch_add(next.skipped, Ordering::Relaxed);
    }
    if !next.wait.is_zero() {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(next.wait) => {}
        }
    }
    *last_cycle.lock().unwrap_or_else(PoisonError::into_inner) = Some(next.cycle);
    runner.run(next.cycle).await;
}

fn lock(last_cycle: &Mutex<Option<u64>>) -> Option<u64> {
    *last_cycle.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
