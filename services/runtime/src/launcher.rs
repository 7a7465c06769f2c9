//! Running an [`Engine`] as a service: the [`Launcher`] turns process signals into engine
//! actions and owns the service's configuration.
//!
//! - SIGTERM or SIGINT: kill the engine (workers stop taking work), wait for in-flight work to
//!   drain up to a deadline, and end with exit code 0. A second stop signal, or the deadline,
//!   abandons the drain (exit code 1).
//! - SIGHUP: reload the configuration. Reloads never overlap: hang-ups that arrive while one
//!   runs are folded into a single further reload, which reads the newest configuration, and a
//!   burst of hang-ups within [`RELOAD_SETTLE`] makes one reload. Each
//!   reload publishes a new `Arc<C>`; a unit of work takes one [`ConfigHandle::snapshot`] and
//!   keeps it, so it sees one consistent configuration from start to end.
//!
//! Signals come in through a channel, so tests drive the launcher without real signals;
//! [`os_signals`] feeds that channel from the process's own.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::engine::Engine;
use super::report::ManifoldState;
use super::worker::WorkerError;

/// What a configuration load fails with.
pub type LoadError = Box<dyn StdError + Send + Sync>;

type LoadFn<C> = Arc<dyn Fn() -> BoxFuture<'static, Result<C, LoadError>> + Send + Sync>;

/// The process signals a launcher acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: stop, draining in-flight work.
    Terminate,
    /// SIGINT: as SIGTERM.
    Interrupt,
    /// SIGHUP: reload the configuration.
    Hangup,
}

/// Read access to the service's current configuration.
///
/// Cheap to clone; give one to every manifold that needs the configuration.
#[derive(Debug)]
pub struct ConfigHandle<C> {
    current: watch::Receiver<Arc<C>>,
}

// Not derived: a handle clones whatever `C` is.
impl<C> Clone for ConfigHandle<C> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl<C> ConfigHandle<C> {
    /// A handle on a configuration that never changes: for tests and for services without a
    /// launcher.
    pub fn fixed(config: C) -> Self {
        let (_, current) = watch::channel(Arc::new(config));
        Self { current }
    }

    /// The configuration as of now. Take it once per unit of work (a dispatch, a poll) and use
    /// that `Arc` throughout, so that a reload in the middle cannot mix old and new values.
    pub fn snapshot(&self) -> Arc<C> {
        self.current.borrow().clone()
    }

    /// The configuration as of now, which [`changed`](Self::changed) then counts as seen: it
    /// waits for a reload after this one.
    pub fn snapshot_and_mark_seen(&mut self) -> Arc<C> {
        self.current.borrow_and_update().clone()
    }

    /// A handle on the part of the configuration that `part` picks, which changes only when
    /// that part does: a reload that leaves it equal is not seen through the new handle. For a
    /// worker that restarts on its own settings only (see [`Manifold::reloading`]).
    ///
    /// Spawns a task that follows this handle until the launcher is done or every clone of the
    /// new handle is dropped; must be called inside a Tokio runtime.
    ///
    /// [`Manifold::reloading`]: crate::Manifold::reloading
    pub fn project<D, F>(&self, part: F) -> ConfigHandle<D>
    where
        C: Send + Sync + 'static,
        D: PartialEq + Send + Sync + 'static,
        F: Fn(&C) -> D + Send + 'static,
    {
        let mut source = self.clone();
        let (sender, current) = watch::channel(Arc::new(part(&source.snapshot())));
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = source.changed() => next,
                    () = sender.closed() => return,
                };
                let Some(next) = next else { return };
                let projected = part(&next);
                sender.send_if_modified(|held| {
                    let modified = **held != projected;
                    if modified {
                        *held = Arc::new(projected);
                    }
                    modified
                });
            }
        });
        ConfigHandle { current }
    }

    /// Waits for the next reload and returns the new configuration, or `None` once no reload
    /// can come any more (the launcher has finished, or the handle is [`fixed`](Self::fixed)).
    ///
    /// Cancellation safe: a reload that happens while the future is dropped is seen by the
    /// next call.
    pub async fn changed(&mut self) -> Option<Arc<C>> {
        self.current.changed().await.ok()?;
        Some(self.current.borrow_and_update().clone())
    }
}

