//! The scale section, run only when named (`--only scale`, or one part: `scale/payload`,
//! `scale/topics`, `scale/fanout`, `scale/reply-queues`): what one more byte, topic, server or
//! client costs, and how that cost grows.
//!
//! - `payload`: call latency (one at a time, the argument echoed back) and confirmed cast
//!   throughput to one server at payloads of 100 B to 1 MiB, tidings beside the bare-lapin
//!   baseline of the same guarantee (the same request/reply and confirmed publish code as
//!   `call-1` and `cast`, given the payload).
//! - `topics`: one process starting `RpcServer`s, each on a topic of its own, on one transport
//!   as an agent serving many topics would; start-up time, this process's RSS and the broker's
//!   memory per server; one call to each to prove it serves. Also with one transport per server
//!   where the broker can take the connections (two per transport).
//! - `fanout`: fanout casts delivered to 3, 10 and 50 servers, each on a transport of its own
//!   in this process, against the baseline's fanout exchange with one connection per consumer.
//! - `reply-queues`: idle `RpcClient`s each with a reply queue of its own (a transport has one
//!   reply queue, so each client has a transport of its own); see `SharedDriver` for how
//!   their connections are shared.
//!
//! Whatever fails, what a step started is stopped and closed before the error is returned;
//! every wait has a deadline.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tidings::rpc::{Endpoint, RpcClient, RpcServer};
use tidings::transport::amqp::AmqpDriver;
use tidings::transport::{
    ConsumeOptions, DeliverySink, Destination, Driver, Inbox, OutgoingMessage, Subscription,
    TransportError, TransportOptions, TransportStats,
};
use tidings::{Context, Target, Transport};
use tokio::time::{timeout, Instant};

use super::harness::{self, BenchError, Result, Wire};
use super::{baseline, scenarios, BenchConfig, Env};

/// The parts, in the order of the table (they run topics and reply queues first, while the
/// process is small, so that their memory figures are not blurred by the payloads' buffers).
pub const PARTS: [&str; 4] = ["payload", "topics", "fanout", "reply-queues"];

/// The payloads of `scale/payload`, in bytes.
pub const PAYLOAD_SIZES: [usize; 5] = [100, 1024, 10 * 1024, 100 * 1024, 1024 * 1024];

/// Servers of `scale/topics` at the top of its growth (`--scale-topics`).
pub const DEFAULT_TOPICS: usize = 1_000;

/// Clients of `scale/reply-queues` at the top of its growth (`--scale-clients`).
pub const DEFAULT_CLIENTS: usize = 10_000;

/// Servers of `scale/fanout`.
pub const FANOUT_SERVERS: [u64; 3] = [3, 10, 50];

/// The most servers `scale/topics` starts with a transport each: two connections per
/// transport, and the broker here accepts 832 sockets.
const OWN_TRANSPORTS_MAX: usize = 100;

/// Reply queues per connection pair in `scale/reply-queues`: far under RabbitMQ's
/// `channel_max` of 2047, since each reply queue is consumed on a channel of its own (and
/// declared on a short-lived one). At 1000 per pair the 10 000-client step failed (a channel
/// refused, or a first call unanswered) while 3000 clients passed; the cause is not known.
const CLIENTS_PER_CONNECTION: usize = 500;

/// Clients of the reply-queues row where every client has connections of its own.
const OWN_CONNECTIONS_CLIENTS: usize = 100;

/// Operations (starts, calls, stops) in flight at once where a step does many.
const CONCURRENCY: usize = 64;

/// How long the process (and the broker) may settle before memory is read: jemalloc hands
/// freed pages back after a second. Shorter in a short run (`--quick`), where the figures are
/// only checked for being there.
fn settle(env: &Env) -> Duration {
    (env.duration / 2).clamp(Duration::from_millis(200), Duration::from_millis(1_500))
}

/// The timeout of each call.
const CALL: Duration = Duration::from_secs(30);

/// The bound of a step's start-up, calls or clean-up: a minute, plus this per unit.
const PER_UNIT: Duration = Duration::from_millis(100);

/// The bound of one `rabbitmqctl` run.
const CTL_LIMIT: Duration = Duration::from_secs(120);

/// Bytes queued at most in the payload part's casts: 4096 messages of 1 MiB would fill 4 GiB
/// of the broker's memory, a stress test of the broker rather than of either side.
const PAYLOAD_BACKLOG_BYTES: usize = 32 * 1024 * 1024;

/// What `scale` measured, by part; a part not run is left out of the JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleReport {
    /// `scale/payload`, one row per payload size.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<PayloadRow>,
    /// `scale/topics`, one row per step of growth (and per transport layout).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicsRow>,
    /// `scale/fanout`, one row per number of servers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fanout: Vec<FanoutRow>,
    /// `scale/reply-queues`, one row per step of growth (and per connection layout).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reply_queues: Vec<ReplyQueuesRow>,
}

