//! The scenarios through tidings, as an application uses it: an RPC server with an endpoint
//! method, an `RpcClient`, a `Notifier`, a `NotificationListener` in batches, and the metering
//! collector over SQLite. Client and server always have transports (connections) of their own,
//! as two processes would.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tidings::notify::{NotificationEndpoint, NotificationListener, Notifier, Outcome, Priority};
use tidings::rpc::{Endpoint, RpcClient, RpcServer};
use tidings::transport::TransportOptions;
use tidings::{Context, RemoteError, Target, Transport};
use tokio::sync::watch;

use super::harness::{
    self, BenchError, Result, Tally, Wire, BATCH, BATCH_TIMEOUT, SAMPLES_PER_NOTIFICATION,
};
use super::{Env, MemoryReport, Scenario};
use tidings_metering::collector::{self, Collector, CollectorConfig};
use tidings_metering::notification::{NotificationAgent, NotificationConfig};
use tidings_metering::store::SqliteStore;

/// Rounds of `inflight` calls in the memory section.
pub(crate) const MEMORY_ROUNDS: usize = 3;

/// Calls the memory section makes one at a time before it measures the idle agent. lapin reads
/// and writes each connection through two rings of 32 frames (512 KiB at our frame size) that
/// the kernel backs page by page as the rings first go round; these calls move a few MB through
/// every connection, so the idle figure holds the pages any traffic touches and a burst is
/// measured by what it alone leaves behind.
const WARM_UP_CALLS: usize = 2000;

/// How long the memory section waits after a round's calls returned before measuring.
const SETTLE: Duration = Duration::from_secs(1);

/// How often VmRSS is read while it settles.
const SETTLE_SAMPLE: Duration = Duration::from_millis(100);

/// How long servers and listeners get to drain when a run ends.
pub(crate) const STOP: Duration = Duration::from_secs(5);

/// Runs `scenario` through tidings; returns its figure (µs per call, or per second).
pub(crate) async fn run(env: &Env, scenario: Scenario, wire: Wire) -> Result<f64> {
    match scenario {
        Scenario::Call1 => rpc(env, wire, false).await,
        Scenario::Call64 => rpc(env, wire, true).await,
        Scenario::Cast => cast(env, wire, 1).await,
        Scenario::Fanout3 => cast(env, wire, 3).await,
        Scenario::NotifyBatch => notify_batch(env, wire).await,
        Scenario::Ingest => ingest(env, wire).await,
        Scenario::MeterNotify => meter_notify(env, wire, false).await,
        Scenario::MeterNotifyGrouped => meter_notify(env, wire, true).await,
    }
}

pub(crate) async fn transport(env: &Env, wire: Wire) -> Result<Transport> {
    let options = TransportOptions {
        codec: wire.codec(),
        ..TransportOptions::default()
    };
    Ok(Transport::connect_with(env.url.clone(), options).await?)
}

/// The keyword arguments of `echo` and `note`.
#[derive(Deserialize)]
pub(crate) struct Args {
    payload: Value,
}

pub(crate) async fn echo(_context: Context, args: Args) -> Result<Value, RemoteError> {
    Ok(args.payload)
}

/// An endpoint whose `note` method counts its calls in `tally`.
fn counting_endpoint(tally: Arc<Tally>) -> Endpoint {
    Endpoint::new().method("note", move |_context: Context, _args: Args| {
        let tally = tally.clone();
        async move {
            tally.add(1);
            Ok::<_, RemoteError>(())
        }
    })
}

pub(crate) fn arguments() -> Value {
    json!({ "payload": harness::payload() })
}

/// `call-1` (latency, one call at a time) and `call-64` (throughput, 64 in flight).
async fn rpc(env: &Env, wire: Wire, concurrent: bool) -> Result<f64> {
    let echo = EchoRpc::start(env, wire).await?;
    let result = env.calls(concurrent, || echo.call()).await;
    echo.stop().await;
    result
}

/// An RPC server with an `echo` method and a client calling it, on transports of their own:
/// the tidings side of `call-1`, `call-64` and the tail section.
pub(crate) struct EchoRpc {
    server_transport: Transport,
    client_transport: Transport,
    server: RpcServer,
    client: RpcClient,
    context: Context,
    args: Value,
}

impl EchoRpc {
    pub(crate) async fn start(env: &Env, wire: Wire) -> Result<Self> {
        Self::start_with(env, wire, arguments()).await
    }

