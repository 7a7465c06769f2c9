//! Consumers: a set of queues consumed on one channel of the listening connection and fed into
//! one [`Inbox`]. When the connection is lost, a resubscribing consumer declares its queues and
//! consumes again on the next connection; a one-shot consumer (the reply queue) ends its inbox,
//! so calls waiting on it fail at once instead of waiting out their timeouts.
//!
//! The broker can also end one consumer while the connection stays up (`basic.cancel`: its
//! queue was deleted, its node lost, a consumer timeout) or close the channel (a channel
//! error). Neither is a connection event, so each is handled here: a cancelled queue is declared
//! again and consumed again on the same channel, with backoff, while its siblings go on; a lost
//! channel is replaced on the same connection. Declarations run on a channel of their own,
//! because a refused one closes the channel it was made on.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, FuturesUnordered, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};

use super::acks::{AckBatcher, AckPolicy};
use super::declare::QueueSpec;
use super::link::{Backoff, Link, Session, STABLE_SESSION};
use super::Counters;
use crate::codec::limits;
use crate::transport::driver::{Acknowledge, ConsumerHealth, Delivery};
use crate::transport::{sink_guarded, DeliverySink, Merge, TransportError};

/// What a consumer consumes, and whether it survives a lost connection.
#[derive(Clone, Debug)]
pub(super) struct ConsumerSpec {
    pub(super) queues: Vec<QueueSpec>,
    pub(super) prefetch: u16,
    pub(super) resubscribe: bool,
    /// Consume without acknowledgements (`no_ack`). The reply queue gave this up for a
    /// prefetch that keeps a flood of unsolicited replies in the broker; it holds its
    /// acknowledgements back instead (`ack_policy`), so a call still costs no frame for them.
    pub(super) auto_ack: bool,
    /// When the consumer task sends the acknowledgements recorded (see [`AckBatcher::new`]).
    pub(super) ack_policy: AckPolicy,
    /// Where requeued and dead-lettered messages are published from.
    pub(super) republisher: Arc<Republisher>,
    /// Which queues are without a consumer now; read by the inbox's owner.
    pub(super) health: Arc<ConsumerHealth>,
    pub(super) counters: Arc<Counters>,
}

/// Header counting how many times tidings requeued a message.
pub(super) const REQUEUES_HEADER: &str = "x-tidings-requeues";

/// Publishes a message again: to the back of its queue with its requeue count raised, or to its
/// dead-letter queue. Requeue by republishing (rather than `basic.nack`) is what lets the count
/// travel with the message on classic queues, which keep no delivery count of their own.
#[derive(Debug)]
pub(super) struct Republisher {
    pub(super) send: Arc<Link>,
    pub(super) options: super::options::AmqpOptions,
}

impl Republisher {
    async fn publish(
        &self,
        queue: &str,
        message: &Held,
        requeues: u32,
        declare: bool,
    ) -> Result<(), TransportError> {
        let session = self
            .send
            .session(self.options.publish_recovery_timeout)
            .await?;
        let failed = |error: lapin::Error| {
            TransportError::Driver(format!("could not republish to {queue}: {error}"))
        };
        let mut channel = session.publisher().await.map_err(failed)?;
        if declare {
            let declared = QueueSpec::dead_letter(queue, &self.options)
                .declare(&channel)
                .await;
            match declared {
                Ok(()) => {}
                // The queue exists with other arguments (made before it had a length limit, or
                // by an operator): use it as it is, on a fresh channel (the refusal closed
                // this one), rather than fail every dead-lettering.
                Err(error) if is_precondition_failed(&error) => {
                    tracing::warn!(%queue, "dead-letter queue exists with other arguments; using it as it is");
                    channel = session.publisher().await.map_err(failed)?;
                }
                Err(error) => return Err(failed(error)),
            }
        }
        let mut headers = FieldTable::default();
        headers.insert(
            REQUEUES_HEADER.into(),
            AMQPValue::LongInt(i32::try_from(requeues).unwrap_or(i32::MAX)),
        );
        let properties = lapin::BasicProperties::default()
            .with_content_type(message.content_type.as_ref().into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2)
            .with_priority(0)
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &message.body,
                properties,
            )
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        if confirm.is_nack() {
            return Err(TransportError::Rejected {
                destination: queue.to_owned(),
                reason: "negative publisher confirm".to_owned(),
            });
        }
        Ok(())
    }
}

