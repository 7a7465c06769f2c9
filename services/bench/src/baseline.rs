//! The baseline: each scenario written directly on lapin and serde, with no framework — what a
//! careful engineer would write by hand for one job.
//!
//! - Request/reply: requests to a queue bound to a topic exchange, with `reply_to` and a
//!   `correlation_id`; replies through the default exchange to one exclusive reply queue
//!   consumed without acks, routed to the waiting call by correlation id. The server takes
//!   requests with a prefetch of 64, replies, then acknowledges. As tidings (and oslo.messaging)
//!   do, requests and replies are published with confirms: a call ends at its reply or, when
//!   the confirm comes first, waits on for the reply; the server acknowledges a request once
//!   its reply is confirmed, in a task of its own so that its loop goes on taking requests.
//!   [`run_unconfirmed`] runs the same without confirms, for reference.
//! - Publish/consume: publishes pipelined on a confirm channel (64 confirms outstanding), a
//!   consumer with a prefetch acknowledging in batches (`multiple`), every 32 deliveries or
//!   when no more are ready. tidings publishes with confirms, so this is the baseline its ratio
//!   is taken against; [`run_unconfirmed`] measures the same publishes on a plain channel, the
//!   ceiling without that guarantee, shown beside it for reference.
//! - Ingest: the same notification bodies the collector gets, decoded with serde straight into
//!   rows, inserted by a plain rusqlite thread in one transaction per batch, acknowledged after
//!   the commit.
//!
//! Bodies are plain serde structs (JSON or MessagePack) carrying the same fields as tidings'
//! messages: method, keyword arguments and context for requests, the result for replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tidings::url::Scheme;
use tidings::TransportUrl;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::harness::{
    self, BenchError, Result, Tally, Wire, BATCH, BATCH_TIMEOUT, SAMPLES_PER_NOTIFICATION,
};
use super::{Env, Scenario};

/// The topic exchange of the baseline's requests and notifications.
const EXCHANGE: &str = "bench-bare";
/// Deliveries acknowledged together (half the prefetch, so the broker never waits for us).
const ACK_EVERY: u64 = 32;
/// The consumers' prefetch.
const PREFETCH: u16 = 64;

/// A request: the same fields as an oslo request, without the envelope.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    method: String,
    args: Value,
    context: Map<String, Value>,
}

/// A reply.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    result: Value,
}

/// A notification: the same fields as oslo's.
#[derive(Debug, Serialize, Deserialize)]
struct Notification {
    message_id: String,
    publisher_id: String,
    event_type: String,
    priority: String,
    payload: Value,
    timestamp: String,
    context: Map<String, Value>,
}

/// Runs `scenario` on bare lapin; returns its figure (µs per call, or per second).
pub(crate) async fn run(env: &Env, scenario: Scenario, wire: Wire) -> Result<f64> {
    match scenario {
        Scenario::Call1 => rpc(env, wire, false, Confirms::On).await,
        Scenario::Call64 => rpc(env, wire, true, Confirms::On).await,
        Scenario::Cast => cast(env, wire, 1, Confirms::On).await,
        Scenario::Fanout3 => cast(env, wire, 3, Confirms::On).await,
        Scenario::NotifyBatch => notify_batch(env, wire, Confirms::On).await,
        Scenario::Ingest => ingest(env, wire, SAMPLES_PER_NOTIFICATION).await,
        // No agent by hand: the same samples straight into the store, one per notification,
        // is the ceiling the agent's extra hop is measured against.
        Scenario::MeterNotify | Scenario::MeterNotifyGrouped => ingest(env, wire, 1).await,
    }
}

/// Runs the request/reply or publish/consume `scenario` with publishes on a plain channel, no
/// confirms; an error for the other scenarios. A publish then only waits for its frame to be
/// handed to the connection, so the figure shows what the confirms cost, not a like-for-like
/// comparison with tidings (which confirms every publish).
pub(crate) async fn run_unconfirmed(env: &Env, scenario: Scenario, wire: Wire) -> Result<f64> {
    match scenario {
        Scenario::Call1 => rpc(env, wire, false, Confirms::Off).await,
        Scenario::Call64 => rpc(env, wire, true, Confirms::Off).await,
        Scenario::Cast => cast(env, wire, 1, Confirms::Off).await,
        Scenario::Fanout3 => cast(env, wire, 3, Confirms::Off).await,
        Scenario::NotifyBatch => notify_batch(env, wire, Confirms::Off).await,
        _ => Err(BenchError(format!(
            "{} has no unconfirmed baseline",
            scenario.name()
        ))),
    }
}

