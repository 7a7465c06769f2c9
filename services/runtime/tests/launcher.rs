//! The launcher's signal rules: stop signals drain in-flight work within a deadline, hang-ups
//! reload the configuration (coalesced, latest wins), and every dispatch keeps one snapshot.
//!
//! Most tests inject signals through the launcher's channel on a paused clock; one runs a child
//! process (this test binary, re-executed) and sends it real SIGHUP and SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed step fails the test

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings_runtime::{
    ConfigHandle, Engine, EngineConfig, Launcher, LoadError, Manifold, Outcome, Signal, TaskWorker,
    WorkerError, RELOAD_SETTLE,
};
use tokio::sync::{mpsc, Mutex};
use tokio::time::{sleep, Instant};

/// A configuration whose two fields must always agree: a reader that saw them differ would have
/// mixed two versions.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    version: u32,
    label: String,
}

impl Settings {
    fn version(version: u32) -> Self {
        Self {
            version,
            label: format!("v{version}"),
        }
    }

    fn is_consistent(&self) -> bool {
        self.label == format!("v{}", self.version)
    }
}

/// What a dispatch saw: its job, the version at its start and at its end, and whether the
/// snapshot was consistent throughout.
#[derive(Debug, Clone, PartialEq)]
struct Dispatch {
    job: u32,
    version_at_start: u32,
    version_at_end: u32,
    consistent: bool,
}

/// A dispatcher: takes jobs one at a time while not stopped, finishes the job in hand when
/// stopped, and takes one configuration snapshot per job.
fn dispatcher(
    jobs: Arc<Mutex<mpsc::UnboundedReceiver<u32>>>,
    job_time: Duration,
    config: ConfigHandle<Settings>,
    done: mpsc::UnboundedSender<Dispatch>,
) -> Manifold {
    Manifold::new(move |_, _| {
        let (jobs, config, done) = (jobs.clone(), config.clone(), done.clone());
        async move {
            Ok(TaskWorker::spawn(move |stop| async move {
                let mut jobs = jobs.lock().await;
                loop {
                    let job = tokio::select! {
                        biased;
                        () = stop.cancelled() => return Ok(()),
                        job = jobs.recv() => match job {
                            Some(job) => job,
                            None => return Ok(()),
                        },
                    };
                    let snapshot = config.snapshot();
                    let version_at_start = snapshot.version;
                    sleep(job_time).await;
                    let _ = done.send(Dispatch {
                        job,
                        version_at_start,
                        version_at_end: snapshot.version,
                        consistent: snapshot.is_consistent(),
                    });
                }
            }))
        }
    })
}

struct Service {
    signals: mpsc::Sender<Signal>,
    jobs: mpsc::UnboundedSender<u32>,
    pending_jobs: Arc<Mutex<mpsc::UnboundedReceiver<u32>>>,
    done: mpsc::UnboundedReceiver<Dispatch>,
    config: ConfigHandle<Settings>,
    run: tokio::task::JoinHandle<Outcome>,
}

/// A launcher around one dispatcher, reloading `Settings::version(source)` in `load_time`.
fn service(
    job_time: Duration,
    drain_deadline: Duration,
    source: Arc<AtomicU32>,
    loads: Arc<AtomicU32>,
    load_time: Duration,
) -> Service {
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let launcher = Launcher::new(engine, Settings::version(1), move || {
        let version = source.load(Ordering::SeqCst);
        loads.fetch_add(1, Ordering::SeqCst);
        async move {
            sleep(load_time).await;
            if version == 0 {
                return Err(LoadError::from("unreadable configuration"));
            }
            Ok(Settings::version(version))
        }
    })
    .with_drain_deadline(drain_deadline);
    let (jobs, pending) = mpsc::unbounded_channel();
    let pending_jobs = Arc::new(Mutex::new(pending));
    let (finished, done) = mpsc::unbounded_channel();
    let config = launcher.config();
    launcher
        .engine()
        .install(
            "dispatcher",
            dispatcher(pending_jobs.clone(), job_time, config.clone(), finished),
        )
        .unwrap();
    let (signals, receiver) = mpsc::channel(8);
    let run = tokio::spawn(launcher.run(receiver));
    Service {
        signals,
        jobs,
        pending_jobs,
        done,
        config,
        run,
    }
}