/// How a launcher's run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A stop signal arrived and every worker finished within the deadline.
    Drained {
        /// The signal that asked for the stop.
        signal: Signal,
    },
    /// The engine stopped by itself without an error.
    Stopped,
    /// The engine stopped with a fatal error.
    Failed(WorkerError),
    /// The drain was abandoned (deadline, or a second stop signal) with these manifolds still
    /// running.
    DrainAbandoned {
        /// Manifolds that had not stopped.
        still_running: Vec<String>,
    },
}

impl Outcome {
    /// The process exit code: 0 for a drained or clean stop, 1 otherwise.
    pub fn code(&self) -> u8 {
        match self {
            Self::Drained { .. } | Self::Stopped => 0,
            Self::Failed(_) | Self::DrainAbandoned { .. } => 1,
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> Self {
        ExitCode::from(outcome.code())
    }
}

/// Runs an engine as a service; see the module documentation for the signal rules.
pub struct Launcher<C> {
    engine: Engine,
    config: watch::Sender<Arc<C>>,
    load: LoadFn<C>,
    drain_deadline: Duration,
}

impl<C: Send + Sync + 'static> Launcher<C> {
    /// How long a stop waits for workers by default: oslo.service's graceful shutdown timeout.
    pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(60);

    /// A launcher for `engine`, starting from `initial` and reloading with `load`.
    ///
    /// Install manifolds on the engine (with handles from [`Launcher::config`]) before or after
    /// calling this; the engine runs them already, `run` only adds the signal handling.
    pub fn new<F, Fut>(engine: Engine, initial: C, load: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C, LoadError>> + Send + 'static,
    {
        let (config, _) = watch::channel(Arc::new(initial));
        Self {
            engine,
            config,
            load: Arc::new(move || Box::pin(load())),
            drain_deadline: Self::DEFAULT_DRAIN_DEADLINE,
        }
    }

    /// How long a stop waits for in-flight work before giving up.
    pub fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// A handle on the configuration, for manifolds.
    pub fn config(&self) -> ConfigHandle<C> {
        ConfigHandle {
            current: self.config.subscribe(),
        }
    }

    /// The engine being run.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Acts on `signals` until the engine has stopped, and says how it ended.
    ///
    /// If the signal channel closes, the launcher keeps running until the engine stops by
    /// itself. Must run inside a Tokio runtime (it spawns the reload task).
    ///
    /// Dropping the future stops reloading but leaves the engine running: kill it through
    /// [`Launcher::engine`] (a clone taken before `run`) if that is what you want.
    pub async fn run(self, mut signals: mpsc::Receiver<Signal>) -> Outcome {
        let reload_wanted = Arc::new(Notify::new());
        let stop_reloading = CancellationToken::new();
        // If this future is dropped half way, the reload task must not outlive it.
        let _stop_reloading_on_drop = stop_reloading.clone().drop_guard();
        let reloader = tokio::spawn(reload_on_request(
            reload_wanted.clone(),
            self.load.clone(),
            self.config.clone(),
            stop_reloading.clone(),
        ));

        let engine = self.engine.clone();
        let engine_end = engine.wait();
        tokio::pin!(engine_end);
        let mut signals_open = true;
        let outcome = loop {
            tokio::select! {
                ended = &mut engine_end => break match ended {
                    Ok(()) => Outcome::Stopped,
                    Err(error) => Outcome::Failed(error),
                },
                signal = signals.recv(), if signals_open => match signal {
                    None => signals_open = false,
                    Some(Signal::Hangup) => {
                        tracing::info!("hang-up: reloading the configuration");
                        // At most one pending permit: hang-ups during a reload coalesce.
                        reload_wanted.notify_one();
                    }
                    Some(signal @ (Signal::Terminate | Signal::Interrupt)) => {
                        break self.drain(signal, &mut signals, engine_end.as_mut()).await;
                    }
                },
            }
        };

        stop_reloading.cancel();
        if let Err(error) = reloader.await {
            tracing::error!(%error, "configuration reload task failed");
        }
        tracing::info!(?outcome, "service stopped");
        outcome
    }

    async fn drain(
        &self,
        signal: Signal,
        signals: &mut mpsc::Receiver<Signal>,
        mut engine_end: Pin<&mut impl Future<Output = Result<(), WorkerError>>>,
    ) -> Outcome {
        tracing::info!(?signal, deadline = ?self.drain_deadline, "stopping: draining in-flight work");
        self.engine.kill();
        let deadline = tokio::time::sleep(self.drain_deadline);
        tokio::pin!(deadline);
        let mut signals_open = true;
        loop {
            tokio::select! {
                ended = &mut engine_end => return match ended {
                    Ok(()) => Outcome::Drained { signal },
                    Err(error) => Outcome::Failed(error),
                },
                () = &mut deadline => {
                    tracing::warn!("drain deadline passed");
                    break;
                }
                more = signals.recv(), if signals_open => match more {
                    Some(Signal::Terminate | Signal::Interrupt) => {
                        tracing::warn!("second stop signal: abandoning the drain");
                        break;
                    }
                    Some(Signal::Hangup) => tracing::info!("hang-up ignored while stopping"),
                    None => signals_open = false,
                },
            }
        }
        let still_running = self
            .engine
            .report()
            .manifolds
            .into_iter()
            .filter(|(_, manifold)| manifold.state != ManifoldState::Stopped)
            .map(|(name, _)| name)
            .collect();
        Outcome::DrainAbandoned { still_running }
    }
}

impl<C> fmt::Debug for Launcher<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launcher")
            .field("engine", &self.engine)
            .field("drain_deadline", &self.drain_deadline)
            .finish_non_exhaustive()
    }
}

