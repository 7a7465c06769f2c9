//! Sustained load for the fault suites (`tests/faults.rs` on the machine's broker,
//! `tests/cluster.rs` on the test cluster): an RPC server on one transport, callers and casters
//! on another (separate transports act as separate processes), a tally of what the load saw,
//! and the figures and checks every fault scenario shares.
//!
//! The server offers `echo(n) -> n` for calls and `record(id)`, which counts each cast id, so a
//! scenario can tell a confirmed cast that was never handled (lost) from one handled twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tidings::rpc::{Endpoint, RpcClient, RpcError, RpcServer};
use tidings::{Context, RemoteError, Target, Transport, Version};

/// Version of the load's endpoint.
pub const VERSION: Version = Version::new(1, 0);

/// The shape of a load.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Topic served and called.
    pub topic: String,
    /// The server's name (its own queue is `topic.server`).
    pub server: String,
    /// Timeout of the load's calls.
    pub call_timeout: Duration,
    /// How far past its timeout a call may end (scheduling, a slow broker) before it "hung".
    pub margin: Duration,
    /// Tasks calling in a loop.
    pub callers: usize,
    /// Tasks casting in a loop.
    pub casters: usize,
    /// Pause between two requests of one task, so the broker is not flooded.
    pub pause: Duration,
    /// Publish calls and casts mandatory: a request no queue takes fails at once (`NoServer`)
    /// instead of being confirmed and dropped.
    pub mandatory: bool,
    /// How long [`Load::recovery`] probes before it gives up.
    pub probe_limit: Duration,
}

impl LoadSpec {
    /// Four callers and two casters on `topic`, calls with a 5 s timeout.
    pub fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            server: "s1".to_owned(),
            call_timeout: Duration::from_secs(5),
            margin: Duration::from_millis(1500),
            callers: 4,
            casters: 2,
            pause: Duration::from_millis(30),
            mandatory: false,
            probe_limit: Duration::from_secs(20),
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

/// A lock that survives a panicking holder: every update under these locks is a single step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

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
                *lock(&handled).entry(id).or_default() += 1;
                Ok::<_, RemoteError>(())
            }
        })
}

/// The kind of a failed call or cast, as the figures count them.
pub fn kind(error: &RpcError) -> &'static str {
    match error {
        RpcError::Timeout { .. } => "Timeout",
        RpcError::ReplyLost { .. } => "ReplyLost",
        RpcError::Transport(_) => "Transport",
        RpcError::Remote { .. } => "Remote",
        RpcError::MonitorTimeout { .. } => "MonitorTimeout",
        RpcError::NoServer { .. } => "NoServer",
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
    /// The first error of each kind, calls and casts alike, as its text.
    first_errors: Mutex<BTreeMap<&'static str, String>>,
    /// What each task is waiting for, and since when: a load that does not end says which
    /// operation hung.
    in_flight: Mutex<BTreeMap<usize, (String, Instant)>>,
}

impl Tally {
    fn begin(&self, task: usize, what: String) {
        lock(&self.in_flight).insert(task, (what, Instant::now()));
    }

    fn end(&self, task: usize) {
        lock(&self.in_flight).remove(&task);
    }

    /// The operations still running, oldest first.
    fn hanging(&self) -> Vec<String> {
        let mut ops: Vec<_> = lock(&self.in_flight).values().cloned().collect();
        ops.sort_by_key(|(_, since)| *since);
        ops.iter()
            .map(|(what, since)| format!("{what} for {:.1} s", since.elapsed().as_secs_f64()))
            .collect()
    }

    fn failed(&self, counts: &Mutex<BTreeMap<&'static str, usize>>, error: &RpcError) {
        let kind = kind(error);
        *lock(counts).entry(kind).or_default() += 1;
        lock(&self.first_errors)
            .entry(kind)
            .or_insert_with(|| error.to_string());
    }
}

/// A server on one transport and a load of calls and casts from another.
#[derive(Debug)]
pub struct Load {
    spec: LoadSpec,
    client_side: Transport,
    server_side: Transport,
    server: RpcServer,
    client: RpcClient,
    handled: Handled,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: tokio::time::Instant,
    recoveries: Vec<(String, Duration)>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally").finish_non_exhaustive()
    }
}