/// A figure of both sides and their ratio (tidings ÷ baseline); a side `--side` left out is
/// `null`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Pair {
    /// Through tidings.
    pub tidings: Option<f64>,
    /// Through bare lapin, with the same guarantee.
    pub baseline: Option<f64>,
    /// tidings ÷ baseline.
    pub ratio: Option<f64>,
}

impl Pair {
    fn of(tidings: Option<f64>, baseline: Option<f64>) -> Self {
        let ratio = match (tidings, baseline) {
            (Some(t), Some(b)) if b > 0.0 => Some(t / b),
            _ => None,
        };
        Self {
            tidings,
            baseline,
            ratio,
        }
    }

    fn map(self, f: impl Fn(f64) -> f64) -> Self {
        Self::of(self.tidings.map(&f), self.baseline.map(&f))
    }
}

/// One payload size.
#[derive(Clone, Debug, Serialize)]
pub struct PayloadRow {
    /// The argument's size: a string of this many bytes.
    pub payload_bytes: usize,
    /// µs per call, one at a time, the argument echoed back (lower is better).
    pub call_us: Pair,
    /// Confirmed casts handled per second by one server.
    pub cast_msgs_per_s: Pair,
    /// The same in MB (10^6 bytes) of payload per second.
    pub cast_mb_per_s: Pair,
}

/// One step of `scale/topics`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TopicsRow {
    /// Servers started, each on a topic of its own.
    pub servers: usize,
    /// Transports they share: 1, or one per server.
    pub transports: usize,
    /// Starting them all, one after the other, in ms.
    pub start_ms: f64,
    /// The same per server.
    pub start_ms_per_server: f64,
    /// This process's RSS before the servers started, in KiB.
    pub rss_before_kib: u64,
    /// And once they all serve.
    pub rss_after_kib: u64,
    /// The difference per server.
    pub kib_per_server: f64,
    /// The broker's memory (Erlang's allocated total) the step added, per server; `null` off
    /// the private vhost or when `rabbitmqctl` cannot be read.
    pub broker_kib_per_server: Option<f64>,
    /// One call to each topic, 64 at a time, in ms.
    pub call_each_ms: f64,
    /// Stopping every server and closing the transports, in ms.
    pub stop_ms: f64,
}

/// One number of servers of `scale/fanout`.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutRow {
    /// Servers each cast is delivered to.
    pub servers: u64,
    /// Messages handled per second, all servers together (higher is better).
    pub delivered_per_s: Pair,
    /// Casts per second (delivered ÷ servers).
    pub casts_per_s: Pair,
}

/// One step of `scale/reply-queues`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplyQueuesRow {
    /// Idle clients, each with a reply queue of its own.
    pub clients: usize,
    /// Clients whose reply queues share one pair of AMQP connections.
    pub clients_per_connection: usize,
    /// AMQP connections the clients hold.
    pub connections: usize,
    /// Making the clients and their first call each (which opens the reply queue), in ms.
    pub open_ms: f64,
    /// The same per client, in µs.
    pub open_us_per_client: f64,
    /// This process's RSS before, in KiB.
    pub rss_before_kib: u64,
    /// And with every client idle.
    pub rss_after_kib: u64,
    /// The difference per client.
    pub kib_per_client: f64,
    /// The reply queues' own memory on the broker (`rabbitmqctl list_queues memory`), per
    /// queue.
    pub broker_queue_kib: Option<f64>,
    /// The broker's memory (Erlang's allocated total) the step added, per client: queue,
    /// channel, consumer and the connections' share.
    pub broker_kib_per_client: Option<f64>,
    /// Closing every client and the connections, in ms.
    pub close_ms: f64,
    /// Reply queues still on the broker after closing (they expire after
    /// `rabbit_transient_queues_ttl`, as oslo's do; the bench then deletes them).
    pub queues_left_after_close: Option<usize>,
}

/// The parts `only` names (`scale` for all, `scale/topics` for one); none unless named.
pub fn selected_parts(only: &[String]) -> Vec<&'static str> {
    PARTS
        .into_iter()
        .filter(|part| {
            let name = format!("scale/{part}");
            only.iter()
                .any(|o| o.starts_with("scale") && name.starts_with(o.as_str()))
        })
        .collect()
}

/// The steps of growth: `start`, ten times more, … below `top`, then `top`.
fn growth(start: usize, top: usize) -> Vec<usize> {
    let top = top.max(1);
    let mut steps = Vec::new();
    let mut n = start.max(1);
    while n < top {
        steps.push(n);
        n = n.saturating_mul(10);
    }
    steps.push(top);
    steps
}

/// What the selected parts will run.
#[derive(Debug, Default)]
struct Plan {
    payload: bool,
    /// `(servers, own transport each)`.
    topics: Vec<(usize, bool)>,
    fanout: bool,
    /// `(clients, clients per connection pair)`.
    clients: Vec<(usize, usize)>,
}

