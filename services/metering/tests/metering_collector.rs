//! The collector end to end, on the memory transport and on RabbitMQ (a vhost per test):
//! samples published by both of Ceilometer's paths are stored, bad ones are counted and not
//! stored, a store outage holds the batch until the store answers, the RPC methods answer, and
//! the manifold runs it under the engine. `metering_outage.rs` takes real stores down under
//! load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use serde_json::{json, Map, Value};
use tidings::codec::Codec;
use tidings::notify::{Notifier, Priority};
use tidings::rpc::{RpcClient, RpcError, ServiceClient};
use tidings::transport::{ConsumeOptions, Subscription};
use tidings::{Context, Target, Transport};
use tidings_metering::collector::rpc::{CollectorApi, GetStatistics, GET_STATISTICS};
use tidings_metering::collector::{
    self, Collector, CollectorConfig, CollectorInputs, CollectorReport,
};
use tidings_metering::graph;
use tidings_metering::model::{
    Alarm, AlarmChange, CounterType, MeterInfo, Sample, Statistics, StatisticsQuery,
};
use tidings_metering::sample::{compute_signature, to_wire, DEFAULT_TELEMETRY_SECRET};
use tidings_metering::store::{self, Store, StoreConfig, StoreError};
use tidings_runtime::{Engine, EngineConfig, Manifold, TaskWorker};
use tidings_suites::Bus;
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(20);

fn config() -> CollectorConfig {
    CollectorConfig {
        telemetry_secret: Some(DEFAULT_TELEMETRY_SECRET.to_owned()),
        batch_size: 10,
        batch_timeout: Duration::from_millis(50),
        ..CollectorConfig::default()
    }
}

fn sample(id: &str, meter: &str, resource: &str, secs: i64, volume: f64) -> Sample {
    Sample {
        source: "openstack".into(),
        name: meter.into(),
        counter_type: CounterType::Gauge,
        unit: "%".into(),
        volume,
        user_id: Some("u-1".into()),
        project_id: Some("p-1".into()),
        resource_id: resource.into(),
        timestamp: Utc.with_ymd_and_hms(2026, 11, 22, 19, 0, 0).unwrap()
            + chrono::Duration::seconds(secs),
        resource_metadata: Map::new(),
        message_id: id.into(),
    }
}

/// A signed wire sample.
fn signed(sample: &Sample) -> Value {
    Value::Object(to_wire(sample, DEFAULT_TELEMETRY_SECRET))
}

/// A wire sample with `field` set to `value`, signed again so that only validation fails.
fn resigned(sample: &Sample, field: &str, value: Value) -> Value {
    let mut wire = to_wire(sample, DEFAULT_TELEMETRY_SECRET);
    wire.insert(field.into(), value);
    let signature = compute_signature(&wire, DEFAULT_TELEMETRY_SECRET);
    wire.insert("message_signature".into(), json!(signature));
    Value::Object(wire)
}

/// Publishes as Ceilometer's polling agent does.
async fn publish_polling(transport: &Transport, samples: Vec<Value>) {
    Notifier::new(transport, "ceilometer.polling")
        .exchange("ceilometer")
        .topics(["notifications"])
        .notify(
            &Context::new(),
            Priority::Sample,
            "telemetry.polling",
            json!({ "samples": samples }),
        )
        .await
        .unwrap();
}

