//! The one boundary between the RPC/notification layers and a transport driver.
//!
//! Above this trait everything speaks in targets, encoded bodies and deliveries; below it a
//! driver maps them onto queues and exchanges (`memory`, `amqp`). No AMQP type crosses it.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::TransportError;

/// Where a message is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An RPC request (call or cast) to `routing_key` (`<topic>` or `<topic>.<server>`) on
    /// `exchange`.
    Rpc {
        /// Topic exchange name.
        exchange: String,
        /// `<topic>` or `<topic>.<server>`.
        routing_key: String,
    },
    /// A cast to every server listening on `topic` (the `<topic>_fanout` exchange).
    Fanout {
        /// The topic whose servers all receive the message.
        topic: String,
    },
    /// A reply to a caller's reply queue, through the default exchange.
    Reply {
        /// The caller's `_reply_q`.
        queue: String,
    },
    /// A notification to `<topic>.<priority>` on `exchange`; the driver declares that queue
    /// first, as oslo.messaging's notifier does, so nothing is lost before a listener exists.
    Notification {
        /// Topic exchange name.
        exchange: String,
        /// Notification topic, e.g. `notifications`.
        topic: String,
        /// Lower-case priority, e.g. `info` or `sample`.
        priority: String,
    },
    /// One named queue, through the default exchange; the driver declares it first, as a
    /// [`Subscription::Queue`] of that name declares it (a `<queue>.dlq` name as a dead-letter
    /// queue, with its length limit). For moving messages by hand: into a dead-letter queue with
    /// a body of one's own (a reason beside the message), or from one back to its queue.
    Queue {
        /// The queue's name.
        name: String,
    },
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Rpc {
                exchange,
                routing_key,
            } => write!(f, "{exchange}/{routing_key}"),
            Destination::Fanout { topic } => write!(f, "{topic}_fanout"),
            Destination::Reply { queue } => write!(f, "reply queue {queue}"),
            Destination::Notification {
                exchange,
                topic,
                priority,
            } => write!(f, "{exchange}/{topic}.{priority}"),
            Destination::Queue { name } => write!(f, "queue {name}"),
        }
    }
}

/// An encoded message ready to publish.
#[derive(Clone, Debug)]
pub struct OutgoingMessage {
    /// Encoded body.
    pub body: Bytes,
    /// The codec's content type (`application/json` or `application/msgpack`).
    pub content_type: &'static str,
    /// Drop the message if nobody consumed it in time (calls carry their timeout).
    pub expiration: Option<Duration>,
    /// Fail with [`TransportError::Unroutable`] when no queue receives the message.
    pub mandatory: bool,
}

impl OutgoingMessage {
    /// A message with no expiration, not mandatory.
    pub fn new(body: impl Into<Bytes>, content_type: &'static str) -> Self {
        Self {
            body: body.into(),
            content_type,
            expiration: None,
            mandatory: false,
        }
    }
}

/// What a consumer listens to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// An RPC server's three queues: `<topic>`, `<topic>.<server>` and a fresh fanout queue.
    RpcServer {
        /// Topic exchange name.
        exchange: String,
        /// Topic served.
        topic: String,
        /// This server's name.
        server: String,
    },
    /// Notifications on `exchange` for each `<topic>.<priority>`; with a pool, one shared queue
    /// named after the pool, bound with every key.
    Notifications {
        /// Topic exchange name.
        exchange: String,
        /// Topics listened to.
        topics: Vec<String>,
        /// Lower-case priorities listened to.
        priorities: Vec<String>,
        /// Listener pool name: listeners in one pool share the messages.
        pool: Option<String>,
    },
    /// One named queue, declared like a topic queue, with no bindings: e.g. a dead-letter queue.
    Queue {
        /// The queue's name.
        name: String,
    },
}

