//! The AMQP driver (`rabbit://`, `amqp://`, `amqps://`) on lapin, with oslo.messaging's
//! topology so that Python peers see tidings as one of their own.
//!
//! One connection sends (every publish, with publisher confirms) and one listens (servers,
//! listeners and the reply queue, one channel per subscription). Each is a `link::Link` that
//! reconnects on its own; consumers re-declare and consume again on the new connection, and a
//! publish that meets a lost connection waits (bounded) for the next one and tries again.

mod acks;
mod consume;
mod declare;
mod link;
mod options;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio::sync::mpsc;

pub use options::{
    AmqpOptions, DeadLetterOverflow, TlsOptions, DEFAULT_MAX_UNCONFIRMED_PUBLISHES, KNOWN_OPTIONS,
};

use self::acks::AckPolicy;
use self::consume::{ConsumerSpec, Feed};
use self::declare::{ExchangeSpec, QueueSpec};
use self::link::{Backoff, Declaration, ExclusiveHandle, Link, Session};
use super::driver::{
    CloseHook, ConsumeOptions, ConsumerHealth, Delivery, DeliverySink, Destination, Driver, Inbox,
    OutgoingMessage, Subscription, TransportStats,
};
use super::topology::{self, Route, SubscriptionPlan};
use super::TransportError;
use crate::codec::limits;
use crate::url::TransportUrl;

/// A log directive for programs that use this driver: lapin logs every message the broker
/// returns as unroutable at warn level, with its whole body as a list of bytes (a flood of
/// megabytes when a server is away); the driver reports unroutable messages itself, so lapin's
/// line is kept to errors. Add it to the `tracing_subscriber::EnvFilter`:
/// `filter.add_directive(QUIET_LAPIN_RETURNS.parse()?)`.
pub const QUIET_LAPIN_RETURNS: &str = "lapin::returned_messages=error";

/// Replies handed out before the router acknowledged earlier ones.
const REPLY_PREFETCH: u16 = 256;
/// How long a stopping server waits for the broker to delete its fanout queue (best effort: the
/// queue expires on its own).
const FANOUT_DELETE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The AMQP driver.
#[derive(Debug)]
pub struct AmqpDriver {
    options: AmqpOptions,
    send: Arc<Link>,
    listen: Arc<Link>,
    republisher: Arc<consume::Republisher>,
    counters: Arc<Counters>,
    /// Room for publishes handed to the broker whose confirm has not come back.
    unconfirmed: tokio::sync::Semaphore,
}

/// How long a publisher confirm may take before the channel it is due on is taken out of use.
/// A broker confirms in milliseconds, or after seconds when a queue's replicas are slow; past
/// this, later publishes go to a new channel rather than queue behind one the broker may have
/// stopped serving. The late publish itself waits on (up to `publish_recovery_timeout`).
const CONFIRM_OVERDUE: std::time::Duration = std::time::Duration::from_secs(2);

/// The live counters behind [`TransportStats`], shared by the links and consumers.
#[derive(Debug, Default)]
pub(super) struct Counters {
    connections_opened: AtomicU64,
    consumers_cancelled: AtomicU64,
    consumers_restored: AtomicU64,
    channels_lost: AtomicU64,
    declarations_refused: AtomicU64,
    publish_channels_retired: AtomicU64,
}

impl Counters {
    fn add(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn retired_publish_channel(&self) {
        self.add(&self.publish_channels_retired);
        crate::metrics::count(crate::metrics::AMQP_PUBLISH_CHANNELS_RETIRED);
    }

    fn snapshot(&self) -> TransportStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            connections_opened: read(&self.connections_opened),
            consumers_cancelled: read(&self.consumers_cancelled),
            consumers_restored: read(&self.consumers_restored),
            channels_lost: read(&self.channels_lost),
            declarations_refused: read(&self.declarations_refused),
            publish_channels_retired: read(&self.publish_channels_retired),
        }
    }
}

