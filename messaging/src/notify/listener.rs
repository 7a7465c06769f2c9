//! Notification listeners: consume `<topic>.<priority>` queues (or one queue per pool), run the
//! endpoints' handlers, and settle each message after handling — acknowledged, or requeued when
//! a handler asks and the listener allows it. A message requeued more than the listener's limit
//! goes to the dead-letter queue `<queue>.dlq` instead of looping forever; so does a message that
//! cannot be decoded at all.
//!
//! Batch mode collects up to `size` messages or waits at most `timeout` after the first one,
//! then hands each endpoint the batch's messages of one priority at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::StreamExt;
use futures::FutureExt;
use tracing::Instrument;

use super::endpoint::{NotificationEndpoint, Outcome};
use super::{IncomingNotification, Metadata, Priority};
use crate::codec::Codec;
use crate::serve::{Refusal, RefusalTally, Refusals, Running, Serving, StopReport};
use crate::transport::{
    ConsumeOptions, Delivery, Inbox, Merge, Subscription, Transport, TransportError,
};
use crate::Target;

/// oslo's default executor size.
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;

/// Requeues allowed before a message is dead-lettered.
pub const DEFAULT_MAX_REQUEUES: u32 = 5;

/// Builds a [`NotificationListener`].
#[derive(Debug)]
pub struct NotificationListenerBuilder {
    transport: Transport,
    targets: Vec<Target>,
    endpoints: Vec<NotificationEndpoint>,
    pool: Option<String>,
    allow_requeue: bool,
    max_requeues: u32,
    max_concurrency: usize,
    batch: Option<(usize, Duration)>,
}

impl NotificationListenerBuilder {
    /// Adds an endpoint; all endpoints that handle a priority and accept the notification are
    /// called in order.
    #[must_use]
    pub fn endpoint(mut self, endpoint: NotificationEndpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Listeners in one pool share one queue named `pool`, bound with every
    /// `<topic>.<priority>` key: each pool gets its own copy of every notification.
    #[must_use]
    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// Whether handlers may ask for a message to be requeued (oslo's `allow_requeue`, default
    /// false: a requeue request is acknowledged like success).
    #[must_use]
    pub fn allow_requeue(mut self, allow: bool) -> Self {
        self.allow_requeue = allow;
        self
    }

    /// Requeues before a message goes to the dead-letter queue (default 5).
    #[must_use]
    pub fn max_requeues(mut self, limit: u32) -> Self {
        self.max_requeues = limit;
        self
    }

    /// Messages (or batches) handled at once (default 64).
    #[must_use]
    pub fn max_concurrency(mut self, limit: usize) -> Self {
        self.max_concurrency = limit.max(1);
        self
    }

    /// Hand messages to handlers in batches of up to `size`, waiting at most `timeout` after the
    /// first message of a batch.
    #[must_use]
    pub fn batch(mut self, size: usize, timeout: Duration) -> Self {
        self.batch = Some((size.max(1), timeout));
        self
    }

    /// Declares the queues and starts listening.
    pub async fn start(self) -> Result<NotificationListener, TransportError> {
        let priorities: Vec<Priority> = Priority::ALL
            .into_iter()
            .filter(|p| self.endpoints.iter().any(|e| e.handles(*p)))
            .collect();
        // The prefetch must hold a whole batch, or a batch could never fill.
        let prefetch = match self.batch {
            Some((size, _)) => size.saturating_mul(2).max(self.max_concurrency),
            None => self.max_concurrency,
        };
        let prefetch = u16::try_from(prefetch).unwrap_or(u16::MAX);
        let mut by_exchange: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for target in &self.targets {
            let exchange = target
                .exchange_or(self.transport.control_exchange())
                .to_owned();
            by_exchange
                .entry(exchange)
                .or_default()
                .push(target.topic.clone());
        }
        let mut inboxes = Vec::new();
        if !priorities.is_empty() {
            for (exchange, topics) in by_exchange {
                let subscription = Subscription::Notifications {
                    exchange,
                    topics,
                    priorities: priorities.iter().map(|p| p.as_key().to_owned()).collect(),
                    pool: self.pool.clone(),
                };
                inboxes.push(
                    self.transport
                        .driver()
                        .subscribe(&subscription, ConsumeOptions { prefetch })
                        .await?,
                );
            }
        }
        let dispatch = Arc::new(Dispatch {
            endpoints: self.endpoints,
            allow_requeue: self.allow_requeue,
            max_requeues: self.max_requeues,
            max_message_size: self.transport.max_message_size(),
            refusals: RefusalTally::default(),
        });
        let worker = ListenLoop {
            dispatch: dispatch.clone(),
        };
        let batch = self.batch;
        let running =
            Serving::new(self.max_concurrency).run(|serving| worker.run(serving, inboxes, batch));
        Ok(NotificationListener { running, dispatch })
    }
}

/// A running notification listener.
#[derive(Debug)]
pub struct NotificationListener {
    running: Running,
    dispatch: Arc<Dispatch>,
}

impl NotificationListener {
    /// Starts building a listener on `targets` (exchange and topic of each).
    pub fn builder(transport: &Transport, targets: Vec<Target>) -> NotificationListenerBuilder {
        NotificationListenerBuilder {
            transport: transport.clone(),
            targets,
            endpoints: Vec::new(),
            pool: None,
            allow_requeue: false,
            max_requeues: DEFAULT_MAX_REQUEUES,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            batch: None,
        }
    }

