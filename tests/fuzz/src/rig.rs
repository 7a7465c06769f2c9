//! Path (2): the library running end to end on `memory://`, fed raw bodies through the driver.
//!
//! A rig is two in-process brokers: `bus` holds an RPC server (echo-like endpoints, topic
//! `probe` on exchange `openstack`, as in the captured scenario), a notification listener on
//! `notifications` for every priority, and a client whose reply queue is fed too; `meter` holds
//! the metering collector (its own broker, because its queues `notifications.sample` would
//! otherwise compete with the listener's) with a SQLite store. Dead-letter queues are drained
//! so that a long run does not keep what it rejected.
//!
//! [`Rig::check`] is the liveness check: a real call, a real notification, a real sample and
//! a collector call must all be answered or handled. Because each queue is consumed in order,
//! it is also the barrier that says the bodies fed before it were taken.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tidings::codec::Codec;
use tidings::notify::{
    Filter, IncomingNotification, NotificationEndpoint, NotificationListener, Notifier, Outcome,
    Priority,
};
use tidings::rpc::{Endpoint, RpcClient, RpcServer};
use tidings::transport::{
    ConsumeOptions, Destination, OutgoingMessage, Subscription, TransportError,
};
use tidings::{Context, RemoteError, Target, Transport, Version};
use tidings_metering::collector::{Collector, CollectorConfig, CollectorError};
use tidings_metering::sample::{contract, DEFAULT_TELEMETRY_SECRET};
use tidings_metering::store::{self, Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::generate;
use crate::mutate::FuzzInput;

/// The RPC exchange and topic of the fuzzed server, as in the captured scenario.
pub const RPC_EXCHANGE: &str = "openstack";
/// The fuzzed server's topic.
pub const RPC_TOPIC: &str = "probe";
/// The fuzzed server's name (`probe.srv1`).
pub const RPC_SERVER: &str = "srv1";
/// The fuzzed listener's topic.
pub const NOTIFY_TOPIC: &str = "notifications";
/// Event type of the liveness notification.
const MARKER_EVENT: &str = "fuzz.marker";
/// Publisher of the liveness notification.
const MARKER_PUBLISHER: &str = "fuzz.rig";
/// Topic of the throwaway server used to learn the client's reply queue name.
const PROBE_TOPIC: &str = "fuzz_reply_probe";

/// Why a rig could not start or a body could not be fed.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    /// A transport operation failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The collector did not start.
    #[error("collector: {0}")]
    Collector(#[from] CollectorError),
    /// The store did not open.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The client's reply queue could not be learned.
    #[error("could not learn the client's reply queue: {0}")]
    ReplyQueue(String),
    /// A filter pattern was refused.
    #[error("filter: {0}")]
    Filter(#[from] regex::Error),
}

/// A failed liveness check: what did not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("liveness check {seq} failed: {what}")]
pub struct LivenessFailure {
    /// The check's sequence number.
    pub seq: u64,
    /// Which part failed, and how.
    pub what: String,
}

/// Where the collector's store lives.
#[derive(Clone, Debug)]
pub enum StoreAt {
    /// In memory (short runs, triage).
    Memory,
    /// A SQLite file in this directory.
    Dir(PathBuf),
}

/// The running library, ready to be fed.
#[derive(Debug)]
pub struct Rig {
    bus: Transport,
    meter: Transport,
    server: RpcServer,
    listener: NotificationListener,
    collector: Collector,
    client: RpcClient,
    meter_client: RpcClient,
    store: Arc<dyn Store>,
    reply_queue: String,
    marker: watch::Receiver<u64>,
    drainers: Vec<JoinHandle<()>>,
    dead_lettered: Arc<AtomicU64>,
    seq: u64,
    timeout: Duration,
}

async fn echo(_ctx: Context, args: Value) -> Result<Value, RemoteError> {
    Ok(args)
}

async fn fail(_ctx: Context, _args: Value) -> Result<Value, RemoteError> {
    Err(RemoteError::new("ValueError", "builtins", "asked to fail"))
}

async fn returns_none(_ctx: Context, _args: Value) -> Result<(), RemoteError> {
    Ok(())
}

/// Settles every message of `queue` (a dead-letter queue), counting them.
async fn drain(
    transport: &Transport,
    queue: String,
    count: Arc<AtomicU64>,
) -> Result<JoinHandle<()>, TransportError> {
    let mut inbox = transport
        .driver()
        .subscribe(
            &Subscription::Queue { name: queue },
            ConsumeOptions::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(delivery) = inbox.recv().await {
            count.fetch_add(1, Ordering::Relaxed);
            let _ = delivery.ack().await;
        }
    }))
}

