//! The serving core that the RPC server and the notification listener share: a bound on work in
//! flight (dispatch slots), the tasks running it, and a stop that drains them within a deadline
//! and reports what finished and what was cut off.
//!
//! This module knows nothing of requests or notifications; its users decide what a unit of work
//! is (one request, one batch) and when a slot is released (an RPC request frees its slot before
//! a reply is retried).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
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

/// The most bytes of messages a unit may hold to run on the serving loop's own task.
const INLINE_BYTES: usize = 64 * 1024;

/// A unit of work run on the serving loop's own task.
type InlineUnit = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Work in flight, bounded by slots, on one serving loop.
///
/// A unit that starts while no other runs on the loop's task is run there ([`start`]
/// (Self::start)); one that starts beside it gets a detached task of its own. A lone request, a
/// quick cast or a batch then costs no task, and no wake of another worker thread to take the
/// task up (casts measured a third fewer context switches each). Units in tasks of their own
/// let their memory go the moment they end. (A `JoinSet` kept
/// every finished task until it was joined, which happened only when the next delivery came:
/// after a burst of 10 000 calls an idle server held about 30 MiB of finished tasks until its
/// next request.)
pub(crate) struct Serving {
    slots: Arc<Semaphore>,
    in_flight: TaskTracker,
    /// The unit running on the loop's task, polled while the loop waits ([`meanwhile`]
    /// (Self::meanwhile)). Only ever reached through `&mut self`, so never locked: the mutex
    /// is what makes a future that is `Send` but not `Sync` shareable.
    inline: Mutex<Option<InlineUnit>>,
    /// Units that ran to their end, for the stop's report.
    finished: Arc<AtomicUsize>,
    /// Cancelled to drop the units still running at the stop's deadline.
    abandon: CancellationToken,
    stop: CancellationToken,
    /// Cancelled by the loop when in-flight work is done, or by [`Running::stop`] to cut the
    /// drain short.
    drained: CancellationToken,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("free_slots", &self.slots.available_permits())
            .field("in_flight", &self.in_flight.len())
            .field(
                "in_flight_on_loop",
                &self.inline.lock().is_ok_and(|u| u.is_some()),
            )
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// One unit of work as its task runs it: the work, ended early when the stop abandons it.
    ///
    /// A struct rather than an `async` block around a `select!`: such a block keeps the work it
    /// captured and the copy it polls side by side, twice the work's size for every request in
    /// flight (a server holding 10 000 calls spent 7 KiB on each where 3.5 would do).
    struct Unit<W> {
        #[pin]
        abandoned: WaitForCancellationFutureOwned,
        #[pin]
        work: W,
        finished: Arc<AtomicUsize>,
    }
}

impl<W: Future<Output = ()>> Future for Unit<W> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let unit = self.project();
        if unit.abandoned.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let done = unit.work.poll(cx);
        if done.is_ready() {
            unit.finished.fetch_add(1, Ordering::Relaxed);
        }
        done
    }
}

impl Serving {
    /// A core allowing `limit` units of work at once.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit.max(1))),
            in_flight: TaskTracker::new(),
            inline: Mutex::new(None),
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

