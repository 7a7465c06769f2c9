//! The collector while its store is down, under load through RabbitMQ: every sample is stored
//! once the store is back, none reaches a dead-letter queue, none is stored twice.
//!
//! - **PostgreSQL**: the collector reaches the machine's server through a TCP proxy in the test,
//!   which is cut (every connection closed, new ones dropped at once) for the outage and then
//!   restored. The server itself is never stopped: other suites share it.
//! - **SQLite**: another connection holds the database's write lock for the outage (as a backup
//!   or a second writer would), so every write of the collector fails with `SQLITE_BUSY` once
//!   its busy timeout (5 s) has passed. (Making the file read-only with `chmod` does not touch
//!   a connection that is already open, and nothing at all when the tests run as root; the
//!   store sorts `SQLITE_READONLY` with `SQLITE_BUSY` as "unavailable", which its unit tests
//!   check on a real read-only connection.)
//!
//! The outage lasts `TIDINGS_OUTAGE_SECS` seconds (default 5; SQLite's at least 8, so that it
//! outlasts the busy timeout) while `TIDINGS_OUTAGE_RATE` samples a second (default 2000) are
//! published, `TIDINGS_OUTAGE_BATCH` per notification (default 10), from one second before the
//! outage to two seconds after. The figure is `TIDINGS_OUTAGE_SECS=30`. Each test
//! prints its figures on stderr (`--nocapture` to see them).
//!
//! A write in flight at the instant the proxy cuts may commit without its answer coming back;
//! the collector then writes that batch again and finds its samples stored already (counted
//! as duplicates in its report). No sample is ever stored twice: its message id is the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use serde_json::{json, Map, Value};
use tidings::notify::{Notifier, Priority};
use tidings::{Context, Transport};
use tidings_metering::collector::{
    Collector, CollectorConfig, CollectorReport, DEFAULT_MAX_BATCHES_IN_FLIGHT,
};
use tidings_metering::model::{CounterType, Sample};
use tidings_metering::sample::to_wire;
use tidings_metering::store::{self, Store};
use tidings_suites::{rabbitmqctl, Bus};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

// ---------------------------------------------------------------------------------------------
// The load and its figures

