//! Periodic work: tasks run on timers, with a spacing, an optional immediate first run and
//! random jitter, gathered into one [`Worker`](super::Worker) for an engine to supervise.
//!
//! Timing rule: a run is due `spacing` (plus jitter) after the previous run *began*. If a run
//! took longer than that, the next one starts as soon as it ends — once; missed periods are
//! not made up, so a slow run never causes a burst of catch-up runs (tokio's
//! `MissedTickBehavior::Delay`). Between runs a task waits on a timer or its stop token,
//! nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::worker::{panic_message, TaskWorker, WorkerError};

/// When a periodic task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    spacing: Duration,
    run_immediately: bool,
    jitter: Duration,
}

/// Why a [`Schedule`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// A zero spacing would run the task back to back forever.
    #[error("periodic spacing must be greater than zero")]
    ZeroSpacing,
}

impl Schedule {
    /// Runs every `spacing`, the first time one spacing after the start, without jitter.
    pub fn every(spacing: Duration) -> Result<Self, ScheduleError> {
        if spacing.is_zero() {
            return Err(ScheduleError::ZeroSpacing);
        }
        Ok(Self {
            spacing,
            run_immediately: false,
            jitter: Duration::ZERO,
        })
    }

    /// Runs the first time as soon as the worker starts (still on schedule afterwards).
    pub fn run_immediately(mut self, immediately: bool) -> Self {
        self.run_immediately = immediately;
        self
    }

    /// Adds a random delay in `[0, jitter)`, in whole milliseconds, to every wait, so that many
    /// agents started together do not all poll at the same instant. A jitter under a
    /// millisecond adds none.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The spacing between runs.
    pub fn spacing(&self) -> Duration {
        self.spacing
    }

    /// Whole milliseconds: tokio's timers round a deadline up to the next millisecond, so a
    /// finer delay just under the bound would wait the whole bound.
    fn random_jitter(&self) -> Duration {
        match u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX) {
            0 => Duration::ZERO,
            bound => Duration::from_millis(fastrand::u64(0..bound)),
        }
    }

    fn first_due(&self, now: Instant) -> Instant {
        if self.run_immediately {
            now
        } else {
            now + self.spacing + self.random_jitter()
        }
    }

    /// Due a spacing after the run began, but never in the past: at most one late run, no
    /// catching up.
    fn next_due(&self, began: Instant, now: Instant) -> Instant {
        (began + self.spacing + self.random_jitter()).max(now)
    }
}

type TaskFn =
    Arc<dyn Fn(CancellationToken) -> BoxFuture<'static, Result<(), WorkerError>> + Send + Sync>;

struct PeriodicTask {
    name: String,
    schedule: Schedule,
    run: TaskFn,
}

/// Counters of one periodic task, shown in the worker's report under `"tasks"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskStats {
    /// Runs finished, failed or not.
    pub runs: u64,
    /// Runs that ended with an error or a panic.
    pub failures: u64,
    /// The last run's error.
    #[serde(rename = "last-error", skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How long the last run took, in milliseconds.
    #[serde(rename = "last-duration-ms", skip_serializing_if = "Option::is_none")]
    pub last_duration_ms: Option<u64>,
}

type Stats = Arc<Mutex<BTreeMap<String, TaskStats>>>;

/// A set of periodic tasks that run as one worker.
///
/// A run's error is logged and counted, and the schedule goes on, except
/// [`WorkerError::Fatal`], which stops every task and ends the worker with that error. Killing
/// the worker cancels the token each run was given and lets runs in flight finish.
///
/// ```
/// use std::time::Duration;
/// use tidings_runtime::{PeriodicTasks, Schedule};
///
/// # fn build() -> Result<PeriodicTasks, tidings_runtime::ScheduleError> {
/// let tasks = PeriodicTasks::new().add(
///     "cpu",
///     Schedule::every(Duration::from_secs(600))?
///         .run_immediately(true)
///         .with_jitter(Duration::from_secs(5)),
///     |_stop| async { Ok(()) },
/// );
/// # Ok(tasks) }
/// ```
#[derive(Default)]
pub struct PeriodicTasks {
    tasks: Vec<PeriodicTask>,
}