/// Publishes as Ceilometer's `notifier://` publisher does.
async fn publish_metering(transport: &Transport, samples: Vec<Value>) {
    Notifier::new(transport, "telemetry.publisher.host")
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

fn client(transport: &Transport) -> RpcClient {
    RpcClient::new(
        transport,
        Target::topic("metering").with_exchange("ceilometer"),
    )
    .timeout(Duration::from_secs(10))
}

/// Both paths, good and bad samples, then every RPC method.
async fn collector_stores_valid_samples_and_counts_the_rest(bus: Bus) {
    let transport = bus.transport().await;
    let store = store::open("sqlite::memory:").await.unwrap();
    let collector = Collector::start(&transport, store.clone(), config())
        .await
        .unwrap();
    let mut counters = collector.subscribe();
    let publisher = bus.transport().await;

    let a = sample("s-a", "cpu_util", "vm-1", 0, 10.0);
    let b = sample("s-b", "cpu_util", "vm-1", 30, 20.0);
    let c = sample("s-c", "cpu_util", "vm-2", 60, 60.0);
    let d = sample("s-d", "memory.usage", "vm-1", 0, 512.0);
    let e = sample("s-e", "cpu_util", "vm-1", 90, 30.0);
    let mut forged = signed(&sample("s-forged", "cpu_util", "vm-1", 10, 99.0));
    forged["counter_volume"] = json!(100.0);
    let mut unsigned = signed(&sample("s-unsigned", "cpu_util", "vm-1", 10, 99.0));
    unsigned
        .as_object_mut()
        .unwrap()
        .remove("message_signature");

    publish_polling(
        &publisher,
        vec![
            signed(&a),
            signed(&b),
            resigned(
                &sample("s-bad1", "cpu_util", "vm-1", 0, 1.0),
                "counter_volume",
                json!("lots"),
            ),
            forged,
        ],
    )
    .await;
    publish_metering(
        &publisher,
        vec![
            signed(&c),
            signed(&d),
            signed(&a), // a duplicate of s-a
            resigned(
                &sample("s-bad2", "cpu_util", "vm-1", 0, 1.0),
                "counter_type",
                json!("rate"),
            ),
            unsigned,
            json!("not a sample"),
        ],
    )
    .await;
    // A sample notification whose payload holds no samples.
    Notifier::new(&publisher, "someone.else")
        .exchange("ceilometer")
        .topics(["notifications"])
        .notify(
            &Context::new(),
            Priority::Sample,
            "other.event",
            json!({"x": 1}),
        )
        .await
        .unwrap();

    let report = wait_for(&mut counters, "both notifications", |r| {
        r.received >= 10 && r.unrecognised_payloads >= 1
    })
    .await;
    assert_eq!(
        report,
        CollectorReport {
            received: 10,
            stored: 4,
            duplicates: 1,
            rejected: BTreeMap::from([
                ("non_numeric_volume".to_owned(), 1),
                ("not_an_object".to_owned(), 1),
                ("unknown_type".to_owned(), 1),
            ]),
            bad_signatures: 2,
            unrecognised_payloads: 1,
            storage_failures: 0,
            store_outages: 0,
            store_available: true,
            batches_held: 0,
            dead_lettered: 0,
        }
    );
    let all = store
        .statistics(&StatisticsQuery {
            meter: "cpu_util".into(),
            ..StatisticsQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (all[0].count, all[0].sum),
        (3, 90.0),
        "bad samples not stored"
    );

    // RPC: the old publisher's path, as a cast and as a call.
    let rpc = client(&publisher);
    rpc.cast(
        &Context::new(),
        "record_metering_data",
        json!({"data": [signed(&e)]}),
    )
    .await
    .unwrap();
    wait_for(&mut counters, "the cast sample", |r| r.stored >= 5).await;
    let tally: Value = rpc
        .call(
            &Context::new(),
            "record_metering_data",
            json!({"data": [signed(&e), resigned(&e, "timestamp", json!("soon"))]}),
        )
        .await
        .unwrap();
    assert_eq!(tally["received"], 2);
    assert_eq!(tally["stored"], 0);
    assert_eq!(tally["duplicates"], 1);
    assert_eq!(tally["rejected"]["bad_timestamp"], 1);

    // get_statistics: one bucket, then 60 s buckets on vm-1 from its first sample.
    // The same API through its typed contract: the compiler checks arguments and result.
    let typed = ServiceClient::<CollectorApi>::from_client(rpc.clone());
    let args = GetStatistics {
        meter: "cpu_util".into(),
        ..GetStatistics::default()
    };
    let one = typed
        .call(&Context::new(), GET_STATISTICS, args)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].count, one[0].sum, one[0].max), (4, 120.0, 60.0));
    assert_eq!(one[0].period, 0);
    let buckets: Vec<Value> = rpc
        .call(
            &Context::new(),
            "get_statistics",
            json!({"meter": "cpu_util", "period": 60, "resource_id": "vm-1",
                   "project_id": "p-1", "start": null, "end": "2026-11-22T19:05:00"}),
        )
        .await
        .unwrap();
    assert_eq!(buckets.len(), 2, "{buckets:?}");
    let fields: BTreeSet<&str> = buckets[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "avg",
            "count",
            "duration",
            "duration_end",
            "duration_start",
            "max",
            "min",
            "period",
            "period_end",
            "period_start",
            "sum",
            "unit"
        ])
    );
    assert_eq!(buckets[0]["count"], 2);
    assert_eq!(buckets[0]["avg"], 15.0);
    assert_eq!(buckets[0]["duration"], 30.0);
    assert_eq!(buckets[1]["count"], 1);
    assert_eq!(buckets[1]["period"], 60);

    // list_meters, all and for one resource.
    let meters: Vec<MeterInfo> = rpc
        .call(&Context::new(), "list_meters", json!({}))
        .await
        .unwrap();
    assert_eq!(meters.len(), 3);
    let vm2: Vec<Value> = rpc
        .call(
            &Context::new(),
            "list_meters",
            json!({"resource_id": "vm-2"}),
        )
        .await
        .unwrap();
    assert_eq!(
        vm2,
        [
            json!({"name": "cpu_util", "type": "gauge", "unit": "%", "resource_id": "vm-2",
                "project_id": "p-1", "user_id": "u-1", "source": "openstack"})
        ]
    );

    // A bad time is the caller's error, named.
    let error = rpc
        .call::<Value>(
            &Context::new(),
            "get_statistics",
            json!({"meter": "cpu_util", "start": "yesterday"}),
        )
        .await
        .unwrap_err();
    match error {
        RpcError::Remote { error, .. } => {
            assert_eq!(error.class, "ValueError");
            assert!(error.message.contains("start"), "{}", error.message);
        }
        other => panic!("expected a remote ValueError, got {other}"),
    }
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_collector_stores_valid_samples_and_counts_the_rest() {
    collector_stores_valid_samples_and_counts_the_rest(Bus::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_collector_stores_valid_samples_and_counts_the_rest() {
    collector_stores_valid_samples_and_counts_the_rest(Bus::amqp()).await;
}

/// A store whose first `failures` writes fail as an unavailable store's do.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn Store>,
    failures: AtomicUsize,
}

#[async_trait]
impl Store for Flaky {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn record(&self, samples: &[Sample]) -> Result<usize, StoreError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        self.inner.record(samples).await
    }
    async fn statistics(&self, q: &StatisticsQuery) -> Result<Vec<Statistics>, StoreError> {
        self.inner.statistics(q).await
    }
    async fn meters(&self, r: Option<&str>) -> Result<Vec<MeterInfo>, StoreError> {
        self.inner.meters(r).await
    }
    async fn create_alarm(&self, a: &Alarm) -> Result<(), StoreError> {
        self.inner.create_alarm(a).await
    }
    async fn alarms(&self) -> Result<Vec<Alarm>, StoreError> {
        self.inner.alarms().await
    }
    async fn alarm(&self, id: &str) -> Result<Alarm, StoreError> {
        self.inner.alarm(id).await
    }
    async fn delete_alarm(&self, id: &str) -> Result<(), StoreError> {
        self.inner.delete_alarm(id).await
    }
    async fn set_state(&self, c: &AlarmChange) -> Result<(), StoreError> {
        self.inner.set_state(c).await
    }
    async fn history(&self, id: &str) -> Result<Vec<AlarmChange>, StoreError> {
        self.inner.history(id).await
    }
}