/// Why one publish attempt failed.
enum Attempt {
    /// The connection went away: try again on the next one.
    Retry(TransportError),
    /// The broker answered with a negative confirm (a quorum queue electing a leader, say):
    /// try again, after a backoff, on a fresh publishing channel.
    Nacked(TransportError),
    /// A final answer.
    Fail(TransportError),
}

/// A publish's confirm, awaited by the publish. On the mandatory requests' channel it also
/// outlives a publish whose caller gave up first (a call that timed out): if the confirm is
/// then still due when it becomes overdue, the channel is retired, so that requests whose
/// callers all give up sooner than that do not queue one after another behind a parked channel.
struct ConfirmWatch {
    /// `None` once it resolved.
    confirm: Option<lapin::PublisherConfirm>,
    retire_if_abandoned: Option<(ExclusiveHandle, Arc<Counters>)>,
    overdue_at: tokio::time::Instant,
}

impl ConfirmWatch {
    /// The confirm, if it comes by `deadline`.
    async fn until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Option<lapin::Result<lapin::Confirmation>> {
        let confirm = self.confirm.as_mut()?;
        let outcome = tokio::time::timeout_at(deadline, confirm).await.ok();
        if outcome.is_some() {
            self.confirm = None;
        }
        outcome
    }
}

impl Drop for ConfirmWatch {
    fn drop(&mut self) {
        let (Some(confirm), Some((channel, counters))) =
            (self.confirm.take(), self.retire_if_abandoned.take())
        else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let overdue_at = self.overdue_at;
        runtime.spawn(async move {
            let late = tokio::time::timeout_at(overdue_at, confirm).await.is_err();
            if late && channel.retire().await {
                counters.retired_publish_channel();
                tracing::info!("a mandatory publish's confirm is overdue after its caller gave up; later mandatory publishes use a new channel");
            }
        });
    }
}

impl AmqpDriver {
    /// Connects to the broker named by `url` (every host tried once in order), then keeps the
    /// connections up.
    ///
    /// Query options the driver does not know are named in a warning, once: a typo such as
    /// `rabit_quorum_queue` would otherwise change nothing without a word.
    pub async fn connect(url: &TransportUrl) -> Result<Self, TransportError> {
        let options = AmqpOptions::from_url(url)?;
        let unknown = AmqpOptions::unknown_options(url);
        if !unknown.is_empty() {
            tracing::warn!(
                options = ?unknown,
                "the transport URL has options this driver does not know; they are ignored"
            );
        }
        Self::connect_with(url, options).await
    }