/// How long the outage lasts, how fast samples come, how many per notification.
#[derive(Clone, Copy, Debug)]
struct Load {
    outage: Duration,
    rate: u64,
    per_message: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

impl Load {
    fn from_env(least_outage: Duration) -> Self {
        Self {
            outage: Duration::from_secs(env_u64("TIDINGS_OUTAGE_SECS", 5)).max(least_outage),
            rate: env_u64("TIDINGS_OUTAGE_RATE", 2000),
            per_message: env_u64("TIDINGS_OUTAGE_BATCH", 10),
        }
    }
}

const BEFORE: Duration = Duration::from_secs(1);
const AFTER: Duration = Duration::from_secs(2);
/// Publishing ticks: each publishes a tick's worth of samples.
const TICK: Duration = Duration::from_millis(50);
/// Publishers at once (each waits for the broker's confirm of each notification).
const PUBLISHERS: u64 = 4;

fn sample(run: &str, seq: u64) -> Value {
    let sample = Sample {
        source: "openstack".into(),
        name: "outage.load".into(),
        counter_type: CounterType::Gauge,
        unit: "1".into(),
        volume: seq as f64,
        user_id: Some("u-1".into()),
        project_id: Some("p-1".into()),
        resource_id: format!("vm-{}", seq % 50),
        timestamp: Utc.with_ymd_and_hms(2026, 11, 22, 19, 0, 0).unwrap()
            + chrono::Duration::milliseconds(i64::try_from(seq).unwrap()),
        resource_metadata: Map::new(),
        message_id: format!("{run}-{seq}"),
    };
    Value::Object(to_wire(&sample, ""))
}

/// Publishes `load.rate` samples a second for `length`, as Ceilometer's polling agent does;
/// returns how many were published (each confirmed by the broker).
async fn publish_for(transport: &Transport, run: &str, load: Load, length: Duration) -> u64 {
    let ticks = (length.as_millis() / TICK.as_millis()) as u64;
    let per_tick = (load.rate * TICK.as_millis() as u64 / 1000).max(1);
    let published = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let transport = transport.clone();
        let (published, next, run) = (published.clone(), next.clone(), run.to_owned());
        publishers.push(tokio::spawn(async move {
            let notifier = Notifier::new(&transport, "ceilometer.polling")
                .exchange("ceilometer")
                .topics(["notifications"]);
            // Notifications are numbered across publishers: tick t holds numbers up to its
            // share, so the rate holds however the publishers interleave.
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let first = n * load.per_message;
                if first >= ticks * per_tick {
                    return;
                }
                let due = start + TICK * u32::try_from(first / per_tick).unwrap();
                tokio::time::sleep_until(due).await;
                let last = (first + load.per_message).min(ticks * per_tick);
                let samples: Vec<Value> = (first..last).map(|seq| sample(&run, seq)).collect();
                notifier
                    .notify(
                        &Context::new(),
                        Priority::Sample,
                        "telemetry.polling",
                        json!({ "samples": samples }),
                    )
                    .await
                    .unwrap();
                published.fetch_add(last - first, Ordering::SeqCst);
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    published.load(Ordering::SeqCst)
}

/// Messages in each queue of the bus's vhost whose name ends in `.dlq`.
fn dead_lettered_on(bus: &Bus) -> u64 {
    let out = rabbitmqctl(&[
        "list_queues",
        "-p",
        bus.vhost().unwrap(),
        "name",
        "messages",
        "--no-table-headers",
    ]);
    out.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (name, messages) = (fields.next()?, fields.next()?);
            name.ends_with(".dlq")
                .then(|| messages.parse::<u64>().ok())?
        })
        .sum()
}

/// Every queue of the bus's vhost: messages ready and unacknowledged, consumers.
fn queues_of(bus: &Bus) -> String {
    rabbitmqctl(&[
        "list_queues",
        "-p",
        bus.vhost().unwrap(),
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ])
}

/// The most batches held at once, watched from the collector's counters.
fn watch_held(mut counters: watch::Receiver<CollectorReport>) -> Arc<AtomicU64> {
    let most = Arc::new(AtomicU64::new(0));
    let seen = most.clone();
    tokio::spawn(async move {
        while counters.changed().await.is_ok() {
            let held = counters.borrow_and_update().batches_held;
            seen.fetch_max(held, Ordering::Relaxed);
        }
    });
    most
}

/// Runs the load across an outage made by `cut` and ended by `restore`, waits for the
/// collector to store everything, checks the outcome against `stored_rows` (rows, and distinct
/// message ids among them), and prints the figures.
/// A collector under test, with the bus it listens on and its own transport.
struct Running<'a> {
    bus: &'a Bus,
    transport: &'a Transport,
    collector: Collector,
}

async fn outage_under_load(
    name: &str,
    running: Running<'_>,
    load: Load,
    cut: impl FnOnce(),
    restore: impl FnOnce(),
    stored_rows: impl AsyncFn() -> (u64, u64),
) {
    let Running {
        bus,
        transport: collector_transport,
        collector,
    } = running;
    let run = format!("{name}-{:08x}", fastrand::u32(..));
    let publisher = bus.transport().await;
    let counters = collector.subscribe();
    let most_held = watch_held(collector.subscribe());
    let length = BEFORE + load.outage + AFTER;
    let publishing = {
        let (publisher, run) = (publisher.clone(), run.clone());
        tokio::spawn(async move { publish_for(&publisher, &run, load, length).await })
    };
    tokio::time::sleep(BEFORE).await;
    cut();
    let cut_at = Instant::now();
    tokio::time::sleep(load.outage).await;
    restore();
    let outage = cut_at.elapsed();
    let published = publishing.await.unwrap();
    let published_at = Instant::now();
    let mut waiting = counters.clone();
    let transport_stats = collector_transport.clone();
    let transport_stats = move || transport_stats.stats();
    let report = tokio::time::timeout(
        Duration::from_secs(120) + load.outage,
        waiting.wait_for(|r| r.received >= published),
    )
    .await
    .map(|r| r.unwrap().clone())
    .unwrap_or_else(|_| {
        panic!(
            "{name}: not every sample came through ({published} published): {:?}\n\
             collector's transport: {:?}\nqueues: {}",
            *counters.borrow(),
            transport_stats(),
            queues_of(bus),
        )
    });
    let drained_after = published_at.elapsed();
    let (rows, distinct) = stored_rows().await;
    let dlq = dead_lettered_on(bus);
    eprintln!(
        "{name}: outage {:.1} s at {} samples/s ({} per notification): published {published}, \
         stored {rows} (distinct message ids: {distinct}), in dead-letter queues {dlq}, \
         dead-lettered {}; written again after a write the outage cut off before its answer: \
         {}; {} failed attempts on the store in {} outage(s), at most {} batches held; \
         everything stored {:.1} s after the last publish",
        outage.as_secs_f64(),
        load.rate,
        load.per_message,
        report.dead_lettered,
        report.duplicates,
        report.storage_failures,
        report.store_outages,
        most_held.load(Ordering::Relaxed),
        drained_after.as_secs_f64(),
    );
    assert_eq!(rows, published, "{name}: every sample stored: {report:?}");
    assert_eq!(distinct, rows, "{name}: no sample stored twice");
    // A write in flight when the connection is cut may have committed without its answer
    // arriving: the batch is written again, and its samples are found stored already (their
    // message id is the key). Only the batches in flight at that instant can be affected.
    assert_eq!(report.stored + report.duplicates, published, "{report:?}");
    let in_flight = (DEFAULT_MAX_BATCHES_IN_FLIGHT * 50) as u64 * load.per_message;
    assert!(report.duplicates <= in_flight, "{report:?}");
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert_eq!(dlq, 0, "{name}: nothing in a dead-letter queue");
    assert!(report.store_outages >= 1, "the outage was felt: {report:?}");
    assert!(report.store_available);
    // Attempts back off: a handful per outage, not one per delivery or per millisecond (the
    // retry is capped at 5 s; each batch in flight when it began fails once on its own).
    let bound = 2 * (load.outage.as_secs() + 1) + 2 * 4;
    assert!(
        report.storage_failures <= bound,
        "{} attempts in a {:?} outage: a retry storm",
        report.storage_failures,
        load.outage
    );
    collector.stop().await;
    publisher.close().await;
}

fn collector_config() -> CollectorConfig {
    CollectorConfig {
        batch_timeout: Duration::from_millis(200),
        ..CollectorConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL through a proxy that can be cut

fn postgres_base() -> String {
    std::env::var("TIDINGS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn pg_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres_base(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", postgres_base()));
    tokio::spawn(connection);
    client
}

/// A schema of its own on the test PostgreSQL, dropped when the guard goes.
struct PgSchema {
    name: String,
}

impl PgSchema {
    async fn new() -> Self {
        let name = format!("metering_outage_{:016x}", fastrand::u64(..));
        pg_client()
            .await
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Self { name }
    }

    async fn count(&self) -> u64 {
        self.rows().await.0
    }

    /// Rows, and distinct message ids among them.
    async fn rows(&self) -> (u64, u64) {
        let row = pg_client()
            .await
            .query_one(
                &format!(
                    "SELECT count(*), count(DISTINCT message_id) FROM {}.samples",
                    self.name
                ),
                &[],
            )
            .await
            .unwrap();
        let count = |i| u64::try_from(row.get::<_, i64>(i)).unwrap();
        (count(0), count(1))
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let _ = pg_client()
                    .await
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await;
            });
        })
        .join();
    }
}