impl Rig {
    /// Starts a rig on brokers `memory://NAME` and `memory://NAME-meter`; `timeout` bounds each
    /// liveness check.
    pub async fn start(name: &str, store_at: &StoreAt, timeout: Duration) -> Result<Rig, RigError> {
        let bus = Transport::connect(&format!("memory://{name}")).await?;
        let meter = Transport::connect(&format!("memory://{name}-meter")).await?;

        let server = RpcServer::builder(&bus, Target::topic(RPC_TOPIC).with_server(RPC_SERVER))
            .endpoint(
                Endpoint::new()
                    .version(Version::new(1, 5))
                    .method("echo", echo)
                    .method("fail", fail)
                    .method("returns_none", returns_none),
            )
            .endpoint(
                Endpoint::new()
                    .namespace("ns")
                    .version(Version::new(1, 5))
                    .method("echo", echo),
            )
            // A reply to a queue that does not exist is given up at once: fuzzed `_reply_q`s
            // name thousands of them.
            .reply_retry(Duration::ZERO)
            .start()
            .await?;

        let (marked, marker) = watch::channel(0u64);
        let mut everything = NotificationEndpoint::new();
        for priority in Priority::ALL {
            let marked = marked.clone();
            everything = everything.on(priority, move |n: IncomingNotification| {
                let marked = marked.clone();
                async move {
                    if n.event_type == MARKER_EVENT && n.publisher_id == MARKER_PUBLISHER {
                        if let Some(seq) = n.payload.get("seq").and_then(Value::as_u64) {
                            marked.send_modify(|seen| *seen = (*seen).max(seq));
                        }
                    }
                    Ok::<_, Infallible>(Outcome::Handled)
                }
            });
        }
        // Filters over fields of any shape; one in sixteen accepted messages asks for a requeue,
        // so that requeue and dead-lettering run too.
        let filtered = NotificationEndpoint::new()
            .filter(
                Filter::new()
                    .event_type(r"^compute\.")?
                    .payload("state", "^act")?
                    .context("request_id", "^req-")?,
            )
            .on(Priority::Info, |n: IncomingNotification| async move {
                let requeue = n.metadata.message_id.ends_with('0');
                Ok::<_, Infallible>(if requeue {
                    Outcome::Requeue
                } else {
                    Outcome::Handled
                })
            });
        let listener = NotificationListener::builder(&bus, vec![Target::topic(NOTIFY_TOPIC)])
            .endpoint(everything)
            .endpoint(filtered)
            .allow_requeue(true)
            .max_requeues(2)
            .start()
            .await?;

        let store = match store_at {
            StoreAt::Memory => store::open("sqlite::memory:").await?,
            StoreAt::Dir(dir) => {
                store::open(&format!("sqlite://{}", dir.join("fuzz.sqlite").display())).await?
            }
        };
        let collector = Collector::start(
            &meter,
            store.clone(),
            CollectorConfig {
                telemetry_secret: Some(DEFAULT_TELEMETRY_SECRET.to_owned()),
                batch_size: 50,
                batch_timeout: Duration::from_millis(20),
                ..CollectorConfig::default()
            },
        )
        .await?;

        let dead_lettered = Arc::new(AtomicU64::new(0));
        let mut drainers = Vec::new();
        for priority in Priority::ALL {
            let queue = format!("{NOTIFY_TOPIC}.{}.dlq", priority.as_key());
            drainers.push(drain(&bus, queue, dead_lettered.clone()).await?);
        }
        for topic in [contract::POLLING_TOPIC, contract::METERING_TOPIC] {
            let queue = format!("{topic}.sample.dlq");
            drainers.push(drain(&meter, queue, dead_lettered.clone()).await?);
        }

        let client = RpcClient::new(&bus, Target::topic(RPC_TOPIC))
            .version(Version::new(1, 2))
            .timeout(timeout);
        let meter_client = RpcClient::new(
            &meter,
            Target::topic(tidings_metering::collector::rpc::TOPIC)
                .with_exchange(contract::EXCHANGE),
        )
        .timeout(timeout);
        let reply_queue = learn_reply_queue(&bus, &client).await?;
        Ok(Rig {
            bus,
            meter,
            server,
            listener,
            collector,
            client,
            meter_client,
            store,
            reply_queue,
            marker,
            drainers,
            dead_lettered,
            seq: 0,
            timeout,
        })
    }