impl PeriodicTasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task named `name` run by `task` on `schedule`. `task` gets the worker's stop
    /// token, for runs long enough to be worth cutting short.
    pub fn add<F, Fut>(mut self, name: impl Into<String>, schedule: Schedule, task: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), WorkerError>> + Send + 'static,
    {
        self.tasks.push(PeriodicTask {
            name: name.into(),
            schedule,
            run: Arc::new(move |stop| Box::pin(task(stop))),
        });
        self
    }

    /// Starts every task on its schedule, as one worker. Must be called inside a Tokio
    /// runtime.
    pub fn spawn(self) -> TaskWorker {
        let stats: Stats = Arc::new(Mutex::new(
            self.tasks
                .iter()
                .map(|task| (task.name.clone(), TaskStats::default()))
                .collect(),
        ));
        let report_stats = stats.clone();
        TaskWorker::spawn(move |stop| async move {
            let mut running = JoinSet::new();
            for task in self.tasks {
                running.spawn(run_on_schedule(task, stop.clone(), stats.clone()));
            }
            let mut first_fatal = None;
            while let Some(joined) = running.join_next().await {
                // Tasks catch their runs' panics; a join error means the runtime is going away.
                if let Ok(Err(fatal)) = joined {
                    stop.cancel();
                    first_fatal.get_or_insert(fatal);
                }
            }
            first_fatal.map_or(Ok(()), Err)
        })
        .with_report(move || {
            let stats = report_stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            serde_json::json!({ "tasks": stats })
        })
    }
}

impl fmt::Debug for PeriodicTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_map();
        for task in &self.tasks {
            list.entry(&task.name, &task.schedule);
        }
        list.finish()
    }
}

/// One task's life: wait until due (or stopped), run, record, compute the next due time.
async fn run_on_schedule(
    task: PeriodicTask,
    stop: CancellationToken,
    stats: Stats,
) -> Result<(), WorkerError> {
    let mut due = task.schedule.first_due(Instant::now());
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep_until(due) => {}
        }
        let began = Instant::now();
        let outcome = AssertUnwindSafe((task.run)(stop.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|payload| Err(WorkerError::Panicked(panic_message(&*payload))));
        record(&stats, &task.name, began.elapsed(), &outcome);
        if let Err(error @ WorkerError::Fatal(_)) = outcome {
            return Err(error);
        }
        due = task.schedule.next_due(began, Instant::now());
    }
}

