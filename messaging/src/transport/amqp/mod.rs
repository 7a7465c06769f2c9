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

use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio::sync::mpsc;

pub use options::{AmqpOptions, DeadLetterOverflow};

use self::consume::ConsumerSpec;
use self::declare::{ExchangeSpec, QueueSpec};
use self::link::{Declaration, Link, Session};
use super::driver::{
    CloseHook, ConsumeOptions, Delivery, Destination, Driver, Inbox, OutgoingMessage, Subscription,
};
use super::topology::{self, Route, SubscriptionPlan};
use super::TransportError;
use crate::codec::limits;
use crate::url::TransportUrl;

/// Replies handed out before the router acknowledged earlier ones.
const REPLY_PREFETCH: u16 = 256;

/// The AMQP driver.
#[derive(Debug)]
pub struct AmqpDriver {
    options: AmqpOptions,
    send: Arc<Link>,
    listen: Arc<Link>,
    republisher: Arc<consume::Republisher>,
}

/// Why one publish attempt failed.
enum Attempt {
    /// The connection went away: try again on the next one.
    Retry(TransportError),
    /// A final answer.
    Fail(TransportError),
}

impl AmqpDriver {
    /// Connects to the broker named by `url` (every host tried once in order), then keeps the
    /// connections up.
    pub async fn connect(url: &TransportUrl) -> Result<Self, TransportError> {
        let options = AmqpOptions::from_url(url)?;
        let send = Link::open(url, &options, "send").await?;
        let listen = Link::open(url, &options, "listen").await?;
        let republisher = Arc::new(consume::Republisher {
            send: send.clone(),
            options: options.clone(),
        });
        Ok(Self {
            options,
            send,
            listen,
            republisher,
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
        let confirm = channel
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
        let confirmation = confirm.await.map_err(lost)?;
        if confirmation.is_nack() {
            return Err(Attempt::Fail(TransportError::Rejected {
                destination: destination.to_string(),
                reason: "negative publisher confirm".to_owned(),
            }));
        }
        if confirmation.take_message().is_some() {
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
    ) -> Result<mpsc::Receiver<Delivery>, TransportError> {
        let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
        let spec = ConsumerSpec {
            queues,
            prefetch,
            resubscribe,
            auto_ack,
            republisher: self.republisher.clone(),
        };
        consume::start(
            self.listen.clone(),
            spec,
            sender,
            self.options.publish_recovery_timeout,
        )
        .await?;
        Ok(receiver)
    }

    /// A close hook that deletes `queue` (a server's fanout queue), as oslo does on a clean
    /// shutdown.
    fn delete_on_close(&self, queue: String) -> CloseHook {
        let link = self.send.clone();
        Box::pin(async move {
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
            if let Err(error) = deleted.await {
                tracing::debug!(%error, %queue, "could not delete the fanout queue; it expires on its own");
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
            }
        }
        let deadline = tokio::time::Instant::now() + self.options.publish_recovery_timeout;
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
        let receiver = self.consume(queues, options.prefetch, true, false).await?;
        let on_close = plan
            .delete_on_close
            .map(|queue| self.delete_on_close(queue));
        Ok(Inbox::new(receiver, on_close))
    }

    async fn open_reply_queue(&self) -> Result<(String, Inbox), TransportError> {
        let plan = topology::reply_queue_plan();
        let name = plan.name.clone();
        let queues = vec![QueueSpec::of(&plan, &self.options)];
        // Consumed with acknowledgements and a prefetch, so the broker never pushes more replies
        // than the router has room for: a flood of replies nobody asked for waits in the queue
        // instead of in this process.
        let receiver = self.consume(queues, REPLY_PREFETCH, false, false).await?;
        Ok((name, Inbox::new(receiver, None)))
    }

    async fn close(&self) {
        self.listen.close().await;
        self.send.close().await;
    }
}
