//! Fault injection on the machine's RabbitMQ: every connection closed under load, and the
//! broker's app stopped and started under load. Separate processes are separate transports:
//! one serves, one calls and casts.
//!
//! Asserted, for each fault: no call outlives its timeout (plus a margin), every cast whose
//! `cast()` returned Ok (a confirmed publish) is handled exactly once, and a fresh call succeeds
//! within 5 s of the broker's return.
//!
//! Topology: RabbitMQ loses the messages of transient (non-durable) queues when its app stops;
//! that is the broker's contract. So the stop_app scenario runs on a bus with
//! `amqp_durable_queues=true` (durable exchange and queues, persistent messages), where
//! "confirmed ⇒ handled exactly once" is a meaningful promise. The close_all_connections scenario
//! keeps the default transient topology: the broker and its queues stay up. It closes the
//! connections of the test's own vhost only, which is every connection the test has.
//!
//! A fault affects the whole broker, so the tests of this binary run one at a time (`SERIAL`).
//! Figures are printed with `cargo test -p tidings-suites --test faults -- --nocapture`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tidings::rpc::{Endpoint, RpcClient, RpcError, RpcServer};
use tidings::{Context, RemoteError, Target, Transport, Version};
use tidings_suites::{rabbitmqctl, Bus};

const TOPIC: &str = "faults";
const VERSION: Version = Version::new(1, 0);
/// Timeout of the load's calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How far past its timeout a call may end (scheduling, a slow broker) before it "hung".
const MARGIN: Duration = Duration::from_millis(1500);
/// How long the load runs, faults included.
const LOAD: Duration = Duration::from_secs(30);
const CALLERS: usize = 4;
const CASTERS: usize = 2;
/// Pause between two requests of one load task, so the broker is not flooded.
const PAUSE: Duration = Duration::from_millis(30);
/// The server must serve again this soon after the broker is back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(5);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `rabbitmqctl` off the runtime's (two) worker threads.
async fn ctl(args: &'static [&'static str]) {
    ctl_owned(args.iter().map(|a| (*a).to_owned()).collect()).await;
}

async fn ctl_owned(args: Vec<String>) {
    let done = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl(&args);
    })
    .await;
    if let Err(error) = done {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Starts the broker's app again when dropped, so a failed or panicking test never leaves the
/// broker stopped. Runs synchronously: it may run while unwinding.
struct RestartBroker;

impl Drop for RestartBroker {
    fn drop(&mut self) {
        for command in ["start_app", "await_startup"] {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", command])
                .status();
        }
    }
}

#[derive(Deserialize)]
struct Echo {
    n: u64,
}

#[derive(Deserialize)]
struct Record {
    id: u64,
}

/// Times each cast id was handled.
type Handled = Arc<Mutex<HashMap<u64, u32>>>;

/// `echo(n) -> n` for calls, `record(id)` counting each cast id.
fn endpoint(handled: Handled) -> Endpoint {
    Endpoint::new()
        .version(VERSION)
        .method("echo", |_ctx: Context, Echo { n }: Echo| async move {
            Ok::<_, RemoteError>(n)
        })
        .method("record", move |_ctx: Context, Record { id }: Record| {
            let handled = handled.clone();
            async move {
                *handled.lock().unwrap().entry(id).or_default() += 1;
                Ok::<_, RemoteError>(())
            }
        })
}

fn kind(error: &RpcError) -> &'static str {
    match error {
        RpcError::Timeout { .. } => "Timeout",
        RpcError::ReplyLost { .. } => "ReplyLost",
        RpcError::Transport(_) => "Transport",
        RpcError::Remote { .. } => "Remote",
        RpcError::MonitorTimeout { .. } => "MonitorTimeout",
        _ => "other",
    }
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    calls_ok: AtomicUsize,
    /// Calls that answered with another call's result.
    wrong_results: AtomicUsize,
    calls_failed: Mutex<BTreeMap<&'static str, usize>>,
    /// Longest call, and the outcome of each call past the limit.
    max_call: Mutex<Duration>,
    hung: Mutex<Vec<String>>,
    /// Ids of casts whose `cast()` returned Ok.
    confirmed: Mutex<Vec<u64>>,
    casts_failed: Mutex<BTreeMap<&'static str, usize>>,
}

