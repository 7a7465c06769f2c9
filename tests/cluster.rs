//! Fault injection on a 3-node RabbitMQ cluster with quorum queues, and TLS, as production runs
//! the bus: the test cluster of `tests/cluster/rabbit-cluster.sh` (see `tidings_suites::cluster`),
//! never the machine's own broker.
//!
//! Each fault scenario runs a server on one transport and callers and casters on another
//! (`tidings_suites::load`), all on the multi-host URL with `rabbit_quorum_queue=true`, and
//! asserts: no confirmed cast lost (except messages an operator destroyed by deleting a queue,
//! which RabbitMQ counts for us), no call outlives its timeout plus a margin, calls succeed
//! again within `RECOVERY_BOUND` of the fault (the goal is `RECOVERY_GOAL`), and no reconnect
//! storm: connections the nodes accepted during the fault, per second, stay under `STORM`
//! (counted from the nodes' own logs, so they include every process on the cluster, and the
//! suite is the only one there).
//! Duplicates are counted and printed. Each scenario prints a table of its figures:
//! `cargo test -p tidings-suites --test cluster -- --nocapture`.
//!
//! A fault affects the whole cluster, so the tests of this binary run one at a time (`SERIAL`);
//! a [`Restore`] guard starts killed nodes again even when a test fails.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tidings::rpc::{Endpoint, RpcClient, RpcServer};
use tidings::transport::{Destination, OutgoingMessage, TransportError};
use tidings::{Context, Target, Transport};
use tidings_suites::cluster::{blocking, cluster, ClusterVhost, Restore, NODES};
use tidings_suites::eventually;
use tidings_suites::load::{Figures, Load, LoadSpec};
use tidings_suites::python::rpc_client_at;
use tokio::io::{AsyncBufReadExt, BufReader};

/// When the fault comes, into the load.
const FAULT_AT: Duration = Duration::from_secs(3);
/// How long after a fault its connections are counted, the load running throughout.
const FAULT_WINDOW: Duration = Duration::from_secs(8);
/// Calls must succeed again within this of a fault…
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// …and should within this (printed against each figure).
const RECOVERY_GOAL: Duration = Duration::from_secs(5);
/// More connections per second than this during a fault is a reconnect storm.
const STORM: f64 = 20.0;
/// The broker writes its log about a second late; connection counts wait this long.
const LOG_DELAY: Duration = Duration::from_millis(1500);
/// How calls of the load may fail during a fault.
const CALL_FAILURES: &[&str] = &["Timeout", "ReplyLost", "Transport", "NoServer"];

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// What the library logs, captured so a test can check what an operator would read.

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The same lines in a file, for the post-mortem of a failed run:
/// `$TDC_STATE/cluster-suite.log`.
static LOG_FILE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        if let Some(file) = LOG_FILE.get() {
            let _ = file.lock().unwrap().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the library's info lines and all warnings and errors (or `RUST_LOG`) of every test
/// of this binary, once; marks where the test `what` starts.
fn capture_logs(what: &str) {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let path = cluster().state().join("cluster-suite.log");
        if let Ok(file) = std::fs::File::create(&path) {
            let _ = LOG_FILE.set(Mutex::new(file));
        }
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tidings=info"))
            .add_directive(
                tidings::transport::amqp::QUIET_LAPIN_RETURNS
                    .parse()
                    .expect("a valid directive"),
            );
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| LogSink)
            .try_init();
    });
    if let Some(file) = LOG_FILE.get() {
        let _ = writeln!(file.lock().unwrap(), "=== {what}");
    }
}

/// Captured log lines, from byte `from` on, that contain every one of `needles`.
fn logged_since(from: usize, needles: &[&str]) -> Vec<String> {
    let log = LOG.lock().unwrap();
    String::from_utf8_lossy(&log[from.min(log.len())..])
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}

fn log_mark() -> usize {
    LOG.lock().unwrap().len()
}

// ---------------------------------------------------------------------------------------------
// Figures.

/// A span of wall-clock time during a fault, whose connections the nodes' logs count.
#[derive(Clone, Copy, Debug)]
struct Window {
    from: SystemTime,
    to: SystemTime,
}

impl Window {
    fn open() -> (SystemTime, Instant) {
        (SystemTime::now(), Instant::now())
    }

    fn close(from: SystemTime) -> Self {
        Self {
            from,
            to: SystemTime::now(),
        }
    }

    fn secs(&self) -> f64 {
        self.to
            .duration_since(self.from)
            .unwrap_or_default()
            .as_secs_f64()
    }

    /// Connections the nodes accepted in the window, and per second.
    async fn connections(self) -> (usize, f64) {
        // The broker's log lags: let it catch up with the end of the window.
        if let Ok(since_end) = SystemTime::now().duration_since(self.to) {
            tokio::time::sleep(LOG_DELAY.saturating_sub(since_end)).await;
        }
        let count = blocking(move || cluster().connections_accepted(self.from, self.to)).await;
        (count, count as f64 / self.secs().max(0.001))
    }