impl Plan {
    fn of(parts: &[&str], config: &BenchConfig) -> Self {
        let mut plan = Self::default();
        for part in parts {
            match *part {
                "payload" => plan.payload = true,
                "fanout" => plan.fanout = true,
                "topics" => {
                    let steps = growth(10, config.scale_topics);
                    plan.topics = steps.iter().map(|&n| (n, false)).collect();
                    plan.topics.extend(
                        steps
                            .iter()
                            .filter(|&&n| n <= OWN_TRANSPORTS_MAX)
                            .map(|&n| (n, true)),
                    );
                }
                "reply-queues" => {
                    let steps = growth(100, config.scale_clients);
                    plan.clients = steps
                        .iter()
                        .map(|&n| (n, CLIENTS_PER_CONNECTION.min(n)))
                        .collect();
                    let own = OWN_CONNECTIONS_CLIENTS.min(config.scale_clients.max(1));
                    plan.clients.push((own, 1));
                }
                _ => {}
            }
        }
        plan
    }

    fn sides(config: &BenchConfig) -> Vec<Side> {
        [Side::Tidings, Side::Baseline]
            .into_iter()
            .filter(|side| {
                config
                    .side
                    .as_deref()
                    .is_none_or(|only| only == side.name())
            })
            .collect()
    }

    fn steps(&self, config: &BenchConfig) -> usize {
        let sides = Self::sides(config).len() * config.rounds.max(1);
        usize::from(self.payload) * PAYLOAD_SIZES.len() * 2 * sides
            + self.topics.len()
            + usize::from(self.fanout) * FANOUT_SERVERS.len() * sides
            + self.clients.len()
    }
}

/// Progress steps the selected `parts` make.
pub(crate) fn steps(parts: &[&str], config: &BenchConfig) -> usize {
    Plan::of(parts, config).steps(config)
}

/// Runs the selected `parts`; `step` is told what starts next.
pub(crate) async fn run(
    env: &Env,
    parts: &[&str],
    config: &BenchConfig,
    step: &mut dyn FnMut(&str),
) -> Result<ScaleReport> {
    let plan = Plan::of(parts, config);
    let mut report = ScaleReport::default();
    for &(servers, own) in &plan.topics {
        let layout = if own {
            "a transport each"
        } else {
            "one transport"
        };
        step(&format!("scale/topics: {servers} servers on {layout}"));
        let row = topics_step(env, servers, own)
            .await
            .map_err(|e| BenchError(format!("scale/topics ({servers} servers, {layout}): {e}")))?;
        report.topics.push(row);
    }
    for &(clients, per_connection) in &plan.clients {
        step(&format!(
            "scale/reply-queues: {clients} clients, {per_connection} per connection"
        ));
        let row = reply_step(env, clients, per_connection)
            .await
            .map_err(|e| BenchError(format!("scale/reply-queues ({clients} clients): {e}")))?;
        report.reply_queues.push(row);
    }
    let sides = Plan::sides(config);
    let rounds = config.rounds.max(1);
    if plan.fanout {
        for servers in FANOUT_SERVERS {
            let delivered = best_of(rounds, &sides, false, |side, round| {
                step(&format!(
                    "scale/fanout: {servers} servers, {} (round {round})",
                    side.name()
                ));
                fanout(env, side, servers)
            })
            .await
            .map_err(|e| BenchError(format!("scale/fanout ({servers} servers): {e}")))?;
            report.fanout.push(FanoutRow {
                servers,
                delivered_per_s: delivered,
                casts_per_s: delivered.map(|d| d / servers as f64),
            });
        }
    }
    if plan.payload {
        for bytes in PAYLOAD_SIZES {
            let label = size_label(bytes);
            let payload = Value::String("x".repeat(bytes));
            let call_us = best_of(rounds, &sides, true, |side, round| {
                step(&format!(
                    "scale/payload: call {label}, {} (round {round})",
                    side.name()
                ));
                payload_call(env, side, &payload)
            })
            .await
            .map_err(|e| BenchError(format!("scale/payload (call, {label}): {e}")))?;
            let cast_msgs_per_s = best_of(rounds, &sides, false, |side, round| {
                step(&format!(
                    "scale/payload: cast {label}, {} (round {round})",
                    side.name()
                ));
                payload_cast(env, side, &payload, bytes)
            })
            .await
            .map_err(|e| BenchError(format!("scale/payload (cast, {label}): {e}")))?;
            report.payload.push(PayloadRow {
                payload_bytes: bytes,
                call_us,
                cast_msgs_per_s,
                cast_mb_per_s: cast_msgs_per_s.map(|m| m * bytes as f64 / 1e6),
            });
        }
    }
    Ok(report)
}

/// Who runs a comparison's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Tidings,
    Baseline,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Tidings => "tidings",
            Side::Baseline => "baseline",
        }
    }
}

