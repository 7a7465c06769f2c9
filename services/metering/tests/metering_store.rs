//! The metering stores, one specification run on every backend: SQLite in memory, SQLite on a
//! file, and the machine's PostgreSQL (each test in a schema of its own, dropped at the end).
//!
//! PostgreSQL is `postgres://postgres@127.0.0.1:5432/test` unless `TIDINGS_TEST_POSTGRES`
//! names another server; without one these tests fail, they do not skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Map};
use tidings_metering::model::{
    Alarm, AlarmChange, AlarmState, ComparisonOperator, CounterType, MeterInfo, Sample,
    StatisticKind, Statistics, StatisticsQuery, ThresholdRule,
};
use tidings_metering::store::{self, Store, StoreError};

// ---------------------------------------------------------------------------------------------
// Backends

fn postgres_base() -> String {
    std::env::var("TIDINGS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of its own on the test PostgreSQL, dropped when the guard goes.
struct PgSchema {
    name: String,
}

impl PgSchema {
    async fn new() -> Self {
        let name = format!("metering_test_{:016x}", fastrand::u64(..));
        let client = pg_client().await;
        client
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
}

async fn pg_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres_base(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is needed (`bash scripts/test --setup` starts it): {e}",
                postgres_base()
            )
        });
    tokio::spawn(connection);
    client
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async clean-up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = pg_client().await;
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await;
            });
        })
        .join();
    }
}