    /// Log lines of the nodes in the window that contain `needle`.
    async fn broker_lines(self, needle: &'static str) -> Vec<String> {
        blocking(move || {
            cluster()
                .log_lines_since(self.from, needle)
                .into_iter()
                .filter(|(at, _)| *at < self.to)
                .map(|(_, line)| line)
                .collect()
        })
        .await
    }
}

/// `text`, cut to `most` characters.
fn cut(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A scenario's table of figures, printed with `--nocapture`.
struct Table {
    scenario: String,
    started: Instant,
    rows: Vec<(String, String)>,
    /// Rows printed last: diagnostics gathered during the fault.
    notes: Vec<(String, String)>,
}

impl Table {
    fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            started: Instant::now(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn row(&mut self, what: impl Into<String>, value: impl Into<String>) {
        self.rows.push((what.into(), value.into()));
    }

    fn note(&mut self, what: impl Into<String>, value: impl Into<String>) {
        self.notes.push((what.into(), value.into()));
    }

    fn load(&mut self, figures: &Figures, destroyed: usize) {
        self.row(
            "calls ok / failed (by kind) / wrong result",
            format!(
                "{} / {} {:?} / {}",
                figures.calls_ok,
                figures.calls_failed_total(),
                figures.calls_failed,
                figures.wrong_results
            ),
        );
        self.row(
            "longest call (timeout + margin)",
            format!(
                "{:.2} s ({:.1} s + {:.1} s), hung: {}",
                figures.max_call.as_secs_f64(),
                figures.call_timeout.as_secs_f64(),
                figures.margin.as_secs_f64(),
                figures.hung.len()
            ),
        );
        self.row(
            "casts confirmed / failed (by kind)",
            format!(
                "{} / {} {:?}",
                figures.confirmed,
                figures.casts_failed_total(),
                figures.casts_failed
            ),
        );
        for (kind, error) in &figures.first_errors {
            self.row(format!("first {kind} error"), cut(error, 160));
        }
        self.row(
            "confirmed casts lost",
            format!(
                "{} (destroyed with a deleted queue, per RabbitMQ: {destroyed})",
                figures.missing.len()
            ),
        );
        self.row(
            "casts handled twice (duplicates)",
            figures.duplicates.len().to_string(),
        );
        for (what, took) in &figures.recoveries {
            let verdict = if *took < RECOVERY_GOAL {
                "within goal"
            } else {
                "OVER GOAL"
            };
            self.row(
                format!("served again after {what}"),
                format!(
                    "{:.2} s ({verdict} {} s)",
                    took.as_secs_f64(),
                    RECOVERY_GOAL.as_secs()
                ),
            );
        }
        if !figures.unrestored_queues.is_empty() {
            self.row(
                "queues not consumed at stop",
                format!("{:?}", figures.unrestored_queues),
            );
        }
    }

    fn connections(&mut self, what: &str, window: Window, (count, rate): (usize, f64)) {
        self.row(
            format!("connections accepted, {what}"),
            format!("{count} in {:.1} s = {rate:.1}/s", window.secs()),
        );
    }

    fn print(&mut self) {
        self.row(
            "scenario ran (set-up and restore apart)",
            format!("{:.1} s", self.started.elapsed().as_secs_f64()),
        );
        let rows: Vec<_> = self.rows.iter().chain(&self.notes).collect();
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!("\n[cluster] ── {} ──\n", self.scenario);
        for (what, value) in rows {
            out.push_str(&format!("[cluster]   {what:<width$}  {value}\n"));
        }
        println!("{out}");
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up shared by the scenarios.

/// The cluster (started if need be), this test's vhost, the guard that restarts killed nodes
/// and the one that prints the library's log when the test fails; drop order: the log, the
/// restart, then the vhost.
async fn setup(what: &'static str) -> (ClusterVhost, Restore, LogOnFailure) {
    let started = Instant::now();
    blocking(cluster).await;
    capture_logs(what);
    let log = LogOnFailure(log_mark());
    let vhost = blocking(move || ClusterVhost::new(what)).await;
    println!(
        "[cluster] {what}: vhost {} ready in {:.1} s",
        vhost.name(),
        started.elapsed().as_secs_f64()
    );
    (vhost, Restore, log)
}

/// Prints, when its test panics, the last lines the library logged since the test began: a
/// failed run in CI then says what the library saw, not only which figure missed.
struct LogOnFailure(usize);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        const LAST: usize = 60;
        let lines = logged_since(self.0, &[]);
        let skipped = lines.len().saturating_sub(LAST);
        println!(
            "[cluster] the library's log during this test ({skipped} earlier lines left out):"
        );
        for line in &lines[skipped..] {
            println!("[cluster]   {}", cut(line, 400));
        }
    }
}

/// A transport on the cluster's multi-host URL with quorum queues.
async fn connect(vhost: &str) -> Transport {
    let url = cluster().url(vhost, "rabbit_quorum_queue=true");
    Transport::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

async fn start_load(vhost: &str, spec: LoadSpec) -> Load {
    let server_side = connect(vhost).await;
    let client_side = connect(vhost).await;
    Load::start(server_side, client_side, spec).await
}

fn spec(topic: &str) -> LoadSpec {
    LoadSpec {
        // Just past the bound: a figure over it fails the test either way.
        probe_limit: RECOVERY_BOUND + Duration::from_secs(1),
        ..LoadSpec::new(topic)
    }
}

async fn leader(queue: &'static str, vhost: &str) -> String {
    let vhost = vhost.to_owned();
    blocking(move || cluster().leader(queue, &vhost)).await
}

async fn kill(node: &str) {
    let node = node.to_owned();
    blocking(move || cluster().kill(&node)).await;
}

async fn ctl(args: Vec<String>) -> String {
    blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster().ctl("any", &args)
    })
    .await
}

async fn delete_queue(queue: &'static str, vhost: &str) -> usize {
    let vhost = vhost.to_owned();
    blocking(move || cluster().delete_queue(queue, &vhost)).await
}

/// Waits until the load's client is served again after the fault that began at `since`. When
/// that misses the goal, also tries a fresh transport (new connections and channels): this tells
/// a connection or channel stuck in a bad state from a cluster that does not serve at all.
async fn recover(
    load: &mut Load,
    what: &str,
    since: Instant,
    vhost: &str,
    topic: &str,
    table: &mut Table,
) {
    let took = load.recovery_since(what, since).await;
    if took < RECOVERY_GOAL {
        return;
    }
    let started = Instant::now();
    let transport = connect(vhost).await;
    let client = RpcClient::new(&transport, Target::topic(topic))
        .version(tidings_suites::load::VERSION)
        .timeout(Duration::from_secs(2));
    let outcome = client
        .call::<u64>(&Context::new(), "echo", json!({"n": 0}))
        .await;
    transport.close().await;
    table.note(
        format!("fresh transport after {what}"),
        match outcome {
            Ok(_) => format!(
                "served in {:.2} s while the load's transport was not",
                started.elapsed().as_secs_f64()
            ),
            Err(error) => format!("not served either: {error}"),
        },
    );
}

/// The checks every load scenario shares.
fn assert_load(figures: &Figures, destroyed: usize) {
    figures.assert_sound(CALL_FAILURES);
    figures.assert_lost_at_most(destroyed);
    figures.assert_recovered_within(RECOVERY_BOUND);
}

fn assert_no_storm(what: &str, (count, rate): (usize, f64)) {
    assert!(
        rate < STORM,
        "reconnect storm {what}: {count} connections, {rate:.1}/s (limit {STORM}/s)"
    );
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// 1. `kill -9` of the node that leads the RPC server's topic queue, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_the_topic_queue_leader_under_load() {
    const TOPIC: &str = "cluster-kill";
    let _serial = SERIAL.lock().await;
    let (vhost, _restore, _log) = setup("kill").await;
    let mut table = Table::new("1. kill -9 of the node leading the topic queue");
    let mut load = start_load(vhost.name(), spec(TOPIC)).await;
    load.at(FAULT_AT).await;

    let victim = leader(TOPIC, vhost.name()).await;
    table.row("killed", victim.clone());
    let (from, since) = Window::open();
    kill(&victim).await;
    let what = format!("kill -9 {victim}");
    recover(&mut load, &what, since, vhost.name(), TOPIC, &mut table).await;
    tokio::time::sleep_until((since + FAULT_WINDOW).into()).await;
    let window = Window::close(from);
    let figures = load.finish().await;
    let connections = window.connections().await;

    table.load(&figures, 0);
    table.connections("after the kill", window, connections);
    table.print();
    assert_load(&figures, 0);
    assert_no_storm("after the kill", connections);
}

/// 2. The killed leader restarted (and back in the queue), then another node killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_leader_then_another_node_killed_under_load() {
    const TOPIC: &str = "cluster-second-kill";
    /// How long after the first kill its connections are counted, before the restart.
    const FIRST_KILL_WINDOW: Duration = Duration::from_secs(5);
    let _serial = SERIAL.lock().await;
    let (vhost, _restore, _log) = setup("second-kill").await;
    let mut table = Table::new("2. the leader killed and restarted, then another node killed");
    let mut load = start_load(vhost.name(), spec(TOPIC)).await;
    load.at(FAULT_AT).await;

    let first = leader(TOPIC, vhost.name()).await;
    let (from, since) = Window::open();
    kill(&first).await;
    let what = format!("kill -9 {first}");
    recover(&mut load, &what, since, vhost.name(), TOPIC, &mut table).await;
    // Counted over a span of its own, not only until served: a storm may start later.
    tokio::time::sleep_until((since + FIRST_KILL_WINDOW).into()).await;
    let first_window = Window::close(from);

    // Restarted under load; it counts only once the queue has it online again.
    let restarted = Instant::now();
    {
        let (node, vhost) = (first.clone(), vhost.name().to_owned());
        blocking(move || {
            cluster().restart(&node);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cluster().online_members(TOPIC, &vhost).contains(&node) {
                assert!(
                    Instant::now() < deadline,
                    "{node} is not back in {TOPIC} 30 s after its restart"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await;
    }
    let rejoined = restarted.elapsed();

    // Another node: the queue's leader now, unless the restarted node leads again.
    let current = leader(TOPIC, vhost.name()).await;
    let second = if current != first {
        current
    } else {
        NODES
            .iter()
            .find(|n| **n != first)
            .map(|n| (*n).to_owned())
            .expect("three nodes")
    };
    let (from, since) = Window::open();
    kill(&second).await;
    let what = format!("kill -9 {second}");
    recover(&mut load, &what, since, vhost.name(), TOPIC, &mut table).await;
    tokio::time::sleep_until((since + FAULT_WINDOW).into()).await;
    let second_window = Window::close(from);
    let figures = load.finish().await;
    let first_connections = first_window.connections().await;
    let second_connections = second_window.connections().await;

    table.row(
        "killed, restarted; then killed",
        format!("{first}; {second}"),
    );
    table.load(&figures, 0);
    table.row(
        format!("{first} restarted and back in the queue"),
        format!("{:.1} s", rejoined.as_secs_f64()),
    );
    table.connections(
        &format!("after the kill of {first}"),
        first_window,
        first_connections,
    );
    table.connections(
        &format!("after the kill of {second}"),
        second_window,
        second_connections,
    );
    table.print();
    assert_load(&figures, 0);
    assert_no_storm(&format!("after the kill of {first}"), first_connections);
    assert_no_storm(&format!("after the kill of {second}"), second_connections);
}

/// 3. An operator deletes the server's topic queue (`rabbitmqctl delete_queue`) while it
/// serves: the server declares it again and consumes from it, without reconnecting.
/// Requests are mandatory, so while no queue exists they fail fast instead of vanishing. A
/// publish the broker leaves unconfirmed while the queue goes must not hold the requests
/// behind it: their channel is retired once the confirm is overdue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_deletes_the_topic_queue_under_load() {
    const TOPIC: &str = "cluster-delete";
    let _serial = SERIAL.lock().await;
    let (vhost, _restore, _log) = setup("delete").await;
    let mut table = Table::new("3. operator deletes the server's topic queue");
    let mut load = start_load(
        vhost.name(),
        LoadSpec {
            mandatory: true,
            ..spec(TOPIC)
        },
    )
    .await;
    load.at(FAULT_AT).await;

    let (from, since) = Window::open();
    let mark = load.confirmed_mark();
    let destroyed = delete_queue(TOPIC, vhost.name()).await;
    // RabbitMQ counts the messages the deletion destroyed at one instant; a cast the dying
    // quorum queue confirmed while the deletion ran is destroyed with it, uncounted.
    let during_deletion = load.confirmed_since(mark);
    // The clock starts when the queue is gone: rabbitmqctl's own start-up (seconds on a busy
    // machine, while the queue still serves) is not the server's to recover from.
    table.row(
        "delete_queue took (rabbitmqctl)",
        format!("{:.2} s", since.elapsed().as_secs_f64()),
    );
    load.recovery("delete_queue").await;
    tokio::time::sleep_until((since + FAULT_WINDOW).into()).await;
    let window = Window::close(from);
    let figures = load.finish().await;
    let connections = window.connections().await;

    table.load(&figures, destroyed);
    table.connections("after the delete", window, connections);
    table.print();
    figures.assert_sound(CALL_FAILURES);
    figures.assert_lost_at_most_excusing(destroyed, &during_deletion);
    figures.assert_recovered_within(RECOVERY_BOUND);
    assert_no_storm("after the delete", connections);
    assert!(
        figures.unrestored_queues.is_empty(),
        "the server still missed queues when it stopped: {:?}",
        figures.unrestored_queues
    );
}

/// 3b. A quorum queue loses its majority (two of its three nodes killed). RabbitMQ 3.10 parks
/// a channel whose first publish to such a queue waits for a leader, and every later publish on
/// that channel waits with it. Once that confirm is overdue the channel is retired, even when
/// its publisher gave up before: a publish begun after that, to a healthy destination, is
/// answered at once on a new channel, while the parked one keeps waiting for its own confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_without_quorum_does_not_hold_the_publishes_behind_it() {
    const VICTIMS: [&str; 2] = ["tdb", "tdc"];
    let _serial = SERIAL.lock().await;
    let (vhost, _restore, _log) = setup("minority").await;
    let mut table = Table::new("3b. a quorum queue loses its majority");
    let note = || OutgoingMessage::new(br#"{"n": 1}"#.to_vec(), "application/json");
    let mandatory = |message: OutgoingMessage| OutgoingMessage {
        mandatory: true,
        ..message
    };
    let stalled = Destination::Notification {
        exchange: "openstack".to_owned(),
        topic: "cluster-minority".to_owned(),
        priority: "info".to_owned(),
    };
    // Declared with its three members while every node is up.
    let declaring = connect(vhost.name()).await;
    declaring
        .publish(&stalled, note())
        .await
        .expect("a queue with all its members takes a notification");
    declaring.close().await;
    for node in VICTIMS {
        kill(node).await;
    }
    table.row("killed", VICTIMS.join(", "));

    // On the URL's first host, the one left up. The first publish to the queue on each
    // channel parks it: one on the shared channel, one on the mandatory requests' channel.
    // The mandatory one is given up after a second, as a call with a short timeout would be,
    // before its confirm is overdue: the channel must be retired all the same.
    let publishing = connect(vhost.name()).await;
    let park = |message: OutgoingMessage, give_up: Duration| {
        let publishing = publishing.clone();
        let stalled = stalled.clone();
        tokio::spawn(async move {
            tokio::time::timeout(give_up, publishing.publish(&stalled, message)).await
        })
    };
    let parked = [
        park(note(), Duration::from_secs(60)),
        park(mandatory(note()), Duration::from_secs(1)),
    ];
    let waited = Instant::now();
    let retired = || publishing.stats().publish_channels_retired;
    assert!(
        eventually(Duration::from_secs(15), || retired() >= 2).await,
        "{} publishing channels retired 15 s after publishes to a queue without quorum",
        retired(),
    );
    table.row(
        "both channels retired after",
        format!("{:.2} s", waited.elapsed().as_secs_f64()),
    );

    // Casts no queue takes: the broker answers them without any queue's help, with a
    // confirm, and for the mandatory one a return.
    let healthy = Destination::Rpc {
        exchange: "openstack".to_owned(),
        routing_key: "cluster-minority-nobody".to_owned(),
    };
    let within = |published| tokio::time::timeout(Duration::from_secs(10), published);
    let started = Instant::now();
    let plain = within(publishing.publish(&healthy, note())).await;
    table.row(
        "later publish confirmed in",
        format!("{:.3} s", started.elapsed().as_secs_f64()),
    );
    let started = Instant::now();
    let returned = within(publishing.publish(&healthy, mandatory(note()))).await;
    table.row(
        "later mandatory publish returned in",
        format!("{:.3} s", started.elapsed().as_secs_f64()),
    );
    let still_parked = parked.iter().filter(|p| !p.is_finished()).count();
    table.row(
        "publishes still parked (of 2; one given up)",
        still_parked.to_string(),
    );
    table.print();
    match plain {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("a publish to a healthy destination failed: {error}"),
        Err(_) => panic!("a publish to a healthy destination waited 10 s behind a parked one"),
    }
    match returned {
        Ok(Err(TransportError::Unroutable { .. })) => {}
        Ok(other) => panic!("a mandatory publish no queue takes was not returned: {other:?}"),
        Err(_) => panic!("a mandatory publish waited 10 s behind a parked one"),
    }
    for parked in parked {
        parked.abort();
    }
    publishing.close().await;
}

/// 4. While we are disconnected, a peer declares the server's topic queue with other
/// arguments (a classic durable queue, as a peer without `rabbit_quorum_queue` does). When we
/// are back, every declaration fails: that must back off (no reconnect or redeclare storm) and
/// the error must name the queue and the argument. The operator then deletes the queue and
/// service resumes.
///
/// "Disconnected" is made to last: our user loses its permissions on the vhost and our
/// connections are closed, so our reconnects are refused until the peer is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_redeclares_the_queue_with_other_arguments_while_we_are_away() {
    const TOPIC: &str = "cluster-redeclare";
    /// How long the mismatched queue stays before the operator deletes it.
    const MISMATCH: Duration = Duration::from_secs(6);
    let _serial = SERIAL.lock().await;
    let (vhost, _restore, _log) = setup("redeclare").await;
    let mut table = Table::new("4. peer redeclares the topic queue (classic) while we are away");
    let name = vhost.name().to_owned();
    let peer_user = format!("peer-{name}");
    {
        let (name, peer_user) = (name.clone(), peer_user.clone());
        blocking(move || {
            let c = cluster();
            c.ctl("any", &["add_user", &peer_user, "peer"]);
            c.ctl(
                "any",
                &["set_permissions", "-p", &name, &peer_user, ".*", ".*", ".*"],
            );
        })
        .await;
    }
    // The user goes with the test, even a failed one (the vhost goes with its own guard).
    let _peer_user = DeleteUser(peer_user.clone());
    let mut load = start_load(
        vhost.name(),
        LoadSpec {
            mandatory: true,
            ..spec(TOPIC)
        },
    )
    .await;
    load.at(FAULT_AT).await;

    // We are shut out and our connections closed.
    let away = Instant::now();
    ctl(vec![
        "clear_permissions".into(),
        "-p".into(),
        name.clone(),
        "guest".into(),
    ])
    .await;
    ctl(vec![
        "close_all_connections".into(),
        "-p".into(),
        name.clone(),
        "tidings fault injection".into(),
    ])
    .await;
    // Our quorum queue goes, and the peer declares a classic durable one in its place (its
    // server declares and binds it, then stops; the queue stays).
    let destroyed_ours = delete_queue(TOPIC, &name).await;
    let peer_url = cluster()
        .url(&name, "amqp_durable_queues=true")
        .replace("guest:guest@", &format!("{peer_user}:peer@"));
    let peer = Transport::connect(&peer_url)
        .await
        .unwrap_or_else(|e| panic!("the peer connects to {peer_url}: {e}"));
    let peer_server = RpcServer::builder(&peer, Target::topic(TOPIC).with_server("peer"))
        .endpoint(Endpoint::new())
        .start()
        .await
        .expect("the peer declares its queues");
    peer_server.stop(Duration::from_secs(2)).await;
    peer.close().await;

    // We may come back: every declaration of our quorum queue now fails.
    let mark = log_mark();
    let (from, _) = Window::open();
    ctl(vec![
        "set_permissions".into(),
        "-p".into(),
        name.clone(),
        "guest".into(),
        ".*".into(),
        ".*".into(),
        ".*".into(),
    ])
    .await;
    let away_for = away.elapsed();
    tokio::time::sleep(MISMATCH).await;
    let window = Window::close(from);

    // The operator's fix.
    let (_, since) = Window::open();
    let destroyed_theirs = delete_queue(TOPIC, &name).await;
    load.recovery_since("the operator deleted the mismatched queue", since)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let figures = load.finish().await;
    let connections = window.connections().await;
    let refusals = window.broker_lines("inequivalent arg").await;
    let refusals_of_ours: Vec<&String> = refusals
        .iter()
        .filter(|line| line.contains(&format!("'{TOPIC}'")))
        .collect();
    let declare_rate = refusals_of_ours.len() as f64 / window.secs();
    // The library's own words (target `tidings::…`), not lapin's.
    let named = logged_since(mark, &[" tidings::", TOPIC, "x-queue-type"]);
    let destroyed = destroyed_ours + destroyed_theirs;

    table.load(&figures, destroyed);
    table.row(
        "shut out (permissions cleared)",
        format!("{:.1} s", away_for.as_secs_f64()),
    );
    table.connections("while the queue mismatched", window, connections);
    table.row(
        "declarations refused while mismatched",
        format!(
            "{} in {:.1} s = {declare_rate:.1}/s",
            refusals_of_ours.len(),
            window.secs()
        ),
    );
    table.row(
        "library errors naming queue + argument",
        format!(
            "{}; first: {}",
            named.len(),
            named.first().map_or("(none)", String::as_str)
        ),
    );
    table.print();
    assert_load(&figures, destroyed);
    assert_no_storm("while the queue mismatched", connections);
    assert!(
        declare_rate < STORM,
        "declarations of {TOPIC} retried without backoff: {} in {:.1} s",
        refusals_of_ours.len(),
        window.secs()
    );
    assert!(
        !refusals_of_ours.is_empty(),
        "the broker never refused our declaration of {TOPIC}: the fault did not happen"
    );
    assert!(
        !named.is_empty(),
        "no error logged naming the queue {TOPIC} and the argument x-queue-type; captured:\n{}",
        logged_since(mark, &[]).join("\n")
    );
}

/// Deletes a RabbitMQ user of the cluster when dropped.
struct DeleteUser(String);

impl Drop for DeleteUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new(tidings_suites::cluster::Cluster::script_path())
            .args(["ctl", "any", "-q", "delete_user", &self.0])
            .envs(cluster().state_env())
            .output();
    }
}