/// How a consumer takes messages.
#[derive(Clone, Copy, Debug)]
pub struct ConsumeOptions {
    /// Deliveries handed out before earlier ones are settled (AMQP `basic.qos` prefetch).
    pub prefetch: u16,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self { prefetch: 100 }
    }
}

/// Settles a delivery with the driver it came from.
#[async_trait]
pub trait Acknowledge: Send + Sync + fmt::Debug {
    /// The message is done with; the broker forgets it.
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    /// Put the message back for another delivery attempt.
    async fn requeue(self: Box<Self>) -> Result<(), TransportError>;
    /// Refuse the message without requeueing it: it is dropped.
    async fn reject(self: Box<Self>) -> Result<(), TransportError>;
    /// Move the message to its queue's dead-letter queue (`<queue>.dlq`), where an operator can
    /// inspect it, and acknowledge it here.
    async fn dead_letter(self: Box<Self>) -> Result<(), TransportError>;
}

/// Name of the dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}{}", super::topology::DEAD_LETTER_SUFFIX)
}

/// One message taken from a queue; settle it with [`ack`](Self::ack),
/// [`requeue`](Self::requeue) or [`reject`](Self::reject).
#[derive(Debug)]
pub struct Delivery {
    /// Encoded body.
    pub body: Bytes,
    /// Content type property as sent (may be empty).
    pub content_type: String,
    /// Whether the broker delivered this message before.
    pub redelivered: bool,
    /// How many times a consumer asked for this message to be retried ([`requeue`]).
    ///
    /// [`requeue`]: Self::requeue
    pub requeues: u32,
    /// Queue it came from.
    pub queue: String,
    /// How long the message had left to live when it was delivered, when the publisher gave it
    /// a time to live (a call's timeout). The RPC server turns it into the caller's deadline.
    pub expiration: Option<Duration>,
    acker: Box<dyn Acknowledge>,
}

impl Delivery {
    /// A delivery settled through `acker`.
    pub fn new(
        body: Bytes,
        content_type: String,
        redelivered: bool,
        requeues: u32,
        queue: String,
        acker: Box<dyn Acknowledge>,
    ) -> Self {
        crate::metrics::count(crate::metrics::DELIVERIES);
        if redelivered || requeues > 0 {
            crate::metrics::count(crate::metrics::REDELIVERIES);
        }
        Self {
            body,
            content_type,
            redelivered,
            requeues,
            queue,
            expiration: None,
            acker,
        }
    }

    /// The same delivery with the time it had left to live.
    #[must_use]
    pub fn with_expiration(mut self, expiration: Option<Duration>) -> Self {
        self.expiration = expiration;
        self
    }

    /// Splits the delivery into its body and the handle that settles it, so the body can be
    /// decoded while the settling decision waits.
    pub fn into_parts(self) -> (Bytes, String, Box<dyn Acknowledge>) {
        (self.body, self.content_type, self.acker)
    }

    /// Acknowledges the message.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.acker.ack().await
    }

    /// Returns the message to its queue for another attempt, counting the attempt.
    pub async fn requeue(self) -> Result<(), TransportError> {
        self.acker.requeue().await
    }

    /// Moves the message to its queue's dead-letter queue.
    pub async fn dead_letter(self) -> Result<(), TransportError> {
        self.acker.dead_letter().await?;
        crate::metrics::count(crate::metrics::DEAD_LETTERED);
        Ok(())
    }

    /// Rejects the message without requeueing.
    pub async fn reject(self) -> Result<(), TransportError> {
        self.acker.reject().await
    }
}