/// What an acker keeps of its message to publish it again.
#[derive(Debug)]
struct Held {
    /// Shared with every delivery of the queue: most messages are never published again.
    queue: Arc<str>,
    body: bytes::Bytes,
    /// Borrowed when it is one of the codecs' own types, as it nearly always is.
    content_type: Cow<'static, str>,
    requeues: u32,
}

/// `content_type` as a [`Held`] keeps it.
fn held_content_type(content_type: &str) -> Cow<'static, str> {
    match content_type {
        crate::codec::JSON_CONTENT_TYPE => Cow::Borrowed(crate::codec::JSON_CONTENT_TYPE),
        crate::codec::MSGPACK_CONTENT_TYPE => Cow::Borrowed(crate::codec::MSGPACK_CONTENT_TYPE),
        other => Cow::Owned(other.to_owned()),
    }
}

/// Where a consumer's deliveries go.
pub(super) enum Feed {
    /// Into an inbox's channel, waiting for room (the prefetch bounds what waits there).
    Inbox(mpsc::Sender<Delivery>),
    /// To a sink, called on the consumer task. Nothing is sent on the inbox's channel: it only
    /// tells its owner that the consumer ended, and the consumer that its owner closed it.
    Sink(Arc<dyn DeliverySink>, mpsc::Sender<Delivery>),
}

impl Feed {
    /// Once the inbox's owner closed it (or dropped it).
    async fn closed(&self) {
        match self {
            Feed::Inbox(sender) | Feed::Sink(_, sender) => sender.closed().await,
        }
    }
}

/// Starts consuming `spec` into `feed`; returns once the queues are declared and consumed on
/// the first connection, or with the error that prevented it.
pub(super) async fn start(
    link: Arc<Link>,
    spec: ConsumerSpec,
    feed: Feed,
    patience: std::time::Duration,
) -> Result<(), TransportError> {
    let session = link.session(patience).await?;
    let (ready, first) = oneshot::channel();
    tokio::spawn(run(link, spec, feed, session, ready));
    first.await.unwrap_or(Err(TransportError::Closed))
}

enum Ended {
    InboxClosed,
    ConnectionLost,
    /// The channel closed while the connection stayed up.
    ChannelLost,
    /// A consumed queue is gone though the broker never said so: consume everything again.
    QueueVanished(String),
}

/// How often a consumer checks that its queues still exist. The broker tells a consumer when
/// its queue goes (`basic.cancel`), but not always: RabbitMQ 3.10 can lose the notice when a
/// quorum queue is deleted under load, and the consumer then waits on a queue that is no more.
/// A passive declaration per queue this often is the cost of never waiting for ever.
const QUEUE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

async fn run(
    link: Arc<Link>,
    spec: ConsumerSpec,
    feed: Feed,
    mut session: Arc<Session>,
    ready: oneshot::Sender<Result<(), TransportError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Backoff::new(&spec.republisher.options);
    loop {
        let started = Instant::now();
        let outcome = consume_on(&session, &spec, &feed, &mut ready).await;
        match outcome {
            Ok(Ended::InboxClosed) => return,
            Ok(Ended::ConnectionLost) => {
                tracing::info!(queues = ?queue_names(&spec), "consumer lost its connection");
            }
            Ok(Ended::ChannelLost) => {
                spec.counters.add(&spec.counters.channels_lost);
                tracing::warn!(queues = ?queue_names(&spec), "the broker closed the consumer's channel; opening another");
            }
            Ok(Ended::QueueVanished(queue)) => {
                spec.counters.add(&spec.counters.consumers_cancelled);
                spec.health
                    .lost(&queue, "queue gone without a cancel from the broker");
                tracing::warn!(%queue, "a consumed queue is gone and the broker did not say so; consuming again");
            }
            Err(error) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(error));
                    return;
                }
                tracing::warn!(%error, queues = ?queue_names(&spec), "could not consume again; retrying");
            }
        }
        if started.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        // While the connection lives, wait before trying again: a channel the broker keeps
        // closing must not be reopened in a tight loop. A lost connection is the link's to back
        // off from.
        if !session.is_dead() {
            tokio::select! {
                () = tokio::time::sleep(backoff.next_wait()) => {}
                () = feed.closed() => return,
            }
        }
        if session.is_dead() {
            if !spec.resubscribe {
                return;
            }
            let next = tokio::select! {
                next = link.session_after(session.generation) => next,
                () = feed.closed() => return,
            };
            match next {
                Ok(next) => session = next,
                Err(_) => return,
            }
        }
    }
}