/// How long a reload waits after a hang-up for more of them.
pub const RELOAD_SETTLE: Duration = Duration::from_millis(200);

/// Runs one reload per wake-up. `Notify` keeps at most one permit, so any number of requests
/// made during a reload cause exactly one more, and that one reads the newest configuration.
async fn reload_on_request<C>(
    wanted: Arc<Notify>,
    load: LoadFn<C>,
    config: watch::Sender<Arc<C>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = wanted.notified() => {}
        }
        // A burst of hang-ups (an operator's `kill -HUP` loop, a config manager signalling
        // after each file it writes) makes one reload: wait for the burst to end, then drop
        // the requests it left.
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RELOAD_SETTLE) => {}
        }
        let _ = wanted.notified().now_or_never();
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            loaded = load() => match loaded {
                Ok(new) => {
                    config.send_replace(Arc::new(new));
                    tracing::info!("configuration reloaded");
                }
                Err(error) => {
                    tracing::warn!(%error, "reload failed; keeping the current configuration");
                }
            },
        }
    }
}

/// The process's SIGTERM, SIGINT and SIGHUP as a channel of [`Signal`]s, for
/// [`Launcher::run`].
///
/// Installs the handlers at once (so from this call on, SIGHUP no longer ends the process) and
/// keeps them until the receiver is dropped. Must be called inside a Tokio runtime.
#[cfg(unix)]
pub fn os_signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{signal, SignalKind};

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                Some(()) = terminate.recv() => Signal::Terminate,
                Some(()) = interrupt.recv() => Signal::Interrupt,
                Some(()) = hangup.recv() => Signal::Hangup,
                else => return,
            };
            tracing::debug!(signal = ?received, "signal received");
            if sender.send(received).await.is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}
