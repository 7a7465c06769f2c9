//! The dependency engine's rules, one test per rule, on a paused clock.
//!
//! Most tests use a `Probe`: a manifold whose start succeeds only when every declared input is
//! running, and whose workers run until killed or told to exit with a given result. The probe
//! records what happened, in order, so a test reads as the story of one manifold.

#![allow(clippy::unwrap_used)] // test helpers: a failed step fails the test

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tidings_runtime::{
    Engine, EngineConfig, EngineState, GetError, Getter, InstallError, Manifold, ManifoldState,
    StartContext, TaskWorker, WorkerError,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};

const ERROR_DELAY: Duration = Duration::from_millis(500);
const BOUNCE_DELAY: Duration = Duration::from_millis(10);

/// Small delays, constant backoff: the fixture for the rules that are not about timing.
fn config() -> EngineConfig {
    EngineConfig {
        error_delay: ERROR_DELAY,
        bounce_delay: BOUNCE_DELAY,
        backoff_factor: 1.0,
        max_delay: Some(Duration::from_secs(1)),
        ..EngineConfig::default()
    }
}

fn engine() -> Engine {
    Engine::new(config()).unwrap()
}

#[derive(Debug)]
enum Event {
    /// A start found an input missing and returned `Missing`.
    Missing(Instant),
    /// A start returned a worker.
    Started(Instant, Control),
    /// A worker saw its stop token and ended cleanly.
    Killed(Instant),
}

/// Makes a running probe worker end with a result of the test's choosing.
#[derive(Debug)]
struct Control(oneshot::Sender<Result<(), WorkerError>>);

impl Control {
    fn exit(self, result: Result<(), WorkerError>) {
        self.0.send(result).unwrap();
    }
}

