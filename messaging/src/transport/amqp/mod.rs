//! The AMQP driver (`rabbit://`, `amqp://`, `amqps://`) on lapin, with oslo.messaging's
//! topology so that Python peers see tidings as one of their own.
//!
//! One connection sends (every publish, with publisher confirms) and one listens (servers,
//! listeners and the reply queue, one channel per subscription). Each is a [`link::Link`] that
//! reconnects on its own; consumers re-declare and consume again on the new connection, and a
//! publish that meets a lost connection waits (bounded) for the next one and tries again.

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

pub use options::AmqpOptions;

use self::consume::ConsumerSpec;
use self::declare::{ExchangeSpec, QueueSpec};
use self::link::{Link, Session};
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
        let (exchange, queue) = self.topology_for(destination);
        let declare_key = match (&exchange, &queue) {
            (_, Some(queue)) => Some(format!("queue:{}", queue.name)),
            (Some(exchange), None) => Some(format!("exchange:{}", exchange.name)),
            (None, None) => None,
        };
        if let Some(key) = declare_key {
            let known = session
                .declared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key);
            if !known {
                match (&exchange, &queue) {
                    (_, Some(queue)) => queue.declare(&channel).await.map_err(lost)?,
                    (Some(exchange), None) => exchange.declare(&channel).await.map_err(lost)?,
                    (None, None) => {}
                }
                session
                    .declared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key);
            }
        }
        let (exchange_name, routing_key) = route(destination);
        let confirm = channel
            .basic_publish(
                exchange_name.as_str().into(),
                routing_key.as_str().into(),
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

    async fn consume(
        &self,
        queues: Vec<QueueSpec>,
        prefetch: u16,
        resubscribe: bool,
    ) -> Result<mpsc::Receiver<Delivery>, TransportError> {
        let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
        let spec = ConsumerSpec {
            queues,
            prefetch,
            resubscribe,
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

/// The exchange and routing key of a destination, as oslo routes them.
fn route(destination: &Destination) -> (String, String) {
    match destination {
        Destination::Rpc {
            exchange,
            routing_key,
        } => (exchange.clone(), routing_key.clone()),
        Destination::Fanout { topic } => (topology::fanout_exchange(topic), String::new()),
        Destination::Reply { queue } => (String::new(), queue.clone()),
        Destination::Notification {
            exchange,
            topic,
            priority,
        } => (
            exchange.clone(),
            topology::notification_queue(topic, priority),
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
                let receiver = self.consume(queues, options.prefetch, true).await?;
                Ok(Inbox::new(
                    receiver,
                    Some(self.delete_on_close(fanout_queue)),
                ))
            }
            Subscription::Queue { name } => {
                let queues = vec![QueueSpec::topic(name, &self.options)];
                let receiver = self.consume(queues, options.prefetch, true).await?;
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
                let receiver = self.consume(queues, options.prefetch, true).await?;
                Ok(Inbox::new(receiver, None))
            }
        }
    }

    async fn open_reply_queue(&self) -> Result<(String, Inbox), TransportError> {
        let name = topology::reply_queue();
        let queues = vec![QueueSpec::reply(&name, &self.options)];
        let receiver = self
            .consume(queues, ConsumeOptions::default().prefetch, false)
            .await?;
        Ok((name, Inbox::new(receiver, None)))
    }

    async fn close(&self) {
        self.listen.close().await;
        self.send.close().await;
    }
}
