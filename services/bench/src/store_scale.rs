//! `store-scale`: how the metering store holds up as samples pile up. N samples (a cloud of
//! [`RESOURCES`] instances × [`METERS`] meters, polled every [`INTERVAL_S`] seconds) go through
//! the collector's own ingest path — sample notifications on an in-process (memory) bus, the
//! collector's listener, validation and batching, its store — into SQLite and PostgreSQL; then
//! the answers the API and the evaluator ask for are timed, the disk measured, half of the
//! data expired while more samples arrive, and the disk measured again.
//!
//! The memory bus leaves the broker out, so the figures are the store's (the `ingest`
//! scenario measures the broker path). PostgreSQL runs [`PG_COLLECTORS`] collectors at once,
//! competing consumers of one queue, each with its own connections, as collectors on several
//! machines would. Every tenth of the load, the answers are timed again: the growth curve.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tidings::notify::Notifier;
use tidings::{Context, Transport};
use tidings_metering::collector::{self, Collector, CollectorConfig};
use tidings_metering::model::StatisticsQuery;
use tidings_metering::store::{self, retention, Store, StoreConfig, StoreLayout};

use super::harness::{BenchError, Result};
use super::Env;

/// Instances in the simulated cloud.
pub const RESOURCES: usize = 1_000;
/// Meters per instance: (name, type, unit).
pub const METERS: [(&str, &str, &str); 10] = [
    ("cpu_util", "gauge", "%"),
    ("cpu", "cumulative", "ns"),
    ("vcpus", "gauge", "vcpu"),
    ("memory", "gauge", "MB"),
    ("memory.usage", "gauge", "MB"),
    ("disk.usage", "gauge", "B"),
    ("disk.read.bytes", "cumulative", "B"),
    ("disk.write.bytes", "cumulative", "B"),
    ("network.incoming.bytes", "cumulative", "B"),
    ("network.outgoing.bytes", "cumulative", "B"),
];
/// Seconds between two polls of an instance.
pub const INTERVAL_S: i64 = 300;
/// Projects the instances belong to.
const PROJECTS: usize = 20;
/// Samples per notification (the polling agent's batch).
const PER_NOTIFICATION: usize = 100;
/// Samples published but not yet stored, at most: the bound on what waits in the bus.
const WINDOW: u64 = 40_000;
/// Collectors writing into PostgreSQL at once.
pub const PG_COLLECTORS: usize = 2;
/// Times each answer is asked; the median counts.
const REPEATS: usize = 5;
/// Points on the growth curve.
const CURVE_POINTS: u64 = 10;

/// The stores measured, by name in `store-scale/<store>`.
pub const STORES: [&str; 2] = ["sqlite", "postgres"];

/// One point of the growth curve.
#[derive(Clone, Debug, Serialize)]
pub struct CurvePoint {
    /// Samples stored so far.
    pub samples: u64,
    /// Samples per second over the tenth of the load that ended here.
    pub ingest_per_s: f64,
    /// The answers, timed here (ms).
    pub meters_list_ms: f64,
    pub stats_full_ms: f64,
    pub stats_window_ms: f64,
    /// Bytes on disk per sample stored.
    pub bytes_per_sample: f64,
}

/// What `store-scale/<store>` measured. The first eight fields are the contract.
#[derive(Clone, Debug, Serialize)]
pub struct StoreScale {
    #[serde(skip)]
    pub store: String,
    pub samples: u64,
    pub ingest_per_s: f64,
    pub meters_list_ms: f64,
    pub stats_full_ms: f64,
    pub stats_resource_ms: f64,
    pub stats_window_ms: f64,
    pub bytes_per_sample: f64,
    pub bytes_after_expiry: u64,
    /// Bytes on disk after the load.
    pub bytes: u64,
    /// Collectors that wrote at once.
    pub collectors: usize,
    /// The slowest tenth of the load (samples/s).
    pub ingest_min_per_s: f64,
    /// Samples expired, and samples/s stored while the expiry ran.
    pub expired_samples: u64,
    pub ingest_during_expiry_per_s: f64,
    /// Seconds the expiry took.
    pub expiry_s: f64,
    /// Every tenth of the load.
    pub curve: Vec<CurvePoint>,
}

