//! What a worker is: something running that can be asked to stop and whose end can be awaited
//! ([`Worker`]), the errors a worker or a start ends with ([`WorkerError`]), and the usual way to
//! make one from an async function ([`TaskWorker`]).
//!
//! This module knows nothing of manifolds or engines; it must not depend on them.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A boxed error shared between the report, the engine's result and every waiter.
type SharedError = Arc<dyn StdError + Send + Sync>;

/// How a worker or a start ended, when it did not end cleanly.
///
/// The first three variants are instructions to the engine rather than failures: they say what
/// should happen next. Everything else is a failure, restarted with backoff unless the engine's
/// fatal predicate says it must stop the engine.
///
/// Cheap to clone: the report, the engine's result and every waiter share one error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkerError {
    /// An input the worker needs is not available. The engine does not retry until one of the
    /// manifold's inputs starts or stops. `?` on a [`GetError`](super::GetError) that says
    /// "not declared", "not running" or "not exposed" gives this.
    #[error("{0}: dependency not available")]
    Missing(String),
    /// Restart me soon: after the engine's bounce delay, not its error delay.
    #[error("restart requested")]
    Bounce,
    /// The resource is gone for good: the engine removes the manifold; its name may be
    /// installed again later.
    #[error("resource permanently unavailable")]
    Uninstall,
    /// The engine gave up on a start (an input changed, or the engine is stopping) before the
    /// start finished. Produced by the engine; a start may also return it when it notices that
    /// its [`StartContext`](super::StartContext) was cancelled.
    #[error("start aborted")]
    Aborted,
    /// The worker's task panicked; the payload's message if it had one.
    #[error("worker panicked: {0}")]
    Panicked(String),
    /// A failure that should stop the whole engine (with the default fatal predicate).
    #[error("fatal: {0}")]
    Fatal(SharedError),
    /// Any other failure: restarted after the error delay, with backoff.
    #[error(transparent)]
    Failed(SharedError),
}

impl WorkerError {
    /// A failure to be restarted with backoff. Accepts any error, or a message (`&str`,
    /// `String`).
    pub fn failed(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Failed(Arc::from(error.into()))
    }

    /// A failure that stops the engine under the default fatal predicate.
    pub fn fatal(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Fatal(Arc::from(error.into()))
    }

    /// An unavailable input, with the reason (`"flag \"leader\" not set"`).
    pub fn missing(reason: impl Into<String>) -> Self {
        Self::Missing(reason.into())
    }

    /// True for [`WorkerError::Missing`].
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing(_))
    }

    /// The underlying error of a `Failed` or `Fatal`, if it is an `E`: how filters and fatal
    /// predicates recognise domain errors.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Self::Failed(error) | Self::Fatal(error) => error.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// A running unit of work that the engine can stop and wait for.
///
/// `kill` asks; `wait` observes. Both take `&self` so that one task can wait while another asks
/// the worker to stop. Most workers are [`TaskWorker`]s; implement the trait directly for a
/// type that already owns its tasks (a server with a graceful `stop`, a nested
/// [`Engine`](super::Engine)).
pub trait Worker: Send + Sync + 'static {
    /// Asks the worker to stop. Returns at once, never blocks, and may be called more than once.
    fn kill(&self);

    /// Resolves when the worker has ended, with how it ended.
    ///
    /// May be called more than once and from several tasks; each call resolves with the same
    /// outcome. Implementations must be cancellation safe: dropping the future must not lose
    /// the outcome.
    fn wait(&self) -> BoxFuture<'_, Result<(), WorkerError>>;

    /// What the worker wants shown under `"report"` in the engine's report. Must be cheap and
    /// must not block: it is called while a report is being assembled.
    fn report(&self) -> Option<Value> {
        None
    }

    /// What keeps the worker from doing its job while it runs, if anything: a database it
    /// cannot reach, a connection being re-established. Shown in the engine's report and by
    /// health checks (see `admin`); the worker keeps running and recovers by itself. Must not
    /// block: say what was last seen.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

type ReportFn = Arc<dyn Fn() -> Value + Send + Sync>;
type HealthFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A worker made of one spawned task.
///
/// The task gets a [`CancellationToken`] that is cancelled when the worker is killed, and ends
/// by returning. A panic in the task becomes [`WorkerError::Panicked`]. Dropping the last
/// handle kills the task too, so a start that is abandoned half way leaves nothing running.
///
/// `R` is an optional resource the worker carries for its dependents: a manifold's output
/// reads it with [`TaskWorker::resource`].
pub struct TaskWorker<R = ()> {
    stop: CancellationToken,
    outcome: watch::Receiver<Option<Result<(), WorkerError>>>,
    reporter: Option<ReportFn>,
    health: Option<HealthFn>,
    resource: R,
    _kill_on_drop: DropGuard,
}