/// A server on one transport and a load of calls and casts from another.
struct Rig {
    server_side: Transport,
    client_side: Transport,
    server: RpcServer,
    client: RpcClient,
    handled: Handled,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    load: Vec<tokio::task::JoinHandle<()>>,
    started: tokio::time::Instant,
    recoveries: Vec<(String, Duration)>,
}

impl Rig {
    async fn start(bus: &Bus) -> Self {
        let handled = Handled::default();
        let server_side = bus.transport().await;
        let server = RpcServer::builder(&server_side, Target::topic(TOPIC).with_server("s1"))
            .endpoint(endpoint(handled.clone()))
            .start()
            .await
            .expect("server starts");
        let client_side = bus.transport().await;
        let client = RpcClient::new(&client_side, Target::topic(TOPIC))
            .version(VERSION)
            .timeout(CALL_TIMEOUT);
        let _: u64 = client
            .call(&Context::new(), "echo", json!({"n": 0}))
            .await
            .expect("served before any fault");
        let mut rig = Self {
            server_side,
            client_side,
            server,
            client,
            handled,
            tally: Arc::default(),
            stop: Arc::default(),
            load: Vec::new(),
            started: tokio::time::Instant::now(),
            recoveries: Vec::new(),
        };
        for _ in 0..CALLERS {
            rig.load.push(tokio::spawn(caller(
                rig.client.clone(),
                rig.stop.clone(),
                rig.tally.clone(),
            )));
        }
        let ids = Arc::new(AtomicU64::new(1));
        for _ in 0..CASTERS {
            rig.load.push(tokio::spawn(caster(
                rig.client.clone(),
                ids.clone(),
                rig.stop.clone(),
                rig.tally.clone(),
            )));
        }
        rig
    }

    /// Sleeps until `at` into the load.
    async fn at(&self, at: Duration) {
        tokio::time::sleep_until(self.started + at).await;
    }