/// The simulated cloud's samples, in polling order: timestamp by timestamp, instance by
/// instance, meter by meter.
struct Cloud {
    start: DateTime<Utc>,
    host_metadata: Vec<Value>,
}

impl Cloud {
    fn new() -> Self {
        Self {
            // A day boundary: whole-range hourly statistics start on a roll-up bucket.
            start: Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .unwrap_or_default(),
            host_metadata: (0..50)
                .map(|h| json!({ "host": format!("compute-{h:02}") }))
                .collect(),
        }
    }

    fn time(&self, tick: i64) -> DateTime<Utc> {
        self.start + chrono::Duration::seconds(tick * INTERVAL_S)
    }

    fn resource(r: usize) -> String {
        format!("{r:08x}-4a1c-4e2b-9d0f-{r:012x}")
    }

    /// Sample `i` as the wire carries it.
    fn sample(&self, i: u64) -> Value {
        let per_tick = (RESOURCES * METERS.len()) as u64;
        let tick = i64::try_from(i / per_tick).unwrap_or(i64::MAX);
        let r = ((i / METERS.len() as u64) % RESOURCES as u64) as usize;
        let (name, kind, unit) = METERS[(i % METERS.len() as u64) as usize];
        let project = r % PROJECTS;
        json!({
            "source": "openstack",
            "counter_name": name,
            "counter_type": kind,
            "counter_unit": unit,
            "counter_volume": (i % 1_000) as f64 * 0.5,
            "user_id": format!("{:032x}", 0xa5_0000 + project),
            "project_id": format!("{:032x}", 0x5e_0000 + project),
            "resource_id": Self::resource(r),
            "timestamp": self.time(tick).format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
            "resource_metadata": self.host_metadata[r % self.host_metadata.len()],
            "message_id": uuid::Uuid::new_v4().to_string(),
        })
    }

    /// The time of the last sample of `n`.
    fn last_time(&self, n: u64) -> DateTime<Utc> {
        let per_tick = (RESOURCES * METERS.len()) as u64;
        self.time(i64::try_from(n.saturating_sub(1) / per_tick).unwrap_or(0))
    }
}

/// Collectors on an in-process bus into one store each, and the notifier that feeds them.
struct Pipeline {
    transports: Vec<Transport>,
    collectors: Vec<Collector>,
    notifier: Notifier,
    reports: Vec<tokio::sync::watch::Receiver<collector::CollectorReport>>,
    published: u64,
}

impl Pipeline {
    async fn start(env: &Env, stores: Vec<Arc<dyn Store>>) -> Result<Self> {
        let bus = format!("memory://{}", env.name("store-scale"));
        let mut transports = Vec::new();
        let mut collectors = Vec::new();
        let mut reports = Vec::new();
        for store in stores {
            let transport = Transport::connect(&bus).await?;
            let config = CollectorConfig {
                batch_size: 20,
                batch_timeout: Duration::from_millis(50),
                stop_deadline: Duration::from_secs(30),
                ..CollectorConfig::default()
            };
            let running = Collector::start(&transport, store, config).await?;
            reports.push(running.subscribe());
            collectors.push(running);
            transports.push(transport);
        }
        let transport = Transport::connect(&bus).await?;
        let notifier = Notifier::new(&transport, "bench.store-scale")
            .exchange(collector::EXCHANGE)
            .topics([collector::POLLING_TOPIC]);
        transports.push(transport);
        Ok(Self {
            transports,
            collectors,
            notifier,
            reports,
            published: 0,
        })
    }

    fn stored(&self) -> u64 {
        self.reports.iter().map(|r| r.borrow().stored).sum()
    }

    fn rejected(&self) -> u64 {
        self.reports
            .iter()
            .map(|r| r.borrow().rejected_total() + r.borrow().dead_lettered)
            .sum()
    }

    /// Waits until at most `left` published samples are not yet stored.
    async fn drain_to(&mut self, left: u64) -> Result<()> {
        loop {
            if self.rejected() > 0 {
                return Err(BenchError(format!(
                    "the collector refused {} samples",
                    self.rejected()
                )));
            }
            if self.published.saturating_sub(self.stored()) <= left {
                return Ok(());
            }
            let changes = self.reports.iter_mut().map(|r| Box::pin(r.changed()));
            let (changed, _, _) = futures::future::select_all(changes).await;
            changed.map_err(|_| BenchError("a collector stopped".into()))?;
        }
    }

