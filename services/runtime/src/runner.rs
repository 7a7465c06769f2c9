//! One start of one manifold, as a task: wait out the restart delay, call the start with its
//! getter, hand the worker to the engine, then wait for the worker to end — killing it when the
//! engine cancels the run — and report how it ended.
//!
//! The runner owns the only await points of the engine; it decides nothing. Every decision is
//! the engine's, made when the runner reports back.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::engine::Shared;
use super::getter::Getter;
use super::manifold::{FilterFn, StartContext, StartFn};
use super::worker::{panic_message, WorkerError};

/// How a run ended before the manifold's filter: what the failure count is based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawOutcome {
    Clean,
    Aborted,
    Missing,
    Failed,
}

/// A finished run as the engine reads it.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) raw: RawOutcome,
    /// After the manifold's filter.
    pub(crate) result: Result<(), WorkerError>,
    /// Whether the engine's fatal predicate holds for `result`.
    pub(crate) fatal: bool,
}

pub(crate) struct Runner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: Arc<str>,
    pub(crate) run: u64,
    pub(crate) abort: CancellationToken,
    pub(crate) getter: Getter,
    pub(crate) start: StartFn,
    pub(crate) filter: Option<FilterFn>,
    pub(crate) delay: Duration,
}

impl Runner {
    pub(crate) async fn run(self) {
        // The engine must hear about every run, so a panic in user code (a start, a worker's
        // `wait`, a filter, the fatal predicate) becomes an outcome instead of a lost report.
        let result = AssertUnwindSafe(self.start_and_wait())
            .catch_unwind()
            .await
            .unwrap_or_else(|payload| Err(WorkerError::Panicked(panic_message(&*payload))));
        self.getter.expire();
        let ended = std::panic::catch_unwind(AssertUnwindSafe(|| self.read(result)))
            .unwrap_or_else(|payload| Ended {
                raw: RawOutcome::Failed,
                result: Err(WorkerError::Panicked(panic_message(&*payload))),
                fatal: false,
            });
        self.shared.stopped(&self.name, self.run, ended);
    }

    async fn start_and_wait(&self) -> Result<(), WorkerError> {
        if !self.delay.is_zero() {
            tokio::select! {
                biased;
                () = self.abort.cancelled() => return Err(WorkerError::Aborted),
                () = tokio::time::sleep(self.delay) => {}
            }
        }
        let context = StartContext::new(self.name.clone(), self.abort.clone());
        // Poll the start first, so that a start that notices the cancellation gets to return
        // its own result; one that does not is dropped.
        let started = tokio::select! {
            biased;
            started = (self.start)(context, self.getter.clone()) => started,
            () = self.abort.cancelled() => Err(WorkerError::Aborted),
        };
        self.getter.expire();
        let running = started?;
        if !self.shared.started(&self.name, self.run, running.clone()) {
            running.worker.kill();
        }
        let worker = running.worker;
        let wait = worker.wait();
        tokio::pin!(wait);
        tokio::select! {
            ended = &mut wait => return ended,
            () = self.abort.cancelled() => worker.kill(),
        }
        wait.await
    }

    /// Classifies the raw result, applies the manifold's filter and the fatal predicate.
    fn read(&self, result: Result<(), WorkerError>) -> Ended {
        let raw = match &result {
            Ok(()) => RawOutcome::Clean,
            Err(WorkerError::Aborted) => RawOutcome::Aborted,
            Err(WorkerError::Missing(_)) => RawOutcome::Missing,
            Err(_) => RawOutcome::Failed,
        };
        let result = match (result, &self.filter) {
            (Err(error), Some(filter)) => filter(error),
            (result, _) => result,
        };
        let fatal = match &result {
            Err(error) => (self.shared.config().is_fatal)(error),
            Ok(()) => false,
        };
        Ended { raw, result, fatal }
    }
}