    /// Whether a stop was asked for.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Marks the loop as stopping (it ended on its own, e.g. its inbox closed).
    pub(crate) fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Waits for a free slot; `None` once a stop was asked for. The wait borrows nothing, so
    /// that the unit on the loop's task can go on meanwhile: `serving.meanwhile(serving.slot())`.
    pub(crate) fn slot(&self) -> impl Future<Output = Option<OwnedSemaphorePermit>> + 'static {
        let (stop, slots) = (self.stop.clone(), self.slots.clone());
        async move {
            tokio::select! {
                () = stop.cancelled() => None,
                slot = slots.acquire_owned() => slot.ok(),
            }
        }
    }

    /// Resolves with the next item of `next` (a delivery), or `None` once a stop was asked
    /// for; borrows nothing of the core, like [`slot`](Self::slot).
    pub(crate) fn unless_stopping<T>(
        &self,
        next: impl Future<Output = T>,
    ) -> impl Future<Output = Option<T>> {
        let stop = self.stop.clone();
        async move {
            tokio::select! {
                () = stop.cancelled() => None,
                item = next => Some(item),
            }
        }
    }

    /// Waits for `wait` while the unit on the loop's task, if any, goes on.
    pub(crate) async fn meanwhile<T>(&mut self, wait: impl Future<Output = T>) -> T {
        tokio::pin!(wait);
        loop {
            let inline = self.inline_unit();
            let Some(unit) = inline.as_mut() else {
                return wait.await;
            };
            tokio::select! {
                biased;
                () = unit => *inline = None,
                out = &mut wait => return out,
            }
        }
    }

    /// Waits for a free slot even while stopping (for the last partial batch); borrows
    /// nothing of the core, like [`slot`](Self::slot).
    pub(crate) fn slot_while_stopping(
        &self,
    ) -> impl Future<Output = Option<OwnedSemaphorePermit>> + 'static {
        let slots = self.slots.clone();
        async move { slots.acquire_owned().await.ok() }
    }

    /// Runs `work`, a unit of `bytes` bytes of messages, as one unit in flight: on the loop's
    /// task when no other unit runs there and it is small, else on a task of its own; it owns
    /// its slot and releases it when it is done.
    ///
    /// A large unit always gets a task: decoding it costs far more than the task, and decoded
    /// on the loop's task a stream of them would be decoded one at a time, while the prefetch
    /// fills the process with more waiting their turn (a server fed 1 MiB bodies of junk went
    /// from under 200 MiB to 258).
    pub(crate) fn start(&mut self, bytes: usize, work: impl Future<Output = ()> + Send + 'static) {
        let unit = self.in_flight.track_future(self.unit(work));
        let inline = self.inline_unit();
        if inline.is_none() && bytes <= INLINE_BYTES {
            // A panic in it must not end the loop: it ends the unit, as it would a task.
            *inline = Some(Box::pin(async move {
                if AssertUnwindSafe(unit).catch_unwind().await.is_err() {
                    tracing::error!("a unit of work panicked; the loop goes on");
                }
            }));
        } else {
            tokio::spawn(unit);
        }
    }

    /// `work`, counted when it finishes and dropped when the stop abandons it.
    fn unit<W: Future<Output = ()>>(&self, work: W) -> Unit<W> {
        Unit {
            abandoned: self.abandon.clone().cancelled_owned(),
            work,
            finished: self.finished.clone(),
        }
    }

    /// Moves the unit on the loop's task, if any, to a task of its own: the loop is about to
    /// wait on other things (closing its inbox, the drain).
    pub(crate) fn detach(&mut self) {
        if let Some(unit) = self.inline_unit().take() {
            tokio::spawn(unit);
        }
    }

    fn inline_unit(&mut self) -> &mut Option<InlineUnit> {
        self.inline.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the work in flight until it is done or the stop's deadline cuts it off.
    pub(crate) async fn drain(mut self) -> StopReport {
        self.detach();
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
            serving.start(0, async move { drop(slot) });
        }
        // Nothing more arrives (a burst, then quiet): the finished units must not stay held.
        let in_flight = serving.in_flight.clone();
        let let_go = serving
            .meanwhile(tokio::time::timeout(Duration::from_secs(10), async {
                while !in_flight.is_empty() {
                    tokio::task::yield_now().await;
                }
            }))
            .await;
        assert!(
            let_go.is_ok(),
            "{} units still held",
            serving.in_flight.len()
        );
    }

    #[tokio::test]
    async fn a_unit_beside_the_one_on_the_loop_runs_without_waiting_for_it() {
        let mut serving = Serving::new(8);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (first_done, mut first_finished) = tokio::sync::oneshot::channel();
        serving.start(0, async move {
            let _ = released.await;
            let _ = first_done.send(());
        });
        let (second_done, second_finished) = tokio::sync::oneshot::channel();
        serving.start(0, async move {
            let _ = second_done.send(());
        });
        // The second finishes on its own task while the first still waits on the loop's.
        let second = tokio::time::timeout(Duration::from_secs(10), second_finished).await;
        assert!(second.is_ok(), "the second unit waited for the first");
        assert!(first_finished.try_recv().is_err());
        let _ = release.send(());
        // The first goes on only while the loop waits with `meanwhile`.
        let first = serving
            .meanwhile(tokio::time::timeout(
                Duration::from_secs(10),
                first_finished,
            ))
            .await;
        assert!(first.is_ok(), "the unit on the loop's task never finished");
        assert_eq!(
            serving.drain().await.finished,
            0,
            "both finished before the drain"
        );
    }

    #[tokio::test]
    async fn a_large_unit_gets_a_task_even_alone() {
        let mut serving = Serving::new(2);
        let (done, finished) = tokio::sync::oneshot::channel();
        serving.start(INLINE_BYTES + 1, async move {
            let _ = done.send(());
        });
        // Not polled by the loop (no `meanwhile`): it runs on a task of its own.
        let ran = tokio::time::timeout(Duration::from_secs(10), finished).await;
        assert!(ran.is_ok(), "a large unit waited for the loop");
    }

    #[tokio::test]
    async fn a_panic_on_the_loops_task_ends_its_unit_not_the_loop() {
        let mut serving = Serving::new(2);
        serving.start(0, async { panic!("a handler's bug") });
        // The loop waits on: the panic is caught inside `meanwhile`.
        let waited = serving.meanwhile(async { 7 }).await;
        assert_eq!(waited, 7);
        let (done, finished) = tokio::sync::oneshot::channel();
        serving.start(0, async move {
            let _ = done.send(());
        });
        let next = serving
            .meanwhile(tokio::time::timeout(Duration::from_secs(10), finished))
            .await;
        assert!(next.is_ok(), "the loop took no work after the panic");
        assert!(serving.in_flight.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_waits_for_the_unit_on_the_loops_task() {
        let serving = Serving::new(2);
        let running = serving.run(|mut serving| async move {
            serving.start(0, async {
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
            serving.unless_stopping(std::future::pending::<()>()).await;
            serving.drain().await
        });
        let report = running.stop(Duration::from_secs(1)).await;
        assert_eq!(
            report,
            StopReport {
                finished: 1,
                ..StopReport::default()
            }
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
                serving.start(0, async move {
                    tokio::time::sleep(pause).await;
                    drop(slot);
                });
            }
            serving.unless_stopping(std::future::pending::<()>()).await;
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