    /// Publishes samples `from..to` of `cloud` and waits until they are stored.
    async fn load(&mut self, cloud: &Cloud, from: u64, to: u64) -> Result<()> {
        let context = Context::new();
        let mut i = from;
        while i < to {
            let end = (i + PER_NOTIFICATION as u64).min(to);
            let samples: Vec<Value> = (i..end).map(|k| cloud.sample(k)).collect();
            self.notifier
                .sample(
                    &context,
                    tidings_metering::polling::EVENT_TYPE,
                    json!({ "samples": samples }),
                )
                .await?;
            self.published += end - i;
            i = end;
            if self.published.saturating_sub(self.stored()) > WINDOW {
                self.drain_to(WINDOW / 2).await?;
            }
        }
        self.drain_to(0).await
    }

    async fn stop(self) {
        for collector in self.collectors {
            collector.stop().await;
        }
        for transport in self.transports {
            transport.close().await;
        }
    }
}

/// The median of `REPEATS` runs of `ask`, in ms.
async fn median_ms<F, Fut, T>(mut ask: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, store::StoreError>>,
{
    let mut times = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let began = Instant::now();
        ask().await?;
        times.push(began.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The answers: (meter list, whole-range hourly statistics of a meter, the same for one
/// resource, a 30-minute window as the evaluator asks).
async fn answers(store: &dyn Store, cloud: &Cloud, n: u64) -> Result<[f64; 4]> {
    let meter = METERS[0].0;
    let full = StatisticsQuery {
        meter: meter.into(),
        period: 3_600,
        ..StatisticsQuery::default()
    };
    let resource = StatisticsQuery {
        resource_id: Some(Cloud::resource(7)),
        ..full.clone()
    };
    let last = cloud.last_time(n);
    // Aodh's threshold evaluator: the alarm's period (here ten minutes) over the last
    // evaluation periods, ending now.
    let window = StatisticsQuery {
        meter: meter.into(),
        period: 600,
        start: Some(last - chrono::Duration::minutes(30)),
        end: Some(last),
        ..StatisticsQuery::default()
    };
    Ok([
        median_ms(|| store.meters(None)).await?,
        median_ms(|| store.statistics(&full)).await?,
        median_ms(|| store.statistics(&resource)).await?,
        median_ms(|| store.statistics(&window)).await?,
    ])
}

async fn disk(store: &dyn Store) -> Result<u64> {
    Ok(store.disk_usage().await?.unwrap_or(0))
}

/// Where each store lives for the run, removed afterwards.
enum Home {
    File(std::path::PathBuf),
    Schema { base: String, name: String },
}

impl Home {
    async fn new(env: &Env, which: &str, postgres: &str) -> Result<Self> {
        match which {
            "sqlite" => Ok(Self::File(env.scratch_file("store-scale.sqlite"))),
            _ => {
                let name = format!("tidings_bench_{}", uuid::Uuid::new_v4().simple());
                let (client, connection) =
                    tokio_postgres::connect(postgres, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("CREATE SCHEMA {name}"))
                    .await?;
                Ok(Self::Schema {
                    base: postgres.to_owned(),
                    name,
                })
            }
        }
    }

    fn url(&self) -> String {
        match self {
            Self::File(path) => format!("sqlite://{}", path.display()),
            Self::Schema { base, name } => {
                let separator = if base.contains('?') { '&' } else { '?' };
                format!("{base}{separator}options=-c%20search_path%3D{name}")
            }
        }
    }

    async fn remove(self, env: &Env) {
        match self {
            Self::File(path) => env.remove_scratch(&path),
            Self::Schema { base, name } => {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&base, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await;
                }
            }
        }
    }
}

/// Runs `store-scale/<which>` with `n` samples; PostgreSQL at `postgres`.
pub(crate) async fn run(env: &Env, which: &str, n: u64, postgres: &str) -> Result<StoreScale> {
    let home = Home::new(env, which, postgres).await?;
    let result = measure(env, which, n, &home).await;
    home.remove(env).await;
    result
}

async fn measure(env: &Env, which: &str, n: u64, home: &Home) -> Result<StoreScale> {
    let cloud = Cloud::new();
    // Samples live a day; expiry runs at a day boundary near the middle of the data, so
    // that about half goes.
    let layout = StoreLayout {
        metering_time_to_live: 86_400,
        ..StoreLayout::default()
    };
    let config = StoreConfig::new(home.url()).with_layout(layout);
    let collectors = if which == "postgres" {
        PG_COLLECTORS
    } else {
        1
    };
    let mut stores = Vec::new();
    for _ in 0..collectors {
        stores.push(store::open_with(&config).await?);
    }
    let probe = stores[0].clone();
    let mut pipeline = Pipeline::start(env, stores).await?;
    let mut curve = Vec::new();
    let began = Instant::now();
    let mut loaded = 0;
    for point in 1..=CURVE_POINTS {
        let to = n * point / CURVE_POINTS;
        let step = Instant::now();
        pipeline.load(&cloud, loaded, to).await?;
        let rate = (to - loaded) as f64 / step.elapsed().as_secs_f64();
        loaded = to;
        let [meters, full, _, window] = answers(probe.as_ref(), &cloud, loaded).await?;
        let bytes = disk(probe.as_ref()).await?;
        eprintln!(
            "store-scale/{which}: {loaded} samples, {rate:.0}/s, meters {meters:.1} ms, \
             stats {full:.1} ms, window {window:.1} ms, {:.0} B/sample",
            bytes as f64 / loaded.max(1) as f64
        );
        curve.push(CurvePoint {
            samples: loaded,
            ingest_per_s: rate,
            meters_list_ms: meters,
            stats_full_ms: full,
            stats_window_ms: window,
            bytes_per_sample: bytes as f64 / loaded.max(1) as f64,
        });
    }
    // The whole load, less the time spent timing answers in between.
    let answering: f64 = curve
        .iter()
        .map(|p| (p.meters_list_ms + p.stats_full_ms + p.stats_window_ms) * REPEATS as f64 / 1e3)
        .sum();
    let ingest_per_s = n as f64 / (began.elapsed().as_secs_f64() - answering).max(1e-9);
    let [meters_list_ms, stats_full_ms, stats_resource_ms, stats_window_ms] =
        answers(probe.as_ref(), &cloud, n).await?;
    let bytes = disk(probe.as_ref()).await?;

    // Expire about half, while a twentieth more arrives.
    let half = cloud.last_time(n / 2).timestamp();
    let cutoff_day = (half + 43_200).div_euclid(86_400) * 86_400;
    let now = DateTime::from_timestamp(cutoff_day + 86_400, 0).unwrap_or_default();
    let before = count(probe.as_ref()).await?;
    let expiring = {
        let probe = probe.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            let done = retention::expire(probe.as_ref(), now).await;
            (done, began.elapsed())
        })
    };
    let extra = (n / 20).max(1);
    let during = Instant::now();
    pipeline.load(&cloud, n, n + extra).await?;
    let ingest_during_expiry_per_s = extra as f64 / during.elapsed().as_secs_f64();
    let (expired, expiry_time) = expiring
        .await
        .map_err(|e| BenchError(format!("expiry: {e}")))?;
    expired?;
    // What arrived after the expiry's last step is expired by the next run.
    retention::expire(probe.as_ref(), now).await?;
    let after = count(probe.as_ref()).await?;
    let bytes_after_expiry = disk(probe.as_ref()).await?;
    pipeline.stop().await;
    Ok(StoreScale {
        store: which.to_owned(),
        samples: n,
        ingest_per_s,
        meters_list_ms,
        stats_full_ms,
        stats_resource_ms,
        stats_window_ms,
        bytes_per_sample: bytes as f64 / n.max(1) as f64,
        bytes_after_expiry,
        bytes,
        collectors,
        ingest_min_per_s: curve
            .iter()
            .map(|p| p.ingest_per_s)
            .fold(f64::INFINITY, f64::min),
        expired_samples: (before + extra).saturating_sub(after),
        ingest_during_expiry_per_s,
        expiry_s: expiry_time.as_secs_f64(),
        curve,
    })
}

/// Samples stored, from the roll-ups (every meter's whole range).
async fn count(store: &dyn Store) -> Result<u64> {
    let mut total = 0;
    for (meter, _, _) in METERS {
        let stats = store
            .statistics(&StatisticsQuery {
                meter: meter.into(),
                ..StatisticsQuery::default()
            })
            .await?;
        total += stats.iter().map(|s| s.count).sum::<u64>();
    }
    Ok(total)
}