    /// Stops consuming (a partial batch is handled), waits up to `deadline` for handlers in
    /// flight, and closes. Messages not yet handed to a handler go back to their queues.
    pub async fn stop(self, deadline: Duration) -> StopReport {
        self.running.stop(deadline).await
    }

    /// Notifications moved to the dead-letter queue unread so far (too large, or malformed),
    /// by reason.
    pub fn refusals(&self) -> Refusals {
        self.dispatch.refusals.snapshot()
    }

    /// Resolves when the listener has stopped, on its own or by [`stop`](Self::stop).
    pub async fn stopped(&self) {
        self.running.stopped().await;
    }
}

/// Decodes, dispatches and settles.
#[derive(Debug)]
struct Dispatch {
    endpoints: Vec<NotificationEndpoint>,
    allow_requeue: bool,
    max_requeues: u32,
    max_message_size: usize,
    refusals: RefusalTally,
}

/// A delivery decoded into what handlers see.
struct Received {
    notification: IncomingNotification,
    delivery: Delivery,
}

impl Dispatch {
    /// Counts a notification moved to the dead-letter queue unread, and logs it (a few lines per
    /// window at most; the reason cut, since a peer controls it).
    fn refuse(&self, refusal: Refusal, why: &dyn std::fmt::Display, delivery: &Delivery) {
        if let Some((left_out, reason)) = self.refusals.record(refusal, why) {
            tracing::warn!(
                queue = %delivery.queue,
                bytes = delivery.body.len(),
                left_out,
                %reason,
                "notification moved to the dead-letter queue unread"
            );
        }
    }

    /// Decodes a delivery; one too large to decode, or that cannot be decoded, is
    /// dead-lettered at once (counted, and logged a few times per window at most).
    async fn decode(&self, delivery: Delivery) -> Option<Received> {
        if delivery.body.len() > self.max_message_size {
            let limit = self.max_message_size;
            self.refuse(
                Refusal::TooLarge,
                &format_args!("larger than the limit of {limit} bytes; not decoded"),
                &delivery,
            );
            settle(delivery.dead_letter().await);
            return None;
        }
        let decoded = Codec::from_content_type(&delivery.content_type)
            .and_then(|codec| codec.decode_notification(&delivery.body));
        let notification = match decoded {
            Ok(n) => n,
            Err(error) => {
                self.refuse(Refusal::Malformed, &error, &delivery);
                settle(delivery.dead_letter().await);
                return None;
            }
        };
        let priority = match notification.priority.parse::<Priority>() {
            Ok(p) => p,
            Err(error) => {
                self.refuse(Refusal::Malformed, &error, &delivery);
                settle(delivery.dead_letter().await);
                return None;
            }
        };
        Some(Received {
            notification: IncomingNotification {
                context: notification.context,
                priority,
                publisher_id: notification.publisher_id,
                event_type: notification.event_type,
                payload: notification.payload,
                metadata: Metadata {
                    message_id: notification.message_id,
                    timestamp: notification.timestamp,
                },
            },
            delivery,
        })
    }