fn record(stats: &Stats, name: &str, took: Duration, outcome: &Result<(), WorkerError>) {
    if let Err(error) = outcome {
        tracing::warn!(task = name, %error, "periodic task failed");
    }
    let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = stats.entry(name.to_owned()).or_default();
    entry.runs += 1;
    entry.last_duration_ms = Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
    match outcome {
        Ok(()) => entry.last_error = None,
        Err(error) => {
            entry.failures += 1;
            entry.last_error = Some(error.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::Worker;

    /// A task whose runs take `durations` in turn (then zero), recording when each began.
    fn timed_task(
        durations: Vec<Duration>,
    ) -> (
        impl Fn(CancellationToken) -> BoxFuture<'static, Result<(), WorkerError>> + Send + Sync,
        mpsc::UnboundedReceiver<Instant>,
    ) {
        let (sender, starts) = mpsc::unbounded_channel();
        let durations = Arc::new(Mutex::new(durations.into_iter()));
        let task = move |_stop: CancellationToken| {
            let _ = sender.send(Instant::now());
            let took = durations.lock().unwrap().next().unwrap_or_default();
            Box::pin(async move {
                tokio::time::sleep(took).await;
                Ok(())
            }) as BoxFuture<'static, Result<(), WorkerError>>
        };
        (task, starts)
    }

    async fn gaps(starts: &mut mpsc::UnboundedReceiver<Instant>, count: usize) -> Vec<Duration> {
        let mut previous = starts.recv().await.unwrap();
        let mut gaps = Vec::new();
        for _ in 0..count {
            let next = starts.recv().await.unwrap();
            gaps.push(next - previous);
            previous = next;
        }
        gaps
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_run_never_causes_a_burst_of_catch_up_runs() {
        let spacing = Duration::from_secs(10);
        let (task, mut starts) = timed_task(vec![Duration::from_secs(35)]);
        let worker = PeriodicTasks::new()
            .add(
                "poll",
                Schedule::every(spacing).unwrap().run_immediately(true),
                task,
            )
            .spawn();
        // The first run takes 3.5 spacings: the next starts right after it, once, and the
        // schedule then resumes its spacing; the three missed periods are not made up.
        let gaps = gaps(&mut starts, 4).await;
        assert_eq!(
            gaps,
            [35, 10, 10, 10].map(Duration::from_secs).to_vec(),
            "starts at 0, 35, 45, 55, 65"
        );
        worker.kill();
        worker.wait().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn runs_that_always_overrun_follow_each_other_without_bursts() {
        let (task, mut starts) = timed_task(vec![Duration::from_secs(25); 10]);
        let _worker = PeriodicTasks::new()
            .add(
                "poll",
                Schedule::every(Duration::from_secs(10))
                    .unwrap()
                    .run_immediately(true),
                task,
            )
            .spawn();
        assert!(gaps(&mut starts, 5)
            .await
            .iter()
            .all(|gap| *gap == Duration::from_secs(25)));
    }

    #[tokio::test(start_paused = true)]
    async fn first_run_waits_one_spacing_unless_run_immediately() {
        let began = Instant::now();
        let (task, mut starts) = timed_task(vec![]);
        let _waiting = PeriodicTasks::new()
            .add(
                "later",
                Schedule::every(Duration::from_secs(10)).unwrap(),
                task,
            )
            .spawn();
        assert_eq!(
            starts.recv().await.unwrap() - began,
            Duration::from_secs(10)
        );

        let began = Instant::now();
        let (task, mut starts) = timed_task(vec![]);
        let _immediate = PeriodicTasks::new()
            .add(
                "now",
                Schedule::every(Duration::from_secs(10))
                    .unwrap()
                    .run_immediately(true),
                task,
            )
            .spawn();
        assert_eq!(starts.recv().await.unwrap(), began);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_delays_each_run_within_its_bound() {
        let (task, mut starts) = timed_task(vec![]);
        let _worker = PeriodicTasks::new()
            .add(
                "poll",
                Schedule::every(Duration::from_secs(10))
                    .unwrap()
                    .run_immediately(true)
                    .with_jitter(Duration::from_secs(2)),
                task,
            )
            .spawn();
        for gap in gaps(&mut starts, 20).await {
            assert!(
                Duration::from_secs(10) <= gap && gap < Duration::from_secs(12),
                "{gap:?}"
            );
        }
    }

    #[test]
    fn jitter_is_whole_milliseconds_below_its_bound() {
        let schedule = Schedule::every(Duration::from_secs(10))
            .unwrap()
            .with_jitter(Duration::from_millis(3));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            seen.insert(schedule.random_jitter());
        }
        let expected = [0, 1, 2].map(Duration::from_millis);
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);
        let fine = schedule.with_jitter(Duration::from_micros(900));
        assert_eq!(fine.random_jitter(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_runs_are_counted_and_the_schedule_goes_on() {
        let worker = PeriodicTasks::new()
            .add(
                "flaky",
                Schedule::every(Duration::from_secs(1)).unwrap(),
                |_| async { Err(WorkerError::failed("sensor unreadable")) },
            )
            .spawn();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(
            worker.report(),
            Some(serde_json::json!({"tasks": {"flaky": {
                "runs": 3,
                "failures": 3,
                "last-error": "sensor unreadable",
                "last-duration-ms": 0,
            }}}))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_run_ends_the_worker_with_its_error() {
        let worker = PeriodicTasks::new()
            .add(
                "quiet",
                Schedule::every(Duration::from_secs(1)).unwrap(),
                |_| async { Ok(()) },
            )
            .add(
                "doomed",
                Schedule::every(Duration::from_secs(5)).unwrap(),
                |_| async { Err(WorkerError::fatal("disk gone")) },
            )
            .spawn();
        let error = worker.wait().await.unwrap_err();
        assert_eq!(error.to_string(), "fatal: disk gone");
    }

    #[tokio::test(start_paused = true)]
    async fn kill_lets_the_run_in_flight_finish_and_starts_no_more() {
        let (task, mut starts) = timed_task(vec![Duration::from_secs(5); 3]);
        let worker = PeriodicTasks::new()
            .add(
                "poll",
                Schedule::every(Duration::from_secs(10))
                    .unwrap()
                    .run_immediately(true),
                task,
            )
            .spawn();
        let began = starts.recv().await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        worker.kill();
        worker.wait().await.unwrap();
        assert_eq!(Instant::now() - began, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(starts.try_recv().is_err());
    }

    #[test]
    fn zero_spacing_is_refused() {
        assert_eq!(
            Schedule::every(Duration::ZERO),
            Err(ScheduleError::ZeroSpacing)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn next_due_never_lies_in_the_past() {
        let schedule = Schedule::every(Duration::from_secs(10)).unwrap();
        let began = Instant::now();
        let late = began + Duration::from_secs(35);
        assert_eq!(schedule.next_due(began, late), late);
        let early = began + Duration::from_secs(1);
        assert_eq!(
            schedule.next_due(began, early),
            began + Duration::from_secs(10)
        );
    }
}