/// A TCP proxy to PostgreSQL that the test can cut and restore: cut, it closes every
/// connection and drops new ones at once, as a server that went away does.
struct Proxy {
    address: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accepting: AbortHandle,
}

impl Proxy {
    async fn to(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (accepting_up, accepted) = (up.clone(), connections.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting_up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut connections = accepted.lock().unwrap();
                connections.retain(|c| !c.is_finished());
                connections.push(task.abort_handle());
            }
        })
        .abort_handle();
        Self {
            address,
            up,
            connections,
            accepting,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

/// The test server's address and the URL of `schema` through `proxy`.
fn upstream_and_url(proxy: Option<&Proxy>, schema: &PgSchema) -> (String, String) {
    let config: tokio_postgres::Config = postgres_base().parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let upstream = format!("{host}:{port}");
    let via = proxy.map_or(upstream.clone(), |p| p.address.to_string());
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or("test");
    let url = format!(
        "postgres://{user}{password}@{via}/{db}?options=-c%20search_path%3D{}",
        schema.name
    );
    (upstream, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_unavailable_under_load_loses_nothing_and_dead_letters_nothing() {
    let load = Load::from_env(Duration::ZERO);
    let schema = PgSchema::new().await;
    let (upstream, _) = upstream_and_url(None, &schema);
    let proxy = Proxy::to(upstream).await;
    let (_, url) = upstream_and_url(Some(&proxy), &schema);
    let store = store::open(&url).await.unwrap();
    let bus = Bus::amqp();
    let transport = bus.transport().await;
    let collector = Collector::start(&transport, store, collector_config())
        .await
        .unwrap();
    outage_under_load(
        "postgresql",
        Running {
            bus: &bus,
            transport: &transport,
            collector,
        },
        load,
        || proxy.cut(),
        || proxy.restore(),
        async || schema.rows().await,
    )
    .await;
    transport.close().await;
}

// ---------------------------------------------------------------------------------------------
// SQLite locked by another writer

/// A database file in a directory of its own, removed when the guard goes.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tidings-outage-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Another process's write transaction on the database, held until released.
struct WriteLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriteLock {
    fn take(path: PathBuf) -> Self {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (taken, is_taken) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            taken.send(()).unwrap();
            let _ = released.recv();
            conn.execute_batch("ROLLBACK").unwrap();
        });
        is_taken
            .recv_timeout(Duration::from_secs(30))
            .expect("the write lock was taken");
        Self {
            release: Some(release),
            thread: Some(thread),
        }
    }

    fn release(mut self) {
        self.release.take();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_under_load_loses_nothing_and_dead_letters_nothing() {
    // Longer than the store's busy timeout (5 s), which absorbs a shorter lock silently.
    let load = Load::from_env(Duration::from_secs(8));
    let dir = TempDir::new();
    let path = dir.0.join("metering.sqlite");
    let store: Arc<dyn Store> = store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let bus = Bus::amqp();
    let transport = bus.transport().await;
    let collector = Collector::start(&transport, store, collector_config())
        .await
        .unwrap();
    let lock: Arc<Mutex<Option<WriteLock>>> = Arc::default();
    let (taking, releasing) = (lock.clone(), lock.clone());
    let counting = path.clone();
    outage_under_load(
        "sqlite",
        Running {
            bus: &bus,
            transport: &transport,
            collector,
        },
        load,
        move || *taking.lock().unwrap() = Some(WriteLock::take(path)),
        move || {
            if let Some(lock) = releasing.lock().unwrap().take() {
                lock.release();
            }
        },
        async move || {
            let conn = rusqlite::Connection::open(&counting).unwrap();
            let (rows, distinct): (i64, i64) = conn
                .query_row(
                    "SELECT count(*), count(DISTINCT message_id) FROM samples",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .unwrap();
            (
                u64::try_from(rows).unwrap(),
                u64::try_from(distinct).unwrap(),
            )
        },
    )
    .await;
    transport.close().await;
}

// ---------------------------------------------------------------------------------------------
// How PostgreSQL's failures are sorted

fn one_sample(id: &str, resource: &str) -> Sample {
    tidings_metering::sample::from_wire(&{
        let mut wire = sample("classify", 0);
        wire["message_id"] = json!(id);
        wire["resource_id"] = json!(resource);
        wire
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_failures_are_sorted_into_unavailable_and_refused() {
    let schema = PgSchema::new().await;
    let (upstream, _) = upstream_and_url(None, &schema);
    let proxy = Proxy::to(upstream).await;
    let (_, url) = upstream_and_url(Some(&proxy), &schema);
    let store = store::open(&url).await.unwrap();

    let error = store
        .record(&[one_sample("nul", "vm-\0")])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, store::StoreError::Refused(reason) if reason.contains("22021")),
        "{error:?}"
    );
    proxy.cut();
    let error = store.record(&[one_sample("ok", "vm-1")]).await.unwrap_err();
    assert!(error.is_unavailable(), "a lost connection: {error:?}");
    let error = store.record(&[one_sample("ok", "vm-1")]).await.unwrap_err();
    assert!(error.is_unavailable(), "no connection: {error:?}");
    proxy.restore();
    assert_eq!(store.record(&[one_sample("ok", "vm-1")]).await.unwrap(), 1);
    assert_eq!(schema.count().await, 1);
}