fn counters() -> (Arc<AtomicU32>, Arc<AtomicU32>) {
    (Arc::new(AtomicU32::new(1)), Arc::new(AtomicU32::new(0)))
}

#[tokio::test(start_paused = true)]
async fn sigterm_stops_taking_work_drains_in_flight_work_and_exits_zero() {
    let (source, loads) = counters();
    let mut service = service(
        Duration::from_secs(2),
        Duration::from_secs(5),
        source,
        loads,
        Duration::ZERO,
    );
    service.jobs.send(1).unwrap();
    sleep(Duration::from_millis(500)).await;

    let stopped = Instant::now();
    service.signals.send(Signal::Terminate).await.unwrap();
    service.jobs.send(2).unwrap();
    let outcome = service.run.await.unwrap();

    assert!(matches!(
        outcome,
        Outcome::Drained {
            signal: Signal::Terminate
        }
    ));
    assert_eq!(outcome.code(), 0);
    let elapsed = Instant::now() - stopped;
    assert!(elapsed <= Duration::from_secs(2), "drained in {elapsed:?}");
    assert_eq!(
        service.done.recv().await.unwrap().job,
        1,
        "in-flight job finished"
    );
    assert_eq!(
        service.pending_jobs.lock().await.try_recv().ok(),
        Some(2),
        "no job taken after the stop"
    );
}