/// Whether the publishing channel of a publish/consume baseline uses publisher confirms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Confirms {
    /// A confirm channel, every publish awaiting its confirm: tidings' guarantee.
    On,
    /// A plain channel: nothing tells the publisher the broker took the message.
    Off,
}

/// A lapin URI for the first host of `url`.
fn amqp_uri(url: &TransportUrl) -> Result<AMQPUri> {
    let host = url
        .hosts()
        .first()
        .ok_or_else(|| BenchError(format!("{url} names no host")))?;
    Ok(AMQPUri {
        scheme: match url.scheme() {
            Scheme::Amqps => AMQPScheme::AMQPS,
            _ => AMQPScheme::AMQP,
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: host.username_or_default().to_owned(),
                password: host.password_or_default().to_owned(),
            },
            host: host.host().to_owned(),
            port: host.port(),
        },
        vhost: url.effective_vhost().to_owned(),
        query: AMQPQueryString::default(),
    })
}

/// How long the baseline waits to connect, or for a connection to close: lapin has had
/// releases where either could wait for ever, and a bench must end.
const CONNECTION_PATIENCE: Duration = Duration::from_secs(30);

pub(crate) async fn connect(env: &Env) -> Result<Connection> {
    let connecting = Connection::connect_uri(amqp_uri(&env.url)?, ConnectionProperties::default());
    match tokio::time::timeout(CONNECTION_PATIENCE, connecting).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(BenchError(format!(
            "the baseline could not connect within {CONNECTION_PATIENCE:?}"
        ))),
    }
}

/// Closes connections, ignoring errors (the run is over).
pub(crate) async fn close(connections: &[&Connection]) {
    let closing = futures::future::join_all(
        connections
            .iter()
            .map(|connection| connection.close(200, "bench done".into())),
    );
    let _ = tokio::time::timeout(CONNECTION_PATIENCE, closing).await;
}

fn properties(wire: Wire) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(wire.content_type().into())
        .with_delivery_mode(2)
}