    /// As [`EchoRpc::start`], every call sending `args` (`{"payload": …}`, echoed back).
    pub(crate) async fn start_with(env: &Env, wire: Wire, args: Value) -> Result<Self> {
        let server_transport = transport(env, wire).await?;
        let client_transport = match transport(env, wire).await {
            Ok(transport) => transport,
            Err(error) => {
                server_transport.close().await;
                return Err(error);
            }
        };
        let topic = env.name("call");
        let server = match RpcServer::builder(&server_transport, Target::topic(&topic))
            .endpoint(Endpoint::new().method("echo", echo))
            .start()
            .await
        {
            Ok(server) => server,
            Err(error) => {
                client_transport.close().await;
                server_transport.close().await;
                return Err(error.into());
            }
        };
        let client = RpcClient::new(&client_transport, Target::topic(&topic))
            .timeout(Duration::from_secs(30));
        Ok(Self {
            server_transport,
            client_transport,
            server,
            client,
            context: Context::from(harness::context()),
            args,
        })
    }

    /// One `echo` call, its reply decoded.
    pub(crate) async fn call(&self) -> Result<()> {
        let _: Value = self.client.call(&self.context, "echo", &self.args).await?;
        Ok(())
    }

    pub(crate) async fn stop(self) {
        self.server.stop(STOP).await;
        self.client_transport.close().await;
        self.server_transport.close().await;
    }
}

/// `cast` (one server) and `fanout-3` (three servers, each on a transport of its own; every
/// cast is delivered to each).
async fn cast(env: &Env, wire: Wire, servers: u64) -> Result<f64> {
    cast_with(env, wire, servers, &arguments(), harness::BACKLOG).await
}

/// [`cast`] sending `args`, the consumers at most `backlog` deliveries behind. What started
/// is stopped whether or not the run succeeded.
pub(crate) async fn cast_with(
    env: &Env,
    wire: Wire,
    servers: u64,
    args: &Value,
    backlog: u64,
) -> Result<f64> {
    let tally = Arc::new(Tally::default());
    let topic = env.name("cast");
    let mut running = Vec::new();
    let mut client_transport = None;
    let result = async {
        for _ in 0..servers {
            let transport = transport(env, wire).await?;
            let server = RpcServer::builder(&transport, Target::topic(&topic))
                .endpoint(counting_endpoint(tally.clone()))
                .start()
                .await;
            match server {
                Ok(server) => running.push((transport, server)),
                Err(error) => {
                    transport.close().await;
                    return Err(error.into());
                }
            }
        }
        let client_transport = client_transport.insert(transport(env, wire).await?);
        let client = RpcClient::new(
            client_transport,
            Target::topic(&topic).with_fanout(servers > 1),
        );
        let context = Context::from(harness::context());
        let (client, context) = (&client, &context);
        let publish = move |_| async move {
            client.cast(context, "note", args).await?;
            Ok(())
        };
        env.pump_within(servers, backlog, &tally, publish).await
    }
    .await;
    for (transport, server) in running {
        server.stop(STOP).await;
        transport.close().await;
    }
    if let Some(client_transport) = client_transport {
        client_transport.close().await;
    }
    result
}

/// `notify-batch`: a notifier, and a listener taking batches of [`BATCH`].
async fn notify_batch(env: &Env, wire: Wire) -> Result<f64> {
    let tally = Arc::new(Tally::default());
    let topic = env.name("notify");
    let listener_transport = transport(env, wire).await?;
    let counted = tally.clone();
    let endpoint = NotificationEndpoint::new().on_batch(Priority::Info, move |batch| {
        let counted = counted.clone();
        async move {
            counted.add(batch.len() as u64);
            Ok::<_, std::convert::Infallible>(Outcome::Handled)
        }
    });
    let listener = NotificationListener::builder(&listener_transport, vec![Target::topic(&topic)])
        .endpoint(endpoint)
        .batch(BATCH, BATCH_TIMEOUT)
        .start()
        .await?;
    let notifier_transport = transport(env, wire).await?;
    let notifier = Notifier::new(&notifier_transport, "bench.host").topics([topic.clone()]);
    let context = Context::from(harness::context());
    let (notifier, context) = (&notifier, &context);
    let publish = move |_| async move {
        notifier
            .info(context, "bench.event", harness::payload())
            .await?;
        Ok(())
    };
    let result = env.pump(1, &tally, publish).await;
    listener.stop(STOP).await;
    notifier_transport.close().await;
    listener_transport.close().await;
    result
}

