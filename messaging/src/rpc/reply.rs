//! Routes replies from the process's one reply queue to the calls waiting for them.
//!
//! oslo.messaging keeps one `reply_<hex>` queue per client process and tells replies apart by
//! `_msg_id`. A reply nobody waits for any more (the call timed out) is dropped with a debug
//! event. When the reply queue's inbox ends (connection lost for good), every waiter is failed at
//! once instead of waiting out its timeout.
//!
//! Replies are routed where the driver receives them (a [`DeliverySink`] on the AMQP driver's
//! consumer task): decoding a reply and waking its call is less work than handing the reply to
//! another task first.
//!
//! Each call gets a [`Mailbox`] rather than a channel: a call takes at most one reply that
//! matters beside its keepalives, and a channel's first block (room for 32 replies, about 9 KiB)
//! was most of what a call in flight cost the process.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, RpcReply};
use crate::serve::{Refusal, RefusalTally, Refusals};
use crate::transport::{
    ack_without_waiting, Attachment, Delivery, DeliverySink, Inbox, Transport, TransportError,
};

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

type Waiters = HashMap<String, Arc<Mailbox>>;

/// Below this many slots the waiter map is never shrunk.
const WAITERS_KEPT: usize = 1024;

/// The replies one call has not taken yet. Bounded by construction: a keepalive replaces the
/// one before it, and a final reply after the first (a duplicate delivery) is dropped.
#[derive(Debug, Default)]
struct Mailbox {
    state: Mutex<MailboxState>,
}

#[derive(Debug, Default)]
struct MailboxState {
    keepalive: Option<RpcReply>,
    last: Option<RpcReply>,
    /// A final reply was put in (and maybe taken since).
    ended: bool,
    /// The reply queue was lost: no reply will come.
    lost: bool,
    waker: Option<Waker>,
}