impl Load {
    /// Starts the server on `server_side`, checks one call, then starts the load on
    /// `client_side`.
    pub async fn start(server_side: Transport, client_side: Transport, spec: LoadSpec) -> Self {
        let handled = Handled::default();
        let server = RpcServer::builder(
            &server_side,
            Target::topic(&spec.topic).with_server(&spec.server),
        )
        .endpoint(endpoint(handled.clone()))
        .start()
        .await
        .unwrap_or_else(|e| panic!("the load's server on {} starts: {e}", spec.topic));
        let client = RpcClient::new(&client_side, Target::topic(&spec.topic))
            .version(VERSION)
            .timeout(spec.call_timeout)
            .mandatory(spec.mandatory);
        let _: u64 = client
            .call(&Context::new(), "echo", json!({"n": 0}))
            .await
            .unwrap_or_else(|e| panic!("served before any fault: {e}"));
        let mut load = Self {
            spec,
            client_side,
            server_side,
            server,
            client,
            handled,
            tally: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
            started: tokio::time::Instant::now(),
            recoveries: Vec::new(),
        };
        for task in 0..load.spec.callers {
            load.tasks.push(tokio::spawn(caller(
                task,
                load.client.clone(),
                load.spec.clone(),
                load.stop.clone(),
                load.tally.clone(),
            )));
        }
        let ids = Arc::new(AtomicU64::new(1));
        for task in load.spec.callers..load.spec.callers + load.spec.casters {
            load.tasks.push(tokio::spawn(caster(
                task,
                load.client.clone(),
                load.spec.pause,
                ids.clone(),
                load.stop.clone(),
                load.tally.clone(),
            )));
        }
        load
    }

    /// The load's client (calls with the load's timeout).
    pub fn client(&self) -> &RpcClient {
        &self.client
    }

    /// How many casts have been confirmed so far: a mark to take [`Load::confirmed_since`] from.
    pub fn confirmed_mark(&self) -> usize {
        lock(&self.tally.confirmed).len()
    }

    /// Ids of the casts confirmed since `mark`.
    pub fn confirmed_since(&self, mark: usize) -> Vec<u64> {
        lock(&self.tally.confirmed)
            .get(mark..)
            .map(<[u64]>::to_vec)
            .unwrap_or_default()
    }

    /// How long the load has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sleeps until `at` into the load.
    pub async fn at(&self, at: Duration) {
        tokio::time::sleep_until(self.started + at).await;
    }

    /// Time from `since` until a fresh call (1 s timeout, retried) succeeds, recorded as
    /// `what`. Gives up after the spec's `probe_limit`, so a server that never comes back fails
    /// the test instead of hanging it; the figure is then the limit.
    pub async fn recovery_since(&mut self, what: &str, since: Instant) -> Duration {
        let probe = self.client.prepare().timeout(Duration::from_secs(1));
        while since.elapsed() < self.spec.probe_limit {
            let served = probe
                .call::<u64>(&Context::new(), "echo", json!({"n": 0}))
                .await;
            if served.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = since.elapsed();
        self.recoveries.push((what.to_owned(), took));
        took
    }

    /// [`recovery_since`](Self::recovery_since) now.
    pub async fn recovery(&mut self, what: &str) -> Duration {
        self.recovery_since(what, Instant::now()).await
    }

    /// Stops the load now, waits for the confirmed casts to be handled, stops the server and
    /// closes both transports; returns what the load saw.
    pub async fn finish(self) -> Figures {
        self.stop.store(true, Ordering::SeqCst);
        // A call ends within its timeout; a cast within publish_recovery_timeout (30 s).
        let joined = tokio::time::timeout(
            Duration::from_secs(45),
            futures::future::join_all(self.tasks),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the load did not end 45 s after it was stopped; still waiting: {:?}",
                self.tally.hanging()
            )
        });
        for task in joined {
            task.expect("a load task panicked");
        }
        let confirmed = lock(&self.tally.confirmed).clone();
        let all_handled = || {
            let handled = lock(&self.handled);
            confirmed.iter().all(|id| handled.contains_key(id))
        };
        // Up to 30 s, but not 5 s past the last progress: a scenario that destroys messages
        // on purpose (an operator deleting a queue) would otherwise always wait it out.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut progress = (lock(&self.handled).len(), Instant::now());
        while !all_handled() && Instant::now() < deadline {
            let now_handled = lock(&self.handled).len();
            if now_handled != progress.0 {
                progress = (now_handled, Instant::now());
            } else if progress.1.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Late redeliveries would show up as duplicates now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = self.server.stop(Duration::from_secs(5)).await;
        self.client_side.close().await;
        self.server_side.close().await;

        let handled = lock(&self.handled).clone();
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
        Figures {
            call_timeout: self.spec.call_timeout,
            margin: self.spec.margin,
            calls_ok: tally.calls_ok.load(Ordering::SeqCst),
            wrong_results: tally.wrong_results.load(Ordering::SeqCst),
            calls_failed: lock(&tally.calls_failed).clone(),
            max_call: *lock(&tally.max_call),
            hung: lock(&tally.hung).clone(),
            confirmed: confirmed.len(),
            casts_failed: lock(&tally.casts_failed).clone(),
            first_errors: lock(&tally.first_errors).clone(),
            handled_ids: handled.len(),
            missing,
            duplicates,
            recoveries: self.recoveries,
            unrestored_queues: report.unrestored_queues,
        }
    }
}