/// `ingest`: sample notifications (`telemetry.polling`, [`SAMPLES_PER_NOTIFICATION`] samples
/// each) through the collector into a SQLite file; counts samples stored.
async fn ingest(env: &Env, wire: Wire) -> Result<f64> {
    let database = env.scratch_file("collector.sqlite");
    let store = Arc::new(SqliteStore::open(&database).await?);
    let collector_transport = transport(env, wire).await?;
    let config = CollectorConfig {
        batch_size: BATCH,
        batch_timeout: BATCH_TIMEOUT,
        stop_deadline: STOP,
        ..CollectorConfig::default()
    };
    let running = Collector::start(&collector_transport, store, config).await?;
    // The collector counts what it stored; the pump waits on a tally.
    let tally = Arc::new(Tally::default());
    let mut report = running.subscribe();
    let stored = tally.clone();
    let forward = tokio::spawn(async move {
        while report.changed().await.is_ok() {
            let now = report.borrow_and_update().stored;
            stored.raise_to(now);
        }
    });
    let notifier_transport = transport(env, wire).await?;
    let notifier = Notifier::new(&notifier_transport, "bench.polling")
        .exchange(collector::EXCHANGE)
        .topics([collector::POLLING_TOPIC]);
    let context = Context::new();
    let (notifier, context) = (&notifier, &context);
    let publish = move |_| async move {
        let payload = harness::samples_payload(SAMPLES_PER_NOTIFICATION);
        notifier
            .sample(context, tidings_metering::polling::EVENT_TYPE, payload)
            .await?;
        Ok(())
    };
    let copies = SAMPLES_PER_NOTIFICATION as u64;
    let result = env.pump(copies, &tally, publish).await;
    running.stop().await;
    forward.abort();
    notifier_transport.close().await;
    collector_transport.close().await;
    env.remove_scratch(&database);
    result
}

/// `meter-notify`: glance's `image.upload` notifications (one `image.size` sample each, by the
/// built-in meters.yaml) on exchange `glance`, through the notification agent, which publishes
/// the samples on `metering.sample`, and the collector into a SQLite file; counts
/// notifications whose sample is stored. `grouped`: the agent publishes a batch's samples in
/// one message rather than one per notification.
async fn meter_notify(env: &Env, wire: Wire, grouped: bool) -> Result<f64> {
    let database = env.scratch_file("agent.sqlite");
    let store = Arc::new(SqliteStore::open(&database).await?);
    let collector_transport = transport(env, wire).await?;
    let config = CollectorConfig {
        batch_size: BATCH,
        batch_timeout: BATCH_TIMEOUT,
        stop_deadline: STOP,
        ..CollectorConfig::default()
    };
    let collector = Collector::start(&collector_transport, store, config).await?;
    let agent_transport = transport(env, wire).await?;
    let agent_config = NotificationConfig {
        control_exchanges: vec!["glance".to_owned()],
        host: "bench".to_owned(),
        batch_size: BATCH,
        batch_timeout: BATCH_TIMEOUT,
        stop_deadline: STOP,
        group_samples: grouped,
        ..NotificationConfig::default()
    };
    let agent = NotificationAgent::start(&agent_transport, agent_config)
        .await
        .map_err(|e| BenchError(e.to_string()))?;
    let tally = Arc::new(Tally::default());
    let mut report = collector.subscribe();
    let stored = tally.clone();
    let forward = tokio::spawn(async move {
        while report.changed().await.is_ok() {
            let now = report.borrow_and_update().stored;
            stored.raise_to(now);
        }
    });
    let notifier_transport = transport(env, wire).await?;
    let notifier = Notifier::new(&notifier_transport, "image.bench-host")
        .exchange("glance")
        .topics(["notifications"]);
    let context = Context::from(harness::context());
    let (notifier, context) = (&notifier, &context);
    let publish = move |i: u64| async move {
        let payload = json!({
            "id": format!("img-{i}"), "name": "cirros", "status": "active",
            "created_at": "2026-11-20T09:10:00Z", "updated_at": "2026-11-20T09:10:05Z",
            "owner": "p-bench", "disk_format": "qcow2", "container_format": "bare",
            "size": 12716032, "visibility": "public", "checksum": "443b7623e27ecf03dc9e01ee93f67afe",
            "min_disk": 0, "min_ram": 0, "protected": false, "tags": [], "properties": {},
        });
        notifier.info(context, "image.upload", payload).await?;
        Ok(())
    };
    let result = env.pump(1, &tally, publish).await;
    agent.stop().await;
    collector.stop().await;
    forward.abort();
    notifier_transport.close().await;
    agent_transport.close().await;
    collector_transport.close().await;
    env.remove_scratch(&database);
    result
}