/// Declares the exchange and a queue bound to it by its own name.
async fn bound_queue(channel: &Channel, queue: &str) -> Result<()> {
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            EXCHANGE.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// A channel consuming `queue` (declared and bound) with room for two batches in flight.
async fn batch_consumer(connection: &Connection, queue: &str) -> Result<(Channel, Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(
            u16::try_from(BATCH * 2).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    bound_queue(&channel, queue).await?;
    let consumer = consume(&channel, queue, false).await?;
    Ok((channel, consumer))
}

async fn consume(channel: &Channel, queue: &str, no_ack: bool) -> Result<Consumer> {
    Ok(channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?)
}

// ---------------------------------------------------------------------------------------------
// Request/reply.

/// The server: decode the request, reply with `args.payload`, acknowledge.
async fn rpc_server(
    connection: &Connection,
    queue: &str,
    wire: Wire,
    confirms: Confirms,
) -> Result<JoinHandle<()>> {
    let channel = publishing_channel(connection, confirms).await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    bound_queue(&channel, queue).await?;
    let mut consumer = consume(&channel, queue, false).await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let reply_to = delivery.properties.reply_to().clone();
            let correlation = delivery.properties.correlation_id().clone();
            let body = wire.decode::<Request>(&delivery.data).and_then(|request| {
                let result = request.args.get("payload").cloned().unwrap_or(Value::Null);
                wire.encode(&Reply { result })
            });
            let mut confirm = None;
            if let (Ok(body), Some(reply_to), Some(correlation)) = (body, reply_to, correlation) {
                let sent = channel
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &body,
                        properties(wire).with_correlation_id(correlation),
                    )
                    .await;
                match sent {
                    Ok(sent) => confirm = Some(sent),
                    Err(_) => return,
                }
            }
            match (confirms, confirm) {
                // Acknowledged once the reply is confirmed, without holding up the next request.
                (Confirms::On, Some(confirm)) => {
                    tokio::spawn(async move {
                        if confirm.await.is_ok() {
                            let _ = delivery.ack(BasicAckOptions::default()).await;
                        }
                    });
                }
                _ => {
                    if delivery.ack(BasicAckOptions::default()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }))
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>>;

/// The client: one reply queue, calls told apart by correlation id.
struct RpcClient {
    channel: Channel,
    reply_queue: ShortString,
    waiters: Waiters,
    next_id: AtomicU64,
    wire: Wire,
    confirms: Confirms,
    routing: JoinHandle<()>,
}

impl RpcClient {
    async fn start(connection: &Connection, wire: Wire, confirms: Confirms) -> Result<Self> {
        let channel = publishing_channel(connection, confirms).await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let reply_queue = queue.name().clone();
        let mut replies = consume(&channel, reply_queue.as_str(), true).await?;
        let waiters: Waiters = Arc::default();
        let routes = waiters.clone();
        let routing = tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let id = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|id| id.as_str().parse::<u64>().ok());
                let waiter = id.and_then(|id| routes.lock().ok()?.remove(&id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(delivery.data);
                }
            }
        });
        Ok(Self {
            channel,
            reply_queue,
            waiters,
            next_id: AtomicU64::new(0),
            wire,
            confirms,
            routing,
        })
    }

    async fn call(&self, queue: &str, request: &Request) -> Result<Reply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| BenchError("reply map poisoned".into()))?
            .insert(id, sender);
        let body = self.wire.encode(request)?;
        let confirm = self
            .channel
            .basic_publish(
                EXCHANGE.into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                properties(self.wire)
                    .with_reply_to(self.reply_queue.clone())
                    .with_correlation_id(id.to_string().into()),
            )
            .await?;
        let reply = async {
            tokio::time::timeout(Duration::from_secs(30), receiver)
                .await
                .map_err(|_| BenchError("baseline call timed out".into()))?
                .map_err(|_| BenchError("baseline reply queue closed".into()))
        };
        let reply = match self.confirms {
            Confirms::Off => reply.await?,
            // The reply proves the request arrived: whichever of the two comes first.
            Confirms::On => {
                tokio::pin!(reply);
                tokio::select! {
                    biased;
                    reply = &mut reply => reply?,
                    confirmed = confirm => {
                        if confirmed?.is_nack() {
                            return Err(BenchError("baseline request refused".into()));
                        }
                        reply.await?
                    }
                }
            }
        };
        self.wire.decode(&reply)
    }
}

fn request(method: &str, payload: Value) -> Request {
    let mut args = Map::new();
    args.insert("payload".into(), payload);
    Request {
        method: method.to_owned(),
        args: Value::Object(args),
        context: harness::context(),
    }
}

async fn rpc(env: &Env, wire: Wire, concurrent: bool, confirms: Confirms) -> Result<f64> {
    let echo = EchoRpc::start(env, wire, confirms).await?;
    let result = env.calls(concurrent, || echo.call()).await;
    echo.stop().await;
    result
}

/// The hand-written server answering `echo` and a client calling it, on connections of their
/// own: the baseline of `call-1`, `call-64` and the tail section.
pub(crate) struct EchoRpc {
    server_connection: Connection,
    client_connection: Connection,
    server: JoinHandle<()>,
    client: RpcClient,
    queue: String,
    request: Request,
}

impl EchoRpc {
    pub(crate) async fn start(env: &Env, wire: Wire, confirms: Confirms) -> Result<Self> {
        Self::start_with(env, wire, confirms, harness::payload()).await
    }