#[tokio::test(start_paused = true)]
async fn sigint_drains_like_sigterm() {
    let (source, loads) = counters();
    let service = service(
        Duration::from_secs(1),
        Duration::from_secs(5),
        source,
        loads,
        Duration::ZERO,
    );
    service.signals.send(Signal::Interrupt).await.unwrap();
    let outcome = service.run.await.unwrap();
    assert!(matches!(
        outcome,
        Outcome::Drained {
            signal: Signal::Interrupt
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn drain_is_abandoned_at_the_deadline_with_exit_code_one() {
    let (source, loads) = counters();
    let service = service(
        Duration::from_secs(30),
        Duration::from_secs(5),
        source,
        loads,
        Duration::ZERO,
    );
    service.jobs.send(1).unwrap();
    sleep(Duration::from_millis(100)).await;
    let stopped = Instant::now();
    service.signals.send(Signal::Terminate).await.unwrap();
    let outcome = service.run.await.unwrap();
    assert_eq!(Instant::now() - stopped, Duration::from_secs(5));
    match &outcome {
        Outcome::DrainAbandoned { still_running } => {
            assert_eq!(still_running, &["dispatcher".to_owned()]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(outcome.code(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_second_stop_signal_abandons_the_drain() {
    let (source, loads) = counters();
    let service = service(
        Duration::from_secs(30),
        Duration::from_secs(60),
        source,
        loads,
        Duration::ZERO,
    );
    service.jobs.send(1).unwrap();
    sleep(Duration::from_millis(100)).await;
    let stopped = Instant::now();
    service.signals.send(Signal::Terminate).await.unwrap();
    sleep(Duration::from_secs(1)).await;
    service.signals.send(Signal::Interrupt).await.unwrap();
    let outcome = service.run.await.unwrap();
    assert_eq!(Instant::now() - stopped, Duration::from_secs(1));
    assert!(matches!(outcome, Outcome::DrainAbandoned { .. }));
}

#[tokio::test(start_paused = true)]
async fn sighup_reloads_coalesce_and_the_latest_configuration_wins() {
    let (source, loads) = counters();
    let mut service = service(
        Duration::from_secs(1),
        Duration::from_secs(5),
        source.clone(),
        loads.clone(),
        Duration::from_secs(1),
    );
    let mut watcher = service.config.clone();

    source.store(2, Ordering::SeqCst);
    service.signals.send(Signal::Hangup).await.unwrap();
    sleep(RELOAD_SETTLE + Duration::from_millis(100)).await;
    // Three more hang-ups while the first reload (1 s) runs.
    for version in [3, 4, 5] {
        source.store(version, Ordering::SeqCst);
        service.signals.send(Signal::Hangup).await.unwrap();
        sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(watcher.changed().await.unwrap().version, 2);
    assert_eq!(watcher.changed().await.unwrap().version, 5);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 2, "one reload, then one more");
    assert_eq!(service.config.snapshot().version, 5);

    service.signals.send(Signal::Terminate).await.unwrap();
    assert_eq!(service.run.await.unwrap().code(), 0);
    assert!(service.done.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_hangups_makes_one_reload_with_the_files_as_they_end() {
    let (source, loads) = counters();
    let service = service(
        Duration::from_secs(1),
        Duration::from_secs(5),
        source.clone(),
        loads.clone(),
        Duration::ZERO,
    );
    for version in [2, 3, 4] {
        source.store(version, Ordering::SeqCst);
        service.signals.send(Signal::Hangup).await.unwrap();
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_secs(5)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one reload");
    assert_eq!(service.config.snapshot().version, 4);
    service.signals.send(Signal::Terminate).await.unwrap();
    assert_eq!(service.run.await.unwrap().code(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_dispatch_sees_one_configuration_snapshot_from_start_to_end() {
    let (source, loads) = counters();
    let mut service = service(
        Duration::from_secs(2),
        Duration::from_secs(5),
        source.clone(),
        loads,
        Duration::ZERO,
    );
    service.jobs.send(1).unwrap();
    sleep(Duration::from_millis(500)).await;
    // Reload in the middle of job 1.
    source.store(2, Ordering::SeqCst);
    service.signals.send(Signal::Hangup).await.unwrap();
    sleep(RELOAD_SETTLE + Duration::from_millis(100)).await;
    assert_eq!(service.config.snapshot().version, 2);
    service.jobs.send(2).unwrap();

    let first = service.done.recv().await.unwrap();
    let second = service.done.recv().await.unwrap();
    assert_eq!(
        first,
        Dispatch {
            job: 1,
            version_at_start: 1,
            version_at_end: 1,
            consistent: true
        }
    );
    assert_eq!(
        second,
        Dispatch {
            job: 2,
            version_at_start: 2,
            version_at_end: 2,
            consistent: true
        }
    );
    service.signals.send(Signal::Terminate).await.unwrap();
    assert_eq!(service.run.await.unwrap().code(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_reload_keeps_the_current_configuration() {
    let (source, loads) = counters();
    let service = service(
        Duration::from_secs(1),
        Duration::from_secs(5),
        source.clone(),
        loads.clone(),
        Duration::ZERO,
    );
    source.store(0, Ordering::SeqCst); // unreadable
    service.signals.send(Signal::Hangup).await.unwrap();
    sleep(RELOAD_SETTLE + Duration::from_millis(100)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(*service.config.snapshot(), Settings::version(1));

    source.store(3, Ordering::SeqCst);
    service.signals.send(Signal::Hangup).await.unwrap();
    sleep(RELOAD_SETTLE + Duration::from_millis(100)).await;
    assert_eq!(*service.config.snapshot(), Settings::version(3));
    service.signals.send(Signal::Terminate).await.unwrap();
    assert_eq!(service.run.await.unwrap().code(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_fatal_engine_error_ends_the_service_with_exit_code_one() {
    let engine = Engine::new(EngineConfig::default()).unwrap();
    engine
        .install(
            "doomed",
            Manifold::new(|_, _| async {
                Err::<TaskWorker, _>(WorkerError::fatal("credentials revoked"))
            }),
        )
        .unwrap();
    let launcher = Launcher::new(engine, (), || async { Ok(()) });
    let (_signals, receiver) = mpsc::channel(1);
    let outcome = launcher.run(receiver).await;
    assert!(matches!(outcome, Outcome::Failed(_)));
    assert_eq!(outcome.code(), 1);
}

// ---------------------------------------------------------------------------------------------
// Real signals, in a child process.

#[cfg(unix)]
mod real_signals {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{mpsc as std_mpsc, Arc};
    use std::time::Duration;

    use tidings_runtime::{os_signals, Engine, EngineConfig, Launcher, Manifold};
    use tidings_runtime::{TaskWorker, WorkerError};

    /// Set in the child's environment: only then does `signal_child` do anything.
    const CHILD: &str = "TIDINGS_LAUNCHER_SIGNAL_CHILD";

    fn send(signal: &str, pid: u32) {
        let status = Command::new("sh")
            .args([
                "-c",
                "kill -s \"$1\" \"$2\"",
                "sh",
                signal,
                &pid.to_string(),
            ])
            .status()
            .expect("sh runs");
        assert!(status.success(), "kill -s {signal} {pid} failed");
    }

    #[test]
    fn real_sighup_reloads_and_real_sigterm_drains_a_child_process() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "real_signals::signal_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the test binary runs again as a child");
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id();
        let expect = |wanted: &str| loop {
            match received.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(wanted) => break,
                Ok(_) => {}
                Err(error) => {
                    send("KILL", pid);
                    panic!("child never printed {wanted:?}: {error}");
                }
            }
        };
        expect("child: ready");
        send("HUP", pid);
        expect("child: configuration 2");
        send("TERM", pid);
        expect("child: outcome 0");
        let status = child.wait().unwrap();
        assert!(status.success(), "child exited with {status}");
    }

    /// The child: a launcher on the process's own signals, printing what it sees.
    #[test]
    #[ignore = "run as a child process by real_sighup_reloads_and_real_sigterm_drains_a_child_process"]
    fn signal_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let signals = os_signals().unwrap();
            let engine = Engine::new(EngineConfig::default()).unwrap();
            let next = Arc::new(AtomicU32::new(2));
            let launcher = Launcher::new(engine, 1_u32, move || {
                let version = next.fetch_add(1, Ordering::SeqCst);
                async move { Ok(version) }
            });
            let config = launcher.config();
            launcher
                .engine()
                .install(
                    "announcer",
                    Manifold::new(move |_, _| {
                        let mut config = config.clone();
                        async move {
                            Ok(TaskWorker::spawn(|stop| async move {
                                loop {
                                    tokio::select! {
                                        () = stop.cancelled() => return Ok::<(), WorkerError>(()),
                                        changed = config.changed() => match changed {
                                            Some(version) => println!("child: configuration {version}"),
                                            None => return Ok(()),
                                        },
                                    }
                                }
                            }))
                        }
                    }),
                )
                .unwrap();
            println!("child: ready");
            let outcome = launcher.run(signals).await;
            println!("child: outcome {}", outcome.code());
            assert_eq!(outcome.code(), 0, "{outcome:?}");
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_reloading_manifold_restarts_only_when_its_own_part_changes() {
    let source = Arc::new(AtomicU32::new(1));
    let reading = source.clone();
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let launcher = Launcher::new(engine.clone(), Settings::version(1), move || {
        let version = reading.load(Ordering::SeqCst);
        async move { Ok::<_, LoadError>(Settings::version(version)) }
    });
    // The worker's part of the configuration: the version's tens.
    let part = launcher.config().project(|settings| settings.version / 10);
    let (started, mut starts) = mpsc::unbounded_channel();
    let manifold = Manifold::reloading(part, move |tens: &u32| {
        let (started, tens) = (started.clone(), *tens);
        Manifold::new(move |_, _| {
            let _ = started.send(tens);
            async {
                Ok(TaskWorker::spawn(|stop| async move {
                    stop.cancelled().await;
                    Ok(())
                }))
            }
        })
    });
    engine.install("worker", manifold).unwrap();
    let (signals, receiver) = mpsc::channel(8);
    let run = tokio::spawn(launcher.run(receiver));
    assert_eq!(starts.recv().await, Some(0));

    // Another part of the configuration changes: the worker goes on.
    source.store(2, Ordering::SeqCst);
    signals.send(Signal::Hangup).await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert!(
        starts.try_recv().is_err(),
        "restarted for a change not its own"
    );

    // Its part changes: it restarts once, with the new value.
    source.store(15, Ordering::SeqCst);
    signals.send(Signal::Hangup).await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(starts.try_recv().ok(), Some(1));
    assert!(starts.try_recv().is_err(), "restarted more than once");
    assert_eq!(engine.report().manifolds["worker"].start_count, 2);

    signals.send(Signal::Terminate).await.unwrap();
    assert_eq!(run.await.unwrap().code(), 0);
}
