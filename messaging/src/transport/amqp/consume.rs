//! Consumers: a set of queues consumed on one channel of the listening connection and fed into
//! one [`Inbox`]. When the connection is lost, a resubscribing consumer declares its queues and
//! consumes again on the next connection; a one-shot consumer (the reply queue) ends its inbox,
//! so calls waiting on it fail at once instead of waiting out their timeouts.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{SelectAll, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};

use super::declare::QueueSpec;
use super::link::{Link, Session};
use crate::transport::driver::{Acknowledge, Delivery};
use crate::transport::TransportError;

/// What a consumer consumes, and whether it survives a lost connection.
#[derive(Clone, Debug)]
pub(super) struct ConsumerSpec {
    pub(super) queues: Vec<QueueSpec>,
    pub(super) prefetch: u16,
    pub(super) resubscribe: bool,
    /// Where requeued and dead-lettered messages are published from.
    pub(super) republisher: Arc<Republisher>,
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
        let channel = session.publisher().await.map_err(failed)?;
        if declare {
            QueueSpec::topic(queue, &self.options)
                .declare(&channel)
                .await
                .map_err(failed)?;
        }
        let mut headers = FieldTable::default();
        headers.insert(
            REQUEUES_HEADER.into(),
            AMQPValue::LongInt(i32::try_from(requeues).unwrap_or(i32::MAX)),
        );
        let properties = lapin::BasicProperties::default()
            .with_content_type(message.content_type.as_str().into())
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
    queue: String,
    body: bytes::Bytes,
    content_type: String,
    requeues: u32,
}

/// Starts consuming `spec` into `sender`; returns once the queues are declared and consumed on
/// the first connection, or with the error that prevented it.
pub(super) async fn start(
    link: Arc<Link>,
    spec: ConsumerSpec,
    sender: mpsc::Sender<Delivery>,
    patience: std::time::Duration,
) -> Result<(), TransportError> {
    let session = link.session(patience).await?;
    let (ready, first) = oneshot::channel();
    tokio::spawn(run(link, spec, sender, session, ready));
    first.await.unwrap_or(Err(TransportError::Closed))
}

enum Ended {
    InboxClosed,
    ConnectionLost,
}

async fn run(
    link: Arc<Link>,
    spec: ConsumerSpec,
    sender: mpsc::Sender<Delivery>,
    mut session: Arc<Session>,
    ready: oneshot::Sender<Result<(), TransportError>>,
) {
    let mut ready = Some(ready);
    loop {
        let outcome = consume_on(&session, &spec, &sender, &mut ready).await;
        match outcome {
            Ok(Ended::InboxClosed) => return,
            Ok(Ended::ConnectionLost) => {
                tracing::info!(queues = ?queue_names(&spec), "consumer lost its connection");
            }
            Err(error) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(error));
                    return;
                }
                tracing::warn!(%error, queues = ?queue_names(&spec), "could not consume again; retrying on the next connection");
                session.mark_dead();
            }
        }
        if !spec.resubscribe {
            return;
        }
        let next = tokio::select! {
            next = link.session_after(session.generation) => next,
            () = sender.closed() => return,
        };
        match next {
            Ok(next) => session = next,
            Err(_) => return,
        }
    }
}

fn queue_names(spec: &ConsumerSpec) -> Vec<&str> {
    spec.queues.iter().map(|q| q.name.as_str()).collect()
}

async fn consume_on(
    session: &Session,
    spec: &ConsumerSpec,
    sender: &mpsc::Sender<Delivery>,
    ready: &mut Option<oneshot::Sender<Result<(), TransportError>>>,
) -> Result<Ended, TransportError> {
    let channel = session
        .connection
        .create_channel()
        .await
        .map_err(driver_error)?;
    let mut consumers = SelectAll::new();
    let setup = async {
        channel
            .basic_qos(spec.prefetch, BasicQosOptions::default())
            .await?;
        for queue in &spec.queues {
            queue.declare(&channel).await?;
            let consumer = channel
                .basic_consume(
                    queue.name.as_str().into(),
                    format!("tidings-{}", crate::transport::topology::new_id()).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let name = queue.name.clone();
            consumers.push(consumer.map(move |delivery| (name.clone(), delivery)));
        }
        Ok::<_, lapin::Error>(())
    };
    if let Err(error) = setup.await {
        let _ = channel.close(200, "setup failed".into()).await;
        return Err(driver_error(error));
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }
    let ended = loop {
        let next = tokio::select! {
            next = consumers.next() => next,
            () = sender.closed() => break Ended::InboxClosed,
        };
        let Some((queue, delivery)) = next else {
            break Ended::ConnectionLost;
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::debug!(%error, %queue, "consumer stream failed");
                break Ended::ConnectionLost;
            }
        };
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|ct| ct.as_str().to_owned())
            .unwrap_or_default();
        let requeues = requeue_count(delivery.properties.headers().as_ref());
        let body = bytes::Bytes::from(delivery.data);
        let acker = AmqpAcker {
            acker: Some(delivery.acker),
            held: Held {
                queue: queue.clone(),
                body: body.clone(),
                content_type: content_type.clone(),
                requeues,
            },
            republisher: spec.republisher.clone(),
        };
        let ours = Delivery::new(
            body,
            content_type,
            delivery.redelivered,
            requeues,
            queue,
            Box::new(acker),
        );
        if sender.send(ours).await.is_err() {
            break Ended::InboxClosed;
        }
    };
    if matches!(ended, Ended::InboxClosed) {
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

/// Settles an AMQP delivery. Dropped unsettled, it is returned to its queue.
#[derive(Debug)]
struct AmqpAcker {
    acker: Option<lapin::Acker>,
    held: Held,
    republisher: Arc<Republisher>,
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await;
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
        match self.acker.take() {
            Some(acker) => acker
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(settle_error),
            None => Ok(()),
        }
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), TransportError> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        let count = self.held.requeues.saturating_add(1);
        match self
            .republisher
            .publish(&self.held.queue, &self.held, count, false)
            .await
        {
            Ok(()) => acker
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(settle_error),
            Err(error) => {
                // Could not republish: let the broker requeue it (uncounted) rather than lose it.
                tracing::warn!(%error, "requeue by republish failed; returning the message to the broker");
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
                    .map(drop)
                    .map_err(settle_error)
            }
        }
    }

    async fn dead_letter(mut self: Box<Self>) -> Result<(), TransportError> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        let queue = crate::transport::dead_letter_queue(&self.held.queue);
        match self
            .republisher
            .publish(&queue, &self.held, self.held.requeues, true)
            .await
        {
            Ok(()) => acker
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(settle_error),
            Err(error) => {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
                    .map_err(settle_error)?;
                Err(error)
            }
        }
    }

    async fn reject(mut self: Box<Self>) -> Result<(), TransportError> {
        match self.acker.take() {
            Some(acker) => acker
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map(drop)
                .map_err(settle_error),
            None => Ok(()),
        }
    }
}
