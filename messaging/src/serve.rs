//! The serving core that the RPC server and the notification listener share: a bound on work in
//! flight (dispatch slots), the tasks running it, and a stop that drains them within a deadline
//! and reports what finished and what was cut off.
//!
//! This module knows nothing of requests or notifications; its users decide what a unit of work
//! is (one request, one batch) and when a slot is released (an RPC request frees its slot before
//! a reply is retried).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What stopping a server or listener saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Units of work (requests, batches) that finished during the drain.
    pub finished: usize,
    /// Units of work cut off at the deadline.
    pub abandoned: usize,
    /// Queues whose consumer the broker had cancelled and that were still not consumed again
    /// when the stop came, each with the last reason.
    pub unrestored_queues: Vec<(String, String)>,
}

/// Messages a server, listener or reply queue refused without handing them to a handler,
/// counted by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Bodies larger than the transport's limit, never decoded.
    pub too_large: u64,
    /// Bodies that did not decode, or held a field that failed its checks.
    pub malformed: u64,
    /// Requests dropped as duplicates of one seen within the window.
    pub duplicates: u64,
    /// Replies to no call waiting for them (late, or unsolicited).
    pub unsolicited: u64,
}

/// The live counters behind [`Refusals`], shared by a serving loop's tasks.
#[derive(Debug, Default)]
pub(crate) struct RefusalCounters {
    too_large: AtomicU64,
    malformed: AtomicU64,
    duplicates: AtomicU64,
    unsolicited: AtomicU64,
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    TooLarge,
    Malformed,
    Duplicate,
    Unsolicited,
}

impl RefusalCounters {
    /// Counts one refusal.
    pub(crate) fn count(&self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::TooLarge => &self.too_large,
            Refusal::Malformed => &self.malformed,
            Refusal::Duplicate => &self.duplicates,
            Refusal::Unsolicited => &self.unsolicited,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> Refusals {
        Refusals {
            too_large: self.too_large.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            unsolicited: self.unsolicited.load(Ordering::Relaxed),
        }
    }
}

/// Refusals counted, and the few of them worth a log line: what every refusing loop (server,
/// listener, reply queue) keeps.
#[derive(Debug, Default)]
pub(crate) struct RefusalTally {
    counters: RefusalCounters,
    log: LogLimiter,
}

impl RefusalTally {
    /// Counts `refusal`; when a line may be logged for it, returns the number of lines left out
    /// before it and `why` cut to what a log line may hold (a peer controls it).
    pub(crate) fn record(
        &self,
        refusal: Refusal,
        why: &dyn std::fmt::Display,
    ) -> Option<(u64, String)> {
        self.counters.count(refusal);
        let left_out = self.log.admit()?;
        let why = why.to_string();
        Some((
            left_out,
            crate::codec::limits::truncate_for_log(&why).into_owned(),
        ))
    }

    /// Counts `refusal` without a log line (one that is routine, such as a duplicate).
    pub(crate) fn count(&self, refusal: Refusal) {
        self.counters.count(refusal);
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> Refusals {
        self.counters.snapshot()
    }
}

/// Lines of one kind a [`LogLimiter`] lets through per window.
const LOG_LINES_PER_WINDOW: u32 = 10;
/// A [`LogLimiter`]'s window.
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Keeps a flood of one kind of failure (a peer sending junk) from flooding the log: a few
/// lines per window, then silence, then a count of what was left out.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    window: Mutex<LogWindow>,
}

#[derive(Debug, Default)]
struct LogWindow {
    started: Option<tokio::time::Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether a line may be logged now; `Some(n)` with the number of lines left out before it.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let expired = window
            .started
            .is_none_or(|started| now.duration_since(started) >= LOG_WINDOW);
        if expired {
            let suppressed = std::mem::take(&mut window.suppressed);
            window.started = Some(now);
            window.logged = 1;
            return Some(suppressed);
        }
        if window.logged < LOG_LINES_PER_WINDOW {
            window.logged += 1;
            Some(0)
        } else {
            window.suppressed += 1;
            None
        }
    }
}

/// Work in flight, bounded by slots, on one serving loop.
///
/// Each unit runs as a detached task, so its memory goes back the moment it ends. (A
/// `JoinSet` kept every finished task until it was joined, which happened only when the next
/// delivery came: after a burst of 10 000 calls an idle server held about 30 MiB of finished
/// tasks until its next request.)
#[derive(Debug)]
pub(crate) struct Serving {
    slots: Arc<Semaphore>,
    in_flight: TaskTracker,
    /// Units that ran to their end, for the stop's report.
    finished: Arc<AtomicUsize>,
    /// Cancelled to drop the units still running at the stop's deadline.
    abandon: CancellationToken,
    stop: CancellationToken,
    /// Cancelled by the loop when in-flight work is done, or by [`Running::stop`] to cut the
    /// drain short.
    drained: CancellationToken,
}