impl Mailbox {
    fn state(&self) -> MutexGuard<'_, MailboxState> {
        // Every update is a few assignments that cannot panic halfway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, reply: RpcReply) {
        let mut state = self.state();
        if reply.ending {
            if state.ended {
                return;
            }
            state.ended = true;
            state.last = Some(reply);
        } else {
            state.keepalive = Some(reply);
        }
        if let Some(waker) = state.waker.take() {
            drop(state);
            waker.wake();
        }
    }

    fn lose(&self) {
        let mut state = self.state();
        state.lost = true;
        if let Some(waker) = state.waker.take() {
            drop(state);
            waker.wake();
        }
    }

    async fn take(&self) -> Option<RpcReply> {
        poll_fn(|cx| {
            let mut state = self.state();
            if let Some(reply) = state.last.take().or_else(|| state.keepalive.take()) {
                return Poll::Ready(Some(reply));
            }
            if state.lost {
                return Poll::Ready(None);
            }
            if !state
                .waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// The reply queue of one transport and the calls waiting on it.
#[derive(Debug)]
pub(crate) struct ReplyRouter {
    queue: String,
    desk: Arc<ReplyDesk>,
    alive: AtomicBool,
    stop: CancellationToken,
}

/// The calls waiting for replies, and what was refused: the sink the driver hands each reply
/// to.
#[derive(Debug, Default)]
struct ReplyDesk {
    waiters: Mutex<Waiters>,
    refusals: RefusalTally,
    max_message_size: usize,
}

impl ReplyDesk {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // The map stays consistent under panic: each operation is a single insert or remove.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a refused reply and logs it, a few lines per window at most.
    fn refuse(&self, refusal: Refusal, why: &dyn std::fmt::Display, bytes: usize) {
        if let Some((left_out, reason)) = self.refusals.record(refusal, why) {
            tracing::debug!(bytes, left_out, %reason, "dropped a reply");
        }
    }

    /// Ends every waiting call: no reply will come.
    fn lose_all(&self) {
        for (_, mailbox) in self.waiters().drain() {
            mailbox.lose();
        }
    }
}

impl DeliverySink for ReplyDesk {
    fn take(&self, delivery: Delivery) {
        let (body, content_type, acker) = delivery.into_parts();
        // Acknowledged at once: the reply queue is consumed with a prefetch, so a flood of
        // replies nobody asked for waits in the broker, not here, and is dropped as fast as it
        // can be looked at.
        ack_without_waiting(acker, "a reply");
        if body.len() > self.max_message_size {
            self.refuse(
                Refusal::TooLarge,
                &format_args!("larger than the limit of {} bytes", self.max_message_size),
                body.len(),
            );
            return;
        }
        let reply =
            Codec::from_content_type(&content_type).and_then(|codec| codec.decode_reply(&body));
        match reply {
            Ok(reply) => {
                let mailbox = self.waiters().get(&reply.msg_id).cloned();
                match mailbox {
                    Some(mailbox) => mailbox.put(reply),
                    None => self.refuse(Refusal::Unsolicited, &"nobody waits for it", body.len()),
                }
            }
            Err(error) => self.refuse(Refusal::Malformed, &error, body.len()),
        }
    }
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

    /// Opens a reply queue on `driver`, its replies routed to the calls waiting for them, and
    /// watches it until `stop`.
    async fn start(
        transport: &Transport,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, TransportError> {
        let desk = Arc::new(ReplyDesk {
            max_message_size: transport.max_message_size(),
            ..ReplyDesk::default()
        });
        let (queue, inbox) = transport
            .driver()
            .open_reply_queue_into(desk.clone())
            .await?;
        let router = Arc::new(Self {
            queue,
            desk,
            alive: AtomicBool::new(true),
            stop,
        });
        tokio::spawn(Self::watch(
            Arc::downgrade(&router),
            router.stop.clone(),
            inbox,
        ));
        Ok(router)
    }

    /// The transport's current reply queue's refusals, when it has one.
    pub(crate) async fn refusals_of(transport: &Transport) -> Option<Refusals> {
        let slot = transport.attachment::<ReplyQueueSlot>();
        let router = slot.router.lock().await;
        router.as_ref().map(|r| r.desk.refusals.snapshot())
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
        self.desk.waiters()
    }

    /// Registers interest in the replies to `msg_id` until the returned waiter drops.
    pub(crate) fn register(self: &Arc<Self>, msg_id: String) -> ReplyWaiter {
        let mailbox = Arc::new(Mailbox::default());
        self.waiters().insert(msg_id.clone(), mailbox.clone());
        if !self.is_alive() {
            // The router died between lookup and registration: end this waiter at once.
            self.waiters().remove(&msg_id);
            mailbox.lose();
        }
        ReplyWaiter {
            router: self.clone(),
            msg_id,
            mailbox,
        }
    }

    fn unregister(&self, msg_id: &str) {
        let mut waiters = self.waiters();
        waiters.remove(msg_id);
        // A burst of calls grows the map; give the room back once most of it stands empty.
        let capacity = waiters.capacity();
        if capacity > WAITERS_KEPT && waiters.len() < capacity / 8 {
            let len = waiters.len();
            waiters.shrink_to(len.saturating_mul(2).max(WAITERS_KEPT));
        }
    }

    /// Waits until the reply queue is lost or the router stops, then ends every waiting call
    /// and closes the queue. The driver routes the replies; an inbox that yields deliveries
    /// after all (a driver that ignores the sink) has them routed here.
    async fn watch(router: std::sync::Weak<Self>, stop: CancellationToken, mut inbox: Inbox) {
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
            router.desk.take(delivery);
        }
        if let Some(router) = router.upgrade() {
            router.alive.store(false, Ordering::Release);
            router.desk.lose_all();
        }
        inbox.close().await;
    }
}

impl Drop for ReplyRouter {
    fn drop(&mut self) {
        // Nobody can wait on this queue any more: stop consuming it.
        self.stop.cancel();
    }
}

/// The replies to one call, until dropped.
#[derive(Debug)]
pub(crate) struct ReplyWaiter {
    router: Arc<ReplyRouter>,
    msg_id: String,
    mailbox: Arc<Mailbox>,
}

impl ReplyWaiter {
    /// The next reply: the final one once it came, else the latest keepalive; `None` when the
    /// reply queue was lost.
    ///
    /// Cancellation safe.
    pub(crate) async fn next(&mut self) -> Option<RpcReply> {
        self.mailbox.take().await
    }
}

impl Drop for ReplyWaiter {
    fn drop(&mut self) {
        self.router.unregister(&self.msg_id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn reply(msg_id: &str, result: serde_json::Value, ending: bool) -> RpcReply {
        RpcReply {
            result,
            failure: None,
            ending,
            msg_id: msg_id.to_owned(),
            unique_id: String::new(),
        }
    }

    fn router() -> Arc<ReplyRouter> {
        Arc::new(ReplyRouter {
            queue: "reply_test".to_owned(),
            desk: Arc::default(),
            alive: AtomicBool::new(true),
            stop: CancellationToken::new(),
        })
    }

    #[tokio::test]
    async fn the_final_reply_comes_before_a_keepalive_and_a_duplicate_is_dropped() {
        let router = router();
        let mut waiter = router.register("m1".to_owned());
        let mailbox = router.waiters().get("m1").cloned();
        let Some(mailbox) = mailbox else {
            panic!("the waiter was not registered");
        };
        mailbox.put(reply("m1", json!(null), false));
        mailbox.put(reply("m1", json!(null), false));
        mailbox.put(reply("m1", json!(1), true));
        mailbox.put(reply("m1", json!(2), true));
        let first = waiter.next().await.map(|r| (r.ending, r.result));
        assert_eq!(first, Some((true, json!(1))));
        // The two keepalives were kept as one; the duplicate final reply is gone.
        let second = waiter.next().await.map(|r| r.ending);
        assert_eq!(second, Some(false));
        let third = tokio::time::timeout(Duration::from_millis(50), waiter.next()).await;
        assert!(third.is_err(), "nothing more was put in: {third:?}");
    }

    #[tokio::test]
    async fn a_waiting_call_wakes_for_its_reply_and_ends_when_the_queue_is_lost() {
        let router = router();
        let mut waiter = router.register("m1".to_owned());
        let mut other = router.register("m2".to_owned());
        let put = {
            let router = router.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                let mailbox = router.waiters().get("m1").cloned();
                if let Some(mailbox) = mailbox {
                    mailbox.put(reply("m1", json!("done"), true));
                }
            })
        };
        let got = waiter.next().await.map(|r| r.result);
        assert_eq!(got, Some(json!("done")));
        assert!(put.await.is_ok());
        router.desk.lose_all();
        assert!(other.next().await.is_none());
    }

    #[test]
    fn the_waiter_map_gives_back_the_room_of_a_burst() {
        let router = router();
        let waiters: Vec<_> = (0..20_000)
            .map(|i| router.register(format!("m{i}")))
            .collect();
        let grown = router.waiters().capacity();
        assert!(grown >= 20_000, "capacity {grown}");
        drop(waiters);
        let left = router.waiters().capacity();
        assert!(left <= 2 * WAITERS_KEPT, "capacity {left} after the burst");
        assert!(router.waiters().is_empty());
    }
}