/// The memory section: RSS of an agent just started (a transport serving RPC and one holding a
/// reply queue, in this process) and of the same agent idle after [`WARM_UP_CALLS`] calls, then [`MEMORY_ROUNDS`] times: RSS with `inflight` calls waiting in a
/// handler at once, and after they all returned: at [`SETTLE`], and followed for `settled` in
/// all (the allocator hands freed pages back over its decay time, not at once). Bounded means
/// the later rounds level off.
pub(crate) async fn memory(env: &Env, inflight: usize, settled: Duration) -> Result<MemoryReport> {
    let settled = settled.max(SETTLE);
    let wire = Wire::Json;
    let server_transport = transport(env, wire).await?;
    let client_transport = transport(env, wire).await?;
    let topic = env.name("memory");
    let arrived = Arc::new(Tally::default());
    let (gate, opened) = watch::channel(false);
    let hold = {
        let arrived = arrived.clone();
        move |_context: Context, _args: Value| {
            let arrived = arrived.clone();
            let mut opened = opened.clone();
            async move {
                arrived.add(1);
                let _ = opened.wait_for(|open| *open).await;
                Ok::<_, RemoteError>(())
            }
        }
    };
    // Every call is dispatched at once, so all of them are in flight on both sides.
    let server = RpcServer::builder(&server_transport, Target::topic(&topic))
        .endpoint(Endpoint::new().method("echo", echo).method("hold", hold))
        .max_concurrency(inflight)
        .start()
        .await?;
    let client =
        RpcClient::new(&client_transport, Target::topic(&topic)).timeout(Duration::from_secs(120));
    let context = Context::from(harness::context());
    let args = arguments();
    let _: Value = client.call(&context, "echo", &args).await?;
    let started_kib = harness::rss_kib();
    let started_split = harness::rss_split();
    for _ in 0..WARM_UP_CALLS {
        let _: Value = client.call(&context, "echo", &args).await?;
    }
    let mut report = MemoryReport {
        inflight,
        started_kib,
        started_split,
        warm_up_calls: WARM_UP_CALLS,
        settled_s: settled.as_secs_f64(),
        idle_kib: harness::rss_kib(),
        idle_heap: harness::heap_kib(),
        idle_split: harness::rss_split(),
        ..MemoryReport::default()
    };
    for _round in 0..MEMORY_ROUNDS {
        gate.send_replace(false);
        let base = arrived.get();
        let mut calls: FuturesUnordered<_> = (0..inflight)
            .map(|_| client.call::<Value>(&context, "hold", json!({})))
            .collect();
        let finish = async {
            while let Some(done) = calls.next().await {
                done?;
            }
            Ok::<_, BenchError>(())
        };
        let peak = async {
            arrived.wait_for(base + inflight as u64).await?;
            let rss = harness::rss_kib();
            let heap = harness::heap_kib();
            gate.send_replace(true);
            Ok::<_, BenchError>((rss, heap))
        };
        let ((), (rss, heap)) = tokio::try_join!(finish, peak)?;
        report.inflight_kib.push(rss);
        report.inflight_heap.push(heap);
        let goal = report.idle_kib + report.idle_kib / 4;
        let mut watch = RssWatch::new(tokio::time::Instant::now(), goal);
        // The first figure once the server's side has settled too (its last replies confirmed).
        watch.follow_until(SETTLE).await;
        report.after_kib.push(harness::rss_kib());
        report.after_heap.push(harness::heap_kib());
        report.after_split.push(harness::rss_split());
        watch.follow_until(settled).await;
        report.settled_kib.push(harness::rss_kib());
        report.settled_heap.push(harness::heap_kib());
        report.settled_split.push(harness::rss_split());
        report.back_within_ms.push(watch.back_within_ms);
    }
    report.peak_kib = harness::peak_rss_kib();
    server.stop(STOP).await;
    client_transport.close().await;
    server_transport.close().await;
    Ok(report)
}

/// VmRSS read every [`SETTLE_SAMPLE`] after a burst: the resident set has no event to wait
/// for, so it is sampled.
struct RssWatch {
    since: tokio::time::Instant,
    ticks: tokio::time::Interval,
    /// At most this is back near idle.
    goal_kib: u64,
    /// How long after `since` VmRSS was first at most `goal_kib`, if it was.
    back_within_ms: Option<u64>,
}

impl RssWatch {
    fn new(since: tokio::time::Instant, goal_kib: u64) -> Self {
        let mut ticks = tokio::time::interval(SETTLE_SAMPLE);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            since,
            ticks,
            goal_kib,
            back_within_ms: None,
        }
    }

    /// Samples until `until` has passed since the burst.
    async fn follow_until(&mut self, until: Duration) {
        loop {
            let elapsed = self.since.elapsed();
            if self.back_within_ms.is_none() && harness::rss_kib() <= self.goal_kib {
                self.back_within_ms = Some(elapsed.as_millis() as u64);
            }
            if elapsed >= until {
                return;
            }
            self.ticks.tick().await;
        }
    }
}