struct Probe {
    name: &'static str,
    sender: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Probe {
    fn new(name: &'static str) -> Self {
        let (sender, events) = mpsc::unbounded_channel();
        Self {
            name,
            sender,
            events,
        }
    }

    fn manifold(&self, inputs: &[&'static str]) -> Manifold {
        let sender = self.sender.clone();
        let inputs: Vec<&'static str> = inputs.to_vec();
        let declared = inputs.clone();
        Manifold::new(move |_ctx: StartContext, getter: Getter| {
            let sender = sender.clone();
            let inputs = inputs.clone();
            async move {
                for input in &inputs {
                    if let Err(error) = getter.ensure_running(input) {
                        sender.send(Event::Missing(Instant::now())).unwrap();
                        return Err(error.into());
                    }
                }
                let (exit, exited) = oneshot::channel();
                let worker_events = sender.clone();
                let worker = TaskWorker::spawn(move |stop| async move {
                    tokio::select! {
                        () = stop.cancelled() => {
                            let _ = worker_events.send(Event::Killed(Instant::now()));
                            Ok(())
                        }
                        result = exited => result.unwrap_or(Ok(())),
                    }
                });
                sender
                    .send(Event::Started(Instant::now(), Control(exit)))
                    .unwrap();
                Ok(worker)
            }
        })
        .with_inputs(declared)
    }

    async fn next(&mut self) -> Event {
        timeout(Duration::from_secs(3600), self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no event within an hour", self.name))
            .unwrap()
    }

    async fn expect_started(&mut self) -> (Instant, Control) {
        match self.next().await {
            Event::Started(at, control) => (at, control),
            other => panic!("{}: expected a start, got {other:?}", self.name),
        }
    }

    async fn expect_missing(&mut self) -> Instant {
        match self.next().await {
            Event::Missing(at) => at,
            other => panic!("{}: expected Missing, got {other:?}", self.name),
        }
    }

    async fn expect_killed(&mut self) -> Instant {
        match self.next().await {
            Event::Killed(at) => at,
            other => panic!("{}: expected a kill, got {other:?}", self.name),
        }
    }

    /// A start, after any number of starts that found an input missing (when two restarts race
    /// on the bounce delay).
    async fn expect_started_after_missing(&mut self) -> (Instant, Control) {
        loop {
            match self.next().await {
                Event::Missing(_) => {}
                Event::Started(at, control) => return (at, control),
                other => panic!("{}: expected a start, got {other:?}", self.name),
            }
        }
    }

    async fn expect_quiet(&mut self, period: Duration) {
        sleep(period).await;
        if let Ok(event) = self.events.try_recv() {
            panic!("{}: expected nothing, got {event:?}", self.name);
        }
    }
}

fn assert_within(actual: Duration, low_ms: u64, high_ms: u64) {
    let (low, high) = (
        Duration::from_millis(low_ms),
        Duration::from_millis(high_ms),
    );
    assert!(
        low <= actual && actual <= high,
        "{actual:?} is outside [{low:?}, {high:?}]"
    );
}

// ---------------------------------------------------------------------------------------------
// Install

#[tokio::test(start_paused = true)]
async fn install_without_inputs_starts_once_immediately() {
    let engine = engine();
    let mut a = Probe::new("a");
    let mut b = Probe::new("b");
    let installed = Instant::now();
    engine.install("a", a.manifold(&[])).unwrap();
    let (started, _a_worker) = a.expect_started().await;
    assert_eq!(started, installed, "the first start has no delay");

    engine.install("b", b.manifold(&[])).unwrap();
    let _b_worker = b.expect_started().await;
    a.expect_quiet(Duration::from_secs(10)).await;
    b.expect_quiet(Duration::ZERO).await;
}

#[tokio::test(start_paused = true)]
async fn unknown_input_is_missing_until_it_is_installed() {
    let engine = engine();
    let mut a = Probe::new("a");
    let mut b = Probe::new("b");
    engine.install("b", b.manifold(&["a"])).unwrap();
    b.expect_missing().await;
    b.expect_quiet(Duration::from_secs(10)).await;
    assert_eq!(
        engine.report().manifolds["b"].error.as_deref(),
        Some("\"a\" not running: dependency not available")
    );

    engine.install("a", a.manifold(&[])).unwrap();
    let _a_worker = a.expect_started().await;
    let _b_worker = b.expect_started().await;
    b.expect_quiet(Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn installing_a_name_twice_is_refused() {
    let engine = engine();
    let mut a = Probe::new("a");
    engine.install("a", a.manifold(&[])).unwrap();
    let _a_worker = a.expect_started().await;
    assert_eq!(
        engine.install("a", a.manifold(&[])),
        Err(InstallError::AlreadyInstalled { name: "a".into() })
    );
    a.expect_quiet(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn installing_a_cycle_is_refused() {
    let engine = engine();
    let probe = Probe::new("any");
    engine.install("a", probe.manifold(&["b"])).unwrap();
    engine.install("b", probe.manifold(&["c"])).unwrap();
    let refused = engine.install("c", probe.manifold(&["a"])).unwrap_err();
    assert_eq!(
        refused,
        InstallError::Cycle {
            name: "c".into(),
            cycle: vec!["c".into(), "a".into(), "b".into(), "c".into()],
        }
    );
    assert!(refused
        .to_string()
        .contains("cycle detected: c -> a -> b -> c"));
    assert!(matches!(
        engine.install("self", probe.manifold(&["self"])),
        Err(InstallError::Cycle { .. })
    ));

    // A diamond shares inputs without a cycle.
    engine
        .install("top", probe.manifold(&["left", "right"]))
        .unwrap();
    engine.install("left", probe.manifold(&["bottom"])).unwrap();
    engine
        .install("right", probe.manifold(&["bottom"]))
        .unwrap();
    engine.install("bottom", probe.manifold(&[])).unwrap();
}

#[tokio::test(start_paused = true)]
async fn install_after_kill_is_refused() {
    let engine = engine();
    engine.kill();
    assert_eq!(
        engine.install("a", Probe::new("a").manifold(&[])),
        Err(InstallError::ShuttingDown)
    );
    engine.wait().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Getter

/// A manifold whose start runs `inspect` on its getter, sends the result, and then runs an
/// idle worker.
fn inspecting<T: Send + 'static>(
    inputs: &[&str],
    inspect: impl Fn(&Getter) -> T + Send + Sync + 'static,
) -> (Manifold, mpsc::UnboundedReceiver<T>) {
    let (sender, seen) = mpsc::unbounded_channel();
    let manifold = Manifold::new(move |_ctx, getter| {
        let _ = sender.send(inspect(&getter));
        async { Ok(idle_worker()) }
    })
    .with_inputs(inputs.iter().copied());
    (manifold, seen)
}

fn idle_worker() -> TaskWorker {
    TaskWorker::spawn(|stop| async move {
        stop.cancelled().await;
        Ok(())
    })
}

/// A manifold offering `value` (a `u32`) to its dependents.
fn offering(value: u32) -> Manifold {
    Manifold::new(move |_ctx, _getter| async move { Ok(idle_worker().with_resource(value)) })
        .with_output(|worker: &TaskWorker<u32>| *worker.resource())
}

#[tokio::test(start_paused = true)]
async fn getter_existence_check_succeeds_for_a_declared_running_input() {
    let engine = engine();
    engine.install("a", offering(1)).unwrap();
    sleep(Duration::from_millis(1)).await;
    let (manifold, mut seen) = inspecting(&["a"], |getter| getter.ensure_running("a"));
    engine.install("b", manifold).unwrap();
    assert_eq!(seen.recv().await.unwrap(), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn getter_refuses_an_undeclared_input_as_missing() {
    let engine = engine();
    engine.install("a", offering(1)).unwrap();
    sleep(Duration::from_millis(1)).await;
    let (manifold, mut seen) = inspecting(&[], |getter| getter.get::<u32>("a"));
    engine.install("b", manifold).unwrap();
    let error = seen.recv().await.unwrap().unwrap_err();
    assert_eq!(error, GetError::NotDeclared { input: "a".into() });
    assert!(WorkerError::from(error).is_missing());
}

#[tokio::test(start_paused = true)]
async fn getter_accepts_the_type_the_output_offers() {
    let engine = engine();
    engine.install("a", offering(42)).unwrap();
    sleep(Duration::from_millis(1)).await;
    let (manifold, mut seen) = inspecting(&["a"], |getter| getter.get::<u32>("a"));
    engine.install("b", manifold).unwrap();
    assert_eq!(seen.recv().await.unwrap(), Ok(42));
}

#[tokio::test(start_paused = true)]
async fn getter_rejects_a_type_the_output_does_not_offer_and_inputs_without_output() {
    let engine = engine();
    engine.install("a", offering(42)).unwrap();
    sleep(Duration::from_millis(1)).await;
    engine
        .install("plain", Manifold::new(|_, _| async { Ok(idle_worker()) }))
        .unwrap();
    sleep(Duration::from_millis(1)).await;
    let (manifold, mut seen) = inspecting(&["a", "plain"], |getter| {
        (getter.get::<String>("a"), getter.get::<u32>("plain"))
    });
    engine.install("b", manifold).unwrap();
    let (wrong_type, not_exposed) = seen.recv().await.unwrap();
    assert!(matches!(wrong_type, Err(GetError::WrongType { .. })));
    assert_eq!(
        not_exposed,
        Err(GetError::NotExposed {
            input: "plain".into()
        })
    );
}

#[tokio::test(start_paused = true)]
async fn getter_expires_when_the_start_returns() {
    let engine = engine();
    engine.install("a", offering(42)).unwrap();
    sleep(Duration::from_millis(1)).await;
    let (manifold, mut seen) = inspecting(&["a"], Getter::clone);
    engine.install("b", manifold).unwrap();
    let kept = seen.recv().await.unwrap();
    sleep(Duration::from_millis(1)).await;
    assert!(matches!(
        kept.get::<u32>("a"),
        Err(GetError::Expired { .. })
    ));
}

/// An engine that dies stops dependents before their inputs: a worker that takes a while to stop
/// cleanly (announcing its leaving on a connection its input holds) still has that input.
#[tokio::test(start_paused = true)]
async fn kill_stops_dependents_before_their_inputs() {
    let engine = engine();
    let mut transport = Probe::new("transport");
    let mut client = Probe::new("client");
    engine
        .install("transport", transport.manifold(&[]))
        .unwrap();
    let _transport_worker = transport.expect_started().await;
    engine
        .install("client", client.manifold(&["transport"]))
        .unwrap();
    let _client_worker = client.expect_started().await;
    // "leaver" says goodbye for a second when stopped, and looks whether its input still runs.
    let (sender, mut said) = mpsc::unbounded_channel();
    let watching = engine.clone();
    engine
        .install(
            "leaver",
            Manifold::new(move |_, getter: Getter| {
                let (sender, engine) = (sender.clone(), watching.clone());
                async move {
                    getter.ensure_running("client")?;
                    Ok(TaskWorker::spawn(move |stop| async move {
                        stop.cancelled().await;
                        sleep(Duration::from_secs(1)).await;
                        let state = engine.report().manifolds["client"].state;
                        sender.send((Instant::now(), state)).unwrap();
                        Ok(())
                    }))
                }
            })
            .with_inputs(["client"]),
        )
        .unwrap();
    sleep(Duration::from_millis(100)).await;

    let killed = Instant::now();
    engine.kill();
    let (left, client_state) = said.recv().await.unwrap();
    assert_eq!(
        client_state,
        ManifoldState::Started,
        "the input outlives its dependent"
    );
    let client_stopped = client.expect_killed().await;
    let transport_stopped = transport.expect_killed().await;
    assert_eq!(left, killed + Duration::from_secs(1));
    assert!(left <= client_stopped && client_stopped <= transport_stopped);
    engine.wait().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Starts that block

#[tokio::test(start_paused = true)]
async fn kill_during_a_blocking_start_cancels_it_and_never_starts_again() {
    let engine = engine();
    let (sender, mut calls) = mpsc::unbounded_channel();
    engine
        .install(
            "slow",
            Manifold::new(move |ctx: StartContext, _| {
                let sender = sender.clone();
                async move {
                    sender.send("called").unwrap();
                    ctx.cancelled().await;
                    sender.send("cancelled").unwrap();
                    Err::<TaskWorker, _>(WorkerError::Aborted)
                }
            }),
        )
        .unwrap();
    assert_eq!(calls.recv().await, Some("called"));
    sleep(Duration::from_secs(5)).await;
    engine.kill();
    assert_eq!(calls.recv().await, Some("cancelled"));
    engine.wait().await.unwrap();
    sleep(Duration::from_secs(60)).await;
    assert!(calls.try_recv().is_err(), "start is never called again");
}

#[tokio::test(start_paused = true)]
async fn an_input_starting_during_a_dependents_start_restarts_the_dependent() {
    let engine = engine();
    // "a" starts only when the test says so.
    let (release, released) = tokio::sync::watch::channel(false);
    engine
        .install(
            "a",
            Manifold::new(move |_, _| {
                let mut released = released.clone();
                async move {
                    released.wait_for(|go| *go).await.unwrap();
                    Ok(idle_worker())
                }
            }),
        )
        .unwrap();
    // "b" blocks in its start while "a" is not running.
    let (sender, mut seen) = mpsc::unbounded_channel();
    engine
        .install(
            "b",
            Manifold::new(move |ctx: StartContext, getter: Getter| {
                let sender = sender.clone();
                async move {
                    if getter.ensure_running("a").is_err() {
                        sender.send("blocked").unwrap();
                        ctx.cancelled().await;
                        sender.send("aborted").unwrap();
                        return Err(WorkerError::Aborted);
                    }
                    sender.send("started").unwrap();
                    Ok(idle_worker())
                }
            })
            .with_inputs(["a"]),
        )
        .unwrap();
    assert_eq!(seen.recv().await, Some("blocked"));
    sleep(Duration::from_secs(1)).await;
    release.send_replace(true);
    assert_eq!(seen.recv().await, Some("aborted"));
    assert_eq!(seen.recv().await, Some("started"));
    sleep(Duration::from_secs(10)).await;
    assert!(seen.try_recv().is_err());
}

// ---------------------------------------------------------------------------------------------
// Errors, exits and dependents

#[tokio::test(start_paused = true)]
async fn error_restarts_the_worker_and_each_dependent_once() {
    let engine = engine();
    let (mut a, mut b, mut c) = (Probe::new("a"), Probe::new("b"), Probe::new("c"));
    engine.install("a", a.manifold(&[])).unwrap();
    let (_, a_worker) = a.expect_started().await;
    engine.install("b", b.manifold(&["a"])).unwrap();
    engine.install("c", c.manifold(&["a"])).unwrap();
    let _b_worker = b.expect_started().await;
    let _c_worker = c.expect_started().await;

    let failed = Instant::now();
    a_worker.exit(Err(WorkerError::failed("boom")));
    b.expect_killed().await;
    c.expect_killed().await;
    let (restarted, _a_worker) = a.expect_started().await;
    assert_within(restarted - failed, 450, 550);
    for dependent in [&mut b, &mut c] {
        dependent.expect_missing().await;
        let _worker = dependent.expect_started().await;
    }
    a.expect_quiet(Duration::from_secs(10)).await;
    b.expect_quiet(Duration::ZERO).await;
    c.expect_quiet(Duration::ZERO).await;
}

#[tokio::test(start_paused = true)]
async fn dependent_error_leaves_its_input_alone() {
    let engine = engine();
    let (mut a, mut b) = (Probe::new("a"), Probe::new("b"));
    engine.install("a", a.manifold(&[])).unwrap();
    let _a_worker = a.expect_started().await;
    engine.install("b", b.manifold(&["a"])).unwrap();
    let (_, b_worker) = b.expect_started().await;

    b_worker.exit(Err(WorkerError::failed("boom")));
    let _b_worker = b.expect_started().await;
    a.expect_quiet(Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn clean_exit_is_not_restarted_until_an_input_bounces() {
    let engine = engine();
    let (mut a, mut b) = (Probe::new("a"), Probe::new("b"));
    engine.install("a", a.manifold(&[])).unwrap();
    let (_, a_worker) = a.expect_started().await;
    engine.install("b", b.manifold(&["a"])).unwrap();
    let (_, b_worker) = b.expect_started().await;

    b_worker.exit(Ok(()));
    b.expect_quiet(Duration::from_secs(60)).await;
    assert_eq!(engine.report().manifolds["b"].state, ManifoldState::Stopped);

    // The input stops: "b" is started (and finds "a" missing), then again when "a" is back.
    a_worker.exit(Err(WorkerError::failed("bounce")));
    b.expect_missing().await;
    let _a_worker = a.expect_started().await;
    let _b_worker = b.expect_started().await;
    b.expect_quiet(Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn chain_bounce_restarts_every_downstream_worker() {
    let engine = engine();
    let (mut a, mut b, mut c) = (Probe::new("a"), Probe::new("b"), Probe::new("c"));
    engine.install("a", a.manifold(&[])).unwrap();
    let (_, a_worker) = a.expect_started().await;
    engine.install("b", b.manifold(&["a"])).unwrap();
    let _b_worker = b.expect_started().await;
    engine.install("c", c.manifold(&["b"])).unwrap();
    let _c_worker = c.expect_started().await;

    // "b" and "c" stop cleanly when killed, yet each is started again.
    a_worker.exit(Err(WorkerError::failed("boom")));
    b.expect_killed().await;
    c.expect_killed().await;
    let _a_worker = a.expect_started().await;
    let _b_worker = b.expect_started_after_missing().await;
    let _c_worker = c.expect_started_after_missing().await;
    for probe in [&mut a, &mut b, &mut c] {
        probe.expect_quiet(Duration::from_secs(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn missing_is_not_retried_until_an_input_changes() {
    let engine = engine();
    let (mut a, mut b) = (Probe::new("a"), Probe::new("b"));
    engine.install("b", b.manifold(&["a"])).unwrap();
    b.expect_missing().await;
    b.expect_quiet(Duration::from_secs(60)).await;

    // The input starts: one start of "b".
    engine.install("a", a.manifold(&[])).unwrap();
    let (_, a_worker) = a.expect_started().await;
    let _b_worker = b.expect_started().await;

    // The input bounces: "b" reacts to the stop and to the start.
    a_worker.exit(Err(WorkerError::failed("boom")));
    b.expect_killed().await;
    b.expect_missing().await;
    let (_, a_worker) = a.expect_started().await;
    let _b_worker = b.expect_started().await;

    // The input stops for good: "b" is started exactly once more, and finds it missing.
    a_worker.exit(Ok(()));
    b.expect_killed().await;
    b.expect_missing().await;
    b.expect_quiet(Duration::from_secs(60)).await;
    a.expect_quiet(Duration::ZERO).await;
}

#[tokio::test(start_paused = true)]
async fn bounce_restarts_after_the_bounce_delay_and_bounces_dependents() {
    let engine = engine();
    let (mut a, mut b) = (Probe::new("a"), Probe::new("b"));
    engine.install("a", a.manifold(&[])).unwrap();
    let (_, a_worker) = a.expect_started().await;
    engine.install("b", b.manifold(&["a"])).unwrap();
    let _b_worker = b.expect_started().await;

    let bounced = Instant::now();
    a_worker.exit(Err(WorkerError::Bounce));
    let (restarted, _a_worker) = a.expect_started().await;
    assert_within(restarted - bounced, 9, 11);
    b.expect_killed().await;
    let _b_worker = b.expect_started_after_missing().await;
    b.expect_quiet(Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn uninstall_removes_the_manifold_and_reinstall_restarts_dependents() {
    let engine = engine();
    let (mut a, mut b) = (Probe::new("a"), Probe::new("b"));
    engine.install("a", a.manifold(&[])).unwrap();
    let (_, a_worker) = a.expect_started().await;
    engine.install("b", b.manifold(&["a"])).unwrap();
    let _b_worker = b.expect_started().await;

    a_worker.exit(Err(WorkerError::Uninstall));
    b.expect_killed().await;
    b.expect_missing().await;
    a.expect_quiet(Duration::from_secs(60)).await;
    b.expect_quiet(Duration::ZERO).await;
    assert!(!engine.report().manifolds.contains_key("a"));

    engine.install("a", a.manifold(&[])).unwrap();
    let _a_worker = a.expect_started().await;
    let _b_worker = b.expect_started().await;
}

#[tokio::test(start_paused = true)]
async fn filter_sees_start_errors_and_its_result_decides() {
    let engine = engine();
    let (sender, mut seen) = mpsc::unbounded_channel();
    let manifold = Manifold::new(|_, _| async {
        Err::<TaskWorker, _>(WorkerError::failed("no such resource"))
    })
    .with_filter(move |error| {
        sender.send(error.to_string()).unwrap();
        Err(WorkerError::Uninstall)
    });
    engine.install("a", manifold).unwrap();
    assert_eq!(seen.recv().await.as_deref(), Some("no such resource"));
    sleep(Duration::from_secs(60)).await;
    assert!(seen.try_recv().is_err(), "uninstalled, never retried");
    assert!(engine.report().manifolds.is_empty());
}

#[tokio::test(start_paused = true)]
async fn filter_sees_worker_errors_and_its_result_decides() {
    let engine = engine();
    let mut a = Probe::new("a");
    let manifold = a.manifold(&[]).with_filter(|error| match error {
        WorkerError::Failed(_) if error.to_string() == "flag changed" => Err(WorkerError::Bounce),
        other => Err(other),
    });
    engine.install("a", manifold).unwrap();
    let (_, worker) = a.expect_started().await;
    let exited = Instant::now();
    worker.exit(Err(WorkerError::failed("flag changed")));
    let (restarted, _worker) = a.expect_started().await;
    assert!(
        restarted - exited < ERROR_DELAY / 2,
        "bounced after the bounce delay, not the error delay"
    );
}

#[tokio::test(start_paused = true)]
async fn fatal_error_stops_every_worker_and_wait_returns_it_through_the_filter() {
    let engine = Engine::new(EngineConfig {
        filter: Some(Arc::new(|error| {
            WorkerError::failed(format!("agent stopped: {error}"))
        })),
        ..config()
    })
    .unwrap();
    let (mut a, mut b) = (Probe::new("a"), Probe::new("b"));
    engine.install("a", a.manifold(&[])).unwrap();
    engine.install("b", b.manifold(&[])).unwrap();
    let (_, a_worker) = a.expect_started().await;
    let _b_worker = b.expect_started().await;

    // A non-fatal error only restarts the worker.
    a_worker.exit(Err(WorkerError::failed("transient")));
    let (_, a_worker) = a.expect_started().await;

    a_worker.exit(Err(WorkerError::fatal("disk on fire")));
    b.expect_killed().await;
    let error = engine.wait().await.unwrap_err();
    assert_eq!(error.to_string(), "agent stopped: fatal: disk on fire");
    assert_eq!(engine.report().state, EngineState::Stopped);
    a.expect_quiet(Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn among_several_fatal_errors_wait_returns_the_worst() {
    fn rank(error: &WorkerError) -> u8 {
        match error.to_string().as_str() {
            "fatal: upgrade" => 2,
            "fatal: terminate" => 4,
            _ => 1,
        }
    }
    let engine = Engine::new(EngineConfig {
        worst_error: Arc::new(|left: &WorkerError, right: &WorkerError| -> Ordering {
            rank(left).cmp(&rank(right))
        }),
        ..config()
    })
    .unwrap();
    // "b" ends with a worse fatal error when it is stopped.
    let worse = Manifold::new(|_, _| async {
        Ok(TaskWorker::spawn(|stop| async move {
            stop.cancelled().await;
            Err(WorkerError::fatal("terminate"))
        }))
    });
    let mut a = Probe::new("a");
    engine.install("a", a.manifold(&[])).unwrap();
    engine.install("b", worse).unwrap();
    let (_, a_worker) = a.expect_started().await;
    a_worker.exit(Err(WorkerError::fatal("upgrade")));
    let error = engine.wait().await.unwrap_err();
    assert_eq!(error.to_string(), "fatal: terminate");
}

// ---------------------------------------------------------------------------------------------
// Backoff

fn backoff_config() -> EngineConfig {
    EngineConfig {
        error_delay: Duration::from_secs(1),
        backoff_factor: 2.0,
        max_delay: Some(Duration::from_secs(3)),
        backoff_reset: Duration::from_secs(60),
        ..EngineConfig::default()
    }
}

/// A manifold whose every start fails; the instants of the attempts arrive on the receiver.
fn always_failing() -> (Manifold, mpsc::UnboundedReceiver<Instant>) {
    let (sender, attempts) = mpsc::unbounded_channel();
    let manifold = Manifold::new(move |_, _| {
        let _ = sender.send(Instant::now());
        async { Err::<TaskWorker, _>(WorkerError::failed("cannot start")) }
    });
    (manifold, attempts)
}

async fn attempt_gaps(
    attempts: &mut mpsc::UnboundedReceiver<Instant>,
    count: usize,
) -> (Instant, Vec<Duration>) {
    let first = attempts.recv().await.unwrap();
    let mut previous = first;
    let mut gaps = Vec::new();
    for _ in 0..count {
        let next = attempts.recv().await.unwrap();
        gaps.push(next - previous);
        previous = next;
    }
    (first, gaps)
}

#[tokio::test(start_paused = true)]
async fn backoff_attempts_fall_in_the_expected_windows() {
    let engine = Engine::new(backoff_config()).unwrap();
    let (manifold, mut attempts) = always_failing();
    let installed = Instant::now();
    engine.install("a", manifold).unwrap();
    let (first, gaps) = attempt_gaps(&mut attempts, 6).await;
    // The first attempt is immediate; no retry in (0, 0.9 s), one by 1.1 s; the next 2 s ± 10%
    // later; then the 3 s cap ± 10%.
    assert_eq!(first, installed);
    assert_within(gaps[0], 900, 1100);
    assert_within(gaps[1], 1800, 2200);
    for gap in &gaps[2..] {
        assert_within(*gap, 2700, 3300);
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_is_measured_from_the_death_of_the_worker() {
    let engine = Engine::new(backoff_config()).unwrap();
    let mut a = Probe::new("a");
    engine.install("a", a.manifold(&[])).unwrap();
    let (_, worker) = a.expect_started().await;

    sleep(Duration::from_secs(10)).await;
    let died = Instant::now();
    worker.exit(Err(WorkerError::failed("boom")));
    let (restarted, worker) = a.expect_started().await;
    assert_within(restarted - died, 900, 1100);

    sleep(Duration::from_secs(5)).await;
    let died = Instant::now();
    worker.exit(Err(WorkerError::failed("boom")));
    let (restarted, _worker) = a.expect_started().await;
    assert_within(restarted - died, 1800, 2200);
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_a_long_run() {
    let engine = Engine::new(backoff_config()).unwrap();
    let mut a = Probe::new("a");
    engine.install("a", a.manifold(&[])).unwrap();
    let (_, mut worker) = a.expect_started().await;
    // Three quick failures: 1 s, 2 s, then the 3 s cap.
    for (low, high) in [(900, 1100), (1800, 2200), (2700, 3300)] {
        let died = Instant::now();
        worker.exit(Err(WorkerError::failed("boom")));
        let (restarted, next) = a.expect_started().await;
        assert_within(restarted - died, low, high);
        worker = next;
    }
    // A run longer than the reset time: the next failure waits the base delay again.
    sleep(Duration::from_secs(61)).await;
    let died = Instant::now();
    worker.exit(Err(WorkerError::failed("boom")));
    let (restarted, _worker) = a.expect_started().await;
    assert_within(restarted - died, 900, 1100);
}

#[tokio::test(start_paused = true)]
async fn many_failures_never_overflow_the_delay() {
    let engine = Engine::new(backoff_config()).unwrap();
    let (manifold, mut attempts) = always_failing();
    engine.install("a", manifold).unwrap();
    // 2^1100 is past f64's range: the delay must stay at the cap.
    let (_, gaps) = attempt_gaps(&mut attempts, 1100).await;
    for gap in &gaps[2..] {
        assert_within(*gap, 2700, 3300);
    }
}

// ---------------------------------------------------------------------------------------------
// Report

#[tokio::test(start_paused = true)]
async fn report_shows_engine_and_manifold_state_as_json() {
    let engine = engine();
    assert_eq!(
        serde_json::to_value(engine.report()).unwrap(),
        json!({"state": "started", "manifolds": {}})
    );

    let (release, released) = oneshot::channel::<()>();
    let reporting =
        Manifold::new(
            move |_, _| async move { Ok(idle_worker().with_report(|| json!({"polled": 3}))) },
        );
    // A worker that stops only when the test releases it, so the engine is seen "stopping".
    let lingering = {
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        Manifold::new(move |_, _| {
            let released = released.clone();
            async move {
                let gate = released.lock().await.take();
                Ok(TaskWorker::spawn(|stop| async move {
                    stop.cancelled().await;
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                    Ok(())
                }))
            }
        })
    };
    engine.install("reporting", reporting).unwrap();
    engine.install("lingering", lingering).unwrap();
    let waiting = Probe::new("waiting");
    engine
        .install("waiting", waiting.manifold(&["absent"]))
        .unwrap();
    sleep(Duration::from_millis(1)).await;

    let report = serde_json::to_value(engine.report()).unwrap();
    assert_eq!(report["state"], "started");
    let reporting = &report["manifolds"]["reporting"];
    assert_eq!(reporting["state"], "started");
    assert_eq!(reporting["inputs"], json!([]));
    assert_eq!(reporting["start-count"], 1);
    assert!(reporting["last-start"].as_str().unwrap().ends_with('Z'));
    assert_eq!(reporting["report"], json!({"polled": 3}));
    assert!(reporting.get("error").is_none());
    assert_eq!(
        report["manifolds"]["waiting"],
        json!({
            "state": "stopped",
            "inputs": ["absent"],
            "error": "\"absent\" not running: dependency not available",
        })
    );

    engine.kill();
    sleep(Duration::from_millis(1)).await;
    let report = engine.report();
    assert_eq!(report.state, EngineState::Stopping);
    assert_eq!(report.manifolds["lingering"].state, ManifoldState::Stopping);
    assert_eq!(report.manifolds["reporting"].state, ManifoldState::Stopped);

    release.send(()).unwrap();
    engine.wait().await.unwrap();
    let report = serde_json::to_value(engine.report()).unwrap();
    assert_eq!(report["state"], "stopped");
    assert_eq!(report["manifolds"]["lingering"]["state"], "stopped");
}

#[tokio::test(start_paused = true)]
async fn a_nested_engine_reports_under_its_manifold() {
    let outer = engine();
    outer
        .install(
            "inner",
            Manifold::new(|_, _| async {
                let inner = Engine::new(config()).map_err(WorkerError::failed)?;
                inner
                    .install("leaf", Manifold::new(|_, _| async { Ok(idle_worker()) }))
                    .map_err(WorkerError::failed)?;
                Ok(inner)
            }),
        )
        .unwrap();
    sleep(Duration::from_millis(1)).await;
    let report = serde_json::to_value(outer.report()).unwrap();
    let inner = &report["manifolds"]["inner"]["report"];
    assert_eq!(inner["state"], "started");
    assert_eq!(inner["manifolds"]["leaf"]["state"], "started");

    outer.kill();
    outer.wait().await.unwrap();
}