async fn a_store_outage_holds_the_batch_until_the_store_answers(bus: Bus) {
    let transport = bus.transport().await;
    let store = Arc::new(Flaky {
        inner: store::open("sqlite::memory:").await.unwrap(),
        failures: AtomicUsize::new(3),
    });
    let mut fast = config();
    fast.store_retry = tidings_metering::retry::Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    let collector = Collector::start(&transport, store.clone(), fast)
        .await
        .unwrap();
    let mut counters = collector.subscribe();
    let samples = vec![
        signed(&sample("r-1", "cpu_util", "vm-1", 0, 1.0)),
        signed(&sample("r-2", "cpu_util", "vm-1", 1, 2.0)),
    ];
    publish_metering(&transport, samples).await;
    let report = wait_for(&mut counters, "the held batch", |r| r.stored >= 2).await;
    assert_eq!(report.storage_failures, 3, "one attempt, then two probes");
    assert_eq!(report.store_outages, 1);
    assert!(report.store_available);
    assert_eq!(report.batches_held, 0);
    assert_eq!(
        report.received, 2,
        "a held batch is counted once, when stored"
    );
    assert_eq!((report.duplicates, report.dead_lettered), (0, 0));
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_store_outage_holds_the_batch_until_the_store_answers() {
    a_store_outage_holds_the_batch_until_the_store_answers(Bus::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_a_store_outage_holds_the_batch_until_the_store_answers() {
    a_store_outage_holds_the_batch_until_the_store_answers(Bus::amqp()).await;
}

/// A collector stopped while the store is down leaves what it holds unacknowledged: the next
/// collector gets it from the broker and stores it, and nothing went to a dead-letter queue.
async fn a_collector_stopped_during_an_outage_leaves_its_batches_to_the_broker(bus: Bus) {
    let transport = bus.transport().await;
    let inner = store::open("sqlite::memory:").await.unwrap();
    let down = Arc::new(Flaky {
        inner: inner.clone(),
        failures: AtomicUsize::new(usize::MAX),
    });
    let mut quick_stop = config();
    quick_stop.stop_deadline = Duration::from_millis(300);
    let collector = Collector::start(&transport, down, quick_stop.clone())
        .await
        .unwrap();
    let mut counters = collector.subscribe();
    publish_metering(
        &transport,
        vec![
            signed(&sample("h-1", "cpu_util", "vm-1", 0, 1.0)),
            signed(&sample("h-2", "cpu_util", "vm-1", 1, 2.0)),
        ],
    )
    .await;
    wait_for(&mut counters, "the batch held", |r| r.batches_held >= 1).await;
    tokio::time::timeout(Duration::from_secs(5), collector.stop())
        .await
        .expect("a collector holding batches stops within its deadline");

    let collector = Collector::start(&transport, inner.clone(), quick_stop)
        .await
        .unwrap();
    let mut counters = collector.subscribe();
    let report = wait_for(&mut counters, "the batch again", |r| r.stored >= 2).await;
    assert_eq!(
        (report.received, report.duplicates, report.dead_lettered),
        (2, 0, 0)
    );
    collector.stop().await;
    let idle = Duration::from_millis(300);
    assert!(drain_queue(&transport, "metering.sample.dlq", idle)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_collector_stopped_during_an_outage_leaves_its_batches_to_the_broker() {
    a_collector_stopped_during_an_outage_leaves_its_batches_to_the_broker(Bus::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_a_collector_stopped_during_an_outage_leaves_its_batches_to_the_broker() {
    a_collector_stopped_during_an_outage_leaves_its_batches_to_the_broker(Bus::amqp()).await;
}

/// A store that refuses, on its merits, any batch holding a sample of resource `poison`.
#[derive(Debug)]
struct Picky(Arc<dyn Store>);

#[async_trait]
impl Store for Picky {
    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }

    async fn record(&self, samples: &[Sample]) -> Result<usize, StoreError> {
        if samples.iter().any(|s| s.resource_id == "poison") {
            return Err(StoreError::Refused("poison is not welcome here".into()));
        }
        self.0.record(samples).await
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

/// Takes what `queue` holds (waiting `idle` for each), as decoded notification payloads.
async fn drain_queue(transport: &Transport, queue: &str, idle: Duration) -> Vec<Value> {
    let mut inbox = transport
        .driver()
        .subscribe(
            &Subscription::Queue {
                name: queue.to_owned(),
            },
            ConsumeOptions::default(),
        )
        .await
        .unwrap();
    let mut payloads = Vec::new();
    while let Ok(Some(delivery)) = tokio::time::timeout(idle, inbox.recv()).await {
        let codec = Codec::from_content_type(&delivery.content_type).unwrap();
        payloads.push(codec.decode_notification(&delivery.body).unwrap().payload);
        delivery.ack().await.unwrap();
    }
    payloads
}

async fn a_refused_sample_is_dead_lettered_alone_with_its_reason(bus: Bus) {
    let transport = bus.transport().await;
    let inner = store::open("sqlite::memory:").await.unwrap();
    let collector = Collector::start(&transport, Arc::new(Picky(inner.clone())), config())
        .await
        .unwrap();
    let mut counters = collector.subscribe();
    let poison = sample("p-1", "cpu_util", "poison", 3, 1.0);
    let mut batch: Vec<Value> = (0..4)
        .map(|i| signed(&sample(&format!("g-{i}"), "cpu_util", "vm-1", i, 1.0)))
        .collect();
    batch.insert(2, signed(&poison));
    publish_metering(&transport, batch).await;
    // A note naming a queue that is not the collector's is not believed.
    Notifier::new(&transport, "someone")
        .exchange("ceilometer")
        .topics(["notifications"])
        .notify(
            &Context::new(),
            Priority::Sample,
            "telemetry.polling",
            json!({
                "samples": [signed(&sample("p-2", "cpu_util", "poison", 4, 1.0))],
                "dead_letter": {"queue": "elsewhere", "reason": "", "at": "", "message_id": "", "event_type": ""},
            }),
        )
        .await
        .unwrap();
    let report = wait_for(&mut counters, "both notifications", |r| r.received >= 6).await;
    assert_eq!(
        (report.stored, report.dead_lettered, report.duplicates),
        (4, 2, 0),
        "{report:?}"
    );
    assert!(report.store_available, "a refusal is not an outage");
    assert_eq!(report.storage_failures, 0);

    let idle = Duration::from_millis(500);
    let from_metering = drain_queue(&transport, "metering.sample.dlq", idle).await;
    let from_polling = drain_queue(&transport, "notifications.sample.dlq", idle).await;
    for (payloads, id, queue) in [
        (&from_metering, "p-1", "metering.sample"),
        (&from_polling, "p-2", "notifications.sample"),
    ] {
        assert_eq!(payloads.len(), 1, "{payloads:?}");
        let payload = &payloads[0];
        assert_eq!(payload["samples"].as_array().unwrap().len(), 1);
        assert_eq!(payload["samples"][0]["message_id"], id);
        assert_eq!(payload["dead_letter"]["queue"], queue);
        assert!(payload["dead_letter"]["reason"]
            .as_str()
            .unwrap()
            .contains("poison is not welcome here"));
    }
    // The sample travels unchanged: its signature still verifies.
    assert_eq!(from_metering[0]["samples"][0], signed(&poison));
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_refused_sample_is_dead_lettered_alone_with_its_reason() {
    a_refused_sample_is_dead_lettered_alone_with_its_reason(Bus::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_a_refused_sample_is_dead_lettered_alone_with_its_reason() {
    a_refused_sample_is_dead_lettered_alone_with_its_reason(Bus::amqp()).await;
}

/// The manifold under the engine: a transport manifold and the store manifold feed it; a probe
/// manifold takes its output (the counters); the engine's report shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_manifold_runs_on_its_inputs_and_reports_its_counters() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let offered = transport.clone();
    engine
        .install(
            graph::TRANSPORT,
            Manifold::new(move |_ctx, _getter| {
                let transport = offered.clone();
                async move {
                    Ok(TaskWorker::spawn(|stop| async move {
                        stop.cancelled().await;
                        Ok(())
                    })
                    .with_resource(transport))
                }
            })
            .with_output(|w: &TaskWorker<Transport>| w.resource().clone()),
        )
        .unwrap();
    engine
        .install(
            graph::STORE,
            store::manifold(StoreConfig::new("sqlite::memory:")),
        )
        .unwrap();
    engine
        .install(
            graph::COLLECTOR,
            collector::manifold(CollectorInputs::default(), config()),
        )
        .unwrap();
    let (found, mut counters) = mpsc::unbounded_channel();
    engine
        .install(
            "probe",
            Manifold::new(move |_ctx, getter| {
                let found = found.clone();
                async move {
                    let counters: watch::Receiver<CollectorReport> =
                        getter.get(graph::COLLECTOR)?;
                    let _ = found.send(counters);
                    Ok(TaskWorker::spawn(|stop| async move {
                        stop.cancelled().await;
                        Ok(())
                    }))
                }
            })
            .with_inputs([graph::COLLECTOR]),
        )
        .unwrap();
    let mut counters = tokio::time::timeout(WAIT, counters.recv())
        .await
        .unwrap()
        .unwrap();

    publish_polling(
        &transport,
        vec![signed(&sample("m-1", "load", "host", 0, 0.5))],
    )
    .await;
    wait_for(&mut counters, "the sample", |r| r.stored == 1).await;
    let report = engine.report();
    let shown = report.manifolds[graph::COLLECTOR].report.clone().unwrap();
    assert_eq!(shown["stored"], 1);
    assert_eq!(shown["received"], 1);
    assert_eq!(
        report.manifolds[graph::STORE].report.clone().unwrap()["url"],
        "sqlite::memory:"
    );
    engine.kill();
    tokio::time::timeout(WAIT, engine.wait())
        .await
        .unwrap()
        .unwrap();
}
