//! The store at scale, one specification run on SQLite (in memory and on a file) and the
//! machine's PostgreSQL: statistics from roll-ups equal those from raw samples on random data
//! and random queries; the meter catalogue lists what the samples hold; expiry removes what
//! is past its time to live, keeps roll-ups and catalogue in step, and gives space back; a
//! database made before roll-ups existed is upgraded; concurrent PostgreSQL writers lose
//! nothing.
//!
//! PostgreSQL is `postgres://postgres@127.0.0.1:5432/test` unless `TIDINGS_TEST_POSTGRES`
//! names another server; without one these tests fail, they do not skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Map;
use tidings_metering::model::{CounterType, Sample, Statistics, StatisticsQuery};
use tidings_metering::store::{self, retention, Store, StoreConfig, StoreLayout};

// ---------------------------------------------------------------------------------------------
// Backends

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
        let name = format!("metering_scale_{:016x}", fastrand::u64(..));
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

    /// A client whose tables are this schema's.
    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
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

/// A directory of its own, removed when the guard goes.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tidings-scale-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    SqliteMemory,
    SqliteFile,
    Postgres,
}

/// Where a store lives, kept alive for a test; a second store on the same backend may be
/// opened from it (another URL, or the same one again).
enum Home {
    Memory,
    Dir(TempDir),
    Schema(PgSchema),
}

impl Home {
    async fn new(backend: Backend) -> Self {
        match backend {
            Backend::SqliteMemory => Self::Memory,
            Backend::SqliteFile => Self::Dir(TempDir::new()),
            Backend::Postgres => Self::Schema(PgSchema::new().await),
        }
    }

    fn url(&self) -> String {
        match self {
            Self::Memory => "sqlite::memory:".to_owned(),
            Self::Dir(dir) => format!("sqlite://{}/metering.sqlite", dir.0.display()),
            Self::Schema(schema) => schema.url(),
        }
    }

    async fn open(&self, layout: StoreLayout) -> Arc<dyn Store> {
        store::open_with(&StoreConfig::new(self.url()).with_layout(layout))
            .await
            .unwrap()
    }
}

/// The default layout with no roll-ups: every answer from raw samples.
fn raw_only() -> StoreLayout {
    StoreLayout {
        rollup_periods: Vec::new(),
        ..StoreLayout::default()
    }
}

/// The default layout with samples kept a day.
fn a_day_to_live() -> StoreLayout {
    StoreLayout {
        metering_time_to_live: 86_400,
        ..StoreLayout::default()
    }
}

