//! The AMQP driver (`rabbit://`, `amqp://`, `amqps://`) on lapin, with oslo.messaging's
//! topology so that Python peers see tidings as one of their own.
//!
//! One connection sends (every publish, with publisher confirms) and one listens (servers,
//! listeners and the reply queue, one channel per subscription). Each is a [`link::Link`] that
//! reconnects on its own; consumers re-declare and consume again on the new connection, and a
//! publish that meets a lost connection waits (bounded) for the next one and tries again.

mod acks;
mod consume;
mod declare;
mod link;
mod options;

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio::sync::mpsc;

pub use options::AmqpOptions;

use self::consume::ConsumerSpec;
use self::declare::{ExchangeSpec, QueueSpec};
use self::link::{Declaration, Link, Session};
use super::driver::{
    CloseHook, ConsumeOptions, Delivery, Destination, Driver, Inbox, OutgoingMessage, Subscription,
};
use super::{topology, TransportError};
use crate::url::TransportUrl;

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

    /// Exchanges (and, for notifications, the default queue) a destination needs.
    fn topology_for(&self, destination: &Destination) -> (Option<ExchangeSpec>, Option<QueueSpec>) {
        match destination {
            Destination::Rpc { exchange, .. } => {
                (Some(ExchangeSpec::topic(exchange, &self.options)), None)
            }
            Destination::Fanout { topic } => (Some(ExchangeSpec::fanout(topic)), None),
            Destination::Reply { .. } => (None, None),
            Destination::Notification {
                exchange,
                topic,
                priority,
            } => {
                let key = topology::notification_queue(topic, priority);
                let exchange = ExchangeSpec::topic(exchange, &self.options);
                let queue = QueueSpec::topic(&key, &self.options).bound(exchange.clone(), &key);
                (Some(exchange), Some(queue))
            }
        }
    }

    async fn publish_once(
        &self,
        session: &Session,
        destination: &Destination,
        message: &OutgoingMessage,
    ) -> Result<(), Attempt> {
        let lost = |error: lapin::Error| {
            if session.is_dead() {
                Attempt::Retry(TransportError::ConnectionLost(error.to_string()))
            } else {
                // A channel error (e.g. a refused declaration) closed the channel; the next
                // publish opens a new one. Report this one.
                Attempt::Fail(TransportError::Rejected {
                    destination: destination.to_string(),
                    reason: error.to_string(),
                })
            }
        };
        let channel = session.publisher().await.map_err(lost)?;
        let (exchange_name, routing_key) = route(destination);
        self.declare_once(session, &channel, destination, &exchange_name, &routing_key)
            .await
            .map_err(lost)?;
        let confirm = channel
            .basic_publish(
                exchange_name.as_ref().into(),
                routing_key.as_ref().into(),
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

    /// Declares what `destination` needs (its exchange; for a notification, its queue too),
    /// once per publishing channel. The check is a lookup by the name being published to, so a
    /// publish allocates nothing for it once the declaration is known.
    async fn declare_once(
        &self,
        session: &Session,
        channel: &lapin::Channel,
        destination: &Destination,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), lapin::Error> {
        let (kind, name) = match destination {
            Destination::Reply { .. } => return Ok(()),
            // The notification queue is named after its routing key, `<topic>.<priority>`.
            Destination::Notification { .. } => (Declaration::Queue, routing_key),
            Destination::Rpc { .. } | Destination::Fanout { .. } => {
                (Declaration::Exchange, exchange)
            }
        };
        if session.is_declared(kind, name) {
            return Ok(());
        }
        match self.topology_for(destination) {
            (_, Some(queue)) => queue.declare(channel).await?,
            (Some(exchange), None) => exchange.declare(channel).await?,
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

/// The exchange and routing key of a destination, as oslo routes them; borrowed from the
/// destination where it holds them.
fn route(destination: &Destination) -> (Cow<'_, str>, Cow<'_, str>) {
    match destination {
        Destination::Rpc {
            exchange,
            routing_key,
        } => (Cow::Borrowed(exchange), Cow::Borrowed(routing_key)),
        Destination::Fanout { topic } => (
            Cow::Owned(topology::fanout_exchange(topic)),
            Cow::Borrowed(""),
        ),
        Destination::Reply { queue } => (Cow::Borrowed(""), Cow::Borrowed(queue)),
        Destination::Notification {
            exchange,
            topic,
            priority,
        } => (
            Cow::Borrowed(exchange),
            Cow::Owned(topology::notification_queue(topic, priority)),
        ),
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
        match subscription {
            Subscription::RpcServer {
                exchange,
                topic,
                server,
            } => {
                let exchange = ExchangeSpec::topic(exchange, &self.options);
                let server_queue = topology::server_queue(topic, server);
                let fanout_queue = topology::fanout_queue(topic);
                let queues = vec![
                    QueueSpec::topic(topic, &self.options).bound(exchange.clone(), topic),
                    QueueSpec::topic(&server_queue, &self.options).bound(exchange, &server_queue),
                    QueueSpec::fanout(&fanout_queue, topic, &self.options),
                ];
                let receiver = self.consume(queues, options.prefetch, true, false).await?;
                Ok(Inbox::new(
                    receiver,
                    Some(self.delete_on_close(fanout_queue)),
                ))
            }
            Subscription::Queue { name } => {
                let queues = vec![QueueSpec::topic(name, &self.options)];
                let receiver = self.consume(queues, options.prefetch, true, false).await?;
                Ok(Inbox::new(receiver, None))
            }
            Subscription::Notifications {
                exchange,
                topics,
                priorities,
                pool,
            } => {
                let exchange = ExchangeSpec::topic(exchange, &self.options);
                let mut queues: Vec<QueueSpec> = Vec::new();
                for topic in topics {
                    for priority in priorities {
                        let key = topology::notification_queue(topic, priority);
                        let name = pool.clone().unwrap_or_else(|| key.clone());
                        match queues.iter_mut().find(|q| q.name == name) {
                            Some(queue) => queue.bindings.push((exchange.clone(), key)),
                            None => queues.push(
                                QueueSpec::topic(&name, &self.options)
                                    .bound(exchange.clone(), &key),
                            ),
                        }
                    }
                }
                let receiver = self.consume(queues, options.prefetch, true, false).await?;
                Ok(Inbox::new(receiver, None))
            }
        }
    }

    async fn open_reply_queue(&self) -> Result<(String, Inbox), TransportError> {
        let name = topology::reply_queue();
        let queues = vec![QueueSpec::reply(&name, &self.options)];
        let receiver = self
            .consume(queues, ConsumeOptions::default().prefetch, false, true)
            .await?;
        Ok((name, Inbox::new(receiver, None)))
    }

    async fn close(&self) {
        self.listen.close().await;
        self.send.close().await;
    }
}