/// What a load saw, from start to finish.
#[derive(Clone, Debug)]
pub struct Figures {
    /// Timeout of the load's calls.
    pub call_timeout: Duration,
    /// Past `call_timeout + margin`, a call "hung".
    pub margin: Duration,
    /// Calls answered with their own result.
    pub calls_ok: usize,
    /// Calls answered with another call's result.
    pub wrong_results: usize,
    /// Failed calls by kind ([`kind`]).
    pub calls_failed: BTreeMap<&'static str, usize>,
    /// The longest call.
    pub max_call: Duration,
    /// Calls that ended past their timeout plus the margin: how long, and how they ended.
    pub hung: Vec<String>,
    /// Casts whose `cast()` returned Ok (confirmed by the broker).
    pub confirmed: usize,
    /// Failed casts by kind.
    pub casts_failed: BTreeMap<&'static str, usize>,
    /// The first error of each kind (calls and casts), as its text.
    pub first_errors: BTreeMap<&'static str, String>,
    /// Cast ids the server handled.
    pub handled_ids: usize,
    /// Confirmed casts never handled.
    pub missing: Vec<u64>,
    /// Casts handled more than once: (id, times).
    pub duplicates: Vec<(u64, u32)>,
    /// Time until calls succeeded again, by fault.
    pub recoveries: Vec<(String, Duration)>,
    /// Queues the server was not consuming again when it stopped, with the last reason.
    pub unrestored_queues: Vec<(String, String)>,
}

impl Figures {
    /// Failed calls, all kinds.
    pub fn calls_failed_total(&self) -> usize {
        self.calls_failed.values().sum()
    }

    /// Failed casts, all kinds.
    pub fn casts_failed_total(&self) -> usize {
        self.casts_failed.values().sum()
    }

