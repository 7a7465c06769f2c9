//! The dependency [`Engine`]: it owns the installed manifolds and applies the rules that start,
//! stop and restart their workers as inputs come and go.
//!
//! All decisions happen in one place, under one lock, in the transition functions of
//! [`State`]: `install`, `started`, `stopped`, `kill`. Those functions never await and never
//! run a worker's code; they spawn a runner task per start (see `runner.rs`) and cancel its
//! token to stop it. The runner reports back through [`Shared::started`] and
//! [`Shared::stopped`]. That is the whole event flow: no polling, no timers here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::jitter_sample;
use super::config::{ConfigError, EngineConfig};
use super::getter::{Exposure, Getter};
use super::manifold::{Manifold, Running};
use super::report::{rfc3339, EngineReport, EngineState, ManifoldReport, ManifoldState};
use super::runner::{Ended, RawOutcome, Runner};
use super::worker::{Worker, WorkerError};

/// Why [`Engine::install`] refused a manifold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The engine was killed or hit a fatal error.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// A manifold of that name is installed.
    #[error("{name:?} manifold already installed")]
    AlreadyInstalled {
        /// The name asked for.
        name: String,
    },
    /// The manifold's inputs lead back to it.
    #[error("cannot install {name:?} manifold: cycle detected: {}", cycle.join(" -> "))]
    Cycle {
        /// The name asked for.
        name: String,
        /// The cycle, starting and ending at `name`.
        cycle: Vec<String>,
    },
}

/// Runs workers declared by manifolds, restarting them by their dependencies.
///
/// Rules, in short (the architecture document has the long form):
/// - a manifold starts at once when installed; its start sees only its declared inputs that
///   were running when the start was asked for;
/// - when a worker starts or stops, every dependent is stopped and started again (a start that
///   failed does not disturb dependents);
/// - a worker that ends cleanly or with [`WorkerError::Missing`] waits for an input to change;
///   [`WorkerError::Bounce`] restarts after the bounce delay; [`WorkerError::Uninstall`]
///   removes the manifold; other errors restart after the error delay, grown per recent failure
///   by the backoff factor, capped and jittered;
/// - a fatal error stops everything, and [`Engine::wait`] returns the worst one.
///
/// Cheap to clone: clones are handles to one engine. Dropping every handle does not stop the
/// workers; call [`Engine::kill`].
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// What the handles and the runner tasks share.
pub(crate) struct Shared {
    config: EngineConfig,
    runtime: Handle,
    state: Mutex<State>,
    /// `Some` once every worker has stopped after the engine started dying: the worst fatal
    /// error, before the engine filter.
    done: watch::Sender<Option<Option<WorkerError>>>,
}

/// A running worker and its manifold's name, for gathering reports outside the lock.
type NamedWorker = (String, Arc<dyn Worker>);

struct State {
    dying: bool,
    finished: bool,
    slots: BTreeMap<String, Slot>,
    /// Who depends on whom. Entries outlive the manifold they are keyed by, so a dependent
    /// installed before its input is bounced when the input finally starts.
    dependents: HashMap<String, BTreeSet<String>>,
    worst: Option<WorkerError>,
    next_run: u64,
}

struct Slot {
    manifold: Manifold,
    /// Identifies the runner task that currently owns this slot; reports from any other are
    /// stale.
    run: u64,
    starting: bool,
    stopping: bool,
    abort: Option<CancellationToken>,
    worker: Option<Running>,
    started_at: Option<Instant>,
    last_start: Option<SystemTime>,
    start_count: u64,
    recent_failures: u32,
    last_error: Option<WorkerError>,
}

impl Slot {
    fn new(manifold: Manifold) -> Self {
        Self {
            manifold,
            run: 0,
            starting: false,
            stopping: false,
            abort: None,
            worker: None,
            started_at: None,
            last_start: None,
            start_count: 0,
            recent_failures: 0,
            last_error: None,
        }
    }

    fn is_stopped(&self) -> bool {
        !self.starting && self.worker.is_none()
    }

    fn state(&self) -> ManifoldState {
        if self.starting {
            ManifoldState::Starting
        } else if self.stopping {
            ManifoldState::Stopping
        } else if self.worker.is_some() {
            ManifoldState::Started
        } else {
            ManifoldState::Stopped
        }
    }
}