/// 6. Classic queues (no `rabbit_quorum_queue`): kill -9 of the node they live on. Both
/// transports are on the URL's first host, where the server declared its transient queues
/// (RabbitMQ puts a classic queue on the declaring client's node). They fail over to the next
/// host and declare the queues there. What the transient queues held is gone with the node,
/// which is RabbitMQ's contract for them, so confirmed casts are counted, not required; none may
/// be handled twice, and calls must be served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_fail_over_when_their_node_dies() {
    const TOPIC: &str = "cluster-classic";
    const VICTIM: &str = "tda";
    let _serial = SERIAL.lock().await;
    let (vhost, _restore, _log) = setup("classic").await;
    let mut table = Table::new("6. classic queues: kill -9 of the node they live on");
    let url = cluster().url(vhost.name(), "");
    let (server_side, client_side) = (
        Transport::connect(&url).await.expect("the cluster answers"),
        Transport::connect(&url).await.expect("the cluster answers"),
    );
    let mut load = Load::start(server_side, client_side, spec(TOPIC)).await;
    load.at(FAULT_AT).await;

    table.row("killed", VICTIM.to_owned());
    let (from, since) = Window::open();
    kill(VICTIM).await;
    load.recovery_since(&format!("kill -9 {VICTIM}"), since)
        .await;
    tokio::time::sleep_until((since + FAULT_WINDOW).into()).await;
    let window = Window::close(from);
    let figures = load.finish().await;
    let connections = window.connections().await;

    table.load(&figures, 0);
    table.row(
        "of which lost with the node (transient queues)",
        figures.missing.len().to_string(),
    );
    table.connections("after the kill", window, connections);
    table.print();
    figures.assert_sound(CALL_FAILURES);
    figures.assert_no_duplicates();
    figures.assert_recovered_within(RECOVERY_BOUND);
    assert_no_storm("after the kill", connections);
}