fn queue_names(spec: &ConsumerSpec) -> Vec<&str> {
    spec.queues.iter().map(|q| q.name.as_str()).collect()
}

/// One queue's deliveries, tagged with the queue's index, and a last `None` when its consumer
/// ends, so that the end of one consumer among several is seen.
type QueueStream = BoxStream<
    'static,
    (
        usize,
        Option<Result<lapin::message::Delivery, lapin::Error>>,
    ),
>;

fn queue_stream(index: usize, consumer: lapin::Consumer) -> QueueStream {
    consumer
        .map(move |delivery| (index, Some(delivery)))
        .chain(stream::once(async move { (index, None) }))
        .boxed()
}

/// A queue being consumed again after its consumer ended: its index, and the new consumer or
/// the error that ended the attempts (the channel or connection went).
type Restoring<'a> =
    Pin<Box<dyn Future<Output = (usize, Result<lapin::Consumer, TransportError>)> + Send + 'a>>;

/// Declares `queue` (on a channel of its own) and consumes it on `channel`.
async fn subscribe_queue(
    session: &Session,
    channel: &Channel,
    queue: &QueueSpec,
    spec: &ConsumerSpec,
) -> Result<lapin::Consumer, TransportError> {
    // A refused declaration closes the channel it was made on: made on the consuming channel,
    // it would take the subscription's other consumers with it.
    let scratch = session
        .connection
        .create_channel()
        .await
        .map_err(driver_error)?;
    let declared = queue.declare(&scratch).await;
    if scratch.status().connected() {
        let _ = scratch.close(200, "declared".into()).await;
    }
    if let Err(error) = declared {
        if matches!(error.kind(), lapin::ErrorKind::ProtocolError(_)) {
            spec.counters.add(&spec.counters.declarations_refused);
        }
        return Err(TransportError::Driver(format!(
            "declaring queue {} and its bindings: {}",
            queue.name,
            limits::truncate_for_log(&error.to_string())
        )));
    }
    channel
        .basic_consume(
            queue.name.as_str().into(),
            format!("tidings-{}", crate::transport::topology::new_id()).into(),
            BasicConsumeOptions {
                no_ack: spec.auto_ack,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|error| TransportError::Driver(format!("consuming queue {}: {error}", queue.name)))
}

/// Declares and consumes queue `index` again until it works, backing off between attempts;
/// gives up only when the channel or the connection is gone.
async fn restore<'a>(
    session: &'a Session,
    channel: &'a Channel,
    spec: &'a ConsumerSpec,
    index: usize,
    wait_first: bool,
) -> (usize, Result<lapin::Consumer, TransportError>) {
    let queue = &spec.queues[index];
    let mut backoff = Backoff::new(&spec.republisher.options);
    let mut attempts: u32 = 0;
    loop {
        if wait_first || attempts > 0 {
            tokio::time::sleep(backoff.next_wait()).await;
        }
        attempts = attempts.saturating_add(1);
        match subscribe_queue(session, channel, queue, spec).await {
            Ok(consumer) => return (index, Ok(consumer)),
            Err(error) if session.is_dead() || !channel.status().connected() => {
                return (index, Err(error));
            }
            Err(error) => {
                // The first failures, then one in twenty: a queue that stays broken for an
                // hour logs a few hundred lines, not thousands.
                if attempts <= 3 || attempts % 20 == 0 {
                    tracing::warn!(%error, queue = %queue.name, attempts, "queue still without a consumer; retrying with backoff");
                }
                spec.health.lost(&queue.name, &error);
            }
        }
    }
}

