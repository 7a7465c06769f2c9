//! Consumers: a set of queues consumed on one channel of the listening connection and fed into
//! one [`Inbox`]. When the connection is lost, a resubscribing consumer declares its queues and
//! consumes again on the next connection; a one-shot consumer (the reply queue) ends its inbox,
//! so calls waiting on it fail at once instead of waiting out their timeouts.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{SelectAll, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
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
        let acker = AmqpAcker {
            acker: Some(delivery.acker),
        };
        let ours = Delivery::new(
            delivery.data.into(),
            content_type,
            delivery.redelivered,
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

/// Settles an AMQP delivery. Dropped unsettled, it is returned to its queue.
#[derive(Debug)]
struct AmqpAcker {
    acker: Option<lapin::Acker>,
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
        match self.acker.take() {
            Some(acker) => acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .map(drop)
                .map_err(settle_error),
            None => Ok(()),
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