// ---------------------------------------------------------------------------------------------
// 5. TLS.

/// The `tidings` binary, built now (so it is never stale), unless `TIDINGS_BIN` names one.
fn tidings_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TIDINGS_BIN") {
        return PathBuf::from(path);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new(&cargo)
        .args(["build", "--quiet", "-p", "tidings-cli", "--bin", "tidings"])
        .current_dir(&workspace)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo} to build the tidings binary: {e}"));
    assert!(
        status.success(),
        "`cargo build -p tidings-cli --bin tidings` failed (or set TIDINGS_BIN)"
    );
    // This test runs from <target>/<profile>/deps/; the binary is in <target>/<profile>/.
    let exe = std::env::current_exe().expect("the test's own path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("tidings"))
        .expect("the test runs from <target>/<profile>/deps");
    assert!(binary.exists(), "no tidings binary at {}", binary.display());
    binary
}

/// A `tidings demo-server` process; SIGTERM and reaped when dropped.
struct DemoServer {
    child: tokio::process::Child,
    stderr: Vec<String>,
}

impl DemoServer {
    fn spawn(binary: &PathBuf, url: &str, topic: &str) -> Self {
        let child = tokio::process::Command::new(binary)
            .args([
                "demo-server",
                "--url",
                url,
                "--topic",
                topic,
                "--server",
                "d1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            child,
            stderr: Vec::new(),
        }
    }

    /// Reads its stderr until it says it serves; `Err` with what it said if it exits first.
    async fn serving(&mut self, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let stderr = self.child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let outcome = tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let serving = line.contains("serving demo methods");
                self.stderr.push(line);
                if serving {
                    return true;
                }
            }
            false
        })
        .await;
        // Whatever it writes later is drained so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        match outcome {
            Ok(true) => Ok(started.elapsed()),
            Ok(false) => Err(self.stderr.join("\n")),
            Err(_) => Err(format!(
                "not serving after {limit:?}: {}",
                self.stderr.join("\n")
            )),
        }
    }

    /// SIGTERM; the exit status.
    async fn stop(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("the demo server stops within its drain deadline")
            .expect("wait for the demo server")
    }
}