    /// Connects to the broker named by `url` with `options` given in code rather than read
    /// from the URL's query.
    pub async fn connect_with(
        url: &TransportUrl,
        options: AmqpOptions,
    ) -> Result<Self, TransportError> {
        // Options given in code are not checked as the URL's are: a window of none would hold
        // every publish for ever.
        let (low, high) = options::UNCONFIRMED_PUBLISHES_BOUNDS;
        let window = options.max_unconfirmed_publishes.clamp(low, high);
        let counters = Arc::new(Counters::default());
        let send = Link::open(url, &options, "send", counters.clone()).await?;
        let listen = Link::open(url, &options, "listen", counters.clone()).await?;
        let republisher = Arc::new(consume::Republisher {
            send: send.clone(),
            options: options.clone(),
        });
        Ok(Self {
            options,
            send,
            listen,
            republisher,
            counters,
            unconfirmed: tokio::sync::Semaphore::new(window),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &AmqpOptions {
        &self.options
    }

    async fn publish_once(
        &self,
        session: &Session,
        destination: &Destination,
        message: &OutgoingMessage,
    ) -> Result<(), Attempt> {
        let lost = |error: lapin::Error| {
            if session.is_dead() {
                Attempt::Retry(TransportError::ConnectionLost(
                    limits::truncate_for_log(&error.to_string()).into_owned(),
                ))
            } else {
                // A channel error (e.g. a refused declaration) closed the channel; the next
                // publish opens a new one. Report this one.
                // lapin's error may carry the returned message: keep only its start.
                Attempt::Fail(TransportError::Rejected {
                    destination: destination.to_string(),
                    reason: limits::truncate_for_log(&error.to_string()).into_owned(),
                })
            }
        };
        let channel = session.publisher().await.map_err(lost)?;
        let route = Route::of(destination);
        self.declare_once(session, &channel, &route)
            .await
            .map_err(lost)?;
        let exchange_name = route.exchange.as_ref().map_or("", |e| e.name.as_ref());
        // A mandatory request must learn its own fate (a job's server exists or not); a
        // reply's return only means its caller is gone, so replies keep the shared channel.
        let alone = message.mandatory && !matches!(destination, Destination::Reply { .. });
        let mut exclusive = if alone {
            Some(session.exclusive_publisher().await.map_err(lost)?)
        } else {
            None
        };
        let publishing: &lapin::Channel = match &exclusive {
            Some(exclusive) => exclusive,
            None => &channel,
        };
        // Taken once the channel is ours, so that requests waiting for the mandatory channel
        // hold no room that replies need.
        let _room = self
            .unconfirmed
            .acquire()
            .await
            .map_err(|_| Attempt::Fail(TransportError::Closed))?;
        let confirm = publishing
            .basic_publish(
                exchange_name.into(),
                route.routing_key.as_ref().into(),
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                properties(message),
            )
            .await
            .map_err(lost)?;
        let patience = self.options.publish_recovery_timeout;
        let overdue = CONFIRM_OVERDUE.min(patience);
        let sent = tokio::time::Instant::now();
        let overdue_at = sent + overdue;
        let mut confirm = ConfirmWatch {
            confirm: Some(confirm),
            retire_if_abandoned: exclusive
                .as_ref()
                .map(|exclusive| (exclusive.handle(), self.counters.clone())),
            overdue_at,
        };
        // A mandatory channel taken out of use while its confirm was overdue; this publish
        // holds it (alone, so a return on it is this message's) and it closes when dropped.
        let mut retired = None;
        let confirmation = match confirm.until(overdue_at).await {
            Some(confirmation) => Some(confirmation),
            None => {
                // A confirm this late more likely means a channel stuck in the broker than a
                // slow one: RabbitMQ 3.10 parks a channel whose publish waits on a quorum queue
                // without a leader (being deleted, or without its majority), and every publish
                // behind it waits too. Later publishes move to a fresh channel; this one keeps
                // waiting for its confirm. (Of many late publishes on the shared channel, the
                // first retires it.)
                confirm.retire_if_abandoned = None;
                let retired_now = match exclusive.take() {
                    Some(exclusive) => {
                        retired = Some(exclusive.retire());
                        true
                    }
                    None => session.retire_publisher(&channel),
                };
                if retired_now {
                    self.counters.retired_publish_channel();
                    tracing::info!(%destination, ?overdue, "publisher confirm overdue; later publishes use a new channel");
                }
                confirm.until(sent + patience).await
            }
        };
        // A confirm the broker never sends (a queue deleted while the message was on its way
        // has been seen to leave one pending) must not hold this publish for ever. The
        // channel was retired above: nothing else waits behind it.
        let Some(confirmation) = confirmation else {
            return Err(Attempt::Fail(TransportError::Rejected {
                destination: destination.to_string(),
                reason: format!(
                    "no publisher confirm within {patience:?}: the broker may or may not have \
                     the message"
                ),
            }));
        };
        let confirmation = confirmation.map_err(lost)?;
        if confirmation.is_nack() {
            // A channel that was publishing to a quorum queue when its leader died can go on
            // being refused long after a new leader is elected (RabbitMQ 3.10 keeps the
            // channel's view of the queue); a new channel is served at once.
            if let Some(exclusive) = exclusive {
                // Nothing else is in flight on it: closed now, reopened by the next request.
                let _ = exclusive.close(200, "refused publishes".into()).await;
            } else if retired.is_none() {
                session.discard_publisher(&channel);
            }
            return Err(Attempt::Nacked(TransportError::Rejected {
                destination: destination.to_string(),
                reason: "negative publisher confirm".to_owned(),
            }));
        }
        // The confirm is in: the next mandatory request may have the channel.
        drop(exclusive);
        // On the shared channel lapin may hand this confirm another publish's return: only
        // a return of this very message (same routing key, same bytes) makes it unroutable.
        let returned = confirmation.take_message().filter(|returned| {
            returned.delivery.routing_key.as_str() == route.routing_key.as_ref()
                && returned.delivery.data == message.body
        });
        if returned.is_some() {
            return Err(Attempt::Fail(TransportError::Unroutable {
                destination: destination.to_string(),
            }));
        }
        Ok(())
    }

    /// Declares what a route needs (its exchange; for a notification, its queue too), once
    /// per publishing channel. The check is a lookup by the name being published to, so a
    /// publish allocates nothing for it once the declaration is known.
    async fn declare_once(
        &self,
        session: &Session,
        channel: &lapin::Channel,
        route: &Route<'_>,
    ) -> Result<(), lapin::Error> {
        let (kind, name) = match (&route.exchange, route.declares_queue) {
            // The declared queue is named after its routing key, `<topic>.<priority>`.
            (_, true) => (Declaration::Queue, route.routing_key.as_ref()),
            (Some(exchange), false) => (Declaration::Exchange, exchange.name.as_ref()),
            (None, false) => return Ok(()),
        };
        if session.is_declared(kind, name) {
            return Ok(());
        }
        match (route.declared_queue(), &route.exchange) {
            (Some(queue), _) => {
                QueueSpec::of(&queue, &self.options)
                    .declare(channel)
                    .await?
            }
            (None, Some(exchange)) => {
                ExchangeSpec::of(exchange, &self.options)
                    .declare(channel)
                    .await?;
            }
            (None, None) => {}
        }
        session.mark_declared(kind, name);
        Ok(())
    }

    async fn consume(
        &self,
        queues: Vec<QueueSpec>,
        prefetch: u16,
        resubscribe: bool,
        auto_ack: bool,
        ack_policy: AckPolicy,
        sink: Option<Arc<dyn DeliverySink>>,
    ) -> Result<(mpsc::Receiver<Delivery>, Arc<ConsumerHealth>), TransportError> {
        let (feed, receiver) = match sink {
            Some(sink) => {
                let (sender, receiver) = mpsc::channel(1);
                (Feed::Sink(sink, sender), receiver)
            }
            None => {
                let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
                (Feed::Inbox(sender), receiver)
            }
        };
        let health = Arc::new(ConsumerHealth::default());
        let spec = ConsumerSpec {
            queues,
            prefetch,
            resubscribe,
            auto_ack,
            ack_policy,
            republisher: self.republisher.clone(),
            health: health.clone(),
            counters: self.counters.clone(),
        };
        consume::start(
            self.listen.clone(),
            spec,
            feed,
            self.options.publish_recovery_timeout,
        )
        .await?;
        Ok((receiver, health))
    }

    /// Declares a fresh reply queue and consumes it, into `sink` when there is one.
    async fn reply_queue(
        &self,
        sink: Option<Arc<dyn DeliverySink>>,
    ) -> Result<(String, Inbox), TransportError> {
        let plan = topology::reply_queue_plan();
        let name = plan.name.clone();
        let queues = vec![QueueSpec::of(&plan, &self.options)];
        // Consumed with acknowledgements and a prefetch, so the broker never pushes more replies
        // than the router has room for: a flood of replies nobody asked for waits in the queue
        // instead of in this process. The router settles each reply as it takes it, so the
        // acknowledgements go out a quarter of the prefetch at a time, in one frame, well before
        // the broker would wait for them: a lone call costs no frame and no I/O-loop wake for its
        // reply's acknowledgement.
        let (receiver, health) = self
            .consume(
                queues,
                REPLY_PREFETCH,
                false,
                false,
                AckPolicy {
                    hold: usize::from(REPLY_PREFETCH / 4),
                    linger: None,
                },
                sink,
            )
            .await?;
        Ok((name, Inbox::new(receiver, None).with_health(health)))
    }

    /// A close hook that deletes `queue` (a server's fanout queue), as oslo does on a clean
    /// shutdown.
    fn delete_on_close(&self, queue: String) -> CloseHook {
        let link = self.send.clone();
        Box::pin(async move {
            // On a closed transport there is nothing to ask the broker with, and lapin's calls
            // on a closing connection need not resolve: a server's stop must not wait on them.
            if link.is_closed() {
                return;
            }
            let Some(session) = link.current() else {
                return;
            };
            let deleted = async {
                let channel = session.connection.create_channel().await?;
                channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await?;
                channel.close(200, "done".into()).await
            };
            match tokio::time::timeout(FANOUT_DELETE_PATIENCE, deleted).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, %queue, "could not delete the fanout queue; it expires on its own");
                }
                Err(_) => {
                    tracing::debug!(%queue, "no answer to the fanout queue's deletion; it expires on its own");
                }
            }
        })
    }
}