impl TaskWorker {
    /// Spawns `work` on the current Tokio runtime as a worker.
    ///
    /// `work` gets the worker's stop token; it should return soon after the token is cancelled,
    /// having finished or handed back what it was doing. Its result is the worker's result.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn spawn<F, Fut>(work: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), WorkerError>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let (done, outcome) = watch::channel(None);
        let task = AssertUnwindSafe(work(stop.clone())).catch_unwind();
        tokio::spawn(async move {
            let result = task
                .await
                .unwrap_or_else(|payload| Err(WorkerError::Panicked(panic_message(&*payload))));
            done.send_replace(Some(result));
        });
        Self {
            _kill_on_drop: stop.clone().drop_guard(),
            stop,
            outcome,
            reporter: None,
            health: None,
            resource: (),
        }
    }
}

impl<R> TaskWorker<R> {
    /// Attaches a resource for dependents to get through the manifold's output.
    pub fn with_resource<S>(self, resource: S) -> TaskWorker<S> {
        TaskWorker {
            stop: self.stop,
            outcome: self.outcome,
            reporter: self.reporter,
            health: self.health,
            resource,
            _kill_on_drop: self._kill_on_drop,
        }
    }

    /// Attaches a report: `report` is called each time the engine's report is assembled.
    pub fn with_report(mut self, report: impl Fn() -> Value + Send + Sync + 'static) -> Self {
        self.reporter = Some(Arc::new(report));
        self
    }

    /// Says what keeps the worker from its job (see [`Worker::health`]) with `health`.
    #[must_use]
    pub fn with_health(
        mut self,
        health: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.health = Some(Arc::new(health));
        self
    }

    /// The resource given with [`TaskWorker::with_resource`].
    pub fn resource(&self) -> &R {
        &self.resource
    }

    /// The token the task was given; cancelled once the worker is killed.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }
}

impl<R: Send + Sync + 'static> Worker for TaskWorker<R> {
    fn kill(&self) {
        self.stop.cancel();
    }

    fn wait(&self) -> BoxFuture<'_, Result<(), WorkerError>> {
        let mut outcome = self.outcome.clone();
        Box::pin(async move {
            match outcome.wait_for(Option::is_some).await {
                // `wait_for` returned because the value is `Some`.
                Ok(done) => (*done).clone().unwrap_or(Ok(())),
                // The sender lives in the task until it has sent; it is gone without a value
                // only when the runtime dropped the task (runtime shutdown).
                Err(_) => Err(WorkerError::failed(
                    "worker task was dropped before it finished (runtime shutting down)",
                )),
            }
        })
    }

    fn report(&self) -> Option<Value> {
        self.reporter.as_ref().map(|report| report())
    }

    fn health(&self) -> Result<(), String> {
        self.health.as_ref().map_or(Ok(()), |health| health())
    }
}

impl<R: fmt::Debug> fmt::Debug for TaskWorker<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskWorker")
            .field("killed", &self.stop.is_cancelled())
            .field("finished", &self.outcome.borrow().is_some())
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// The message of a panic payload, when it is a string.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn killing_a_task_worker_cancels_its_token_and_wait_sees_the_result() {
        let worker = TaskWorker::spawn(|stop| async move {
            stop.cancelled().await;
            Err(WorkerError::Bounce)
        });
        worker.kill();
        assert!(matches!(worker.wait().await, Err(WorkerError::Bounce)));
        // A second wait sees the same outcome.
        assert!(matches!(worker.wait().await, Err(WorkerError::Bounce)));
    }

    #[tokio::test]
    async fn a_panicking_task_ends_with_panicked() {
        let worker = TaskWorker::spawn(|_| async { panic!("boom") });
        match worker.wait().await {
            Err(WorkerError::Panicked(message)) => assert_eq!(message, "boom"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn dropping_the_handle_kills_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let worker = TaskWorker::spawn(|stop| async move {
            stop.cancelled().await;
            let _ = tx.send(());
            Ok(())
        });
        drop(worker);
        rx.await.unwrap();
    }

    #[test]
    fn downcast_finds_the_domain_error() {
        #[derive(Debug, thiserror::Error)]
        #[error("disk full")]
        struct DiskFull;
        let error = WorkerError::failed(DiskFull);
        assert!(error.downcast_ref::<DiskFull>().is_some());
        assert_eq!(error.to_string(), "disk full");
        assert!(WorkerError::Bounce.downcast_ref::<DiskFull>().is_none());
    }
}