    /// As [`EchoRpc::start`], every call sending `payload` (echoed back).
    pub(crate) async fn start_with(
        env: &Env,
        wire: Wire,
        confirms: Confirms,
        payload: Value,
    ) -> Result<Self> {
        let server_connection = connect(env).await?;
        let client_connection = match connect(env).await {
            Ok(connection) => connection,
            Err(error) => {
                close(&[&server_connection]).await;
                return Err(error);
            }
        };
        let queue = env.name("bare-call");
        let started = async {
            let server = rpc_server(&server_connection, &queue, wire, confirms).await?;
            match RpcClient::start(&client_connection, wire, confirms).await {
                Ok(client) => Ok((server, client)),
                Err(error) => {
                    server.abort();
                    Err(error)
                }
            }
        }
        .await;
        let (server, client) = match started {
            Ok(started) => started,
            Err(error) => {
                close(&[&client_connection, &server_connection]).await;
                return Err(error);
            }
        };
        Ok(Self {
            server_connection,
            client_connection,
            server,
            client,
            queue,
            request: request("echo", payload),
        })
    }

    /// One `echo` call, its reply decoded.
    pub(crate) async fn call(&self) -> Result<()> {
        self.client.call(&self.queue, &self.request).await?;
        Ok(())
    }

    pub(crate) async fn stop(self) {
        self.server.abort();
        self.client.routing.abort();
        close(&[&self.client_connection, &self.server_connection]).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Publish/consume.

/// A publishing channel with confirms.
async fn confirm_channel(connection: &Connection) -> Result<Channel> {
    publishing_channel(connection, Confirms::On).await
}

/// A publishing channel, in confirm mode when `confirms` says so.
async fn publishing_channel(connection: &Connection, confirms: Confirms) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    if confirms == Confirms::On {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    Ok(channel)
}

/// Publishes one body and waits for its confirm.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    wire: Wire,
) -> Result<()> {
    publish(channel, exchange, routing_key, body, wire, Confirms::On).await
}

/// Publishes one body; with confirms, waits for its confirm, otherwise only until lapin has
/// taken the frame (on a plain channel the confirm future resolves at once, so it is dropped).
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    wire: Wire,
    confirms: Confirms,
) -> Result<()> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties(wire),
        )
        .await?;
    if confirms == Confirms::Off {
        return Ok(());
    }
    if confirm.await?.is_nack() {
        return Err(BenchError("negative publisher confirm".into()));
    }
    Ok(())
}

/// Consumes `consumer`, decoding each body as `T`, counting it in `tally` and acknowledging in
/// batches: every [`ACK_EVERY`] deliveries, or as soon as no further delivery is ready.
fn counting_consumer<T: serde::de::DeserializeOwned>(
    channel: Channel,
    mut consumer: Consumer,
    wire: Wire,
    tally: Arc<Tally>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut unacked = 0u64;
        let mut last_tag = 0;
        loop {
            let next = if unacked == 0 {
                consumer.next().await
            } else {
                match consumer.next().now_or_never() {
                    Some(next) => next,
                    None => {
                        let multiple = BasicAckOptions { multiple: true };
                        if channel.basic_ack(last_tag, multiple).await.is_err() {
                            return;
                        }
                        unacked = 0;
                        consumer.next().await
                    }
                }
            };
            let Some(Ok(delivery)) = next else { return };
            if wire.decode::<T>(&delivery.data).is_ok() {
                tally.add(1);
            }
            last_tag = delivery.delivery_tag;
            unacked += 1;
            if unacked >= ACK_EVERY {
                let multiple = BasicAckOptions { multiple: true };
                if channel.basic_ack(last_tag, multiple).await.is_err() {
                    return;
                }
                unacked = 0;
            }
        }
    })
}

/// `cast` (one queue) or `fanout-3` (a fanout exchange and `copies` queues, each consumed on a
/// connection of its own), publishing with or without `confirms`.
async fn cast(env: &Env, wire: Wire, copies: u64, confirms: Confirms) -> Result<f64> {
    cast_with(
        env,
        wire,
        copies,
        confirms,
        harness::payload(),
        harness::BACKLOG,
    )
    .await
}

/// The confirmed [`cast`] (the same guarantee as tidings) sending `payload`, the consumers at
/// most `backlog` deliveries behind.
pub(crate) async fn confirmed_cast(
    env: &Env,
    wire: Wire,
    copies: u64,
    payload: Value,
    backlog: u64,
) -> Result<f64> {
    cast_with(env, wire, copies, Confirms::On, payload, backlog).await
}

