//! Routes replies from the process's one reply queue to the calls waiting for them.
//!
//! oslo.messaging keeps one `reply_<hex>` queue per client process and tells replies apart by
//! `_msg_id`. A reply nobody waits for any more (the call timed out) is dropped with a debug
//! event. When the reply queue's inbox ends (connection lost for good), every waiter is failed at
//! once instead of waiting out its timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, RpcReply};
use crate::serve::{Refusal, RefusalTally, Refusals};
use crate::transport::{ack_without_waiting, Attachment, Inbox, Transport, TransportError};

/// The reply queue of a transport, kept as its attachment: opened by the first call, opened
/// again after the previous one was lost, shut when the transport closes.
#[derive(Debug, Default)]
pub(crate) struct ReplyQueueSlot {
    router: tokio::sync::Mutex<Option<Arc<ReplyRouter>>>,
    /// Parent of every router's stop token: cancelled when the transport closes.
    closed: CancellationToken,
}

impl Attachment for ReplyQueueSlot {
    fn on_close(&self) {
        self.closed.cancel();
    }
}

type Waiters = HashMap<String, mpsc::UnboundedSender<RpcReply>>;

/// The reply queue of one transport and the calls waiting on it.
#[derive(Debug)]
pub(crate) struct ReplyRouter {
    queue: String,
    waiters: Mutex<Waiters>,
    alive: AtomicBool,
    stop: CancellationToken,
    refusals: RefusalTally,
}

impl ReplyRouter {
    /// The reply router of `transport`, opening its reply queue on first use and again after
    /// the previous one was lost.
    pub(crate) async fn of(transport: &Transport) -> Result<Arc<Self>, TransportError> {
        let slot = transport.attachment::<ReplyQueueSlot>();
        let mut router = slot.router.lock().await;
        if let Some(router) = router.as_ref().filter(|r| r.is_alive()) {
            return Ok(router.clone());
        }
        if slot.closed.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let started = Self::start(transport, slot.closed.child_token()).await?;
        *router = Some(started.clone());
        Ok(started)
    }

    /// Opens a reply queue on `driver` and starts routing its deliveries until `stop`.
    async fn start(
        transport: &Transport,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, TransportError> {
        let (queue, inbox) = transport.driver().open_reply_queue().await?;
        let router = Arc::new(Self {
            queue,
            waiters: Mutex::default(),
            alive: AtomicBool::new(true),
            stop,
            refusals: RefusalTally::default(),
        });
        tokio::spawn(Self::route(
            Arc::downgrade(&router),
            router.stop.clone(),
            inbox,
            transport.max_message_size(),
        ));
        Ok(router)
    }

    /// The transport's current reply queue's refusals, when it has one.
    pub(crate) async fn refusals_of(transport: &Transport) -> Option<Refusals> {
        let slot = transport.attachment::<ReplyQueueSlot>();
        let router = slot.router.lock().await;
        router.as_ref().map(|r| r.refusals.snapshot())
    }

    /// Counts a refused reply and logs it, a few lines per window at most.
    fn refuse(&self, refusal: Refusal, why: &dyn std::fmt::Display, bytes: usize) {
        if let Some((left_out, reason)) = self.refusals.record(refusal, why) {
            tracing::debug!(queue = %self.queue, bytes, left_out, %reason, "dropped a reply");
        }
    }

    /// The reply queue's name, sent as `_reply_q`.
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// Whether the reply queue is still consumed.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // The map stays consistent under panic: each operation is a single insert or remove.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers interest in the replies to `msg_id` until the returned waiter drops.
    pub(crate) fn register(self: &Arc<Self>, msg_id: String) -> ReplyWaiter {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.waiters().insert(msg_id.clone(), sender);
        if !self.is_alive() {
            // The router died between lookup and registration: end this waiter at once.
            self.waiters().remove(&msg_id);
        }
        ReplyWaiter {
            router: self.clone(),
            msg_id,
            receiver,
        }
    }

    async fn route(
        router: std::sync::Weak<Self>,
        stop: CancellationToken,
        mut inbox: Inbox,
        max_message_size: usize,
    ) {
        loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => break,
                delivery = inbox.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            let Some(router) = router.upgrade() else {
                break;
            };
            let (body, content_type, acker) = delivery.into_parts();
            // Acknowledged at once: the reply queue is consumed with a prefetch, so a flood of
            // replies nobody asked for waits in the broker, not here, and is dropped as fast as
            // it can be looked at.
            ack_without_waiting(acker, "a reply");
            if body.len() > max_message_size {
                router.refuse(
                    Refusal::TooLarge,
                    &format_args!("larger than the limit of {max_message_size} bytes"),
                    body.len(),
                );
                continue;
            }
            let reply =
                Codec::from_content_type(&content_type).and_then(|codec| codec.decode_reply(&body));
            match reply {
                // The waiter's sender is used under the lock rather than cloned out of it:
                // one hash lookup, no reference-count traffic; sending never blocks.
                Ok(reply) => {
                    let delivered = match router.waiters().get(&reply.msg_id) {
                        Some(sender) => {
                            let _ = sender.send(reply);
                            true
                        }
                        None => false,
                    };
                    if !delivered {
                        router.refuse(Refusal::Unsolicited, &"nobody waits for it", body.len());
                    }
                }
                Err(error) => router.refuse(Refusal::Malformed, &error, body.len()),
            }
        }
        if let Some(router) = router.upgrade() {
            router.alive.store(false, Ordering::Release);
            // Dropping the senders ends every waiter's receive with `None`.
            router.waiters().clear();
        }
        inbox.close().await;
    }
}

/// The replies to one call, until dropped.
#[derive(Debug)]
pub(crate) struct ReplyWaiter {
    router: Arc<ReplyRouter>,
    msg_id: String,
    receiver: mpsc::UnboundedReceiver<RpcReply>,
}

impl ReplyWaiter {
    /// The next reply (a keepalive or the final one); `None` when the reply queue was lost.
    ///
    /// Cancellation safe.
    pub(crate) async fn next(&mut self) -> Option<RpcReply> {
        self.receiver.recv().await
    }
}

impl Drop for ReplyWaiter {
    fn drop(&mut self) {
        self.router.waiters().remove(&self.msg_id);
    }
}