    /// Runs the endpoints over messages of one priority; any requeue request (or failure) stops
    /// the chain, as in oslo.
    ///
    /// Each endpoint gets its own copy of the messages it accepts, except the last one that
    /// handles the priority, which gets the batch itself: with one endpoint (the usual case)
    /// nothing is copied.
    async fn outcome(&self, priority: Priority, batch: Vec<IncomingNotification>) -> Outcome {
        let last = self.endpoints.iter().rposition(|e| e.handles(priority));
        let mut batch = Some(batch);
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let accepted: Vec<IncomingNotification> = if Some(i) == last {
                batch
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| endpoint.accepts(n))
                    .collect()
            } else {
                batch
                    .iter()
                    .flatten()
                    .filter(|n| endpoint.accepts(n))
                    .cloned()
                    .collect()
            };
            if accepted.is_empty() {
                continue;
            }
            match endpoint.run(priority, accepted).await {
                Some(Outcome::Requeue) => return Outcome::Requeue,
                Some(Outcome::Handled) | None => {}
            }
        }
        Outcome::Handled
    }

    /// Handles messages (all of one batch) and settles each.
    /// Decodes a batch of deliveries (in the batch's task, so that decoding runs on every
    /// worker thread rather than on the listen loop's) and handles what decoded.
    async fn decode_and_handle(&self, deliveries: Vec<Delivery>) {
        let mut received = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            if let Some(r) = self.decode(delivery).await {
                received.push(r);
            }
        }
        if !received.is_empty() {
            self.handle(received).await;
        }
    }

    async fn handle(&self, received: Vec<Received>) {
        let mut by_priority: BTreeMap<Priority, Vec<Received>> = BTreeMap::new();
        for r in received {
            by_priority
                .entry(r.notification.priority)
                .or_default()
                .push(r);
        }
        for (priority, group) in by_priority {
            let span = tracing::info_span!("notify.dispatch", %priority, messages = group.len());
            // The notifications go to the handlers, the deliveries wait to be settled: moved
            // apart, not copied.
            let (notifications, deliveries): (Vec<_>, Vec<_>) = group
                .into_iter()
                .map(|r| (r.notification, r.delivery))
                .unzip();
            let outcome = self.outcome(priority, notifications).instrument(span).await;
            // Settled together, so that a driver that waits on each settlement (a requeue
            // republishes and waits for its confirm) waits for all of them at once.
            futures::future::join_all(
                deliveries
                    .into_iter()
                    .map(|delivery| self.settle_one(delivery, outcome)),
            )
            .await;
        }
    }

    async fn settle_one(&self, delivery: Delivery, outcome: Outcome) {
        match outcome {
            Outcome::Requeue if self.allow_requeue => {
                if delivery.requeues >= self.max_requeues {
                    tracing::warn!(queue = %delivery.queue, requeues = delivery.requeues, "notification requeued too often; moved to the dead-letter queue");
                    settle(delivery.dead_letter().await);
                } else {
                    settle(delivery.requeue().await);
                }
            }
            _ => settle(delivery.ack().await),
        }
    }
}

fn settle(result: Result<(), TransportError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "could not settle a notification; the broker will deliver it again");
    }
}

struct ListenLoop {
    dispatch: Arc<Dispatch>,
}

impl ListenLoop {
    async fn run(
        self,
        mut serving: Serving,
        inboxes: Vec<Inbox>,
        batch: Option<(usize, Duration)>,
    ) -> StopReport {
        let health: Vec<_> = inboxes.iter().map(Inbox::health).collect();
        let mut deliveries: Merge<Inbox> = inboxes.into_iter().collect();
        let (size, timeout) = batch.unwrap_or((1, Duration::ZERO));
        // A batch is counted in deliveries; the few that do not decode leave it a little short.
        let mut pending: Vec<Delivery> = Vec::with_capacity(size);
        // The deadline of the batch being gathered: one timer, set when a batch starts and
        // heeded only while one is (a timer made afresh for each delivery was registered and
        // removed again every time).
        let batch_due = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(batch_due);
        loop {
            let next = serving.unless_stopping(async {
                tokio::select! {
                    () = &mut batch_due, if !pending.is_empty() => None,
                    next = deliveries.next() => Some(next),
                }
            });
            match serving.meanwhile(next).await {
                // A stop was asked for.
                None => break,
                // The batch's time is up.
                Some(None) => {
                    self.start(&mut serving, std::mem::take(&mut pending)).await;
                }
                // Every inbox ended.
                Some(Some(None)) => {
                    if !serving.is_stopping() {
                        tracing::warn!("notification inboxes closed by the transport");
                    }
                    break;
                }
                // A delivery, for the batch being gathered.
                Some(Some(Some(delivery))) => {
                    let first = pending.is_empty();
                    pending.push(delivery);
                    // What else has arrived joins the batch without another round of waiting.
                    while pending.len() < size {
                        match deliveries.next().now_or_never() {
                            Some(Some(delivery)) => pending.push(delivery),
                            _ => break,
                        }
                    }
                    if pending.len() >= size {
                        self.start(&mut serving, std::mem::take(&mut pending)).await;
                    } else if first {
                        batch_due
                            .as_mut()
                            .reset(tokio::time::Instant::now() + timeout);
                    }
                }
            }
        }
        serving.begin_stop();
        if !pending.is_empty() {
            self.start(&mut serving, pending).await;
        }
        // Handlers settle their messages on the channels the inboxes hold open, so the inboxes
        // close only after the drain: closed first, they took the channels with them and every
        // in-flight acknowledgement failed, sending handled messages round again. What arrives
        // meanwhile is never taken, and goes back to its queue when the inboxes close.
        let mut report = serving.drain().await;
        drop(deliveries);
        report.unrestored_queues = health.iter().flat_map(|h| h.unrestored()).collect();
        report
    }

    /// Starts handling a batch once a slot is free (also while stopping: a batch taken from
    /// the inboxes is handled, not dropped).
    async fn start(&self, serving: &mut Serving, batch: Vec<Delivery>) {
        if batch.is_empty() {
            return;
        }
        let Some(slot) = serving.meanwhile(serving.slot_while_stopping()).await else {
            return;
        };
        let dispatch = self.dispatch.clone();
        let bytes = batch.iter().map(|delivery| delivery.body.len()).sum();
        serving.start(bytes, async move {
            dispatch.decode_and_handle(batch).await;
            drop(slot);
        });
    }
}