impl Engine {
    /// An engine with no manifolds, ready for [`Engine::install`].
    ///
    /// Must be called inside a Tokio runtime: workers are spawned on it.
    pub fn new(config: EngineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let runtime = Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let (done, _) = watch::channel(None);
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                runtime,
                state: Mutex::new(State {
                    dying: false,
                    finished: false,
                    slots: BTreeMap::new(),
                    dependents: HashMap::new(),
                    worst: None,
                    next_run: 1,
                }),
                done,
            }),
        })
    }

    /// Installs `manifold` under `name` and starts it at once.
    ///
    /// Refused if the name is taken, if the manifold's inputs would form a cycle, or once the
    /// engine is shutting down. Inputs that are not installed yet are allowed: the start sees
    /// them as not running, and the manifold is started again when they start.
    pub fn install(&self, name: impl Into<String>, manifold: Manifold) -> Result<(), InstallError> {
        let name = name.into();
        let mut state = self.shared.lock();
        if state.dying {
            return Err(InstallError::ShuttingDown);
        }
        if state.slots.contains_key(&name) {
            return Err(InstallError::AlreadyInstalled { name });
        }
        if let Some(cycle) = state.find_cycle(&name, manifold.inputs()) {
            return Err(InstallError::Cycle { name, cycle });
        }
        for input in manifold.inputs() {
            state
                .dependents
                .entry(input.clone())
                .or_default()
                .insert(name.clone());
        }
        state.slots.insert(name.clone(), Slot::new(manifold));
        state.request_start(&self.shared, &name, Duration::ZERO);
        Ok(())
    }

    /// Asks every worker to stop and refuses further installs. Returns at once; use
    /// [`Engine::wait`] to know when everything has stopped. Idempotent.
    pub fn kill(&self) {
        let mut state = self.shared.lock();
        state.begin_dying(&self.shared);
    }

    /// Resolves once the engine has stopped (after [`Engine::kill`] or a fatal error) and every
    /// worker has ended: `Ok` after a plain kill, or the worst fatal error through the
    /// configured filter.
    ///
    /// Cancellation safe, and may be awaited from several tasks.
    pub async fn wait(&self) -> Result<(), WorkerError> {
        let mut done = self.shared.done.subscribe();
        let worst = match done.wait_for(Option::is_some).await {
            Ok(finished) => (*finished).clone().flatten(),
            // The sender lives in `Shared`, which `self` keeps alive.
            Err(_) => None,
        };
        match (worst, &self.shared.config.filter) {
            (None, _) => Ok(()),
            (Some(error), None) => Err(error),
            (Some(error), Some(filter)) => Err(filter(error)),
        }
    }

    /// A snapshot of the engine and every manifold. Works at any time, also after the engine
    /// stopped. Workers' own reports are gathered outside the engine's lock.
    pub fn report(&self) -> EngineReport {
        let (mut report, workers) = {
            let state = self.shared.lock();
            state.report()
        };
        for (name, worker) in workers {
            if let Some(manifold) = report.manifolds.get_mut(&name) {
                manifold.report = worker.report();
                manifold.problem = worker.health().err();
            }
        }
        report
    }
}

impl Worker for Engine {
    fn kill(&self) {
        Engine::kill(self);
    }