/// The first of `queues` that no longer exists, checked with passive declarations on a channel
/// of their own (a missing queue closes the channel it is asked on). `None` when all exist or
/// the check itself could not run (the connection's own handling covers that).
async fn vanished_queue<'q>(
    session: &Session,
    queues: impl Iterator<Item = &'q QueueSpec>,
) -> Option<String> {
    let mut scratch = session.connection.create_channel().await.ok()?;
    for queue in queues {
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..lapin::options::QueueDeclareOptions::default()
        };
        let checked = scratch
            .queue_declare(queue.name.as_str().into(), passive, FieldTable::default())
            .await;
        match checked {
            Ok(_) => {}
            Err(error) if is_not_found(&error) => return Some(queue.name.clone()),
            Err(_) => return None,
        }
        if !scratch.status().connected() {
            scratch = session.connection.create_channel().await.ok()?;
        }
    }
    let _ = scratch.close(200, "checked".into()).await;
    None
}

/// Whether the broker answered that the entity does not exist.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// Why a consumer stream ended or failed: the connection, the channel, or (both alive) the
/// broker cancelled this one consumer.
fn classify(session: &Session, channel: &Channel) -> Option<Ended> {
    if session.is_dead() {
        Some(Ended::ConnectionLost)
    } else if !channel.status().connected() {
        Some(Ended::ChannelLost)
    } else {
        None
    }
}