    /// Time until a fresh call (1 s timeout, retried) succeeds; recorded as `what`.
    async fn recovery(&mut self, what: &str) {
        let since = Instant::now();
        let probe = self.client.prepare().timeout(Duration::from_secs(1));
        // Bounded so a server that never comes back fails the test instead of hanging it.
        while since.elapsed() < Duration::from_secs(20) {
            let served = probe
                .call::<u64>(&Context::new(), "echo", json!({"n": 0}))
                .await;
            if served.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.recoveries.push((what.to_owned(), since.elapsed()));
    }

    /// Stops the load at `LOAD`, waits for the confirmed casts, and reports and checks.
    async fn finish(self, scenario: &str) {
        self.at(LOAD).await;
        self.stop.store(true, Ordering::SeqCst);
        // A call ends within its timeout; a cast within publish_recovery_timeout (30 s).
        let joined = tokio::time::timeout(
            Duration::from_secs(45),
            futures::future::join_all(self.load),
        )
        .await
        .expect("the load tasks end (a call or cast hung)");
        for task in joined {
            task.expect("a load task panicked");
        }
        let confirmed = self.tally.confirmed.lock().unwrap().clone();
        let all_handled = || {
            let handled = self.handled.lock().unwrap();
            confirmed.iter().all(|id| handled.contains_key(id))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !all_handled() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Late redeliveries would show up as duplicates now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.server.stop(Duration::from_secs(5)).await;
        self.client_side.close().await;
        self.server_side.close().await;

        let handled = self.handled.lock().unwrap().clone();
        let missing: Vec<u64> = confirmed
            .iter()
            .copied()
            .filter(|id| !handled.contains_key(id))
            .collect();
        let mut duplicates: Vec<(u64, u32)> = handled
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (*id, *n))
            .collect();
        duplicates.sort_unstable();
        let tally = &self.tally;
        let calls_failed = tally.calls_failed.lock().unwrap().clone();
        let casts_failed = tally.casts_failed.lock().unwrap().clone();
        let max_call = *tally.max_call.lock().unwrap();
        let hung = tally.hung.lock().unwrap().clone();
        let calls_ok = tally.calls_ok.load(Ordering::SeqCst);
        let wrong = tally.wrong_results.load(Ordering::SeqCst);
        let recoveries: Vec<String> = self
            .recoveries
            .iter()
            .map(|(what, took)| format!("{what} {:.2} s", took.as_secs_f64()))
            .collect();
        println!(
            "[faults] {scenario}: calls ok {calls_ok}, failed {} {calls_failed:?}, wrong {wrong}; \
             max call {:.2} s (timeout {} s)\n[faults] {scenario}: casts confirmed {} (failed {} {casts_failed:?}), \
             handled {} ids, missing {}, duplicates {}; recovery: {}",
            calls_failed.values().sum::<usize>(),
            max_call.as_secs_f64(),
            CALL_TIMEOUT.as_secs(),
            confirmed.len(),
            casts_failed.values().sum::<usize>(),
            handled.len(),
            missing.len(),
            duplicates.len(),
            recoveries.join(", "),
        );

        assert!(calls_ok > 0 && !confirmed.is_empty(), "the load ran");
        assert!(
            hung.is_empty(),
            "calls outlived their timeout {CALL_TIMEOUT:?} (+{MARGIN:?}): {hung:?}"
        );
        assert_eq!(wrong, 0, "calls answered with another call's result");
        let unexpected: Vec<_> = calls_failed
            .keys()
            .filter(|k| !matches!(**k, "Timeout" | "ReplyLost" | "Transport"))
            .collect();
        assert!(
            unexpected.is_empty(),
            "calls failed unexpectedly: {calls_failed:?}"
        );
        assert!(
            missing.is_empty(),
            "confirmed casts never handled: {missing:?}"
        );
        assert!(
            duplicates.is_empty(),
            "casts handled more than once (id, times): {duplicates:?}"
        );
        for (what, took) in &self.recoveries {
            assert!(
                *took < RECOVERY_LIMIT,
                "not served again within {RECOVERY_LIMIT:?} after {what}: {took:?}"
            );
        }
    }
}

async fn caller(client: RpcClient, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let started = Instant::now();
        let result = client
            .call::<u64>(&Context::new(), "echo", json!({ "n": n }))
            .await;
        let took = started.elapsed();
        {
            let mut max = tally.max_call.lock().unwrap();
            *max = (*max).max(took);
        }
        if took > CALL_TIMEOUT + MARGIN {
            let outcome = match &result {
                Ok(_) => "ok".to_owned(),
                Err(error) => error.to_string(),
            };
            tally
                .hung
                .lock()
                .unwrap()
                .push(format!("{took:?}: {outcome}"));
        }
        match result {
            Ok(got) if got == n => {
                tally.calls_ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {
                tally.wrong_results.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => {
                *tally
                    .calls_failed
                    .lock()
                    .unwrap()
                    .entry(kind(&error))
                    .or_default() += 1;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}

async fn caster(client: RpcClient, ids: Arc<AtomicU64>, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::SeqCst) {
        let id = ids.fetch_add(1, Ordering::SeqCst);
        match client
            .cast(&Context::new(), "record", json!({ "id": id }))
            .await
        {
            Ok(()) => tally.confirmed.lock().unwrap().push(id),
            Err(error) => {
                *tally
                    .casts_failed
                    .lock()
                    .unwrap()
                    .entry(kind(&error))
                    .or_default() += 1;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_all_connections_under_load() {
    let _serial = SERIAL.lock().await;
    let bus = Bus::amqp();
    let vhost = bus.vhost().expect("an AMQP bus").to_owned();
    let mut rig = Rig::start(&bus).await;
    for (i, at) in [8, 18].into_iter().enumerate() {
        rig.at(Duration::from_secs(at)).await;
        ctl_owned(vec![
            "close_all_connections".into(),
            "-p".into(),
            vhost.clone(),
            "tidings fault injection".into(),
        ])
        .await;
        rig.recovery(&format!("close#{}", i + 1)).await;
    }
    rig.finish("close_all_connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_start_app_under_load() {
    let _serial = SERIAL.lock().await;
    let bus = Bus::amqp_with_query("amqp_durable_queues=true");
    let mut rig = Rig::start(&bus).await;
    rig.at(Duration::from_secs(8)).await;
    // Declared after the bus: dropped first, so the broker is back before the vhost is deleted.
    let restart = RestartBroker;
    ctl(&["stop_app"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ctl(&["start_app"]).await;
    ctl(&["await_startup"]).await;
    std::mem::forget(restart);
    rig.recovery("start_app").await;
    rig.finish("stop_app/start_app (durable)").await;
}