    /// The client's reply queue, fed with every body.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Messages moved to dead-letter queues (and drained) so far.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Publishes `input`'s body, raw, to the server (its topic, its own queue or its fanout),
    /// the listener (one priority), the client's reply queue, the collector's sample queues and
    /// the collector's RPC server.
    pub async fn feed(&self, input: &FuzzInput) -> Result<(), RigError> {
        let body = Bytes::from(input.body.clone());
        let message = || OutgoingMessage::new(body.clone(), input.content_type);
        let rpc = match input.index % 5 {
            0 => Destination::Rpc {
                exchange: RPC_EXCHANGE.into(),
                routing_key: format!("{RPC_TOPIC}.{RPC_SERVER}"),
            },
            1 => Destination::Fanout {
                topic: RPC_TOPIC.into(),
            },
            _ => Destination::Rpc {
                exchange: RPC_EXCHANGE.into(),
                routing_key: RPC_TOPIC.into(),
            },
        };
        let bus = self.bus.driver();
        bus.publish(&rpc, message()).await?;
        let priority = Priority::ALL[(input.index % 7) as usize];
        bus.publish(
            &Destination::Notification {
                exchange: RPC_EXCHANGE.into(),
                topic: NOTIFY_TOPIC.into(),
                priority: priority.as_key().into(),
            },
            message(),
        )
        .await?;
        bus.publish(
            &Destination::Reply {
                queue: self.reply_queue.clone(),
            },
            message(),
        )
        .await?;
        let meter = self.meter.driver();
        let topic = if input.index % 2 == 0 {
            contract::POLLING_TOPIC
        } else {
            contract::METERING_TOPIC
        };
        meter
            .publish(
                &Destination::Notification {
                    exchange: contract::EXCHANGE.into(),
                    topic: topic.into(),
                    priority: Priority::Sample.as_key().into(),
                },
                message(),
            )
            .await?;
        meter
            .publish(
                &Destination::Rpc {
                    exchange: contract::EXCHANGE.into(),
                    routing_key: tidings_metering::collector::rpc::TOPIC.into(),
                },
                message(),
            )
            .await?;
        Ok(())
    }

    /// The liveness check (and barrier): a call answered with its own arguments, a
    /// notification handled, a sample stored and a collector call answered.
    pub async fn check(&mut self) -> Result<(), LivenessFailure> {
        self.seq += 1;
        let seq = self.seq;
        let fail = |what: String| LivenessFailure { seq, what };
        let (call, notification, sample, collector_call) = tokio::join!(
            self.check_call(seq),
            self.check_notification(seq),
            self.check_sample(seq),
            self.check_collector_call(),
        );
        call.map_err(|e| fail(format!("RPC call: {e}")))?;
        notification.map_err(|e| fail(format!("notification: {e}")))?;
        sample.map_err(|e| fail(format!("collector sample: {e}")))?;
        collector_call.map_err(|e| fail(format!("collector call: {e}")))?;
        Ok(())
    }

    async fn check_call(&self, seq: u64) -> Result<(), String> {
        let args = json!({ "seq": seq });
        let echoed: Value = self
            .client
            .call(&Context::new(), "echo", args.clone())
            .await
            .map_err(|e| e.to_string())?;
        if echoed == args {
            Ok(())
        } else {
            Err(format!("echo answered {echoed} to {args}"))
        }
    }

    async fn check_notification(&self, seq: u64) -> Result<(), String> {
        Notifier::new(&self.bus, MARKER_PUBLISHER)
            .topics([NOTIFY_TOPIC])
            .info(&Context::new(), MARKER_EVENT, json!({ "seq": seq }))
            .await
            .map_err(|e| e.to_string())?;
        let mut marker = self.marker.clone();
        let seen = tokio::time::timeout(self.timeout, marker.wait_for(|seen| *seen >= seq))
            .await
            .map(|seen| seen.is_ok());
        match seen {
            Ok(true) => Ok(()),
            Ok(false) => Err("listener endpoint dropped".into()),
            Err(_) => Err(format!("not handled within {:?}", self.timeout)),
        }
    }