async fn consume_on(
    session: &Session,
    spec: &ConsumerSpec,
    feed: &Feed,
    ready: &mut Option<oneshot::Sender<Result<(), TransportError>>>,
) -> Result<Ended, TransportError> {
    let channel = session
        .connection
        .create_channel()
        .await
        .map_err(driver_error)?;
    if let Err(error) = channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await
    {
        close_quietly(&channel).await;
        return Err(driver_error(error));
    }
    let mut consumers: Merge<QueueStream> = Merge::default();
    let mut restoring: FuturesUnordered<Restoring<'_>> = FuturesUnordered::new();
    // Queues whose consumer is being restored are not checked: their restore declares them.
    let mut consumed = vec![true; spec.queues.len()];
    for (index, queue) in spec.queues.iter().enumerate() {
        match subscribe_queue(session, &channel, queue, spec).await {
            Ok(consumer) => {
                spec.health.restored(&queue.name);
                consumers.push(queue_stream(index, consumer));
            }
            // The first subscription reports its error to the caller; so does a channel or
            // connection that went during the set-up.
            Err(error) if ready.is_some() || classify(session, &channel).is_some() => {
                close_quietly(&channel).await;
                return Err(error);
            }
            // Later, one queue that cannot be declared does not keep its siblings unconsumed.
            Err(error) => {
                tracing::warn!(%error, queue = %queue.name, "queue without a consumer; retrying with backoff");
                spec.health.lost(&queue.name, &error);
                consumed[index] = false;
                let channel = &channel;
                restoring.push(Box::pin(restore(session, channel, spec, index, true)));
            }
        }
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }
    let held_queues: Vec<Arc<str>> = spec
        .queues
        .iter()
        .map(|queue| Arc::from(queue.name.as_str()))
        .collect();
    // Every delivery settles through this; acknowledgements are sent in batches by this task.
    let acks = Arc::new(AckBatcher::new(channel.clone(), spec.ack_policy));
    // The deadline of the acknowledgements lingering for company: one timer, reset when a
    // linger starts and heeded only while one runs (as a notification batch's deadline is).
    let flush_due = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(flush_due);
    let mut lingering = false;
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + QUEUE_CHECK_INTERVAL,
        QUEUE_CHECK_INTERVAL,
    );
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The check runs beside the deliveries, not in their way.
    let mut checking: Option<Pin<Box<dyn Future<Output = Option<String>> + Send + '_>>> = None;
    let ended = loop {
        let (index, delivery) = tokio::select! {
            _ = check.tick(), if checking.is_none() => {
                let live: Vec<&QueueSpec> = spec
                    .queues
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| consumed[*i])
                    .map(|(_, q)| q)
                    .collect();
                checking = Some(Box::pin(vanished_queue(session, live.into_iter())));
                continue;
            }
            vanished = async { checking.as_mut()?.await }, if checking.is_some() => {
                checking = None;
                match vanished {
                    Some(queue) => break Ended::QueueVanished(queue),
                    None => continue,
                }
            }
            next = consumers.next(), if !consumers.is_empty() => match next {
                Some(next) => next,
                None => continue,
            },
            restored = restoring.next(), if !restoring.is_empty() => {
                let Some((index, restored)) = restored else { continue };
                let queue = &spec.queues[index].name;
                match restored {
                    Ok(consumer) => {
                        spec.counters.add(&spec.counters.consumers_restored);
                        spec.health.restored(queue);
                        tracing::info!(%queue, "queue consumed again");
                        consumers.push(queue_stream(index, consumer));
                        consumed[index] = true;
                        continue;
                    }
                    Err(error) => {
                        tracing::debug!(%error, %queue, "gave up consuming again");
                        break classify(session, &channel).unwrap_or(Ended::ChannelLost);
                    }
                }
            }
            () = feed.closed() => break Ended::InboxClosed,
            () = acks.wait_pending() => {
                let policy = acks.policy();
                match policy.linger {
                    Some(linger) if !policy.is_due(acks.recorded()) => {
                        if !lingering {
                            lingering = true;
                            flush_due.as_mut().reset(tokio::time::Instant::now() + linger);
                        }
                    }
                    _ => {
                        lingering = false;
                        acks.flush();
                    }
                }
                continue;
            }
            () = &mut flush_due, if lingering => {
                lingering = false;
                acks.flush();
                continue;
            }
        };
        let queue = &spec.queues[index].name;
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::debug!(%error, %queue, "consumer stream failed");
                match classify(session, &channel) {
                    Some(ended) => break ended,
                    // The stream ends next; its end is handled below.
                    None => continue,
                }
            }
            None => {
                if let Some(ended) = classify(session, &channel) {
                    break ended;
                }
                spec.counters.add(&spec.counters.consumers_cancelled);
                spec.health.lost(queue, "consumer cancelled by the broker");
                consumed[index] = false;
                tracing::warn!(%queue, "the broker cancelled the consumer (queue deleted, its node lost, or a consumer timeout); consuming it again");
                let channel = &channel;
                restoring.push(Box::pin(restore(session, channel, spec, index, false)));
                continue;
            }
        };
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|ct| ct.as_str().to_owned())
            .unwrap_or_default();
        let requeues = requeue_count(delivery.properties.headers().as_ref());
        let expiration = delivery
            .properties
            .expiration()
            .as_ref()
            .and_then(|ttl| parse_expiration(ttl.as_str()));
        let body = bytes::Bytes::from(delivery.data);
        // Without acknowledgements there is nothing to settle: the broker already forgot it.
        let settle = (!spec.auto_ack).then(|| {
            acks.received(delivery.delivery_tag);
            Settle {
                acks: acks.clone(),
                tag: delivery.delivery_tag,
            }
        });
        let acker = AmqpAcker {
            settle,
            held: Held {
                queue: held_queues[index].clone(),
                body: body.clone(),
                content_type: held_content_type(&content_type),
                requeues,
            },
            republisher: spec.republisher.clone(),
        };
        let ours = Delivery::new(
            body,
            content_type,
            delivery.redelivered,
            requeues,
            queue.clone(),
            Box::new(acker),
        )
        .with_expiration(expiration);
        let sender = match feed {
            Feed::Sink(sink, _) => {
                sink_guarded(sink.as_ref(), ours);
                continue;
            }
            Feed::Inbox(sender) => sender,
        };
        // Waiting for room in the inbox, keep sending acknowledgements: the broker counts
        // unsent ones against the prefetch.
        let permit = loop {
            tokio::select! {
                permit = sender.reserve() => break permit,
                () = acks.wait_pending() => {
                    lingering = false;
                    acks.flush();
                }
            }
        };
        match permit {
            Ok(permit) => permit.send(ours),
            Err(_) => break Ended::InboxClosed,
        }
    };
    // Attempts still running stop here; the next consume_on declares their queues again.
    drop(restoring);
    drop(checking);
    // From here on acknowledgements go straight to the channel (failing once it is closed).
    acks.stop();
    // A channel whose queue vanished still feeds the siblings' consumers: close it, and its
    // unacknowledged deliveries go back to their queues for the next channel.
    if matches!(ended, Ended::InboxClosed | Ended::QueueVanished(_)) {
        close_quietly(&channel).await;
    }
    Ok(ended)
}

async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        // Closing the channel cancels its consumers; the broker requeues what was unacked.
        let _ = channel.close(200, "inbox closed".into()).await;
    }
}

/// Whether the broker refused a declaration because the entity exists with other arguments.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// The longest time to live taken from a peer's `expiration` property: a day. A longer or
/// malformed value is treated as none (the message then carries no deadline).
const MAX_EXPIRATION: Duration = Duration::from_secs(24 * 3600);