impl Serving {
    /// A core allowing `limit` units of work at once.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit.max(1))),
            in_flight: TaskTracker::new(),
            finished: Arc::default(),
            abandon: CancellationToken::new(),
            stop: CancellationToken::new(),
            drained: CancellationToken::new(),
        }
    }

    /// Runs `serve` (the loop that takes deliveries and hands them to [`spawn`](Self::spawn))
    /// on its own task; the returned handle stops it.
    pub(crate) fn run<F>(self, serve: impl FnOnce(Self) -> F) -> Running
    where
        F: Future<Output = StopReport> + Send + 'static,
    {
        let stop = self.stop.clone();
        let drained = self.drained.clone();
        let task = tokio::spawn(serve(self));
        Running {
            stop,
            drained,
            task,
        }
    }

    /// Resolves once a stop was asked for.
    pub(crate) async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// Whether a stop was asked for.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Marks the loop as stopping (it ended on its own, e.g. its inbox closed).
    pub(crate) fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Waits for a free slot; `None` once a stop was asked for.
    pub(crate) async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            () = self.stop.cancelled() => None,
            slot = self.slots.clone().acquire_owned() => slot.ok(),
        }
    }

    /// Waits for a free slot even while stopping (for the last partial batch).
    pub(crate) async fn slot_while_stopping(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Runs `work` as one unit in flight; it owns its slot and releases it when it is done.
    pub(crate) fn spawn(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        let finished = self.finished.clone();
        let abandon = self.abandon.clone();
        self.in_flight.spawn(async move {
            tokio::select! {
                biased;
                () = abandon.cancelled() => {}
                () = work => {
                    finished.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    /// Waits for the work in flight until it is done or the stop's deadline cuts it off.
    pub(crate) async fn drain(self) -> StopReport {
        let mut report = StopReport::default();
        let finished_before = self.finished.load(Ordering::Relaxed);
        self.in_flight.close();
        tokio::select! {
            () = self.in_flight.wait() => {}
            () = self.drained.cancelled() => {
                report.abandoned = self.in_flight.len();
                // Each unit drops its work at its next poll, as an aborted task would.
                self.abandon.cancel();
                self.in_flight.wait().await;
            }
        }
        report.finished = self
            .finished
            .load(Ordering::Relaxed)
            .saturating_sub(finished_before);
        self.drained.cancel();
        report
    }
}

/// How long a stopped loop may take, after its deadline, to close its inbox.
const LOOP_EXIT_PATIENCE: Duration = Duration::from_secs(5);

/// A running serving loop.
#[derive(Debug)]
pub(crate) struct Running {
    stop: CancellationToken,
    drained: CancellationToken,
    task: JoinHandle<StopReport>,
}

impl Running {
    /// Asks the loop to stop taking work, waits up to `deadline` for the work in flight,
    /// abandons the rest, and reports.
    pub(crate) async fn stop(self, deadline: Duration) -> StopReport {
        self.stop.cancel();
        let timed_out = tokio::time::timeout(deadline, self.drained.cancelled())
            .await
            .is_err();
        if timed_out {
            // Tell the loop to abandon what is left; it reports how much.
            self.drained.cancel();
        }
        // The loop's own clean-up (closing its inbox) talks to the broker; a broker or a
        // connection that no longer answers must not hold a stop past its deadline for long.
        let mut task = self.task;
        match tokio::time::timeout(LOOP_EXIT_PATIENCE, &mut task).await {
            Ok(report) => report.unwrap_or_default(),
            Err(_) => {
                tracing::warn!(
                    "a serving loop did not end within {LOOP_EXIT_PATIENCE:?} of its stop; abandoned"
                );
                task.abort();
                StopReport::default()
            }
        }
    }

    /// Resolves when the loop is stopping, on its own or by [`stop`](Self::stop).
    pub(crate) async fn stopped(&self) {
        self.stop.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_log_limiter_lets_a_few_lines_through_per_window_and_counts_the_rest() {
        let limiter = LogLimiter::default();
        let admitted = (0..25).filter(|_| limiter.admit().is_some()).count();
        assert_eq!(admitted, LOG_LINES_PER_WINDOW as usize);
        tokio::time::advance(LOG_WINDOW).await;
        assert_eq!(limiter.admit(), Some(15));
        assert_eq!(limiter.admit(), Some(0));
    }

    #[tokio::test]
    async fn finished_work_is_let_go_without_waiting_for_the_next_unit() {
        let mut serving = Serving::new(64);
        for _ in 0..64 {
            let Some(slot) = serving.slot().await else {
                panic!("a slot is free");
            };
            serving.spawn(async move { drop(slot) });
        }
        // Nothing more arrives (a burst, then quiet): the finished units must not stay held.
        let let_go = tokio::time::timeout(Duration::from_secs(10), async {
            while !serving.in_flight.is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            let_go.is_ok(),
            "{} units still held",
            serving.in_flight.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stop_reports_finished_and_abandoned_work() {
        let serving = Serving::new(2);
        let running = serving.run(|mut serving| async move {
            for pause in [Duration::from_millis(10), Duration::from_secs(3600)] {
                let Some(slot) = serving.slot().await else {
                    break;
                };
                serving.spawn(async move {
                    tokio::time::sleep(pause).await;
                    drop(slot);
                });
            }
            serving.stopping().await;
            serving.drain().await
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let report = running.stop(Duration::from_secs(1)).await;
        assert_eq!(
            report,
            StopReport {
                finished: 1,
                abandoned: 1,
                ..StopReport::default()
            }
        );
    }
}