/// [`cast`] sending `payload`, the consumers at most `backlog` deliveries behind. The
/// connections opened are closed whether or not the run succeeded.
async fn cast_with(
    env: &Env,
    wire: Wire,
    copies: u64,
    confirms: Confirms,
    payload: Value,
    backlog: u64,
) -> Result<f64> {
    let publisher = connect(env).await?;
    let mut consumers = Vec::new();
    let mut tasks = Vec::new();
    let result = cast_on(
        env,
        wire,
        (copies, confirms, payload, backlog),
        &publisher,
        &mut consumers,
        &mut tasks,
    )
    .await;
    for task in tasks {
        task.abort();
    }
    let mut all: Vec<&Connection> = consumers.iter().collect();
    all.push(&publisher);
    close(&all).await;
    result
}

/// The body of [`cast_with`]: the consumers' connections and tasks go to `consumers` and
/// `tasks` as they start, for the caller to close.
async fn cast_on(
    env: &Env,
    wire: Wire,
    (copies, confirms, payload, backlog): (u64, Confirms, Value, u64),
    publisher: &Connection,
    consumers: &mut Vec<Connection>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<f64> {
    let tally = Arc::new(Tally::default());
    let (exchange, routing_key) = if copies == 1 {
        let queue = env.name("bare-cast");
        // Kept before it is used, so that the caller closes it whatever fails next.
        consumers.push(connect(env).await?);
        let channel = consumers[consumers.len() - 1].create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        bound_queue(&channel, &queue).await?;
        let consumer = consume(&channel, &queue, false).await?;
        tasks.push(counting_consumer::<Request>(
            channel,
            consumer,
            wire,
            tally.clone(),
        ));
        (EXCHANGE.to_owned(), queue)
    } else {
        let exchange = env.name("bare-fanout");
        for _ in 0..copies {
            consumers.push(connect(env).await?);
            let channel = consumers[consumers.len() - 1].create_channel().await?;
            channel
                .basic_qos(PREFETCH, BasicQosOptions::default())
                .await?;
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    queue.name().clone(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let consumer = consume(&channel, queue.name().as_str(), false).await?;
            tasks.push(counting_consumer::<Request>(
                channel,
                consumer,
                wire,
                tally.clone(),
            ));
        }
        (exchange, String::new())
    };
    let channel = publishing_channel(publisher, confirms).await?;
    let request = request("note", payload);
    let (channel, request, exchange, routing_key) = (&channel, &request, &exchange, &routing_key);
    let send = move |_| async move {
        let body = wire.encode(request)?;
        publish(channel, exchange, routing_key, &body, wire, confirms).await
    };
    env.pump_within(copies, backlog, &tally, send).await
}

/// A notification body, fresh ids and timestamp each time, as a notifier sends it.
fn notification(payload: Value) -> Notification {
    Notification {
        message_id: uuid::Uuid::new_v4().to_string(),
        publisher_id: "bench.host".into(),
        event_type: "bench.event".into(),
        priority: "INFO".into(),
        payload,
        timestamp: tidings::notify::oslo_timestamp(chrono::Utc::now().naive_utc()),
        context: harness::context(),
    }
}

/// Takes the next batch: up to [`BATCH`] deliveries, waiting at most [`BATCH_TIMEOUT`] after
/// the first. `None` when the consumer ended.
async fn next_batch(consumer: &mut Consumer) -> Option<Vec<lapin::message::Delivery>> {
    let first = consumer.next().await?.ok()?;
    let mut batch = Vec::with_capacity(BATCH);
    batch.push(first);
    let flush_at = tokio::time::Instant::now() + BATCH_TIMEOUT;
    while batch.len() < BATCH {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => batch.push(delivery),
                _ => break,
            },
            () = tokio::time::sleep_until(flush_at) => break,
        }
    }
    Some(batch)
}