    fn wait(&self) -> BoxFuture<'_, Result<(), WorkerError>> {
        Box::pin(Engine::wait(self))
    }

    fn report(&self) -> Option<Value> {
        serde_json::to_value(Engine::report(self)).ok()
    }

    fn health(&self) -> Result<(), String> {
        Engine::report(self)
            .health()
            .map_err(|unhealthy| unhealthy.join("; "))
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: formatting must never wait for (or deadlock on) the engine's lock.
        let Ok(state) = self.shared.state.try_lock() else {
            return f.debug_struct("Engine").finish_non_exhaustive();
        };
        f.debug_struct("Engine")
            .field("dying", &state.dying)
            .field("finished", &state.finished)
            .field("manifolds", &state.slots.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State stays consistent across a panic elsewhere: every transition is applied by
        // functions that do not call user code, except the worst-error ordering.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A runner's start returned a worker. Returns false when the engine no longer wants it
    /// (the runner then kills it, as its token is already cancelled).
    pub(crate) fn started(self: &Arc<Self>, name: &str, run: u64, running: Running) -> bool {
        let mut state = self.lock();
        let dying = state.dying;
        let Some(slot) = state.slots.get_mut(name).filter(|slot| slot.run == run) else {
            return false;
        };
        if slot.stopping || dying {
            tracing::debug!(
                manifold = name,
                "discarding a worker started while stopping"
            );
            return false;
        }
        slot.worker = Some(running);
        slot.starting = false;
        slot.start_count += 1;
        slot.started_at = Some(Instant::now());
        slot.last_start = Some(SystemTime::now());
        slot.last_error = None;
        tracing::info!(
            manifold = name,
            start_count = slot.start_count,
            "worker started"
        );
        state.bounce_dependents(self, name);
        true
    }

    /// A runner finished: its start failed or was abandoned, or its worker ended.
    pub(crate) fn stopped(self: &Arc<Self>, name: &str, run: u64, ended: Ended) {
        let mut state = self.lock();
        state.stopped(self, name, run, ended);
    }
}

impl State {
    /// Starts `name` after `base` grown by its recent failures (no delay, no jitter for zero).
    fn request_start(&mut self, shared: &Arc<Shared>, name: &str, base: Duration) {
        if self.dying {
            return;
        }
        let Some(slot) = self.slots.get(name) else {
            return;
        };
        let getter = Getter::new(
            name,
            slot.manifold.inputs().iter().map(|input| {
                let exposure = self.slots.get(input).and_then(|input_slot| {
                    input_slot.worker.as_ref().map(|running| Exposure {
                        worker: running.any.clone(),
                        output: input_slot.manifold.output_fn(),
                    })
                });
                (input.clone(), exposure)
            }),
        );
        let run = self.next_run;
        self.next_run += 1;
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let delay = shared
            .config
            .backoff()
            .delay(base, slot.recent_failures, jitter_sample());
        let abort = CancellationToken::new();
        slot.run = run;
        slot.starting = true;
        slot.abort = Some(abort.clone());
        let runner = Runner {
            shared: shared.clone(),
            name: Arc::from(name),
            run,
            abort,
            getter,
            start: slot.manifold.start_fn(),
            filter: slot.manifold.filter_fn(),
            delay,
        };
        tracing::debug!(manifold = name, ?delay, "start requested");
        shared.runtime.spawn(runner.run());
    }

    /// Asks `name` to stop: abandons a pending start or kills its worker. When the runner
    /// reports the stop, the manifold is started again (unless the engine is dying).
    fn request_stop(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.stopping || slot.is_stopped() {
            return;
        }
        slot.stopping = true;
        if let Some(abort) = &slot.abort {
            abort.cancel();
        }
    }

    /// Restarts everything that depends on `name`: stopped dependents start, running or
    /// starting ones are stopped (and so restarted).
    fn bounce_dependents(&mut self, shared: &Arc<Shared>, name: &str) {
        let dependents: Vec<String> = self
            .dependents
            .get(name)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        let bounce_delay = shared.config.bounce_delay;
        for dependent in dependents {
            match self.slots.get(&dependent) {
                None => {}
                Some(slot) if slot.is_stopped() => {
                    self.request_start(shared, &dependent, bounce_delay);
                }
                Some(_) => self.request_stop(&dependent),
            }
        }
    }

    fn stopped(&mut self, shared: &Arc<Shared>, name: &str, run: u64, ended: Ended) {
        let config = &shared.config;
        let Some(slot) = self.slots.get_mut(name).filter(|slot| slot.run == run) else {
            tracing::error!(manifold = name, run, "stale stop report ignored");
            return;
        };
        // Count failures on the raw outcome: a filter changes what happens next, not how
        // quickly a crashing worker is retried.
        slot.recent_failures = match ended.raw {
            RawOutcome::Clean => 0,
            RawOutcome::Aborted | RawOutcome::Missing => 1,
            RawOutcome::Failed => match slot.started_at {
                Some(started) if started.elapsed() >= config.backoff_reset => 1,
                _ => slot.recent_failures.saturating_add(1),
            },
        };
        let had_worker = slot.worker.take().is_some();
        let was_stopping = slot.stopping;
        slot.started_at = None;
        slot.starting = false;
        slot.stopping = false;
        slot.abort = None;
        slot.last_error = ended.result.clone().err();

        if let (Err(error), true) = (&ended.result, ended.fatal) {
            tracing::error!(manifold = name, %error, "fatal error: stopping the engine");
            let worse = match &self.worst {
                None => true,
                Some(worst) => (config.worst_error)(error, worst).is_gt(),
            };
            if worse {
                self.worst = Some(error.clone());
            }
            self.begin_dying(shared);
        }
        if self.dying {
            self.stop_unneeded();
            self.finish_if_idle(shared);
            return;
        }

        if was_stopping {
            self.request_start(shared, name, config.bounce_delay);
        } else {
            match &ended.result {
                Ok(()) | Err(WorkerError::Aborted | WorkerError::Missing(_)) => {
                    tracing::debug!(manifold = name, "waiting for an input to change");
                }
                Err(WorkerError::Bounce) => {
                    self.request_start(shared, name, config.bounce_delay);
                }
                Err(WorkerError::Uninstall) => self.uninstall(name),
                Err(error) => {
                    tracing::warn!(manifold = name, %error, "worker failed; restarting");
                    self.request_start(shared, name, config.error_delay);
                }
            }
        }
        if had_worker {
            self.bounce_dependents(shared, name);
        }
    }

    fn uninstall(&mut self, name: &str) {
        let Some(slot) = self.slots.remove(name) else {
            return;
        };
        tracing::info!(manifold = name, "uninstalled");
        for input in slot.manifold.inputs() {
            if let Some(dependents) = self.dependents.get_mut(input) {
                dependents.remove(name);
            }
        }
    }

    fn begin_dying(&mut self, shared: &Arc<Shared>) {
        if self.dying {
            return;
        }
        self.dying = true;
        self.stop_unneeded();
        self.finish_if_idle(shared);
    }

    /// While dying: stops every worker that no live worker depends on. An input outlives its
    /// dependents, so that a worker stopping cleanly can still use what it was given (an
    /// evaluator announces its leaving on the transport its input holds open).
    fn stop_unneeded(&mut self) {
        let unneeded: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !self.has_live_dependent(name))
            .cloned()
            .collect();
        for name in unneeded {
            self.request_stop(&name);
        }
    }

    /// Whether a worker that depends on `name` is running or starting.
    fn has_live_dependent(&self, name: &str) -> bool {
        self.dependents.get(name).is_some_and(|dependents| {
            dependents
                .iter()
                .any(|dependent| self.slots.get(dependent).is_some_and(|s| !s.is_stopped()))
        })
    }

    fn finish_if_idle(&mut self, shared: &Shared) {
        if self.dying && !self.finished && self.slots.values().all(Slot::is_stopped) {
            self.finished = true;
            tracing::info!(error = ?self.worst, "engine stopped");
            shared.done.send_replace(Some(self.worst.clone()));
        }
    }

    /// The cycle `name -> … -> name` that installing `name` with `inputs` would close, if any.
    fn find_cycle(&self, name: &str, inputs: &[String]) -> Option<Vec<String>> {
        let mut visited = BTreeSet::new();
        let mut path = vec![name.to_owned()];
        for input in inputs {
            if self.reaches(input, name, &mut visited, &mut path) {
                return Some(path);
            }
        }
        None
    }

    /// Depth-first: does `from` lead to `target` through installed inputs? On success `path`
    /// holds the way there.
    fn reaches(
        &self,
        from: &str,
        target: &str,
        visited: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> bool {
        path.push(from.to_owned());
        if from == target {
            return true;
        }
        if visited.insert(from.to_owned()) {
            if let Some(slot) = self.slots.get(from) {
                for input in slot.manifold.inputs() {
                    if self.reaches(input, target, visited, path) {
                        return true;
                    }
                }
            }
        }
        path.pop();
        false
    }

    fn report(&self) -> (EngineReport, Vec<NamedWorker>) {
        let state = match (self.dying, self.finished) {
            (false, _) => EngineState::Started,
            (true, false) => EngineState::Stopping,
            (true, true) => EngineState::Stopped,
        };
        let mut workers = Vec::new();
        let manifolds = self
            .slots
            .iter()
            .map(|(name, slot)| {
                if let Some(running) = &slot.worker {
                    workers.push((name.clone(), running.worker.clone()));
                }
                let report = ManifoldReport {
                    state: slot.state(),
                    inputs: slot.manifold.inputs().to_vec(),
                    start_count: slot.start_count,
                    last_start: slot.last_start.map(rfc3339),
                    error: slot.last_error.as_ref().map(ToString::to_string),
                    problem: None,
                    report: None,
                };
                (name.clone(), report)
            })
            .collect();
        let report = EngineReport {
            state,
            error: self.worst.as_ref().map(ToString::to_string),
            manifolds,
        };
        (report, workers)
    }
}