/// Runs `tidings demo-server` on `url`, which must fail: its exit status, stderr and how long
/// it took.
async fn demo_server_refused(binary: &PathBuf, url: &str) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary)
            .args([
                "demo-server",
                "--url",
                url,
                "--topic",
                "tls-refused",
                "--server",
                "d1",
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("demo-server on {url} neither served nor exited in 60 s"))
    .expect("run the demo server");
    (output, started.elapsed())
}

/// 5. TLS: `tidings demo-server` over `amqps://` and over `rabbit://…?ssl=1` (with a client
/// certificate), called by a Python oslo.messaging client over TLS on the multi-host URL; a
/// server certificate from a CA we do not trust is refused with a clear error and a non-zero
/// exit, and so is a FIPS mode we cannot provide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_demo_server_called_from_python_and_wrong_ca_refused() {
    const TOPIC: &str = "cluster-tls";
    let _serial = SERIAL.lock().await;
    let (vhost, _restore, _log) = setup("tls").await;
    let name = vhost.name().to_owned();
    let binary = blocking(tidings_binary).await;
    let c = cluster();
    let (ca, cert, key) = (
        c.var("TDC_CA"),
        c.var("TDC_CLIENT_CERT"),
        c.var("TDC_CLIENT_KEY"),
    );
    let mut table = Table::new("5. TLS: demo-server (Rust) called by oslo.messaging (Python)");

    // oslo.messaging takes TLS from its configuration, not from the URL.
    let conf_dir = c.state().join("oslo");
    std::fs::create_dir_all(&conf_dir).expect("create the oslo config directory");
    let conf = conf_dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = {ca}\nssl_cert_file = {cert}\n\
             ssl_key_file = {key}\n"
        ),
    )
    .expect("write the oslo config");
    let conf = conf.to_string_lossy().into_owned();
    let python_url = c.tls_url(&name, "");

    let variants = [
        (
            "amqps:// to tda, CA only",
            c.amqps_url("tda", &name, &format!("ssl_ca_file={ca}")),
            false,
        ),
        (
            "rabbit://…?ssl=1 multi-host, client certificate",
            c.tls_url(
                &name,
                &format!("ssl=1&ssl_ca_file={ca}&ssl_cert_file={cert}&ssl_key_file={key}"),
            ),
            true,
        ),
    ];
    for (what, url, client_cert) in variants {
        let mut server = DemoServer::spawn(&binary, &url, TOPIC);
        let ready = server
            .serving(Duration::from_secs(30))
            .await
            .unwrap_or_else(|said| panic!("demo-server over TLS ({what}) did not serve: {said}"));
        table.row(
            format!("{what}: demo-server serving after"),
            format!("{:.2} s", ready.as_secs_f64()),
        );

        // Every connection on the vhost (the demo server's) is TLS; with a client
        // certificate configured, the broker saw it.
        let listed = ctl(vec![
            "list_connections".into(),
            "-p".into(),
            name.clone(),
            "ssl".into(),
            "peer_cert_subject".into(),
            "--formatter".into(),
            "json".into(),
        ])
        .await;
        let connections: Vec<serde_json::Value> =
            serde_json::from_str(&listed).expect("list_connections prints JSON");
        assert!(!connections.is_empty(), "no connection on {name}: {listed}");
        assert!(
            connections.iter().all(|conn| conn["ssl"] == true),
            "a connection of the demo server ({what}) is not TLS: {listed}"
        );
        if client_cert {
            assert!(
                connections.iter().all(|conn| conn["peer_cert_subject"]
                    .as_str()
                    .is_some_and(|s| s.contains("tidings-test-client"))),
                "the client certificate was not presented ({what}): {listed}"
            );
        }

        let outcomes = rpc_client_at(
            &python_url,
            TOPIC,
            json!([
                {"id": "echo", "op": "call", "method": "echo", "args": {"x": "over TLS"}},
                {"id": "add", "op": "call", "method": "add", "args": {"a": 2, "b": 3}},
            ]),
            &[("TIDINGS_OSLO_CONFIG_FILE", &conf)],
        )
        .await;
        assert_eq!(outcomes.result("echo"), &json!("over TLS"), "{what}");
        assert_eq!(outcomes.result("add"), &json!(5), "{what}");
        table.row(
            format!("{what}: Python call over TLS"),
            format!(
                "{:.3} s (first call, TLS handshake included)",
                outcomes.get("echo")["elapsed"].as_f64().unwrap_or(f64::NAN)
            ),
        );
        let status = server.stop().await;
        assert!(
            status.success(),
            "demo-server ({what}) exited with {status}"
        );
    }

    // A server certificate signed by a CA we do not trust.
    let wrong = c.amqps_url(
        "tda",
        &name,
        &format!("ssl_ca_file={}", c.var("TDC_WRONG_CA")),
    );
    let (output, took) = demo_server_refused(&binary, &wrong).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    table.row(
        "wrong CA: refused after",
        format!("{:.2} s, {}", took.as_secs_f64(), output.status),
    );
    table.row(
        "wrong CA: the error",
        stderr.lines().last().unwrap_or_default().to_owned(),
    );
    // FIPS mode cannot be provided by this build: refused, not ignored.
    let fips = c.amqps_url(
        "tda",
        &name,
        &format!("ssl_ca_file={ca}&ssl_enforce_fips_mode=1"),
    );
    let (fips_output, _) = demo_server_refused(&binary, &fips).await;
    let fips_stderr = String::from_utf8_lossy(&fips_output.stderr).into_owned();
    table.row(
        "ssl_enforce_fips_mode=1: the error",
        fips_stderr.lines().last().unwrap_or_default().to_owned(),
    );
    table.print();

    assert!(
        !output.status.success(),
        "demo-server trusted a certificate from the wrong CA: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("certificate"),
        "the refusal of the wrong CA does not say it is about the certificate: {stderr}"
    );
    assert!(
        !fips_output.status.success() && fips_stderr.to_lowercase().contains("fips"),
        "ssl_enforce_fips_mode=1 was not refused clearly: {} {fips_stderr}",
        fips_output.status
    );
}