/// `notify-batch`: publishes (confirmed unless told otherwise); the listener takes batches,
/// decodes each message and acknowledges the batch at once.
async fn notify_batch(env: &Env, wire: Wire, confirms: Confirms) -> Result<f64> {
    let tally = Arc::new(Tally::default());
    let publisher = connect(env).await?;
    let listener = connect(env).await?;
    let queue = env.name("bare-notify");
    let (channel, mut consumer) = batch_consumer(&listener, &queue).await?;
    let counted = tally.clone();
    let task = tokio::spawn(async move {
        while let Some(batch) = next_batch(&mut consumer).await {
            let decoded = batch
                .iter()
                .filter(|d| wire.decode::<Notification>(&d.data).is_ok())
                .count();
            let last = batch.last().map_or(0, |d| d.delivery_tag);
            let multiple = BasicAckOptions { multiple: true };
            if channel.basic_ack(last, multiple).await.is_err() {
                return;
            }
            counted.add(decoded as u64);
        }
    });
    let sender = publishing_channel(&publisher, confirms).await?;
    let (sender, queue) = (&sender, queue.as_str());
    let send = move |_| async move {
        let body = wire.encode(&notification(harness::payload()))?;
        publish(sender, EXCHANGE, queue, &body, wire, confirms).await
    };
    let result = env.pump(1, &tally, send).await;
    task.abort();
    close(&[&publisher, &listener]).await;
    result
}

// ---------------------------------------------------------------------------------------------
// Ingest.

/// A sample as Ceilometer sends it, decoded straight from the body.
#[derive(Debug, Deserialize)]
struct WireSample {
    source: String,
    counter_name: String,
    counter_type: String,
    counter_unit: Option<String>,
    counter_volume: f64,
    user_id: Option<String>,
    project_id: Option<String>,
    resource_id: String,
    timestamp: String,
    #[serde(default)]
    resource_metadata: Value,
    message_id: String,
}

#[derive(Debug, Deserialize)]
struct SamplesPayload {
    samples: Vec<WireSample>,
}

/// The inner message of a sample notification (other keys ignored).
#[derive(Debug, Deserialize)]
struct SampleNotification {
    payload: SamplesPayload,
}

/// oslo's envelope: JSON carries the inner message as a string, MessagePack as a map.
#[derive(Debug, Deserialize)]
struct JsonEnvelope {
    #[serde(rename = "oslo.message")]
    message: String,
}

#[derive(Debug, Deserialize)]
struct MsgpackEnvelope {
    #[serde(rename = "oslo.message")]
    message: SampleNotification,
}

/// The body tidings' notifier sends for `payload`, built by hand: the same keys, the same
/// envelope.
fn enveloped_body(wire: Wire, payload: Value) -> Result<Vec<u8>> {
    let n = notification(payload);
    let mut inner = Map::new();
    inner.insert("message_id".into(), n.message_id.into());
    inner.insert("publisher_id".into(), n.publisher_id.into());
    inner.insert("event_type".into(), "telemetry.polling".into());
    inner.insert("priority".into(), "SAMPLE".into());
    inner.insert("payload".into(), n.payload);
    inner.insert("timestamp".into(), n.timestamp.into());
    inner.insert(
        "_unique_id".into(),
        uuid::Uuid::new_v4().simple().to_string().into(),
    );
    for (key, value) in n.context {
        inner.insert(format!("_context_{key}"), value);
    }
    let mut envelope = Map::new();
    envelope.insert("oslo.version".into(), "2.0".into());
    match wire {
        Wire::Json => {
            envelope.insert("oslo.message".into(), serde_json::to_string(&inner)?.into());
            Ok(serde_json::to_vec(&envelope)?)
        }
        Wire::Msgpack => {
            envelope.insert("oslo.message".into(), Value::Object(inner));
            Ok(rmp_serde::to_vec_named(&envelope)?)
        }
    }
}

fn decode_samples(wire: Wire, body: &[u8]) -> Result<Vec<WireSample>> {
    let inner = match wire {
        Wire::Json => {
            let envelope: JsonEnvelope = serde_json::from_slice(body)?;
            serde_json::from_str::<SampleNotification>(&envelope.message)?
        }
        Wire::Msgpack => rmp_serde::from_slice::<MsgpackEnvelope>(body)?.message,
    };
    Ok(inner.payload.samples)
}

