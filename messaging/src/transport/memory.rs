//! The in-process transport (`memory://NAME`): a small broker with the observable behaviour of
//! the AMQP one — topic bindings, `<topic>.<server>` queues, fanout, competing consumers,
//! reply queues, message expiry, mandatory routing, requeue — so one test suite runs on both.
//!
//! Transports opened with the same NAME in one process share a broker; it lives as long as one
//! of them does. Queues keep their messages while no consumer is attached, as RabbitMQ's do.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::driver::{
    Acknowledge, ConsumeOptions, Delivery, Destination, Driver, Inbox, OutgoingMessage,
    Subscription,
};
use super::topology::{ExchangeKind, QueuePlan, Route, SubscriptionPlan};
use super::{topology, TransportError};

/// A message at rest in a queue.
#[derive(Clone, Debug)]
struct Stored {
    body: Bytes,
    content_type: &'static str,
    expires_at: Option<Instant>,
    redelivered: bool,
    requeues: u32,
}

/// Most messages a dead-letter queue keeps; the oldest go first, as with the AMQP driver's
/// default.
const DEAD_LETTER_MAX_LENGTH: usize = 10_000;

/// A queue with competing consumers.
#[derive(Debug, Default)]
struct Queue {
    messages: Mutex<VecDeque<Stored>>,
    ready: Notify,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Stored>> {
        // A poisoned lock only means another thread panicked mid-push; the deque is still whole.
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, message: Stored) {
        self.lock().push_back(message);
        self.ready.notify_one();
    }

    /// Appends `message`, dropping the oldest beyond `max_length` (RabbitMQ's `drop-head`).
    fn push_bounded(&self, message: Stored, max_length: usize) {
        {
            let mut messages = self.lock();
            messages.push_back(message);
            while messages.len() > max_length {
                messages.pop_front();
            }
        }
        self.ready.notify_one();
    }

    /// Returns an unsettled message to the head of the queue, as the broker does.
    fn restore(&self, mut message: Stored) {
        message.redelivered = true;
        self.lock().push_front(message);
        self.ready.notify_one();
    }

    /// Waits for the next live message; expired ones are dropped as the broker would.
    async fn pop(&self) -> Stored {
        loop {
            let ready = self.ready.notified();
            {
                let mut messages = self.lock();
                let now = Instant::now();
                while let Some(message) = messages.pop_front() {
                    if message.expires_at.is_some_and(|at| at <= now) {
                        continue;
                    }
                    if !messages.is_empty() {
                        // Wake another competing consumer for what is left.
                        self.ready.notify_one();
                    }
                    return message;
                }
            }
            ready.await;
        }
    }
}

#[derive(Debug, Default)]
struct BrokerState {
    queues: HashMap<String, Arc<Queue>>,
    /// (exchange, routing key) → queue names, for topic exchanges with exact keys.
    bindings: HashMap<(String, String), Vec<String>>,
    /// fanout exchange → queue names.
    fanouts: HashMap<String, Vec<String>>,
}

impl BrokerState {
    fn declare(&mut self, queue: &str) -> Arc<Queue> {
        self.queues.entry(queue.to_owned()).or_default().clone()
    }

    fn bind(&mut self, exchange: &str, key: &str, queue: &str) {
        let bound = self
            .bindings
            .entry((exchange.to_owned(), key.to_owned()))
            .or_default();
        if !bound.iter().any(|q| q == queue) {
            bound.push(queue.to_owned());
        }
    }

    fn delete(&mut self, queue: &str) {
        self.queues.remove(queue);
        for bound in self.bindings.values_mut().chain(self.fanouts.values_mut()) {
            bound.retain(|q| q != queue);
        }
    }

    /// Declares `plan`'s queue and its bindings.
    fn apply(&mut self, plan: &QueuePlan) -> Arc<Queue> {
        let queue = self.declare(&plan.name);
        for (exchange, key) in &plan.bindings {
            match exchange.kind {
                ExchangeKind::Topic => self.bind(&exchange.name, key, &plan.name),
                ExchangeKind::Fanout => {
                    let bound = self.fanouts.entry(exchange.name.to_string()).or_default();
                    if !bound.iter().any(|q| q == &plan.name) {
                        bound.push(plan.name.clone());
                    }
                }
            }
        }
        queue
    }

    fn route(&mut self, destination: &Destination) -> Vec<Arc<Queue>> {
        let route = Route::of(destination);
        if let Some(queue) = route.declared_queue() {
            self.apply(&queue);
        }
        let names: Vec<String> = match &route.exchange {
            None => vec![route.routing_key.into_owned()],
            Some(exchange) => match exchange.kind {
                ExchangeKind::Topic => self.bound(&exchange.name, &route.routing_key),
                ExchangeKind::Fanout => self
                    .fanouts
                    .get(exchange.name.as_ref())
                    .cloned()
                    .unwrap_or_default(),
            },
        };
        names
            .iter()
            .filter_map(|name| self.queues.get(name).cloned())
            .collect()
    }