macro_rules! on_every_backend {
    ($spec:ident) => {
        mod $spec {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_in_memory() {
                super::$spec(Backend::SqliteMemory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_on_file() {
                super::$spec(Backend::SqliteFile).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgresql() {
                super::$spec(Backend::Postgres).await;
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn at_us(us: i64) -> DateTime<Utc> {
    t0() + Duration::microseconds(us)
}

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

#[allow(clippy::too_many_arguments)]
fn sample(
    id: String,
    meter: &str,
    resource: &str,
    project: Option<&str>,
    unit: &str,
    us: i64,
    volume: f64,
) -> Sample {
    Sample {
        source: "openstack".into(),
        name: meter.into(),
        counter_type: CounterType::Gauge,
        unit: unit.into(),
        volume,
        user_id: project.map(|p| format!("u-{p}")),
        project_id: project.map(str::to_owned),
        resource_id: resource.into(),
        timestamp: at_us(us),
        resource_metadata: Map::new(),
        message_id: id,
    }
}

/// Compares two answers: everything exact but sums and averages, which may differ by the
/// rounding of adding in another order.
fn same_statistics(context: &str, got: &[Statistics], want: &[Statistics]) {
    assert_eq!(
        got.len(),
        want.len(),
        "{context}\ngot {got:#?}\nwant {want:#?}"
    );
    for (g, w) in got.iter().zip(want) {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        assert!(
            close(g.sum, w.sum) && close(g.avg, w.avg),
            "{context}\n{g:?}\n{w:?}"
        );
        let mut g = g.clone();
        (g.sum, g.avg) = (w.sum, w.avg);
        assert_eq!(&g, w, "{context}");
    }
}

/// Compares `store`'s whole-range statistics of `meter` with `reference`'s, for each period.
async fn same_periods(
    context: &str,
    store: &dyn Store,
    reference: &dyn Store,
    meter: &str,
    periods: &[u64],
) {
    for &period in periods {
        let query = StatisticsQuery {
            meter: meter.into(),
            period,
            ..StatisticsQuery::default()
        };
        same_statistics(
            &format!("{context}, {meter}, period {period}"),
            &store.statistics(&query).await.unwrap(),
            &reference.statistics(&query).await.unwrap(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Roll-ups equal raw samples

/// One random sample: meter, resource, project, unit, time (µs after t0), volume.
type Spec = (usize, usize, Option<usize>, usize, i64, f64);

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..2usize,
        0..3usize,
        prop_oneof![Just(None), (0..2usize).prop_map(Some)],
        0..2usize,
        // Three days, to the second, and some times just off a boundary.
        (
            0..3 * 86_400i64,
            prop_oneof![Just(0i64), Just(1), Just(999_999)],
        )
            .prop_map(|(s, us)| s * 1_000_000 + us),
        -1e6..1e6f64,
    )
}

/// A time in or around the samples': on a day or hour boundary, or anywhere.
fn instant() -> impl Strategy<Value = i64> {
    prop_oneof![
        (0..4i64).prop_map(|d| d * DAY_US),
        (0..80i64).prop_map(|h| h * HOUR_US),
        (0..80i64).prop_map(|h| h * HOUR_US - 1),
        -DAY_US..4 * DAY_US,
    ]
}

/// A query: period, start, end, resource, project (2: the empty id).
type QuerySpec = (u64, Option<i64>, Option<i64>, Option<usize>, Option<usize>);

fn query_spec() -> impl Strategy<Value = QuerySpec> {
    (
        prop_oneof![
            Just(0u64),
            Just(0),
            Just(1_800),
            Just(3_600),
            Just(5_400),
            Just(7_200),
            Just(86_400),
            Just(172_800)
        ],
        proptest::option::of(instant()),
        proptest::option::of(instant()),
        proptest::option::of(0..3usize),
        proptest::option::of(0..3usize),
    )
}

const METERS: [&str; 2] = ["cpu", "disk"];
const UNITS: [&str; 2] = ["b", "ns"];
const PROJECTS: [&str; 3] = ["p0", "p1", ""];

fn rollups_answer_like_raw_samples(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (homes, rolled, raw) = runtime.block_on(async {
        let rolled_home = Home::new(backend).await;
        let raw_home = Home::new(backend).await;
        let rolled = rolled_home.open(StoreLayout::default()).await;
        let raw = raw_home.open(raw_only()).await;
        ((rolled_home, raw_home), rolled, raw)
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::collection::vec(spec(), 1..120),
        proptest::collection::vec(query_spec(), 12),
    );
    let cases = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&strategy, |(specs, queries)| {
            let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Each case its own meters, so that cases share the stores without meeting.
            let meter = |m: usize| format!("{}-{case}", METERS[m]);
            let samples: Vec<Sample> = specs
                .iter()
                .enumerate()
                .map(|(i, &(m, r, p, u, us, volume))| {
                    sample(
                        format!("{case}-{i}"),
                        &meter(m),
                        &format!("r{r}"),
                        p.map(|p| PROJECTS[p]),
                        UNITS[u],
                        us,
                        volume,
                    )
                })
                .collect();
            runtime.block_on(async {
                // In two batches, so that roll-ups are added to as well as made.
                let (a, b) = samples.split_at(samples.len() / 2);
                for batch in [a, b] {
                    rolled.record(batch).await.unwrap();
                    raw.record(batch).await.unwrap();
                }
                for (period, start, end, resource, project) in &queries {
                    for m in 0..METERS.len() {
                        let query = StatisticsQuery {
                            meter: meter(m),
                            period: *period,
                            start: start.map(at_us),
                            end: end.map(at_us),
                            resource_id: resource.map(|r| format!("r{r}")),
                            project_id: project.map(|p| PROJECTS[p].to_owned()),
                        };
                        let got = rolled.statistics(&query).await.unwrap();
                        let want = raw.statistics(&query).await.unwrap();
                        same_statistics(&format!("{backend:?} {query:?}"), &got, &want);
                    }
                }
                for resource in [None, Some("r1")] {
                    assert_eq!(
                        rolled.meters(resource).await.unwrap(),
                        raw.meters(resource).await.unwrap(),
                        "{backend:?} meters of {resource:?}"
                    );
                }
            });
            Ok(())
        })
        .unwrap();
    drop((rolled, raw));
    runtime.block_on(async move { drop(homes) });
}

#[test]
fn rollups_answer_like_raw_samples_sqlite_in_memory() {
    rollups_answer_like_raw_samples(Backend::SqliteMemory);
}

#[test]
fn rollups_answer_like_raw_samples_sqlite_on_file() {
    rollups_answer_like_raw_samples(Backend::SqliteFile);
}

#[test]
fn rollups_answer_like_raw_samples_postgresql() {
    rollups_answer_like_raw_samples(Backend::Postgres);
}

/// Three days of one meter on two resources, every ten minutes.
fn three_days(meter: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for step in 0..3 * 144 {
        for resource in ["r0", "r1"] {
            samples.push(sample(
                format!("{meter}-{resource}-{step}"),
                meter,
                resource,
                Some("p0"),
                "%",
                step * 600_000_000,
                (step % 7) as f64,
            ));
        }
    }
    samples
}

/// The whole-range statistics of `meter`, no period.
async fn whole_range(store: &dyn Store, meter: &str) -> Vec<Statistics> {
    store
        .statistics(&StatisticsQuery {
            meter: meter.into(),
            ..StatisticsQuery::default()
        })
        .await
        .unwrap()
}

/// Deletes every raw sample behind the store's back.
async fn delete_raw_samples(backend: Backend, home: &Home) {
    match (backend, home) {
        (Backend::SqliteFile, Home::Dir(dir)) => {
            let conn = rusqlite::Connection::open(dir.0.join("metering.sqlite")).unwrap();
            conn.execute("DELETE FROM sample_points", []).unwrap();
        }
        (Backend::Postgres, Home::Schema(schema)) => {
            schema
                .client()
                .await
                .batch_execute("DELETE FROM samples")
                .await
                .unwrap();
        }
        _ => unreachable!("a store whose tables can be reached from outside"),
    }
}

async fn aligned_statistics_are_read_from_rollups_not_samples(backend: Backend) {
    if backend == Backend::SqliteMemory {
        return; // Its tables cannot be reached from outside the store.
    }
    let home = Home::new(backend).await;
    let store = home.open(StoreLayout::default()).await;
    store.record(&three_days("cpu")).await.unwrap();
    let hourly = StatisticsQuery {
        meter: "cpu".into(),
        period: 3_600,
        ..StatisticsQuery::default()
    };
    let whole = StatisticsQuery {
        meter: "cpu".into(),
        ..StatisticsQuery::default()
    };
    let before = (
        store.statistics(&hourly).await.unwrap(),
        store.statistics(&whole).await.unwrap(),
    );
    assert_eq!(before.0.len(), 72);
    assert_eq!(before.1[0].count, 864);
    delete_raw_samples(backend, &home).await;
    // Whole hours and the whole range: the same answers without a sample left.
    assert_eq!(store.statistics(&hourly).await.unwrap(), before.0);
    assert_eq!(store.statistics(&whole).await.unwrap(), before.1);
    // A window that does not line up reads the (now missing) samples.
    let window = StatisticsQuery {
        meter: "cpu".into(),
        start: Some(at_us(HOUR_US + 1)),
        end: Some(at_us(HOUR_US + 1_800_000_000)),
        ..StatisticsQuery::default()
    };
    assert!(store.statistics(&window).await.unwrap().is_empty());
}

on_every_backend!(aligned_statistics_are_read_from_rollups_not_samples);

// ---------------------------------------------------------------------------------------------
// Expiry

async fn expiry_removes_what_is_past_its_time_to_live_and_keeps_summaries_in_step(
    backend: Backend,
) {
    let layout = StoreLayout {
        metering_time_to_live: 86_400,
        meter_time_to_live: [("disk".to_owned(), 2 * 86_400), ("keep".to_owned(), -1)].into(),
        expiry_batch: 100,
        ..StoreLayout::default()
    };
    let home = Home::new(backend).await;
    let store = home.open(layout.clone()).await;
    let mut all = Vec::new();
    for meter in ["cpu", "disk", "keep"] {
        all.extend(three_days(meter));
    }
    // A resource seen only at the start: gone from the catalogue with its samples.
    all.push(sample(
        "old".into(),
        "cpu",
        "r-old",
        Some("p0"),
        "%",
        5,
        1.0,
    ));
    for batch in all.chunks(200) {
        store.record(batch).await.unwrap();
    }
    let full = store.disk_usage().await.unwrap();
    // Three days and a half after t0. Cutoffs fall on day boundaries (the largest roll-up
    // period): cpu (a day to live) keeps its last day, disk (two days) its last two, keep all.
    let now = at_us(3 * DAY_US + 12 * HOUR_US);
    let done = retention::expire(store.as_ref(), now).await.unwrap();
    assert_eq!(done.samples, 2 * 288 + 1 + 288, "{done:?}");
    let cutoffs = [("cpu", 2 * DAY_US), ("disk", DAY_US)];
    let kept = |s: &Sample| {
        cutoffs
            .iter()
            .all(|(m, cut)| s.name != *m || s.timestamp >= at_us(*cut))
    };
    let reference = Home::new(backend).await;
    let reference_store = reference.open(raw_only()).await;
    let survivors: Vec<Sample> = all.iter().filter(|s| kept(s)).cloned().collect();
    for batch in survivors.chunks(200) {
        reference_store.record(batch).await.unwrap();
    }
    for meter in ["cpu", "disk", "keep"] {
        same_periods(
            &format!("{backend:?}"),
            store.as_ref(),
            reference_store.as_ref(),
            meter,
            &[0, 3_600, 86_400],
        )
        .await;
    }
    assert_eq!(
        store.meters(None).await.unwrap(),
        reference_store.meters(None).await.unwrap()
    );
    assert!(store
        .meters(None)
        .await
        .unwrap()
        .iter()
        .all(|m| m.resource_id != "r-old"));
    // A second run finds nothing left.
    assert!(retention::expire(store.as_ref(), now)
        .await
        .unwrap()
        .is_empty());
    if let (Some(full), Some(after)) = (full, store.disk_usage().await.unwrap()) {
        if backend == Backend::SqliteFile {
            assert!(after < full, "the file gave back space: {full} → {after}");
        }
    }
}

on_every_backend!(expiry_removes_what_is_past_its_time_to_live_and_keeps_summaries_in_step);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_expires_whole_day_partitions_when_every_meter_allows() {
    let home = Home::new(Backend::Postgres).await;
    let layout = a_day_to_live();
    let store = home.open(layout).await;
    store.record(&three_days("cpu")).await.unwrap();
    let Home::Schema(schema) = &home else {
        unreachable!()
    };
    let client = schema.client().await;
    let partitions = || async {
        let row = client
            .query_one(
                "SELECT COUNT(*) FROM pg_inherits WHERE inhparent = 'samples'::regclass",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    assert_eq!(partitions().await, 3);
    let done = retention::expire(store.as_ref(), at_us(3 * DAY_US + HOUR_US))
        .await
        .unwrap();
    assert_eq!((done.partitions, done.samples), (2, 0), "{done:?}");
    assert_eq!(partitions().await, 1);
    let left = whole_range(store.as_ref(), "cpu").await;
    assert_eq!(left[0].count, 288);
    assert_eq!(left[0].duration_start, at_us(2 * DAY_US));
    // A late sample for a dropped day makes its partition again.
    let late = sample("late".into(), "cpu", "r0", Some("p0"), "%", 7, 1.0);
    assert_eq!(store.record(&[late]).await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// Upgrades

/// The samples table as the previous version made it.
const OLD_SAMPLES: &str = "
CREATE TABLE samples (
    message_id TEXT PRIMARY KEY,
    meter TEXT NOT NULL,
    counter_type TEXT NOT NULL,
    unit TEXT NOT NULL,
    volume DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    user_id TEXT,
    project_id TEXT,
    resource_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    resource_metadata TEXT NOT NULL
);
CREATE INDEX samples_meter_ts ON samples (meter, ts);
CREATE INDEX samples_resource ON samples (resource_id);
";

fn old_rows(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| {
            format!(
                "('{}', '{}', 'gauge', '{}', {}, 'openstack', '{}', '{}', '{}', {}, '{{}}')",
                s.message_id,
                s.name,
                s.unit,
                s.volume,
                s.user_id.as_deref().unwrap_or_default(),
                s.project_id.as_deref().unwrap_or_default(),
                s.resource_id,
                s.timestamp.timestamp_micros()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn a_database_made_before_rollups_is_upgraded(backend: Backend) {
    if backend == Backend::SqliteMemory {
        return; // Nothing outlives an in-memory store.
    }
    let home = Home::new(backend).await;
    let old = three_days("cpu");
    let fill = format!(
        "{OLD_SAMPLES} INSERT INTO samples VALUES {};",
        old_rows(&old)
    );
    match &home {
        Home::Dir(dir) => rusqlite::Connection::open(dir.0.join("metering.sqlite"))
            .unwrap()
            .execute_batch(&fill)
            .unwrap(),
        Home::Schema(schema) => schema.client().await.batch_execute(&fill).await.unwrap(),
        Home::Memory => unreachable!(),
    }
    let store = home.open(StoreLayout::default()).await;
    let reference_home = Home::new(backend).await;
    let reference = reference_home.open(raw_only()).await;
    reference.record(&old).await.unwrap();
    // Stored before the upgrade: a duplicate now.
    assert_eq!(store.record(&old[..10]).await.unwrap(), 0);
    same_periods(
        &format!("{backend:?} upgraded"),
        store.as_ref(),
        reference.as_ref(),
        "cpu",
        &[0, 3_600, 86_400],
    )
    .await;
    assert_eq!(
        store.meters(None).await.unwrap(),
        reference.meters(None).await.unwrap()
    );
    // Reopened with another roll-up period: filled from the samples.
    drop(store);
    let hourly_only = StoreLayout {
        rollup_periods: vec![1_800, 3_600],
        ..StoreLayout::default()
    };
    let store = home.open(hourly_only).await;
    let query = StatisticsQuery {
        meter: "cpu".into(),
        period: 1_800,
        ..StatisticsQuery::default()
    };
    same_statistics(
        &format!("{backend:?} new period"),
        &store.statistics(&query).await.unwrap(),
        &reference.statistics(&query).await.unwrap(),
    );
}

on_every_backend!(a_database_made_before_rollups_is_upgraded);

/// The first column of the primary key of PostgreSQL's `samples`.
async fn samples_key_first_column(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT a.attname::text FROM pg_constraint c \
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
             WHERE c.conrelid = 'samples'::regclass AND c.contype = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Partitioned samples keyed message id first and roll-ups on full pages (the previous
/// version) are keyed time first and given room once opened; what they held stays, and still
/// counts as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_samples_keyed_by_message_id_first_are_rekeyed_by_time() {
    let home = Home::new(Backend::Postgres).await;
    let Home::Schema(schema) = &home else {
        unreachable!()
    };
    let client = schema.client().await;
    let all = three_days("cpu");
    let store = home.open(StoreLayout::default()).await;
    assert_eq!(samples_key_first_column(&client).await, "ts");
    client
        .batch_execute(
            "ALTER TABLE samples DROP CONSTRAINT samples_pkey, \
             ADD PRIMARY KEY (message_id, ts); \
             ALTER TABLE sample_rollups RESET (fillfactor);",
        )
        .await
        .unwrap();
    assert_eq!(samples_key_first_column(&client).await, "message_id");
    assert_eq!(store.record(&all[..300]).await.unwrap(), 300);
    drop(store);

    let store = home.open(StoreLayout::default()).await;
    assert_eq!(samples_key_first_column(&client).await, "ts");
    // Roll-up rows, updated in place by each sample, get room on their pages.
    let options: Vec<String> = client
        .query_one(
            "SELECT reloptions FROM pg_class WHERE oid = 'sample_rollups'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(options, ["fillfactor=50"]);
    assert_eq!(store.record(&all).await.unwrap(), all.len() - 300);
    let whole = whole_range(store.as_ref(), "cpu").await;
    assert_eq!(whole[0].count, all.len() as u64);
}

/// A writer remembers the catalogue rows it wrote and writes each once a retention step (a
/// day here), not once a sample; a row that expiry deleted comes back with the writer's next
/// sample that is kept, even though the writer remembers writing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_catalogue_rows_expiry_deleted_come_back_with_the_next_sample() {
    let home = Home::new(Backend::Postgres).await;
    let layout = a_day_to_live();
    let writer = home.open(layout.clone()).await;
    let expirer = home.open(layout).await;
    let at = |id: &str, us: i64| sample(id.into(), "cpu", "r0", Some("p0"), "%", us, 1.0);
    for (n, id) in ["a", "b", "c"].iter().enumerate() {
        writer
            .record(&[at(id, (n as i64 + 1) * HOUR_US)])
            .await
            .unwrap();
    }
    let listed = || async {
        writer
            .meters(None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.name, m.resource_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(listed().await, [("cpu".to_owned(), "r0".to_owned())]);
    // Day 0 is past its time to live on day 2: its samples and the row go.
    retention::expire(expirer.as_ref(), at_us(2 * DAY_US + HOUR_US))
        .await
        .unwrap();
    assert!(listed().await.is_empty());
    assert!(whole_range(writer.as_ref(), "cpu").await.is_empty());
    // A sample of day 1 is kept, and lists its series again.
    writer.record(&[at("d", DAY_US + HOUR_US)]).await.unwrap();
    assert_eq!(listed().await, [("cpu".to_owned(), "r0".to_owned())]);
    assert_eq!(whole_range(writer.as_ref(), "cpu").await[0].count, 1);
}

// ---------------------------------------------------------------------------------------------
// Several writers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_writers_on_several_connections_lose_nothing() {
    let home = Home::new(Backend::Postgres).await;
    let writers: Vec<Arc<dyn Store>> =
        futures::future::join_all((0..4).map(|_| home.open(StoreLayout::default()))).await;
    let all = three_days("cpu");
    // Every writer takes every fourth batch; batches overlap the same roll-up rows.
    let tasks = writers.iter().enumerate().map(|(w, store)| {
        let store = store.clone();
        let batches: Vec<Vec<Sample>> = all
            .chunks(24)
            .skip(w)
            .step_by(4)
            .map(<[Sample]>::to_vec)
            .collect();
        tokio::spawn(async move {
            let mut stored = 0;
            for batch in batches {
                stored += store.record(&batch).await.unwrap();
            }
            stored
        })
    });
    let stored: usize = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert_eq!(stored, all.len());
    let whole = whole_range(writers[0].as_ref(), "cpu").await;
    assert_eq!(whole[0].count, all.len() as u64);
    let expected: f64 = all.iter().map(|s| s.volume).sum();
    assert!((whole[0].sum - expected).abs() < 1e-9);
}

// ---------------------------------------------------------------------------------------------
// SQLite's layout: series, metadata and points

fn sqlite_file(home: &Home) -> rusqlite::Connection {
    match home {
        Home::Dir(dir) => rusqlite::Connection::open(dir.0.join("metering.sqlite")).unwrap(),
        _ => unreachable!("a SQLite file"),
    }
}

/// Every sample's message id and metadata, through the `samples` table or view.
fn ids_and_metadata(conn: &rusqlite::Connection) -> Vec<(String, String)> {
    let mut statement = conn
        .prepare("SELECT message_id, resource_metadata FROM samples ORDER BY message_id")
        .unwrap();
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// A database of one wide row per sample and the catalogue that went with it (the version
/// before series) moves into series, metadata and points: every message id and metadata
/// comes back through the `samples` view as it went in, and the old tables are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_of_wide_rows_moves_into_series_and_points() {
    let home = Home::new(Backend::SqliteFile).await;
    let mut old = three_days("cpu");
    for (i, s) in old.iter_mut().enumerate() {
        if i % 2 == 0 {
            // Most ids are UUIDs (stored as 16 bytes); some are not (stored as text).
            s.message_id = uuid::Uuid::new_v4().to_string();
        }
    }
    let fill = format!(
        "{OLD_SAMPLES} INSERT INTO samples VALUES {};
         UPDATE samples SET resource_metadata =
             '{{\"host\": \"h' || (ts / 600000000 % 3) || '\"}}';
         CREATE TABLE meter_catalogue (
             meter TEXT NOT NULL, resource_id TEXT NOT NULL, source TEXT NOT NULL,
             unit TEXT NOT NULL, counter_type TEXT NOT NULL, project_key TEXT NOT NULL,
             user_key TEXT NOT NULL, last_ts INTEGER NOT NULL,
             PRIMARY KEY (meter, resource_id, source, unit, counter_type, project_key, user_key)
         ) WITHOUT ROWID;
         INSERT INTO meter_catalogue SELECT meter, resource_id, source, unit, counter_type,
             '=' || project_id, '=' || user_id, MAX(ts) FROM samples
             GROUP BY meter, resource_id, source, unit, counter_type, project_id, user_id;",
        old_rows(&old)
    );
    sqlite_file(&home).execute_batch(&fill).unwrap();
    let wanted = ids_and_metadata(&sqlite_file(&home));

    let store = home.open(StoreLayout::default()).await;
    let conn = sqlite_file(&home);
    let kind: String = conn
        .query_row(
            "SELECT type FROM sqlite_master WHERE name = 'samples'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kind, "view");
    let leftovers: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'samples_before_series'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0);
    assert_eq!(ids_and_metadata(&conn), wanted);
    let (series, metadata, blobs): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM meter_catalogue), (SELECT COUNT(*) FROM sample_metadata), \
             (SELECT COUNT(*) FROM sample_points WHERE typeof(message_id) = 'blob')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (series, metadata),
        (2, 6),
        "two resources, three metadata each"
    );
    assert_eq!(blobs, old.len() as i64 / 2);

    let reference_home = Home::new(Backend::SqliteFile).await;
    let reference = reference_home.open(raw_only()).await;
    reference.record(&old).await.unwrap();
    assert_eq!(store.record(&old).await.unwrap(), 0, "all stored before");
    assert_eq!(
        store.meters(None).await.unwrap(),
        reference.meters(None).await.unwrap()
    );
    same_periods(
        "moved",
        store.as_ref(),
        reference.as_ref(),
        "cpu",
        &[0, 3_600],
    )
    .await;

    // Roll-ups clustered by their key, as an older version kept them, are put back in
    // insertion order when the file is opened.
    drop(store);
    conn.execute_batch(
        "CREATE TABLE clustered (meter TEXT NOT NULL, scope INTEGER NOT NULL,
             period INTEGER NOT NULL, resource_id TEXT NOT NULL, project_key TEXT NOT NULL,
             unit TEXT NOT NULL, bucket_start INTEGER NOT NULL, n INTEGER NOT NULL,
             total REAL NOT NULL, low REAL NOT NULL, high REAL NOT NULL,
             first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL,
             PRIMARY KEY (meter, scope, period, resource_id, project_key, unit, bucket_start)
         ) WITHOUT ROWID;
         INSERT INTO clustered SELECT meter, scope, period, resource_id, project_key, unit,
             bucket_start, n, total, low, high, first_ts, last_ts FROM sample_rollups;
         DROP TABLE sample_rollups;
         ALTER TABLE clustered RENAME TO sample_rollups;
         CREATE INDEX sample_rollups_age ON sample_rollups (meter, bucket_start);",
    )
    .unwrap();
    let store = home.open(StoreLayout::default()).await;
    let layout: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'sample_rollups'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!layout.contains("WITHOUT ROWID"), "{layout}");
    let indexes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE tbl_name = 'sample_rollups' \
             AND name = 'sample_rollups_age'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 1);
    same_periods(
        "roll-ups reordered",
        store.as_ref(),
        reference.as_ref(),
        "cpu",
        &[0, 3_600, 86_400],
    )
    .await;
}

/// Two stores on one file: when one's expiry removes a series (and its metadata), the other,
/// which wrote that series before, writes it again as a new series rather than under the
/// removed id; metadata whose samples all expired goes, the rest stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_removes_series_and_metadata_under_another_writer() {
    let layout = StoreLayout {
        metering_time_to_live: 86_400,
        expiry_batch: 100,
        ..StoreLayout::default()
    };
    let home = Home::new(Backend::SqliteFile).await;
    let expirer = home.open(layout.clone()).await;
    let writer = home.open(layout).await;
    let with_host = |mut s: Sample, host: &str| {
        s.resource_metadata
            .insert("host".into(), serde_json::Value::from(host));
        s
    };
    // r-gone: one sample, on day 0. r-kept: one on day 0 (host a) and one on day 2 (host b).
    writer
        .record(&[
            with_host(
                sample("g0".into(), "cpu", "r-gone", Some("p"), "%", HOUR_US, 1.0),
                "a",
            ),
            with_host(
                sample("k0".into(), "cpu", "r-kept", Some("p"), "%", HOUR_US, 2.0),
                "a",
            ),
            with_host(
                sample(
                    "k1".into(),
                    "cpu",
                    "r-kept",
                    Some("p"),
                    "%",
                    2 * DAY_US,
                    3.0,
                ),
                "b",
            ),
        ])
        .await
        .unwrap();
    let now = at_us(2 * DAY_US + HOUR_US);
    let done = retention::expire(expirer.as_ref(), now).await.unwrap();
    assert_eq!(done.samples, 2, "{done:?}");
    let conn = sqlite_file(&home);
    let rows: Vec<(String, String)> = {
        let mut statement = conn
            .prepare(
                "SELECT c.resource_id, m.body FROM sample_metadata m \
                 JOIN meter_catalogue c ON c.series_id = m.series_id ORDER BY 1, 2",
            )
            .unwrap();
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(rows, [("r-kept".to_owned(), r#"{"host":"b"}"#.to_owned())]);
    let series: i64 = conn
        .query_row("SELECT COUNT(*) FROM meter_catalogue", [], |r| r.get(0))
        .unwrap();
    assert_eq!(series, 1);

    // The writer knew r-gone's series and host a's metadata; both are gone.
    writer
        .record(&[with_host(
            sample(
                "g1".into(),
                "cpu",
                "r-gone",
                Some("p"),
                "%",
                2 * DAY_US,
                5.0,
            ),
            "a",
        )])
        .await
        .unwrap();
    let resources: Vec<String> = expirer
        .meters(None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.resource_id)
        .collect();
    assert_eq!(resources, ["r-gone", "r-kept"]);
    let gone = expirer
        .statistics(&StatisticsQuery {
            meter: "cpu".into(),
            resource_id: Some("r-gone".into()),
            ..StatisticsQuery::default()
        })
        .await
        .unwrap();
    assert_eq!((gone[0].count, gone[0].sum), (1, 5.0));
    let orphans: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sample_points p WHERE NOT EXISTS \
             (SELECT 1 FROM meter_catalogue c WHERE c.series_id = p.series_id) \
             OR NOT EXISTS (SELECT 1 FROM sample_metadata m WHERE m.metadata_id = p.metadata_id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
}

/// Expiry gives the freed pages back to the file system many at a time, not one per step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_gives_pages_back_in_bounded_runs() {
    let layout = a_day_to_live();
    let home = Home::new(Backend::SqliteFile).await;
    let store = home.open(layout).await;
    let old: Vec<Sample> = (0..20_000)
        .map(|i| {
            sample(
                format!("{i:08}-0000-4000-8000-000000000000"),
                "cpu",
                &format!("r{}", i % 50),
                Some("p"),
                "%",
                i64::from(i) * 1_000_000,
                1.0,
            )
        })
        .collect();
    for batch in old.chunks(2_000) {
        store.record(batch).await.unwrap();
    }
    let now = at_us(3 * DAY_US);
    let mut most_pages = 0;
    let mut steps = 0;
    loop {
        let step = store.expire_step(now).await.unwrap();
        if step.is_empty() {
            break;
        }
        most_pages = most_pages.max(step.pages);
        steps += 1;
        assert!(steps < 10_000, "expiry does not end");
    }
    assert!(
        most_pages > 100,
        "one step gave back at most {most_pages} pages"
    );
}
