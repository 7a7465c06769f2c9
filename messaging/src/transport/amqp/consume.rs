//! Consumers: a set of queues consumed on one channel of the listening connection and fed into
//! one [`Inbox`]. When the connection is lost, a resubscribing consumer declares its queues and
//! consumes again on the next connection; a one-shot consumer (the reply queue) ends its inbox,
//! so calls waiting on it fail at once instead of waiting out their timeouts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{SelectAll, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};

use super::acks::AckBatcher;
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
    /// Consume without acknowledgements (`no_ack`): the reply queue. A reply is of use to
    /// nobody but the call waiting for it, so the broker may forget it once sent; acknowledging
    /// each one cost a frame each way and a wake of the I/O loop per call.
    pub(super) auto_ack: bool,
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
                    BasicConsumeOptions {
                        no_ack: spec.auto_ack,
                        ..BasicConsumeOptions::default()
                    },
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
    // Every delivery settles through this; acknowledgements are sent in batches by this task.
    let acks = Arc::new(AckBatcher::new(channel.clone()));
    let ended = loop {
        let next = tokio::select! {
            next = consumers.next() => next,
            () = sender.closed() => break Ended::InboxClosed,
            () = acks.wait_pending() => {
                acks.flush();
                continue;
            }
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
        )
        .with_expiration(expiration);
        // Waiting for room in the inbox, keep sending acknowledgements: the broker counts
        // unsent ones against the prefetch.
        let permit = loop {
            tokio::select! {
                permit = sender.reserve() => break permit,
                () = acks.wait_pending() => acks.flush(),
            }
        };
        match permit {
            Ok(permit) => permit.send(ours),
            Err(_) => break Ended::InboxClosed,
        }
    };
    // From here on acknowledgements go straight to the channel (failing once it is closed).
    acks.stop();
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
