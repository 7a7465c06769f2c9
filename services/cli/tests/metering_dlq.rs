//! A sample PostgreSQL refuses, end to end on RabbitMQ: a collector stores the rest of its
//! batch and dead-letters it alone, with the reason; `tidings meter dlq list` shows it;
//! `tidings meter dlq replay` while the cause remains brings it back with the same reason; once
//! the cause is fixed, `replay` gets it stored.
//!
//! The cause is a NUL byte in a text field, which PostgreSQL never stores in `text`. No
//! setting of the database fixes that; a collector that stores such text differently does.
//! The fixed collector here is the same collector over the same PostgreSQL tables, through a
//! store that replaces NUL with U+FFFD before writing, which stands for a fixed build. The
//! dead-lettered message itself is never touched: `replay` moves it back as it is.
//!
//! PostgreSQL is `postgres://postgres@127.0.0.1:5432/test` unless `TIDINGS_TEST_POSTGRES`
//! names another server (each run in a schema of its own, dropped at the end).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use serde_json::{json, Map, Value};
use tidings::notify::{Notifier, Priority};
use tidings::{Context, Transport};
use tidings_metering::collector::{Collector, CollectorConfig, CollectorReport};
use tidings_metering::model::{
    Alarm, AlarmChange, CounterType, MeterInfo, Sample, Statistics, StatisticsQuery,
};
use tidings_metering::sample::to_wire;
use tidings_metering::store::{self, Store, StoreError};
use tidings_suites::Bus;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);

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
        let name = format!("metering_dlq_{}", uuid::Uuid::new_v4().simple());
        pg_client()
            .await
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Self { name }
    }

    fn url(&self) -> String {
        let base = postgres_base();
        let separator = if base.contains('?') { '&' } else { '?' };
        format!("{base}{separator}options=-c%20search_path%3D{}", self.name)
    }

    /// `(message_id, resource_id)` of every stored sample.
    async fn rows(&self) -> Vec<(String, String)> {
        pg_client()
            .await
            .query(
                &format!(
                    "SELECT message_id, resource_id FROM {}.samples ORDER BY message_id",
                    self.name
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
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

/// The fixed collector's store: text with NUL bytes is stored with U+FFFD in their place.
#[derive(Debug)]
struct NulReplaced(Arc<dyn Store>);

fn without_nul(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

#[async_trait]
impl Store for NulReplaced {
    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }

    async fn record(&self, samples: &[Sample]) -> Result<usize, StoreError> {
        let fixed: Vec<Sample> = samples
            .iter()
            .map(|s| Sample {
                source: without_nul(&s.source),
                name: without_nul(&s.name),
                unit: without_nul(&s.unit),
                user_id: s.user_id.as_deref().map(without_nul),
                project_id: s.project_id.as_deref().map(without_nul),
                resource_id: without_nul(&s.resource_id),
                message_id: without_nul(&s.message_id),
                ..s.clone()
            })
            .collect();
        self.0.record(&fixed).await
    }
    async fn statistics(&self, q: &StatisticsQuery) -> Result<Vec<Statistics>, StoreError> {
        self.0.statistics(q).await
    }
    async fn meters(&self, r: Option<&str>) -> Result<Vec<MeterInfo>, StoreError> {
        self.0.meters(r).await
    }
    async fn create_alarm(&self, a: &Alarm) -> Result<(), StoreError> {
        self.0.create_alarm(a).await
    }
    async fn alarms(&self) -> Result<Vec<Alarm>, StoreError> {
        self.0.alarms().await
    }
    async fn alarm(&self, id: &str) -> Result<Alarm, StoreError> {
        self.0.alarm(id).await
    }
    async fn delete_alarm(&self, id: &str) -> Result<(), StoreError> {
        self.0.delete_alarm(id).await
    }
    async fn set_state(&self, c: &AlarmChange) -> Result<(), StoreError> {
        self.0.set_state(c).await
    }
    async fn history(&self, id: &str) -> Result<Vec<AlarmChange>, StoreError> {
        self.0.history(id).await
    }
}

fn sample(id: &str, resource: &str, secs: i64) -> Value {
    let sample = Sample {
        source: "openstack".into(),
        name: "cpu_util".into(),
        counter_type: CounterType::Gauge,
        unit: "%".into(),
        volume: 1.0,
        user_id: Some("u-1".into()),
        project_id: Some("p-1".into()),
        resource_id: resource.into(),
        timestamp: Utc.with_ymd_and_hms(2026, 11, 22, 19, 0, 0).unwrap()
            + chrono::Duration::seconds(secs),
        resource_metadata: Map::new(),
        message_id: id.into(),
    };
    Value::Object(to_wire(&sample, ""))
}

async fn start_collector(transport: &Transport, store: Arc<dyn Store>) -> Collector {
    let config = CollectorConfig {
        batch_timeout: Duration::from_millis(200),
        ..CollectorConfig::default()
    };
    Collector::start(transport, store, config).await.unwrap()
}

async fn wait_for(
    counters: &mut watch::Receiver<CollectorReport>,
    what: &str,
    done: impl FnMut(&CollectorReport) -> bool,
) -> CollectorReport {
    let waited = tokio::time::timeout(WAIT, counters.wait_for(done))
        .await
        .map(|seen| seen.map(|report| report.clone()));
    match waited {
        Ok(Ok(report)) => report,
        _ => panic!("timed out waiting for {what}: {:?}", *counters.borrow()),
    }
}

fn tidings(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .output()
        .unwrap()
}

/// `tidings meter dlq list`: its JSON lines.
fn dlq_list(url: &str) -> Vec<Value> {
    let out = tidings(&["meter", "dlq", "list", "--url", url, "--idle", "0.5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `tidings meter dlq replay`: its summary of the queue `queue`.
fn dlq_replay(url: &str, queue: &str) -> Value {
    let out = tidings(&["meter", "dlq", "replay", "--url", url, "--idle", "0.5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|line| line["queue"] == queue)
        .unwrap_or_else(|| panic!("no summary of {queue}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_postgresql_refuses_is_dead_lettered_alone_listed_and_replayed_once_fixed() {
    let schema = PgSchema::new().await;
    let postgres = store::open(&schema.url()).await.unwrap();
    let bus = Bus::amqp();
    let transport = bus.transport().await;
    let collector = start_collector(&transport, postgres.clone()).await;
    let mut counters = collector.subscribe();

    // One batch of 50 samples, as Ceilometer's notifier publisher sends them; one has a NUL
    // byte in its resource id.
    let bad_id = "s-17";
    let samples: Vec<Value> = (0..50)
        .map(|i| {
            let id = format!("s-{i:02}");
            if id == bad_id {
                sample(&id, "vm-\0-17", i)
            } else {
                sample(&id, &format!("vm-{i}"), i)
            }
        })
        .collect();
    Notifier::new(&transport, "telemetry.publisher.host")
        .exchange("ceilometer")
        .topics(["metering"])
        .notify(
            &Context::new(),
            Priority::Sample,
            "metering",
            json!(samples),
        )
        .await
        .unwrap();
    let report = wait_for(&mut counters, "the batch", |r| r.received >= 50).await;
    assert_eq!(
        (report.stored, report.dead_lettered, report.duplicates),
        (49, 1, 0),
        "{report:?}"
    );
    let rows = schema.rows().await;
    assert_eq!(rows.len(), 49);
    assert!(rows.iter().all(|(id, _)| id != bad_id));

    // Listed with PostgreSQL's reason, alone.
    let listed = dlq_list(bus.url());
    assert_eq!(listed.len(), 1, "{listed:?}");
    let entry = &listed[0];
    assert_eq!(entry["queue"], "metering.sample.dlq");
    assert_eq!(entry["from_queue"], "metering.sample");
    let reason = entry["reason"].as_str().unwrap();
    assert!(
        reason.contains("22021") && reason.contains("0x00"),
        "{reason}"
    );
    assert_eq!(entry["samples_total"], 1);
    assert_eq!(entry["samples"][0]["message_id"], bad_id);
    assert!(entry.get("context").is_none());
    // Listing leaves it there.
    assert_eq!(dlq_list(bus.url()).len(), 1);

    // Replayed while the cause remains: refused again, back in the dead-letter queue with the
    // same reason, not lost and not looping.
    let summary = dlq_replay(bus.url(), "metering.sample.dlq");
    assert_eq!(summary["replayed"], 1, "{summary}");
    wait_for(&mut counters, "the replayed sample refused again", |r| {
        r.dead_lettered >= 2
    })
    .await;
    let listed = dlq_list(bus.url());
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0]["queue"], "metering.sample.dlq",
        "back where it was"
    );
    assert_eq!(listed[0]["reason"], reason);
    assert_eq!(schema.rows().await.len(), 49);

    // The cause fixed (a collector that stores NUL-bearing text): replayed and stored, once.
    collector.stop().await;
    let fixed = start_collector(&transport, Arc::new(NulReplaced(postgres))).await;
    let mut counters = fixed.subscribe();
    let summary = dlq_replay(bus.url(), "metering.sample.dlq");
    assert_eq!(summary["replayed"], 1, "{summary}");
    let report = wait_for(&mut counters, "the replayed sample", |r| r.received >= 1).await;
    assert_eq!(
        (report.stored, report.dead_lettered, report.duplicates),
        (1, 0, 0),
        "{report:?}"
    );
    let rows = schema.rows().await;
    assert_eq!(rows.len(), 50);
    assert!(rows
        .iter()
        .any(|(id, resource)| id == bad_id && resource == "vm-\u{fffd}-17"));
    assert!(dlq_list(bus.url()).is_empty());
    fixed.stop().await;
    transport.close().await;
}