/// The samples table, as the collector's SQLite store lays it out.
const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS samples (
    message_id TEXT PRIMARY KEY,
    meter TEXT NOT NULL,
    counter_type TEXT NOT NULL,
    unit TEXT NOT NULL,
    volume REAL NOT NULL,
    source TEXT NOT NULL,
    user_id TEXT,
    project_id TEXT,
    resource_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    resource_metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_meter_ts ON samples (meter, ts);
CREATE INDEX IF NOT EXISTS samples_resource ON samples (resource_id);
";

fn micros(timestamp: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(timestamp, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| t.and_utc().timestamp_micros())
        .unwrap_or(0)
}

/// A batch for the writer: its samples and the delivery tag that acknowledges it.
type WriteJob = (Vec<WireSample>, u64);

/// The SQLite writer thread: one transaction per batch, then the batch's tag and sample count
/// back to the acknowledging task.
fn sqlite_writer(
    path: std::path::PathBuf,
    mut jobs: mpsc::Receiver<WriteJob>,
    done: mpsc::UnboundedSender<(u64, u64)>,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let mut connection = rusqlite::Connection::open(&path)?;
        connection.execute_batch(SCHEMA)?;
        while let Some((samples, tag)) = jobs.blocking_recv() {
            let tx = connection.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO samples (message_id, meter, counter_type, unit, volume, source, \
                     user_id, project_id, resource_id, ts, resource_metadata) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                     ON CONFLICT (message_id) DO NOTHING",
                )?;
                for s in &samples {
                    insert.execute(rusqlite::params![
                        s.message_id,
                        s.counter_name,
                        s.counter_type,
                        s.counter_unit.as_deref().unwrap_or(""),
                        s.counter_volume,
                        s.source,
                        s.user_id,
                        s.project_id,
                        s.resource_id,
                        micros(&s.timestamp),
                        s.resource_metadata.to_string(),
                    ])?;
                }
            }
            tx.commit()?;
            if done.send((tag, samples.len() as u64)).is_err() {
                break;
            }
        }
        Ok(())
    })
}

/// `ingest`: the collector's job by hand — consume sample notifications in batches, decode,
/// insert into SQLite, acknowledge after the commit.
async fn ingest(env: &Env, wire: Wire, per_notification: usize) -> Result<f64> {
    let tally = Arc::new(Tally::default());
    let publisher = connect(env).await?;
    let listener = connect(env).await?;
    let queue = env.name("bare-ingest");
    let (channel, mut consumer) = batch_consumer(&listener, &queue).await?;
    let database = env.scratch_file("bare-ingest.sqlite");
    let (jobs, job_queue) = mpsc::channel::<WriteJob>(4);
    let (done, mut committed) = mpsc::unbounded_channel();
    let writer = sqlite_writer(database.clone(), job_queue, done);
    let decoder = tokio::spawn(async move {
        while let Some(batch) = next_batch(&mut consumer).await {
            let mut samples = Vec::with_capacity(batch.len() * per_notification);
            for delivery in &batch {
                if let Ok(mut more) = decode_samples(wire, &delivery.data) {
                    samples.append(&mut more);
                }
            }
            let last = batch.last().map_or(0, |d| d.delivery_tag);
            if jobs.send((samples, last)).await.is_err() {
                return;
            }
        }
    });
    let counted = tally.clone();
    let acker = tokio::spawn(async move {
        while let Some((tag, samples)) = committed.recv().await {
            let multiple = BasicAckOptions { multiple: true };
            if channel.basic_ack(tag, multiple).await.is_err() {
                return;
            }
            counted.add(samples);
        }
    });
    let sender = confirm_channel(&publisher).await?;
    let (sender, queue) = (&sender, queue.as_str());
    let publish = move |_| async move {
        let body = enveloped_body(wire, harness::samples_payload(per_notification))?;
        publish_confirmed(sender, EXCHANGE, queue, &body, wire).await
    };
    let copies = per_notification as u64;
    let result = env.pump(copies, &tally, publish).await;
    decoder.abort();
    acker.abort();
    close(&[&publisher, &listener]).await;
    // The decoder's end closes the job queue, which ends the writer.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    env.remove_scratch(&database);
    result
}
