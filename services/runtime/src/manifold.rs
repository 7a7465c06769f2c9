//! A [`Manifold`] declares one worker for the engine: which other manifolds it may use
//! (inputs), how to start it, what it offers its dependents (output) and how its errors are
//! read (filter). [`StartContext`] is what a start is told besides its inputs.
//!
//! A manifold is data: it starts nothing by itself. Each agent declares its manifold next to its
//! code; the binary only assembles them into an engine.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::getter::{Getter, OutputFn};
use super::launcher::ConfigHandle;
use super::worker::{TaskWorker, Worker, WorkerError};

/// A started worker as the engine keeps it: once as a worker to stop and wait for, and once as
/// `Any` for its manifold's output to read. Both point at the same value.
#[derive(Clone)]
pub(crate) struct Running {
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) any: Arc<dyn Any + Send + Sync>,
}

pub(crate) type StartFn = Arc<
    dyn Fn(StartContext, Getter) -> BoxFuture<'static, Result<Running, WorkerError>> + Send + Sync,
>;

pub(crate) type FilterFn = Arc<dyn Fn(WorkerError) -> Result<(), WorkerError> + Send + Sync>;

/// What a start is told besides its inputs: which manifold it is, and whether the engine still
/// wants it.
///
/// The context is cancelled when the engine gives up on this start: one of the inputs started
/// or stopped (a fresh start will follow), or the engine is stopping. A start that awaits
/// something slow should race it with [`StartContext::cancelled`]; one that does not is dropped
/// at its next pending `.await` after the cancellation, so anything it created must clean up on
/// drop ([`TaskWorker`](super::TaskWorker) does).
#[derive(Clone)]
pub struct StartContext {
    name: Arc<str>,
    abort: CancellationToken,
}

impl StartContext {
    pub(crate) fn new(name: Arc<str>, abort: CancellationToken) -> Self {
        Self { name, abort }
    }

    /// The name the manifold was installed under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolves once the engine no longer wants this start. Cancellation safe.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.abort.cancelled()
    }

    /// True once the engine no longer wants this start.
    pub fn is_cancelled(&self) -> bool {
        self.abort.is_cancelled()
    }
}

impl fmt::Debug for StartContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartContext")
            .field("name", &self.name)
            .field("cancelled", &self.abort.is_cancelled())
            .finish()
    }
}

/// One worker's declaration: inputs, start, optional output and optional filter.
///
/// ```
/// use tidings_runtime::{Manifold, TaskWorker, WorkerError};
///
/// // A "clock" worker offering a number to its dependents…
/// let clock = Manifold::new(|_ctx, _getter| async {
///     Ok(TaskWorker::spawn(|stop| async move {
///         stop.cancelled().await;
///         Ok(())
///     })
///     .with_resource(42_u64))
/// })
/// .with_output(|worker: &TaskWorker<u64>| *worker.resource());
///
/// // …and one that needs it: without a running clock its start ends with `Missing`, and the
/// // engine starts it again when the clock starts.
/// let user = Manifold::new(|_ctx, getter| async move {
///     let tick: u64 = getter.get("clock")?;
///     Ok(TaskWorker::spawn(move |stop| async move {
///         stop.cancelled().await;
///         let _ = tick;
///         Ok::<(), WorkerError>(())
///     }))
/// })
/// .with_inputs(["clock"]);
/// # let _ = (clock, user);
/// ```
#[derive(Clone)]
pub struct Manifold {
    inputs: Vec<String>,
    start: StartFn,
    output: Option<OutputFn>,
    filter: Option<FilterFn>,
}

impl Manifold {
    /// A manifold without inputs, output or filter, started by `start`.
    ///
    /// `start` may be called many times over the engine's life, each time with a fresh
    /// [`Getter`]. It returns the worker once it runs; an error is read as described on
    /// [`WorkerError`].
    pub fn new<F, Fut, W>(start: F) -> Self
    where
        F: Fn(StartContext, Getter) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<W, WorkerError>> + Send + 'static,
        W: Worker,
    {
        let start: StartFn = Arc::new(move |ctx, getter| {
            let started = start(ctx, getter);
            Box::pin(async move {
                let worker = Arc::new(started.await?);
                Ok(Running {
                    worker: worker.clone(),
                    any: worker,
                })
            })
        });
        Self {
            inputs: Vec::new(),
            start,
            output: None,
            filter: None,
        }
    }