/// Acknowledges without waiting for the outcome, for consumers whose next step does not depend
/// on it (RPC requests, acknowledged as they are taken under oslo's at-most-once rule; replies).
///
/// The acknowledgement is polled once here, which hands it to the driver (the AMQP driver
/// queues the `basic.ack` frame on its channel on that first poll); whatever is left — waiting
/// for the frame to be written, and a warning if that fails — finishes in a background task.
/// A failed ack means the channel is gone, and with it the delivery (the broker redelivers it),
/// exactly as when the ack is awaited: awaiting it only adds a round trip to the I/O loop.
pub(crate) fn ack_without_waiting(acker: Box<dyn Acknowledge>, what: &'static str) {
    use futures::FutureExt;
    let mut ack = acker.ack();
    match (&mut ack).now_or_never() {
        Some(Ok(())) => {}
        Some(Err(error)) => tracing::warn!(%error, "could not acknowledge {what}"),
        None => {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(error) = ack.await {
                        tracing::warn!(%error, "could not acknowledge {what}");
                    }
                });
            }
        }
    }
}

/// A future run when an [`Inbox`] closes (deleting a fanout queue, cancelling consumers).
pub type CloseHook = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The queues of one subscription whose consumer the broker cancelled (queue deleted, its node
/// lost, a consumer timeout) and that the driver has not yet consumed again, with the last
/// reason. Shared by the driver, which keeps it current, and the [`Inbox`]'s owner, which reads
/// it (a server's stop report names them).
#[derive(Debug, Default)]
pub struct ConsumerHealth {
    lost: Mutex<BTreeMap<String, String>>,
}

/// Most reasons kept: one per queue of a subscription, and subscriptions have a handful.
const MAX_LOST_QUEUES: usize = 64;

impl ConsumerHealth {
    /// Records that `queue` has no consumer, and why.
    pub fn lost(&self, queue: &str, reason: impl fmt::Display) {
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        if lost.len() < MAX_LOST_QUEUES || lost.contains_key(queue) {
            lost.insert(queue.to_owned(), reason.to_string());
        }
    }

    /// Records that `queue` is consumed again.
    pub fn restored(&self, queue: &str) {
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
    }

    /// The queues without a consumer now, with the last reason each, by name.
    pub fn unrestored(&self) -> Vec<(String, String)> {
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(queue, reason)| (queue.clone(), reason.clone()))
            .collect()
    }
}

/// Counters of a transport's life with its broker, since it opened. Drivers without a broker
/// (the in-memory one) report zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Connections opened, the first ones included.
    pub connections_opened: u64,
    /// Consumers the broker cancelled while their connection stayed up.
    pub consumers_cancelled: u64,
    /// Consumers consumed again after a cancellation.
    pub consumers_restored: u64,
    /// Channels lost while their connection stayed up (a channel error).
    pub channels_lost: u64,
    /// Declarations of queues or exchanges the broker refused.
    pub declarations_refused: u64,
    /// Publishing channels taken out of use because a publisher confirm on them was overdue.
    pub publish_channels_retired: u64,
}

/// The deliveries of one subscription, in arrival order. Closing it (or dropping it) stops the
/// consumers behind it; messages not yet taken stay in their queues.
pub struct Inbox {
    receiver: mpsc::Receiver<Delivery>,
    on_close: Option<CloseHook>,
    health: Arc<ConsumerHealth>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox fed by `receiver`; `on_close` runs when it closes.
    pub fn new(receiver: mpsc::Receiver<Delivery>, on_close: Option<CloseHook>) -> Self {
        Self {
            receiver,
            on_close,
            health: Arc::default(),
        }
    }

    /// The same inbox, reporting its consumers' state through `health`.
    #[must_use]
    pub fn with_health(mut self, health: Arc<ConsumerHealth>) -> Self {
        self.health = health;
        self
    }

    /// Which of the subscription's queues are without a consumer now.
    pub fn health(&self) -> Arc<ConsumerHealth> {
        self.health.clone()
    }

    /// The next delivery; `None` once the driver has stopped feeding this inbox (connection
    /// gone for good, or transport closed).
    ///
    /// Cancellation safe: a delivery is never lost when the future is dropped.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.receiver.recv().await
    }

    /// Stops the consumers and runs the driver's clean-up (e.g. deletes a fanout queue).
    pub async fn close(mut self) {
        self.receiver.close();
        if let Some(hook) = self.on_close.take() {
            hook.await;
        }
    }
}