/// The AMQP `expiration` property: milliseconds as decimal text, as every publisher writes it.
fn parse_expiration(text: &str) -> Option<Duration> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis: u64 = text.parse().ok()?;
    Some(Duration::from_millis(millis)).filter(|ttl| *ttl <= MAX_EXPIRATION)
}

fn driver_error(error: lapin::Error) -> TransportError {
    TransportError::Driver(error.to_string())
}

/// How many times the message was requeued: our header, or a quorum queue's delivery count.
fn requeue_count(headers: Option<&FieldTable>) -> u32 {
    let Some(headers) = headers else { return 0 };
    let inner = headers.inner();
    let value = inner
        .get(REQUEUES_HEADER)
        .or_else(|| inner.get("x-delivery-count"));
    let count = match value {
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

/// Where a delivery is settled: its channel's acknowledgements and its delivery tag.
///
/// Settling goes to the channel (through [`AckBatcher`]) rather than through `lapin::Acker`,
/// which hands every acknowledgement to lapin's internal RPC task and spawns a task for it:
/// two more hops per message. Channels are never reused across connections here (a consumer
/// opens a new one after a reconnection), and a closed channel refuses to settle, so a
/// delivery tag can never reach the wrong channel.
#[derive(Debug)]
struct Settle {
    acks: Arc<AckBatcher>,
    tag: u64,
}

impl Settle {
    fn ack(self) -> Result<(), TransportError> {
        self.acks.ack(self.tag)
    }

    async fn nack_requeue(self) -> Result<(), TransportError> {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let sent = self.acks.channel().basic_nack(self.tag, requeue).await;
        // Only now may a batched acknowledgement cover this tag.
        self.acks.settled(self.tag);
        sent.map_err(settle_error)
    }

    async fn reject(self) -> Result<(), TransportError> {
        let sent = self
            .acks
            .channel()
            .basic_reject(self.tag, BasicRejectOptions { requeue: false })
            .await;
        self.acks.settled(self.tag);
        sent.map_err(settle_error)
    }
}

/// Settles an AMQP delivery. Dropped unsettled, it is returned to its queue.
#[derive(Debug)]
struct AmqpAcker {
    settle: Option<Settle>,
    held: Held,
    republisher: Arc<Republisher>,
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = settle.nack_requeue().await;
                });
            }
        }
    }
}

fn settle_error(error: lapin::Error) -> TransportError {
    TransportError::ConnectionLost(format!("could not settle a delivery: {error}"))
}

#[async_trait]
impl Acknowledge for AmqpAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        match self.settle.take() {
            Some(settle) => settle.ack(),
            None => Ok(()),
        }
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), TransportError> {
        let Some(settle) = self.settle.take() else {
            return Ok(());
        };
        let count = self.held.requeues.saturating_add(1);
        match self
            .republisher
            .publish(&self.held.queue, &self.held, count, false)
            .await
        {
            Ok(()) => settle.ack(),
            Err(error) => {
                // Could not republish: let the broker requeue it (uncounted) rather than lose it.
                tracing::warn!(%error, "requeue by republish failed; returning the message to the broker");
                settle.nack_requeue().await
            }
        }
    }

    async fn dead_letter(mut self: Box<Self>) -> Result<(), TransportError> {
        let Some(settle) = self.settle.take() else {
            return Ok(());
        };
        let queue = crate::transport::dead_letter_queue(&self.held.queue);
        match self
            .republisher
            .publish(&queue, &self.held, self.held.requeues, true)
            .await
        {
            Ok(()) => settle.ack(),
            Err(error) => {
                settle.nack_requeue().await?;
                Err(error)
            }
        }
    }

    async fn reject(mut self: Box<Self>) -> Result<(), TransportError> {
        match self.settle.take() {
            Some(settle) => settle.reject().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_is_milliseconds_as_text_and_hostile_values_are_none() {
        assert_eq!(parse_expiration("60000"), Some(Duration::from_secs(60)));
        assert_eq!(parse_expiration("0"), Some(Duration::ZERO));
        for bad in [
            "",
            "-1",
            "1.5",
            "1e9",
            " 10",
            "99999999999999999999",
            "86400001",
        ] {
            assert_eq!(parse_expiration(bad), None, "{bad:?}");
        }
    }
}