/// Runs `measure` for each side, `rounds` times, rotating which side goes first; keeps each
/// side's best (lowest when `lower_is_better`).
async fn best_of<F, Fut>(
    rounds: usize,
    sides: &[Side],
    lower_is_better: bool,
    mut measure: F,
) -> Result<Pair>
where
    F: FnMut(Side, usize) -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    let mut best: [Option<f64>; 2] = [None, None];
    for round in 0..rounds {
        for offset in 0..sides.len() {
            let side = sides[(round + offset) % sides.len()];
            let figure = measure(side, round + 1)
                .await
                .map_err(|e| BenchError(format!("{}: {e}", side.name())))?;
            let kept = &mut best[usize::from(side == Side::Baseline)];
            *kept = Some(match *kept {
                None => figure,
                Some(kept) if lower_is_better => kept.min(figure),
                Some(kept) => kept.max(figure),
            });
        }
    }
    Ok(Pair::of(best[0], best[1]))
}

/// `100 B`, `1 KiB`, `1 MiB`.
fn size_label(bytes: usize) -> String {
    if bytes >= 1024 * 1024 && bytes % (1024 * 1024) == 0 {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

// ---------------------------------------------------------------------------------------------
// Payload and fanout: the scenarios' code, given a payload or a number of servers.

/// µs per call with `payload` as the argument (echoed back), one call at a time.
async fn payload_call(env: &Env, side: Side, payload: &Value) -> Result<f64> {
    let wire = Wire::Json;
    match side {
        Side::Tidings => {
            let args = json!({ "payload": payload });
            let echo = scenarios::EchoRpc::start_with(env, wire, args).await?;
            let result = env.calls(false, || echo.call()).await;
            echo.stop().await;
            result
        }
        Side::Baseline => {
            let echo =
                baseline::EchoRpc::start_with(env, wire, baseline::Confirms::On, payload.clone())
                    .await?;
            let result = env.calls(false, || echo.call()).await;
            echo.stop().await;
            result
        }
    }
}

/// Confirmed casts per second to one server, with `payload` as the argument.
async fn payload_cast(env: &Env, side: Side, payload: &Value, bytes: usize) -> Result<f64> {
    let backlog = (PAYLOAD_BACKLOG_BYTES / bytes.max(1)).clamp(harness::WINDOW, 4_096) as u64;
    match side {
        Side::Tidings => {
            let args = json!({ "payload": payload });
            scenarios::cast_with(env, Wire::Json, 1, &args, backlog).await
        }
        Side::Baseline => {
            baseline::confirmed_cast(env, Wire::Json, 1, payload.clone(), backlog).await
        }
    }
}

/// Deliveries per second of fanout casts to `servers` servers (the scenarios' small payload).
async fn fanout(env: &Env, side: Side, servers: u64) -> Result<f64> {
    match side {
        Side::Tidings => {
            let args = scenarios::arguments();
            scenarios::cast_with(env, Wire::Json, servers, &args, harness::BACKLOG).await
        }
        Side::Baseline => {
            baseline::confirmed_cast(
                env,
                Wire::Json,
                servers,
                harness::payload(),
                harness::BACKLOG,
            )
            .await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Topics.

/// The bound of a step doing something `units` times.
fn limit(units: usize) -> Duration {
    Duration::from_secs(60) + PER_UNIT * u32::try_from(units).unwrap_or(u32::MAX)
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}

/// Closes `transports`, 64 at a time, within `limit`.
async fn close_all(transports: &[Transport], limit: Duration) -> Result<()> {
    timeout(
        limit,
        stream::iter(transports).for_each_concurrent(CONCURRENCY, |t| t.close()),
    )
    .await
    .map_err(|_| BenchError(format!("transports not closed within {limit:?}")))
}

/// Starts `servers` servers, measures, calls each, stops them.
async fn topics_step(env: &Env, servers: usize, own_transports: bool) -> Result<TopicsRow> {
    let client_transport = scenarios::transport(env, Wire::Json).await?;
    let mut transports = Vec::new();
    let mut running = Vec::new();
    let result = topics_measure(
        env,
        servers,
        own_transports,
        &client_transport,
        &mut transports,
        &mut running,
    )
    .await;
    let stopping = Instant::now();
    let bound = limit(servers);
    let stopped = timeout(
        bound,
        stream::iter(running).for_each_concurrent(CONCURRENCY, |server| async move {
            server.stop(scenarios::STOP).await;
        }),
    )
    .await
    .map_err(|_| BenchError(format!("servers not stopped within {bound:?}")));
    let closed = close_all(&transports, bound).await;
    let stop_ms = millis(stopping.elapsed());
    let client_closed = close_all(std::slice::from_ref(&client_transport), bound).await;
    let mut row = result?;
    stopped.and(closed).and(client_closed)?;
    row.stop_ms = stop_ms;
    Ok(row)
}

/// The body of [`topics_step`]: what it starts goes to `transports` and `running` at once,
/// for the caller to stop whatever happens here.
async fn topics_measure(
    env: &Env,
    servers: usize,
    own_transports: bool,
    client_transport: &Transport,
    transports: &mut Vec<Transport>,
    running: &mut Vec<RpcServer>,
) -> Result<TopicsRow> {
    let prefix = env.name("scale-topic");
    tokio::time::sleep(settle(env)).await;
    let rss_before_kib = harness::rss_kib();
    let broker_before = broker_memory(env).await;
    let bound = limit(servers);
    let started = Instant::now();
    // One after the other, as an agent starts its servers.
    timeout(bound, async {
        for i in 0..servers {
            if own_transports || transports.is_empty() {
                transports.push(scenarios::transport(env, Wire::Json).await?);
            }
            let transport = transports
                .last()
                .ok_or_else(|| BenchError("no transport".into()))?;
            let server = RpcServer::builder(transport, Target::topic(format!("{prefix}-{i}")))
                .endpoint(Endpoint::new().method("echo", scenarios::echo))
                .start()
                .await?;
            running.push(server);
        }
        Ok::<_, BenchError>(())
    })
    .await
    .map_err(|_| {
        BenchError(format!(
            "{} of {servers} servers started within {bound:?}",
            running.len()
        ))
    })??;
    let start = started.elapsed();
    tokio::time::sleep(settle(env)).await;
    let rss_after_kib = harness::rss_kib();
    let broker_after = broker_memory(env).await;
    // Each server answers its own topic: the reply is the index sent.
    let context = Context::from(harness::context());
    let calling = Instant::now();
    let (context, prefix) = (&context, &prefix);
    timeout(
        bound,
        stream::iter(0..servers)
            .map(Ok)
            .try_for_each_concurrent(CONCURRENCY, |i| async move {
                let client =
                    RpcClient::new(client_transport, Target::topic(format!("{prefix}-{i}")))
                        .timeout(CALL);
                let reply: Value = client
                    .call(context, "echo", json!({ "payload": i }))
                    .await?;
                if reply != json!(i) {
                    return Err(BenchError(format!("topic {i} answered {reply}")));
                }
                Ok(())
            }),
    )
    .await
    .map_err(|_| BenchError(format!("calls to each topic not done within {bound:?}")))??;
    let call_each = calling.elapsed();
    let n = servers.max(1) as f64;
    Ok(TopicsRow {
        servers,
        transports: transports.len(),
        start_ms: millis(start),
        start_ms_per_server: millis(start) / n,
        rss_before_kib,
        rss_after_kib,
        kib_per_server: (rss_after_kib as f64 - rss_before_kib as f64) / n,
        broker_kib_per_server: per_unit_kib(broker_before, broker_after, servers),
        call_each_ms: millis(call_each),
        stop_ms: 0.0,
    })
}

/// `(after - before)` bytes in KiB per unit, when both are known.
fn per_unit_kib(before: Option<u64>, after: Option<u64>, units: usize) -> Option<f64> {
    let (before, after) = (before?, after?);
    Some((after as f64 - before as f64) / 1024.0 / units.max(1) as f64)
}

// ---------------------------------------------------------------------------------------------
// Reply queues.

/// A driver shared by many transports, so that each transport (each client) has a reply
/// queue of its own — a channel and a consumer on the shared consuming connection — without a
/// pair of AMQP connections of its own: 10 000 transports would be 20 000 connections, more
/// than the broker here accepts (832 sockets) and than this process may open. Closing
/// one of the transports stops its reply queue's router and leaves the connections to the
/// group, which closes the driver itself.
#[derive(Debug)]
struct SharedDriver(Arc<AmqpDriver>);

#[async_trait]
impl Driver for SharedDriver {
    async fn publish(
        &self,
        destination: &Destination,
        message: OutgoingMessage,
    ) -> Result<(), TransportError> {
        self.0.publish(destination, message).await
    }

    async fn subscribe(
        &self,
        subscription: &Subscription,
        options: ConsumeOptions,
    ) -> Result<Inbox, TransportError> {
        self.0.subscribe(subscription, options).await
    }

    async fn open_reply_queue(&self) -> Result<(String, Inbox), TransportError> {
        self.0.open_reply_queue().await
    }

    async fn open_reply_queue_into(
        &self,
        sink: Arc<dyn DeliverySink>,
    ) -> Result<(String, Inbox), TransportError> {
        self.0.open_reply_queue_into(sink).await
    }

    async fn close(&self) {}

    fn stats(&self) -> TransportStats {
        self.0.stats()
    }

    fn health(&self) -> Result<(), String> {
        self.0.health()
    }
}

/// The clients of a step and the drivers under them, kept as they open so that whatever
/// fails they are closed.
#[derive(Debug, Default)]
struct Clients {
    drivers: Vec<Arc<AmqpDriver>>,
    clients: Vec<(Transport, RpcClient)>,
}

/// Opens `clients` idle clients (each with its reply queue), `per_connection` of them on one
/// driver's connections; measures; closes them.
async fn reply_step(env: &Env, clients: usize, per_connection: usize) -> Result<ReplyQueuesRow> {
    let server_transport = scenarios::transport(env, Wire::Json).await?;
    let topic = env.name("scale-reply");
    let server = match RpcServer::builder(&server_transport, Target::topic(&topic))
        .endpoint(Endpoint::new().method("echo", scenarios::echo))
        .start()
        .await
    {
        Ok(server) => server,
        Err(error) => {
            let _ = close_all(std::slice::from_ref(&server_transport), limit(1)).await;
            return Err(error.into());
        }
    };
    let queues_before = reply_queues(env).await;
    let mut open = Clients::default();
    let result = reply_measure(env, clients, per_connection, &topic, &mut open).await;
    let bound = limit(clients);
    let closing = Instant::now();
    // A transport's close stops its reply queue's router; the drivers' close ends the
    // connections, and with them the channels and consumers.
    let transports: Vec<Transport> = open.clients.drain(..).map(|(t, _)| t).collect();
    let closed = close_all(&transports, bound).await;
    drop(transports);
    let drivers_closed = timeout(
        bound,
        stream::iter(&open.drivers).for_each_concurrent(CONCURRENCY, |d| d.close()),
    )
    .await
    .map_err(|_| BenchError(format!("connections not closed within {bound:?}")));
    let close_ms = millis(closing.elapsed());
    let stopped = timeout(limit(1), server.stop(scenarios::STOP))
        .await
        .map_err(|_| BenchError("the echo server did not stop".into()));
    let server_closed = close_all(std::slice::from_ref(&server_transport), limit(1)).await;
    // What closing left on the broker: this step's reply queues, deleted now so that the
    // next step starts from the same broker.
    let left = match (queues_before, reply_queues(env).await) {
        (Some(before), Some(after)) => {
            let before: HashSet<String> = before.into_iter().map(|(name, _)| name).collect();
            let left: Vec<String> = after
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| !before.contains(name))
                .collect();
            Some(left)
        }
        _ => None,
    };
    let deleted = match &left {
        Some(left) => delete_queues(env, left).await,
        None => Ok(()),
    };
    let mut row = result?;
    closed.and(drivers_closed).and(stopped).and(server_closed)?;
    deleted?;
    row.close_ms = close_ms;
    row.queues_left_after_close = left.map(|left| left.len());
    Ok(row)
}

/// The body of [`reply_step`]: opens the clients into `open` and measures them idle.
async fn reply_measure(
    env: &Env,
    clients: usize,
    per_connection: usize,
    topic: &str,
    open: &mut Clients,
) -> Result<ReplyQueuesRow> {
    let per_connection = per_connection.max(1);
    let context = Context::from(harness::context());
    let args = scenarios::arguments();
    tokio::time::sleep(settle(env)).await;
    let rss_before_kib = harness::rss_kib();
    let broker_before = broker_memory(env).await;
    let bound = limit(clients);
    let started = Instant::now();
    let opening = async {
        while open.clients.len() < clients {
            let driver = Arc::new(AmqpDriver::connect(&env.url).await?);
            open.drivers.push(driver.clone());
            let first = open.clients.len();
            for _ in first..clients.min(first + per_connection) {
                let transport = Transport::from_driver(
                    env.url.clone(),
                    TransportOptions::default().codec(Wire::Json.codec()),
                    Arc::new(SharedDriver(driver.clone())),
                );
                let client = RpcClient::new(&transport, Target::topic(topic)).timeout(CALL);
                open.clients.push((transport, client));
            }
            // A client's first call opens its reply queue.
            let (context, args) = (&context, &args);
            stream::iter(open.clients.get(first..).unwrap_or_default())
                .map(Ok)
                .try_for_each_concurrent(CONCURRENCY, |(_, client)| async move {
                    let _: Value = client.call(context, "echo", args).await?;
                    Ok::<_, BenchError>(())
                })
                .await?;
        }
        Ok::<_, BenchError>(())
    };
    let opened = timeout(bound, opening).await;
    let made = open.clients.len();
    let pairs = open.drivers.len();
    opened
        .map_err(|_| {
            BenchError(format!(
                "{made} of {clients} clients opened within {bound:?}"
            ))
        })?
        .map_err(|e| {
            BenchError(format!(
                "{e} (with {made} clients on {pairs} connection pairs)"
            ))
        })?;
    let opened = started.elapsed();
    tokio::time::sleep(settle(env)).await;
    let rss_after_kib = harness::rss_kib();
    let broker_after = broker_memory(env).await;
    let queues = reply_queues(env).await;
    // The clients' queues are the reply queues with a consumer (earlier steps' were deleted,
    // earlier parts' have none).
    let broker_queue_kib = queues.and_then(|queues| {
        let memory: Vec<u64> = queues
            .into_iter()
            .filter_map(|(_, queue)| (queue.consumers > 0).then_some(queue.memory))
            .collect();
        (!memory.is_empty())
            .then(|| memory.iter().sum::<u64>() as f64 / 1024.0 / memory.len() as f64)
    });
    let n = clients.max(1) as f64;
    Ok(ReplyQueuesRow {
        clients,
        clients_per_connection: per_connection,
        connections: open.drivers.len() * 2,
        open_ms: millis(opened),
        open_us_per_client: opened.as_secs_f64() * 1e6 / n,
        rss_before_kib,
        rss_after_kib,
        kib_per_client: (rss_after_kib as f64 - rss_before_kib as f64) / n,
        broker_queue_kib,
        broker_kib_per_client: per_unit_kib(broker_before, broker_after, clients),
        close_ms: 0.0,
        queues_left_after_close: None,
    })
}

/// Deletes `queues` from the run's private vhost, 16 channels at a time.
async fn delete_queues(env: &Env, queues: &[String]) -> Result<()> {
    if queues.is_empty() {
        return Ok(());
    }
    let connection = baseline::connect(env).await?;
    let bound = limit(queues.len());
    let chunk = queues.len().div_ceil(16);
    let deleting = stream::iter(queues.chunks(chunk))
        .map(Ok)
        .try_for_each_concurrent(16, |names| {
            let connection = &connection;
            async move {
                let channel = connection.create_channel().await?;
                for name in names {
                    channel
                        .queue_delete(
                            name.as_str().into(),
                            lapin::options::QueueDeleteOptions::default(),
                        )
                        .await?;
                }
                let _ = channel.close(200, "done".into()).await;
                Ok::<_, BenchError>(())
            }
        });
    let result = timeout(bound, deleting)
        .await
        .map_err(|_| BenchError(format!("reply queues not deleted within {bound:?}")))
        .and_then(|deleted| deleted);
    baseline::close(&[&connection]).await;
    result
}

// ---------------------------------------------------------------------------------------------
// The broker's side, through `rabbitmqctl` on the run's private vhost only: with `--url` the
// broker may be elsewhere and the vhost shared.

/// `rabbitmqctl -q ARGS --formatter json`, parsed; `None` when it cannot be run or read.
async fn ctl_json(args: Vec<String>) -> Option<Value> {
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .arg("-q")
            .args(&args)
            .args(["--formatter", "json"])
            .output()
    });
    let output = timeout(CTL_LIMIT, run).await.ok()?.ok()?.ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// The broker's memory in bytes as Erlang counts what it allocated (`rabbitmqctl status`):
/// steadier than the node's RSS, which moves by whole allocator carriers.
async fn broker_memory(env: &Env) -> Option<u64> {
    env.private_vhost.as_ref()?;
    let status = ctl_json(vec!["status".into()]).await?;
    status["memory"]["total"]["erlang"].as_u64()
}

/// A reply queue as `rabbitmqctl list_queues` shows it.
#[derive(Debug)]
struct QueueInfo {
    memory: u64,
    consumers: u64,
}

/// The reply queues (`reply_…`) of the private vhost.
async fn reply_queues(env: &Env) -> Option<Vec<(String, QueueInfo)>> {
    let vhost = env.private_vhost.clone()?;
    let list = ctl_json(vec![
        "list_queues".into(),
        "-p".into(),
        vhost,
        "name".into(),
        "memory".into(),
        "consumers".into(),
    ])
    .await?;
    Some(
        list.as_array()?
            .iter()
            .filter_map(|queue| {
                let name = queue["name"].as_str()?;
                name.starts_with("reply_").then(|| {
                    let info = QueueInfo {
                        memory: queue["memory"].as_u64().unwrap_or(0),
                        consumers: queue["consumers"].as_u64().unwrap_or(0),
                    };
                    (name.to_owned(), info)
                })
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// The table.

/// Appends the scale sections of the table to `out`.
pub(crate) fn table(report: &ScaleReport, out: &mut String) {
    use std::fmt::Write as _;
    let figure =
        |f: Option<f64>, precision: usize| f.map_or("-".to_owned(), |f| format!("{f:.precision$}"));
    if !report.payload.is_empty() {
        let _ = writeln!(
            out,
            "\nscale/payload (oslo JSON; the argument a string of that size; call: one at a time, \
             the argument echoed back; cast: confirmed, one server; ratio = tidings ÷ bare lapin)"
        );
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>10} {:>6}   {:>10} {:>10} {:>6}   {:>9} {:>9}",
            "payload",
            "call µs",
            "baseline",
            "ratio",
            "cast/s",
            "baseline",
            "ratio",
            "MB/s",
            "baseline"
        );
        for row in &report.payload {
            let _ = writeln!(
                out,
                "{:<8} {:>10} {:>10} {:>6}   {:>10} {:>10} {:>6}   {:>9} {:>9}",
                size_label(row.payload_bytes),
                figure(row.call_us.tidings, 1),
                figure(row.call_us.baseline, 1),
                figure(row.call_us.ratio, 2),
                figure(row.cast_msgs_per_s.tidings, 1),
                figure(row.cast_msgs_per_s.baseline, 1),
                figure(row.cast_msgs_per_s.ratio, 2),
                figure(row.cast_mb_per_s.tidings, 2),
                figure(row.cast_mb_per_s.baseline, 2),
            );
        }
    }
    if !report.topics.is_empty() {
        let _ = writeln!(
            out,
            "\nscale/topics (RpcServers in this process, a topic each, started one after the \
             other; RSS of this process; broker: Erlang's allocated memory)"
        );
        let _ = writeln!(
            out,
            "{:>7} {:>10} {:>9} {:>9} {:>10} {:>10} {:>9} {:>10} {:>9} {:>8}",
            "servers",
            "transports",
            "start ms",
            "ms/server",
            "RSS before",
            "RSS after",
            "KiB/server",
            "broker KiB",
            "call each",
            "stop ms"
        );
        for row in &report.topics {
            let _ = writeln!(
                out,
                "{:>7} {:>10} {:>9.0} {:>9.2} {:>10} {:>10} {:>9.1} {:>10} {:>9.0} {:>8.0}",
                row.servers,
                row.transports,
                row.start_ms,
                row.start_ms_per_server,
                format!("{:.1} MiB", row.rss_before_kib as f64 / 1024.0),
                format!("{:.1} MiB", row.rss_after_kib as f64 / 1024.0),
                row.kib_per_server,
                figure(row.broker_kib_per_server, 1),
                row.call_each_ms,
                row.stop_ms,
            );
        }
    }
    if !report.fanout.is_empty() {
        let _ = writeln!(
            out,
            "\nscale/fanout (fanout casts, oslo JSON, confirmed; each tidings server on a transport \
             of its own, each baseline consumer on a connection of its own; one process)"
        );
        let _ = writeln!(
            out,
            "{:>7} {:>12} {:>12} {:>6}   {:>9} {:>9}",
            "servers", "delivered/s", "baseline", "ratio", "casts/s", "baseline"
        );
        for row in &report.fanout {
            let _ = writeln!(
                out,
                "{:>7} {:>12} {:>12} {:>6}   {:>9} {:>9}",
                row.servers,
                figure(row.delivered_per_s.tidings, 1),
                figure(row.delivered_per_s.baseline, 1),
                figure(row.delivered_per_s.ratio, 2),
                figure(row.casts_per_s.tidings, 1),
                figure(row.casts_per_s.baseline, 1),
            );
        }
    }
    if !report.reply_queues.is_empty() {
        let _ = writeln!(
            out,
            "\nscale/reply-queues (idle RpcClients, a transport and reply queue each, \
             `per conn.` of them sharing a pair of AMQP connections; open = made + first call)"
        );
        let _ = writeln!(
            out,
            "{:>7} {:>9} {:>5} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>8} {:>5}",
            "clients",
            "per conn.",
            "conns",
            "open ms",
            "µs/client",
            "RSS before",
            "RSS after",
            "KiB/clnt",
            "queue KiB",
            "broker KiB",
            "close ms",
            "left"
        );
        for row in &report.reply_queues {
            let _ = writeln!(
                out,
                "{:>7} {:>9} {:>5} {:>9.0} {:>9.0} {:>10} {:>10} {:>9.1} {:>9} {:>10} {:>8.0} {:>5}",
                row.clients,
                row.clients_per_connection,
                row.connections,
                row.open_ms,
                row.open_us_per_client,
                format!("{:.1} MiB", row.rss_before_kib as f64 / 1024.0),
                format!("{:.1} MiB", row.rss_after_kib as f64 / 1024.0),
                row.kib_per_client,
                figure(row.broker_queue_kib, 1),
                figure(row.broker_kib_per_client, 1),
                row.close_ms,
                row.queues_left_after_close
                    .map_or("-".to_owned(), |n| n.to_string()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_goes_by_tens_up_to_the_top() {
        assert_eq!(growth(10, 1000), [10, 100, 1000]);
        assert_eq!(growth(100, 10_000), [100, 1000, 10_000]);
        assert_eq!(growth(10, 20), [10, 20]);
        assert_eq!(growth(100, 50), [50]);
        assert_eq!(growth(10, 0), [1]);
    }

    #[test]
    fn parts_run_only_when_named() {
        let only = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(selected_parts(&[]).is_empty());
        assert!(selected_parts(&only(&["call-1", "tail"])).is_empty());
        assert_eq!(selected_parts(&only(&["scale"])), PARTS);
        assert_eq!(selected_parts(&only(&["scale/topics"])), ["topics"]);
        assert_eq!(
            selected_parts(&only(&["scale/reply", "scale/fan"])),
            ["fanout", "reply-queues"]
        );
    }

    #[test]
    fn sizes_read_as_written() {
        assert_eq!(size_label(100), "100 B");
        assert_eq!(size_label(10 * 1024), "10 KiB");
        assert_eq!(size_label(1024 * 1024), "1 MiB");
    }
}