    /// A manifold whose settings are reloaded: each start builds the manifold with `build`
    /// from the configuration as of then, and a change of `config` stops the running worker
    /// with [`WorkerError::Bounce`], so that the engine starts it again (after its bounce
    /// delay) with the new settings, and its dependents with it, as Juju's workers restart
    /// on a change of the agent's configuration.
    ///
    /// Inputs, output and filter are those `build` gives for the configuration at the time of
    /// this call; they must not depend on the configuration.
    pub fn reloading<C, F>(config: ConfigHandle<C>, build: F) -> Self
    where
        C: Send + Sync + 'static,
        F: Fn(&C) -> Manifold + Send + Sync + 'static,
    {
        let first = build(&config.snapshot());
        let build = Arc::new(build);
        let start: StartFn = Arc::new(move |ctx, getter| {
            let mut changes = config.clone();
            // Marks the snapshot the worker starts with as seen, so that only later reloads
            // bounce it.
            let settings = changes.snapshot_and_mark_seen();
            let inner = (build(&settings).start)(ctx, getter);
            Box::pin(async move {
                let running = inner.await?;
                let worker: Arc<dyn Worker> = Arc::new(Reloading::spawn(running.worker, changes));
                Ok(Running {
                    worker,
                    any: running.any,
                })
            })
        });
        Self { start, ..first }
    }

    /// Declares the names of the manifolds this one may use. Only these are visible through the
    /// getter, and a start or stop of any of them restarts this one.
    pub fn with_inputs<I, S>(mut self, inputs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.inputs = inputs.into_iter().map(Into::into).collect();
        self
    }

    /// Declares what dependents get from a running worker of type `W` with
    /// [`Getter::get::<T>`](Getter::get). Called on every `get`, so `T` is usually a handle or
    /// an `Arc`.
    ///
    /// `W` must be the type the start returns; if it is not, dependents get
    /// [`GetError::OutputMismatch`](super::GetError::OutputMismatch).
    pub fn with_output<W, T, F>(mut self, output: F) -> Self
    where
        W: Worker,
        T: Send + 'static,
        F: Fn(&W) -> T + Send + Sync + 'static,
    {
        self.output = Some(Arc::new(move |worker: &(dyn Any + Send + Sync)| {
            worker
                .downcast_ref::<W>()
                .map(|worker| Box::new(output(worker)) as Box<dyn Any + Send>)
        }));
        self
    }

    /// Maps the errors of this manifold's starts and workers before the engine reads them
    /// (domain errors into [`WorkerError::Bounce`] or [`WorkerError::Uninstall`], say);
    /// `Ok(())` makes the engine treat the end as clean. The filtered error is what decides
    /// fatality and restarts, and what the report shows.
    pub fn with_filter<F>(mut self, filter: F) -> Self
    where
        F: Fn(WorkerError) -> Result<(), WorkerError> + Send + Sync + 'static,
    {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// The declared inputs.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    pub(crate) fn start_fn(&self) -> StartFn {
        self.start.clone()
    }

    pub(crate) fn output_fn(&self) -> Option<OutputFn> {
        self.output.clone()
    }

    pub(crate) fn filter_fn(&self) -> Option<FilterFn> {
        self.filter.clone()
    }
}

impl fmt::Debug for Manifold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifold")
            .field("inputs", &self.inputs)
            .field("output", &self.output.is_some())
            .field("filter", &self.filter.is_some())
            .finish_non_exhaustive()
    }
}

/// A worker that ends with [`WorkerError::Bounce`] when its configuration changes (see
/// [`Manifold::reloading`]): a task that watches both the worker and the configuration.
struct Reloading {
    inner: Arc<dyn Worker>,
    watcher: TaskWorker,
}

impl Reloading {
    fn spawn<C: Send + Sync + 'static>(
        inner: Arc<dyn Worker>,
        mut config: ConfigHandle<C>,
    ) -> Self {
        let watched = inner.clone();
        let watcher = TaskWorker::spawn(|stop| async move {
            tokio::select! {
                ended = watched.wait() => ended,
                changed = config.changed() => match changed {
                    // Reloaded: stop the worker and start again with the new settings.
                    Some(_) => {
                        tracing::info!("configuration changed: restarting with the new settings");
                        watched.kill();
                        watched.wait().await.and(Err(WorkerError::Bounce))
                    }
                    // No reload can come any more: run as long as the worker does.
                    None => watched.wait().await,
                },
                () = stop.cancelled() => {
                    watched.kill();
                    watched.wait().await
                }
            }
        });
        Self { inner, watcher }
    }
}

impl Worker for Reloading {
    fn kill(&self) {
        self.watcher.kill();
    }

    fn wait(&self) -> BoxFuture<'_, Result<(), WorkerError>> {
        self.watcher.wait()
    }

    fn report(&self) -> Option<serde_json::Value> {
        self.inner.report()
    }

    fn health(&self) -> Result<(), String> {
        self.inner.health()
    }
}