    fn bound(&self, exchange: &str, key: &str) -> Vec<String> {
        self.bindings
            .get(&(exchange.to_owned(), key.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

/// One named in-process broker.
#[derive(Debug, Default)]
struct Broker {
    state: Mutex<BrokerState>,
}

impl Broker {
    fn state(&self) -> MutexGuard<'_, BrokerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker registered under `name`, created on first use.
    fn named(name: &str) -> Arc<Broker> {
        static BROKERS: OnceLock<Mutex<HashMap<String, Weak<Broker>>>> = OnceLock::new();
        let mut brokers = BROKERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        brokers.retain(|_, broker| broker.strong_count() > 0);
        if let Some(broker) = brokers.get(name).and_then(Weak::upgrade) {
            return broker;
        }
        let broker = Arc::new(Broker::default());
        brokers.insert(name.to_owned(), Arc::downgrade(&broker));
        broker
    }
}

/// Settles a memory delivery. A requeued message goes to the back of its queue with its count
/// raised (as the AMQP driver does it); a delivery dropped unsettled goes back to the head, as
/// an unacked AMQP delivery does when its channel closes.
#[derive(Debug)]
struct MemoryAcker {
    broker: Weak<Broker>,
    queue_name: String,
    queue: Weak<Queue>,
    message: Option<Stored>,
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let (Some(message), Some(queue)) = (self.message.take(), self.queue.upgrade()) {
            queue.restore(message);
        }
    }
}

#[async_trait]
impl Acknowledge for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.message = None;
        Ok(())
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), TransportError> {
        if let (Some(mut message), Some(queue)) = (self.message.take(), self.queue.upgrade()) {
            message.redelivered = true;
            message.requeues = message.requeues.saturating_add(1);
            queue.push(message);
        }
        Ok(())
    }

    async fn reject(mut self: Box<Self>) -> Result<(), TransportError> {
        self.message = None;
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>) -> Result<(), TransportError> {
        if let (Some(message), Some(broker)) = (self.message.take(), self.broker.upgrade()) {
            let dead = broker
                .state()
                .declare(&super::driver::dead_letter_queue(&self.queue_name));
            dead.push_bounded(message, DEAD_LETTER_MAX_LENGTH);
        }
        Ok(())
    }
}

/// The `memory://NAME` driver.
#[derive(Debug)]
pub struct MemoryDriver {
    broker: Arc<Broker>,
    closed: std::sync::atomic::AtomicBool,
}

impl MemoryDriver {
    /// A driver on the process-wide broker called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            broker: Broker::named(name),
            closed: Default::default(),
        }
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            Err(TransportError::Closed)
        } else {
            Ok(())
        }
    }

    /// Feeds `queue` into `sender` until the inbox closes; the channel's capacity plays the
    /// part of AMQP prefetch.
    fn consume(&self, name: String, queue: Arc<Queue>, sender: mpsc::Sender<Delivery>) {
        let broker = Arc::downgrade(&self.broker);
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = sender.closed() => return,
                    permit = sender.reserve() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                let message = tokio::select! {
                    _ = sender.closed() => return,
                    message = queue.pop() => message,
                };
                let acker = MemoryAcker {
                    broker: broker.clone(),
                    queue_name: name.clone(),
                    queue: Arc::downgrade(&queue),
                    message: Some(message.clone()),
                };
                let expiration = message
                    .expires_at
                    .map(|at| at.saturating_duration_since(Instant::now()));
                permit.send(
                    Delivery::new(
                        message.body,
                        message.content_type.to_owned(),
                        message.redelivered,
                        message.requeues,
                        name.clone(),
                        Box::new(acker),
                    )
                    .with_expiration(expiration),
                );
            }
        });
    }
}

#[async_trait]
impl Driver for MemoryDriver {
    async fn publish(
        &self,
        destination: &Destination,
        message: OutgoingMessage,
    ) -> Result<(), TransportError> {
        self.check_open()?;
        let queues = self.broker.state().route(destination);
        if queues.is_empty() && message.mandatory {
            return Err(TransportError::Unroutable {
                destination: destination.to_string(),
            });
        }
        let stored = Stored {
            body: message.body,
            content_type: message.content_type,
            expires_at: message.expiration.map(|ttl| Instant::now() + ttl),
            redelivered: false,
            requeues: 0,
        };
        // A message moved into a dead-letter queue by hand is bounded like one dead-lettered.
        let dead_letter = matches!(destination, Destination::Queue { name }
            if name.ends_with(topology::DEAD_LETTER_SUFFIX));
        for queue in queues {
            if dead_letter {
                queue.push_bounded(stored.clone(), DEAD_LETTER_MAX_LENGTH);
            } else {
                queue.push(stored.clone());
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        subscription: &Subscription,
        options: ConsumeOptions,
    ) -> Result<Inbox, TransportError> {
        self.check_open()?;
        let (sender, receiver) = mpsc::channel(usize::from(options.prefetch.max(1)));
        let plan = SubscriptionPlan::of(subscription);
        let consumed: Vec<(String, Arc<Queue>)> = {
            let mut state = self.broker.state();
            plan.queues
                .iter()
                .map(|queue| (queue.name.clone(), state.apply(queue)))
                .collect()
        };
        let on_close = plan.delete_on_close.map(|queue| {
            let broker = Arc::downgrade(&self.broker);
            Box::pin(async move {
                if let Some(broker) = broker.upgrade() {
                    broker.state().delete(&queue);
                }
            }) as super::driver::CloseHook
        });
        for (name, queue) in consumed {
            self.consume(name, queue, sender.clone());
        }
        Ok(Inbox::new(receiver, on_close))
    }

    async fn open_reply_queue(&self) -> Result<(String, Inbox), TransportError> {
        self.check_open()?;
        let plan = topology::reply_queue_plan();
        let name = plan.name.clone();
        let queue = self.broker.state().apply(&plan);
        let (sender, receiver) = mpsc::channel(usize::from(ConsumeOptions::default().prefetch));
        self.consume(name.clone(), queue, sender);
        let broker = Arc::downgrade(&self.broker);
        let reply_queue = name.clone();
        let on_close: super::driver::CloseHook = Box::pin(async move {
            if let Some(broker) = broker.upgrade() {
                broker.state().delete(&reply_queue);
            }
        });
        Ok((name, Inbox::new(receiver, Some(on_close))))
    }

    async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
    }
}