/// The deliveries as a stream, ending as [`Inbox::recv`] does.
impl futures::Stream for Inbox {
    type Item = Delivery;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Delivery>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if let Some(hook) = self.on_close.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(hook);
            }
        }
    }
}

/// Takes a subscription's deliveries where the driver receives them, instead of through an
/// [`Inbox`]'s channel: when the work is a lookup and a wake-up (handing a reply to the call
/// that waits for it), a hand-off to another task costs more than the work itself.
///
/// [`DeliverySink::take`] runs on the driver's consumer task: it must neither block nor wait,
/// and it settles each delivery it takes. A panic in it is caught and logged, and that delivery
/// is lost.
pub trait DeliverySink: Send + Sync + 'static {
    /// Takes one delivery.
    fn take(&self, delivery: Delivery);
}

/// `sink.take(delivery)`, with a panic caught and logged rather than ending the caller.
pub(crate) fn sink_guarded(sink: &dyn DeliverySink, delivery: Delivery) {
    let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.take(delivery)));
    if taken.is_err() {
        tracing::error!("a delivery sink panicked; the delivery is dropped");
    }
}

/// Hands the deliveries of `inbox` to `sink` from a task of its own: what a driver does that
/// cannot call a sink from its consumer. The inbox returned yields nothing; it ends when
/// `inbox` ends, and closing it closes `inbox`.
pub fn sink_from_task(mut inbox: Inbox, sink: Arc<dyn DeliverySink>) -> Inbox {
    let health = inbox.health();
    let (ended, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                delivery = inbox.recv() => match delivery {
                    Some(delivery) => sink_guarded(sink.as_ref(), delivery),
                    None => break,
                },
                () = ended.closed() => break,
            }
        }
        drop(ended);
        inbox.close().await;
    });
    Inbox::new(receiver, None).with_health(health)
}

/// A transport driver. Implementations must be cheap to share (`Arc<dyn Driver>`).
#[async_trait]
pub trait Driver: Send + Sync + fmt::Debug + 'static {
    /// Publishes one message; with publisher confirms where the driver has them, so `Ok` means
    /// the broker took responsibility for it.
    async fn publish(
        &self,
        destination: &Destination,
        message: OutgoingMessage,
    ) -> Result<(), TransportError>;

    /// Declares the queues of `subscription` and starts consuming them into one inbox.
    async fn subscribe(
        &self,
        subscription: &Subscription,
        options: ConsumeOptions,
    ) -> Result<Inbox, TransportError>;

    /// Declares a fresh reply queue (`reply_<hex>`) and consumes it. The RPC client calls this
    /// once per transport and routes replies by `_msg_id`.
    async fn open_reply_queue(&self) -> Result<(String, Inbox), TransportError>;

    /// [`Driver::open_reply_queue`] with each reply handed to `sink` as it arrives. The inbox
    /// returned yields nothing: it ends when the reply queue is lost, and closing it stops the
    /// consumer. By default a task reads the reply queue's inbox and hands on what it reads
    /// ([`sink_from_task`]); a driver that calls the sink from its own consumer saves every
    /// reply that hand-off.
    async fn open_reply_queue_into(
        &self,
        sink: Arc<dyn DeliverySink>,
    ) -> Result<(String, Inbox), TransportError> {
        let (name, inbox) = self.open_reply_queue().await?;
        Ok((name, sink_from_task(inbox, sink)))
    }

    /// Closes connections; later calls fail with [`TransportError::Closed`].
    async fn close(&self);

    /// Counters of the driver's connections and consumers.
    fn stats(&self) -> TransportStats {
        TransportStats::default()
    }

    /// Whether the driver can carry messages now, or what it is waiting for (a connection
    /// being re-established). Never blocks; for health checks.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}