/// The AMQP properties oslo puts on every message.
fn properties(message: &OutgoingMessage) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_content_type(message.content_type.into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(FieldTable::default());
    match message.expiration {
        Some(ttl) => properties.with_expiration(ttl.as_millis().to_string().into()),
        None => properties,
    }
}

#[async_trait]
impl Driver for AmqpDriver {
    async fn publish(
        &self,
        destination: &Destination,
        message: OutgoingMessage,
    ) -> Result<(), TransportError> {
        // The common case first: a live connection, no waiting machinery (timer, watch).
        if let Some(session) = self.send.current() {
            match self.publish_once(&session, destination, &message).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Fail(error)) => return Err(error),
                Err(Attempt::Retry(error)) => {
                    session.mark_dead();
                    tracing::debug!(%error, %destination, "publish met a lost connection; retrying on the next");
                }
                Err(Attempt::Nacked(error)) => {
                    tracing::debug!(%error, %destination, "publish refused; retrying on a new channel");
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.options.publish_recovery_timeout;
        let mut backoff = Backoff::new(&self.options);
        loop {
            let patience = deadline.saturating_duration_since(tokio::time::Instant::now());
            let session = self.send.session(patience).await?;
            match self.publish_once(&session, destination, &message).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Fail(error)) => return Err(error),
                Err(Attempt::Retry(error)) => {
                    session.mark_dead();
                    if tokio::time::Instant::now() >= deadline {
                        return Err(error);
                    }
                    tracing::debug!(%error, %destination, "publish met a lost connection; retrying on the next");
                }
                Err(Attempt::Nacked(error)) => {
                    let wait = backoff.next_wait();
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(error);
                    }
                    tracing::debug!(%error, %destination, ?wait, "publish refused again; retrying on a new channel");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn subscribe(
        &self,
        subscription: &Subscription,
        options: ConsumeOptions,
    ) -> Result<Inbox, TransportError> {
        let plan = SubscriptionPlan::of(subscription);
        let queues = plan
            .queues
            .iter()
            .map(|queue| QueueSpec::of(queue, &self.options))
            .collect();
        let (receiver, health) = self
            .consume(
                queues,
                options.prefetch,
                true,
                false,
                AckPolicy::lingering(options.prefetch),
                None,
            )
            .await?;
        let on_close = plan
            .delete_on_close
            .map(|queue| self.delete_on_close(queue));
        Ok(Inbox::new(receiver, on_close).with_health(health))
    }

    async fn open_reply_queue(&self) -> Result<(String, Inbox), TransportError> {
        self.reply_queue(None).await
    }

    /// Each reply goes to `sink` on the consumer task: one hand-off less for every call.
    async fn open_reply_queue_into(
        &self,
        sink: Arc<dyn DeliverySink>,
    ) -> Result<(String, Inbox), TransportError> {
        self.reply_queue(Some(sink)).await
    }

    async fn close(&self) {
        self.listen.close().await;
        self.send.close().await;
    }

    fn stats(&self) -> TransportStats {
        self.counters.snapshot()
    }

    fn health(&self) -> Result<(), String> {
        let down: Vec<&str> = [(&self.send, "publishing"), (&self.listen, "consuming")]
            .into_iter()
            .filter(|(link, _)| link.current().is_none())
            .map(|(_, purpose)| purpose)
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "reconnecting to the broker ({} connection down)",
                down.join(" and ")
            ))
        }
    }
}