    async fn check_sample(&self, seq: u64) -> Result<(), String> {
        let resource = format!("fuzz-marker-{seq}");
        let mut rng = fastrand::Rng::with_seed(seq);
        let message_id = generate::hex_id(&mut rng);
        let sample = generate::wire_sample(&mut rng, message_id, resource.clone());
        let (topic, event, payload) = if seq % 2 == 0 {
            (
                contract::POLLING_TOPIC,
                contract::POLLING_EVENT_TYPE,
                json!({ "samples": [sample] }),
            )
        } else {
            (
                contract::METERING_TOPIC,
                contract::METERING_EVENT_TYPE,
                json!([sample]),
            )
        };
        Notifier::new(&self.meter, contract::POLLING_PUBLISHER_ID)
            .exchange(contract::EXCHANGE)
            .topics([topic])
            .sample(&Context::new(), event, payload)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let meters = self
                .store
                .meters(Some(&resource))
                .await
                .map_err(|e| e.to_string())?;
            if !meters.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "sample not stored within {:?} ({:?})",
                    self.timeout,
                    self.collector.report()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn check_collector_call(&self) -> Result<(), String> {
        let _: Value = self
            .meter_client
            .call(&Context::new(), "list_meters", json!({}))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Stops everything and closes both brokers.
    pub async fn stop(self) {
        let deadline = Duration::from_secs(5);
        self.server.stop(deadline).await;
        self.listener.stop(deadline).await;
        self.collector.stop().await;
        for drainer in &self.drainers {
            drainer.abort();
        }
        self.bus.close().await;
        self.meter.close().await;
    }
}

/// Learns the client's reply queue: one call to a raw subscriber, which reads `_reply_q` from
/// the request and answers it.
async fn learn_reply_queue(bus: &Transport, client: &RpcClient) -> Result<String, RigError> {
    let mut inbox = bus
        .driver()
        .subscribe(
            &Subscription::RpcServer {
                exchange: RPC_EXCHANGE.into(),
                topic: PROBE_TOPIC.into(),
                server: "probe".into(),
            },
            ConsumeOptions::default(),
        )
        .await?;
    let probe = client.prepare().topic(PROBE_TOPIC);
    let call = tokio::spawn(async move {
        probe
            .call::<Value>(&Context::new(), "whoami", json!({}))
            .await
    });
    let delivery = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .map_err(|_| RigError::ReplyQueue("the probe call never arrived".into()))?
        .ok_or_else(|| RigError::ReplyQueue("probe inbox closed".into()))?;
    let (body, content_type, acker) = delivery.into_parts();
    let _ = acker.ack().await;
    let codec =
        Codec::from_content_type(&content_type).map_err(|e| RigError::ReplyQueue(e.to_string()))?;
    let request = codec
        .decode_request(&body)
        .map_err(|e| RigError::ReplyQueue(e.to_string()))?;
    let info = request
        .call
        .ok_or_else(|| RigError::ReplyQueue("the probe was sent as a cast".into()))?;
    let reply = tidings::codec::RpcReply {
        result: Value::Null,
        failure: None,
        ending: true,
        msg_id: info.msg_id.clone(),
        unique_id: generate::hex_id(&mut fastrand::Rng::new()),
    };
    let body = codec
        .encode_reply(&reply)
        .map_err(|e| RigError::ReplyQueue(e.to_string()))?;
    bus.driver()
        .publish(
            &Destination::Reply {
                queue: info.reply_q.clone(),
            },
            OutgoingMessage::new(body, codec.content_type()),
        )
        .await?;
    let _ = call.await;
    inbox.close().await;
    Ok(info.reply_q)
}

/// A fresh path under the system's temporary directory (not created).
pub fn temp_path(label: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "tidings-fuzz-{label}-{}-{nanos}",
        std::process::id()
    ))
}

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(label: &str) -> std::io::Result<PathBuf> {
    let dir = temp_path(label);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Removes a directory made by [`temp_dir`], ignoring failures (it is only scratch space).
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