/// A database file in a directory of its own, removed when the guard goes.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tidings-store-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What keeps a backend alive for one test.
enum Keep {
    Nothing,
    Dir(#[allow(dead_code)] TempDir),
    Schema(#[allow(dead_code)] PgSchema),
}

async fn sqlite_memory() -> (Arc<dyn Store>, Keep) {
    (store::open("sqlite::memory:").await.unwrap(), Keep::Nothing)
}

async fn sqlite_file() -> (Arc<dyn Store>, Keep) {
    let dir = TempDir::new();
    // A nested directory that does not exist yet: open creates it.
    let url = format!("sqlite://{}/nested/metering.sqlite", dir.0.display());
    (store::open(&url).await.unwrap(), Keep::Dir(dir))
}

async fn postgres() -> (Arc<dyn Store>, Keep) {
    let schema = PgSchema::new().await;
    (
        store::open(&schema.url()).await.unwrap(),
        Keep::Schema(schema),
    )
}

/// Declares one test per backend for a specification `async fn(Arc<dyn Store>)`.
macro_rules! on_every_backend {
    ($spec:ident) => {
        mod $spec {
            use super::*;

            #[tokio::test]
            async fn sqlite_in_memory() {
                let (store, _keep) = sqlite_memory().await;
                super::$spec(store).await;
            }

            #[tokio::test]
            async fn sqlite_on_file() {
                let (store, _keep) = sqlite_file().await;
                super::$spec(store).await;
            }

            #[tokio::test]
            async fn postgresql() {
                let (store, _keep) = postgres().await;
                super::$spec(store).await;
            }
        }
    };
}

on_every_backend!(statistics_match_hand_computed_buckets);
on_every_backend!(a_message_id_is_stored_once);
on_every_backend!(meters_are_listed_per_resource);
on_every_backend!(alarms_are_created_changed_and_deleted_with_history);

// ---------------------------------------------------------------------------------------------
// Fixtures

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn at(seconds: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(seconds)
}

fn sample(id: &str, meter: &str, resource: &str, project: &str, secs: i64, volume: f64) -> Sample {
    Sample {
        source: "openstack".into(),
        name: meter.into(),
        counter_type: CounterType::Gauge,
        unit: "%".into(),
        volume,
        user_id: Some("u-1".into()),
        project_id: Some(project.into()),
        resource_id: resource.into(),
        timestamp: at(secs),
        resource_metadata: Map::from_iter([("host".to_owned(), json!("h1"))]),
        message_id: id.into(),
    }
}

/// cpu on r1 (project p1) at 0, 10, 59, 60, 125 s; cpu on r2 (p2) at 130 s; mem on r1 at 5 s;
/// net on r1 in two units.
fn samples() -> Vec<Sample> {
    let mut all = vec![
        sample("c1", "cpu", "r1", "p1", 0, 1.0),
        sample("c2", "cpu", "r1", "p1", 10, 3.0),
        sample("c3", "cpu", "r1", "p1", 59, 5.0),
        sample("c4", "cpu", "r1", "p1", 60, 7.0),
        sample("c5", "cpu", "r1", "p1", 125, 9.0),
        sample("c6", "cpu", "r2", "p2", 130, 100.0),
        sample("m1", "mem", "r1", "p1", 5, 1000.0),
        sample("n1", "net", "r1", "p1", 0, 10.0),
        sample("n2", "net", "r1", "p1", 20, 2.0),
    ];
    all[8].unit = "kB".into();
    all[7].unit = "B".into();
    all
}

/// One expected bucket: (count, sum, min, max, duration start s, duration end s, period
/// start s, period end s, unit).
type Bucket = (u64, f64, f64, f64, i64, i64, i64, i64, &'static str);

fn query(meter: &str, period: u64) -> StatisticsQuery {
    StatisticsQuery {
        meter: meter.into(),
        period,
        ..StatisticsQuery::default()
    }
}

fn check(case: &str, got: &[Statistics], period: u64, want: &[Bucket]) {
    assert_eq!(got.len(), want.len(), "{case}: {got:#?}");
    for (g, w) in got.iter().zip(want) {
        let &(count, sum, min, max, ds, de, ps, pe, unit) = w;
        assert_eq!(g.count, count, "{case} count: {g:?}");
        assert!((g.sum - sum).abs() < 1e-9, "{case} sum: {g:?}");
        assert!(
            (g.avg - sum / count as f64).abs() < 1e-9,
            "{case} avg: {g:?}"
        );
        assert_eq!((g.min, g.max), (min, max), "{case} min/max: {g:?}");
        assert_eq!(g.duration_start, at(ds), "{case} duration_start");
        assert_eq!(g.duration_end, at(de), "{case} duration_end");
        assert!(
            (g.duration - (de - ds) as f64).abs() < 1e-9,
            "{case} duration"
        );
        assert_eq!(g.period, period, "{case} period");
        assert_eq!(g.period_start, at(ps), "{case} period_start");
        assert_eq!(g.period_end, at(pe), "{case} period_end");
        assert_eq!(g.unit, unit, "{case} unit");
    }
}

// ---------------------------------------------------------------------------------------------
// Specifications

async fn statistics_match_hand_computed_buckets(store: Arc<dyn Store>) {
    assert_eq!(store.record(&samples()).await.unwrap(), 9);

    let cases: Vec<(&str, StatisticsQuery, &[Bucket])> = vec![
        (
            "period 0: one bucket from the first to the last sample",
            query("cpu", 0),
            &[(6, 125.0, 1.0, 100.0, 0, 130, 0, 130, "%")],
        ),
        (
            "period 0 on one resource",
            StatisticsQuery {
                resource_id: Some("r1".into()),
                ..query("cpu", 0)
            },
            &[(5, 25.0, 1.0, 9.0, 0, 125, 0, 125, "%")],
        ),
        (
            "period 60 without start: aligned on the first sample, empty buckets omitted",
            StatisticsQuery {
                resource_id: Some("r1".into()),
                ..query("cpu", 60)
            },
            &[
                (3, 9.0, 1.0, 5.0, 0, 59, 0, 60, "%"),
                (1, 7.0, 7.0, 7.0, 60, 60, 60, 120, "%"),
                (1, 9.0, 9.0, 9.0, 125, 125, 120, 180, "%"),
            ],
        ),
        (
            "period 60 from start 30 to end 130 (inclusive)",
            StatisticsQuery {
                start: Some(at(30)),
                end: Some(at(130)),
                ..query("cpu", 60)
            },
            &[
                (2, 12.0, 5.0, 7.0, 59, 60, 30, 90, "%"),
                (2, 109.0, 9.0, 100.0, 125, 130, 90, 150, "%"),
            ],
        ),
        (
            "start before every sample: the leading empty bucket is omitted",
            StatisticsQuery {
                resource_id: Some("r1".into()),
                start: Some(at(-60)),
                ..query("cpu", 60)
            },
            &[
                (3, 9.0, 1.0, 5.0, 0, 59, 0, 60, "%"),
                (1, 7.0, 7.0, 7.0, 60, 60, 60, 120, "%"),
                (1, 9.0, 9.0, 9.0, 125, 125, 120, 180, "%"),
            ],
        ),
        (
            "by project: origin is that project's first sample",
            StatisticsQuery {
                project_id: Some("p2".into()),
                ..query("cpu", 50)
            },
            &[(1, 100.0, 100.0, 100.0, 130, 130, 130, 180, "%")],
        ),
        (
            "one unit per bucket, as Ceilometer groups by unit",
            query("net", 0),
            &[
                (1, 10.0, 10.0, 10.0, 0, 0, 0, 0, "B"),
                (1, 2.0, 2.0, 2.0, 20, 20, 20, 20, "kB"),
            ],
        ),
        (
            "nothing after the last sample",
            StatisticsQuery {
                start: Some(at(131)),
                ..query("cpu", 0)
            },
            &[],
        ),
        ("unknown meter", query("disk", 60), &[]),
    ];
    for (case, q, want) in cases {
        let got = store.statistics(&q).await.unwrap();
        check(case, &got, q.period, want);
    }
}

async fn a_message_id_is_stored_once(store: Arc<dyn Store>) {
    let first = sample("dup-1", "cpu", "r1", "p1", 0, 1.0);
    let mut again = first.clone();
    again.volume = 99.0;
    let other = sample("dup-2", "cpu", "r1", "p1", 1, 2.0);
    assert_eq!(store.record(std::slice::from_ref(&first)).await.unwrap(), 1);
    // Stored before, and twice within one batch: only dup-2 is new.
    assert_eq!(
        store
            .record(&[again, other.clone(), other.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.record(&[]).await.unwrap(), 0);
    let stats = store.statistics(&query("cpu", 0)).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].count, 2);
    assert_eq!(stats[0].sum, 3.0, "the first copy is kept");
}

async fn meters_are_listed_per_resource(store: Arc<dyn Store>) {
    store.record(&samples()).await.unwrap();
    let mut unsigned = sample("x1", "cpu", "r3", "p3", 0, 1.0);
    unsigned.user_id = None;
    unsigned.project_id = None;
    unsigned.counter_type = CounterType::Cumulative;
    store.record(&[unsigned]).await.unwrap();

    let all = store.meters(None).await.unwrap();
    let names: Vec<(&str, &str)> = all
        .iter()
        .map(|m| (m.name.as_str(), m.resource_id.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("cpu", "r1"),
            ("cpu", "r2"),
            ("cpu", "r3"),
            ("mem", "r1"),
            ("net", "r1"),
            ("net", "r1"),
        ]
    );
    let r3 = store.meters(Some("r3")).await.unwrap();
    assert_eq!(
        r3,
        [MeterInfo {
            name: "cpu".into(),
            counter_type: CounterType::Cumulative,
            unit: "%".into(),
            resource_id: "r3".into(),
            project_id: None,
            user_id: None,
            source: "openstack".into(),
        }]
    );
    assert!(store.meters(Some("nope")).await.unwrap().is_empty());
}

fn alarm(id: &str, created: i64) -> Alarm {
    Alarm {
        alarm_id: id.into(),
        name: format!("alarm {id}"),
        description: String::new(),
        alarm_type: "threshold".into(),
        threshold_rule: ThresholdRule {
            meter_name: "cpu".into(),
            threshold: 70.0,
            comparison_operator: ComparisonOperator::Gt,
            statistic: StatisticKind::Avg,
            period: 60,
            evaluation_periods: 3,
            query: vec![],
        },
        state: AlarmState::InsufficientData,
        state_reason: "not yet evaluated".into(),
        state_timestamp: at(created),
        alarm_actions: vec!["log://".into()],
        ok_actions: vec![],
        insufficient_data_actions: vec![],
        repeat_actions: false,
        severity: "low".into(),
        enabled: true,
        timestamp: at(created),
        project_id: None,
        user_id: None,
        time_constraints: Vec::new(),
        evaluate_timestamp: None,
    }
}

async fn alarms_are_created_changed_and_deleted_with_history(store: Arc<dyn Store>) {
    let a = alarm("a-1", 0);
    let b = alarm("b-2", 10);
    store.create_alarm(&b).await.unwrap();
    store.create_alarm(&a).await.unwrap();
    assert!(matches!(
        store.create_alarm(&a).await,
        Err(StoreError::AlarmExists(id)) if id == "a-1"
    ));
    assert_eq!(store.alarms().await.unwrap(), [a.clone(), b.clone()]);
    assert_eq!(store.alarm("a-1").await.unwrap(), a);

    let change = AlarmChange {
        alarm_id: "a-1".into(),
        change_type: "state transition".into(),
        previous: Some(AlarmState::InsufficientData),
        current: AlarmState::Alarm,
        reason: "3 datapoints above 70".into(),
        reason_data: json!({"most_recent": 91.5}),
        timestamp: at(200),
        ..AlarmChange::new(&a, "state transition", AlarmState::Alarm, "")
    };
    store.set_state(&change).await.unwrap();
    let now = store.alarm("a-1").await.unwrap();
    assert_eq!(now.state, AlarmState::Alarm);
    assert_eq!(now.state_reason, "3 datapoints above 70");
    assert_eq!(now.state_timestamp, at(200));
    assert_eq!(
        tidings_metering::store::current_state(&*store, "a-1")
            .await
            .unwrap(),
        AlarmState::Alarm
    );

    let history = store.history("a-1").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].change_type, "creation");
    assert_eq!(history[0].previous, None);
    assert_eq!(history[0].current, AlarmState::InsufficientData);
    assert_eq!(history[1], change);
    assert_eq!(store.history("b-2").await.unwrap().len(), 1);

    let mut unknown = change.clone();
    unknown.alarm_id = "zzz".into();
    assert!(matches!(
        store.set_state(&unknown).await,
        Err(StoreError::NoSuchAlarm(_))
    ));

    store.delete_alarm("a-1").await.unwrap();
    assert!(matches!(
        store.alarm("a-1").await,
        Err(StoreError::NoSuchAlarm(_))
    ));
    assert!(matches!(
        store.history("a-1").await,
        Err(StoreError::NoSuchAlarm(_))
    ));
    assert!(matches!(
        store.delete_alarm("a-1").await,
        Err(StoreError::NoSuchAlarm(_))
    ));
    assert_eq!(store.alarms().await.unwrap(), [b]);
}

// ---------------------------------------------------------------------------------------------
// Backend-specific rules

#[tokio::test]
async fn a_file_store_keeps_its_samples_across_reopening() {
    let dir = TempDir::new();
    let url = format!("sqlite://{}/m.sqlite", dir.0.display());
    {
        let store = store::open(&url).await.unwrap();
        store.record(&samples()).await.unwrap();
    }
    let store = store::open(&url).await.unwrap();
    let stats = store.statistics(&query("cpu", 0)).await.unwrap();
    assert_eq!(stats[0].count, 6);
    let mode: String = rusqlite_journal_mode(&dir.0.join("m.sqlite"));
    assert_eq!(mode, "wal");
}

fn rusqlite_journal_mode(path: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test]
async fn store_urls_pick_the_backend() {
    assert!(format!("{:?}", store::open("sqlite::memory:").await.unwrap()).contains("Sqlite"));
    let schema = PgSchema::new().await;
    let pg = store::open(&schema.url()).await.unwrap();
    assert!(format!("{pg:?}").contains("Postgres"));
    assert!(matches!(
        store::open("redis://localhost").await,
        Err(StoreError::UnsupportedUrl(_))
    ));
    assert!(store::default_url().starts_with("sqlite://"));
    assert!(store::default_url().ends_with("metering.sqlite"));
}

#[tokio::test]
async fn concurrent_writers_on_one_sqlite_file_do_not_lose_samples() {
    let dir = TempDir::new();
    let url = format!("sqlite://{}/m.sqlite", dir.0.display());
    let store = store::open(&url).await.unwrap();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for batch in 0..10 {
                    let samples: Vec<Sample> = (0..20)
                        .map(|i| sample(&format!("w{w}-b{batch}-{i}"), "load", "r", "p", i, 1.0))
                        .collect();
                    store.record(&samples).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let stats = store.statistics(&query("load", 0)).await.unwrap();
    assert_eq!(stats[0].count, 8 * 10 * 20);
}