    /// The recoveries as `what 0.42 s, …`.
    pub fn recoveries_text(&self) -> String {
        self.recoveries
            .iter()
            .map(|(what, took)| format!("{what} {:.2} s", took.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Prints the figures in two lines tagged `[suite] scenario`.
    pub fn print(&self, suite: &str, scenario: &str) {
        println!(
            "[{suite}] {scenario}: calls ok {}, failed {} {:?}, wrong {}; max call {:.2} s \
             (timeout {} s)\n[{suite}] {scenario}: casts confirmed {} (failed {} {:?}), handled \
             {} ids, missing {}, duplicates {}; recovery: {}",
            self.calls_ok,
            self.calls_failed_total(),
            self.calls_failed,
            self.wrong_results,
            self.max_call.as_secs_f64(),
            self.call_timeout.as_secs(),
            self.confirmed,
            self.casts_failed_total(),
            self.casts_failed,
            self.handled_ids,
            self.missing.len(),
            self.duplicates.len(),
            self.recoveries_text(),
        );
    }

    /// What every fault scenario promises: the load ran; no call outlived its timeout (plus
    /// the margin); no call got another's result; calls failed only in the `allowed` ways.
    pub fn assert_sound(&self, allowed: &[&str]) {
        assert!(self.calls_ok > 0 && self.confirmed > 0, "the load ran");
        assert!(
            self.hung.is_empty(),
            "calls outlived their timeout {:?} (+{:?}): {:?}",
            self.call_timeout,
            self.margin,
            self.hung
        );
        assert_eq!(
            self.wrong_results, 0,
            "calls answered with another call's result"
        );
        let unexpected: Vec<_> = self
            .calls_failed
            .keys()
            .filter(|k| !allowed.contains(k))
            .collect();
        assert!(
            unexpected.is_empty(),
            "calls failed unexpectedly: {:?} (expected only {allowed:?})",
            self.calls_failed
        );
    }

    /// No confirmed cast went unhandled but those in `excused` (confirmed while a queue was
    /// being deleted), and at most `allowance` more that a fault destroyed on the broker (an
    /// operator deleting a queue with messages in it).
    pub fn assert_lost_at_most_excusing(&self, allowance: usize, excused: &[u64]) {
        let unexcused: Vec<u64> = self
            .missing
            .iter()
            .copied()
            .filter(|id| !excused.contains(id))
            .collect();
        assert!(
            unexcused.len() <= allowance,
            "confirmed casts never handled ({} besides {} confirmed during the deletion, of which \
             {allowance} were destroyed with a deleted queue): {unexcused:?}",
            unexcused.len(),
            self.missing.len() - unexcused.len(),
        );
    }

    /// No confirmed cast went unhandled, except at most `allowance` that a fault destroyed on
    /// the broker (an operator deleting a queue with messages in it).
    pub fn assert_lost_at_most(&self, allowance: usize) {
        assert!(
            self.missing.len() <= allowance,
            "confirmed casts never handled ({}, of which {allowance} were destroyed with a \
             deleted queue): {:?}",
            self.missing.len(),
            self.missing
        );
    }

    /// No cast was handled twice.
    pub fn assert_no_duplicates(&self) {
        assert!(
            self.duplicates.is_empty(),
            "casts handled more than once (id, times): {:?}",
            self.duplicates
        );
    }

    /// Every recovery took less than `limit`.
    pub fn assert_recovered_within(&self, limit: Duration) {
        for (what, took) in &self.recoveries {
            assert!(
                *took < limit,
                "not served again within {limit:?} after {what}: {took:?}"
            );
        }
    }
}

async fn caller(
    task: usize,
    client: RpcClient,
    spec: LoadSpec,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let started = Instant::now();
        tally.begin(task, format!("call echo({n})"));
        let result = client
            .call::<u64>(&Context::new(), "echo", json!({ "n": n }))
            .await;
        tally.end(task);
        let took = started.elapsed();
        {
            let mut max = lock(&tally.max_call);
            *max = (*max).max(took);
        }
        if took > spec.call_timeout + spec.margin {
            let outcome = match &result {
                Ok(_) => "ok".to_owned(),
                Err(error) => error.to_string(),
            };
            lock(&tally.hung).push(format!("{took:?}: {outcome}"));
        }
        match result {
            Ok(got) if got == n => {
                tally.calls_ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {
                tally.wrong_results.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => tally.failed(&tally.calls_failed, &error),
        }
        tokio::time::sleep(spec.pause).await;
    }
}

async fn caster(
    task: usize,
    client: RpcClient,
    pause: Duration,
    ids: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Ordering::SeqCst) {
        let id = ids.fetch_add(1, Ordering::SeqCst);
        tally.begin(task, format!("cast record({id})"));
        let result = client
            .cast(&Context::new(), "record", json!({ "id": id }))
            .await;
        tally.end(task);
        match result {
            Ok(()) => lock(&tally.confirmed).push(id),
            Err(error) => tally.failed(&tally.casts_failed, &error),
        }
        tokio::time::sleep(pause).await;
    }
}
