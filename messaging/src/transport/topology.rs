//! oslo.messaging's layout of exchanges and queues, worked out once: the names its rabbit driver
//! makes, which queues a [`Subscription`] consumes and how they are bound, and where a
//! [`Destination`] is routed. Both drivers apply these plans — the AMQP one by declaring them on
//! the broker with the flags of its options, the memory one in its in-process broker — so they
//! cannot disagree about what exists.

use std::borrow::Cow;

use uuid::Uuid;

use super::driver::{Destination, Subscription};

/// The default control exchange of oslo.messaging.
pub const DEFAULT_CONTROL_EXCHANGE: &str = "openstack";

/// `<topic>_fanout`: the fanout exchange of a topic.
pub fn fanout_exchange(topic: &str) -> String {
    format!("{topic}_fanout")
}

/// `<topic>_fanout_<32 hex>`: one server's fanout queue.
pub fn fanout_queue(topic: &str) -> String {
    format!("{topic}_fanout_{}", Uuid::new_v4().simple())
}

/// `<topic>.<server>`: a server's own queue and its routing key.
pub fn server_queue(topic: &str, server: &str) -> String {
    format!("{topic}.{server}")
}

/// `reply_<32 hex>`: a client process's reply queue.
pub fn reply_queue() -> String {
    format!("reply_{}", Uuid::new_v4().simple())
}

/// The suffix of dead-letter queues' names.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// `<topic>.<priority>`: a notification queue and its routing key.
pub fn notification_queue(topic: &str, priority: &str) -> String {
    format!("{topic}.{priority}")
}

/// A fresh 32-hex identifier (`_msg_id`, `_unique_id`): a version-4 UUID without dashes, as
/// oslo's `uuid.uuid4().hex`.
///
/// The random bits come from the thread's `fastrand` generator rather than the operating
/// system: every message carries at least one of these, and `Uuid::new_v4` made a `getrandom`
/// system call for each. They identify messages (duplicates, replies); they are not secrets,
/// which is what the OS generator is for.
pub fn new_id() -> String {
    let mut text = [0u8; uuid::fmt::Simple::LENGTH];
    new_uuid().simple().encode_lower(&mut text).to_owned()
}

/// A fresh version-4 UUID from the thread's `fastrand` generator (see [`new_id`]).
pub(crate) fn new_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

/// The kinds of exchange oslo uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// A topic exchange (the control exchange, `nova`, `ceilometer`, …), routed by exact keys.
    Topic,
    /// A `<topic>_fanout` exchange: every bound queue gets every message.
    Fanout,
}

/// An exchange in the layout.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExchangePlan<'a> {
    /// Its name.
    pub name: Cow<'a, str>,
    /// Its kind.
    pub kind: ExchangeKind,
}

impl<'a> ExchangePlan<'a> {
    /// A topic exchange called `name`.
    pub fn topic(name: impl Into<Cow<'a, str>>) -> Self {
        Self {
            name: name.into(),
            kind: ExchangeKind::Topic,
        }
    }

    /// The fanout exchange of `topic`.
    pub fn fanout_of(topic: &str) -> Self {
        Self {
            name: Cow::Owned(fanout_exchange(topic)),
            kind: ExchangeKind::Fanout,
        }
    }

    /// The same plan owning its strings.
    pub fn into_owned(self) -> ExchangePlan<'static> {
        ExchangePlan {
            name: Cow::Owned(self.name.into_owned()),
            kind: self.kind,
        }
    }
}

/// What a queue is for, which decides its flags (each driver maps a role to its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueRole {
    /// A queue shared by consumers and kept by the broker (`<topic>`, `<topic>.<server>`,
    /// notification and pool queues, dead-letter queues): durable when the operator asks.
    Shared,
    /// One RPC server's `<topic>_fanout_<hex>` queue: transient, expires when unused, deleted
    /// when the server stops.
    Fanout,
    /// One client's `reply_<hex>` queue: transient, unbound, expires when unused.
    Reply,
    /// A `<queue>.dlq` dead-letter queue: shared, with a length limit where the driver has one.
    DeadLetter,
}

/// A queue of the layout with the bindings that feed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuePlan {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub role: QueueRole,
    /// `(exchange, routing key)` pairs bound to it.
    pub bindings: Vec<(ExchangePlan<'static>, String)>,
}

impl QueuePlan {
    fn new(name: impl Into<String>, role: QueueRole) -> Self {
        Self {
            name: name.into(),
            role,
            bindings: Vec::new(),
        }
    }

    fn bound(mut self, exchange: ExchangePlan<'static>, key: impl Into<String>) -> Self {
        self.bindings.push((exchange, key.into()));
        self
    }
}

/// The queues one subscription consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionPlan {
    /// Queues to declare, bind and consume, in order.
    pub queues: Vec<QueuePlan>,
    /// A queue to delete when the subscription closes (an RPC server's fanout queue).
    pub delete_on_close: Option<String>,
}

impl SubscriptionPlan {
    /// oslo's layout for `subscription`.
    pub fn of(subscription: &Subscription) -> Self {
        match subscription {
            Subscription::RpcServer {
                exchange,
                topic,
                server,
            } => {
                let exchange = ExchangePlan::topic(exchange.clone());
                let server_queue = server_queue(topic, server);
                let fanout = fanout_queue(topic);
                Self {
                    queues: vec![
                        QueuePlan::new(topic.clone(), QueueRole::Shared)
                            .bound(exchange.clone(), topic.clone()),
                        QueuePlan::new(server_queue.clone(), QueueRole::Shared)
                            .bound(exchange, server_queue),
                        QueuePlan::new(fanout.clone(), QueueRole::Fanout)
                            .bound(ExchangePlan::fanout_of(topic), topic.clone()),
                    ],
                    delete_on_close: Some(fanout),
                }
            }
            Subscription::Queue { name } => Self {
                queues: vec![QueuePlan::new(name.clone(), named_queue_role(name))],
                delete_on_close: None,
            },
            Subscription::Notifications {
                exchange,
                topics,
                priorities,
                pool,
            } => {
                let exchange = ExchangePlan::topic(exchange.clone());
                let mut queues: Vec<QueuePlan> = Vec::new();
                for topic in topics {
                    for priority in priorities {
                        let key = notification_queue(topic, priority);
                        // With a pool, one queue named after it takes every key.
                        let name = pool.clone().unwrap_or_else(|| key.clone());
                        match queues.iter_mut().find(|q| q.name == name) {
                            Some(queue) => queue.bindings.push((exchange.clone(), key)),
                            None => queues.push(
                                QueuePlan::new(name, QueueRole::Shared)
                                    .bound(exchange.clone(), key),
                            ),
                        }
                    }
                }
                Self {
                    queues,
                    delete_on_close: None,
                }
            }
        }
    }
}

/// The role of a queue known only by its name ([`Subscription::Queue`], [`Destination::Queue`]).
/// Dead-letter queues are named `<queue>.dlq`: whoever declares one, the listener that fills it,
/// a consumer that drains it or a publisher that moves a message into it, declares it alike.
fn named_queue_role(name: &str) -> QueueRole {
    if name.ends_with(DEAD_LETTER_SUFFIX) {
        QueueRole::DeadLetter
    } else {
        QueueRole::Shared
    }
}

/// A fresh reply queue's plan.
pub fn reply_queue_plan() -> QueuePlan {
    QueuePlan::new(reply_queue(), QueueRole::Reply)
}

/// Where one publish goes, borrowed from its destination where it can be (this is worked out
/// for every message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// The exchange published to; `None` is the default exchange, which routes by queue name.
    pub exchange: Option<ExchangePlan<'a>>,
    /// The routing key.
    pub routing_key: Cow<'a, str>,
    /// Whether the queue named by the routing key is declared (and bound) before publishing,
    /// as oslo's notifier does so that nothing is lost before a listener exists.
    pub declares_queue: bool,
}

impl<'a> Route<'a> {
    /// oslo's route for `destination`.
    pub fn of(destination: &'a Destination) -> Self {
        match destination {
            Destination::Rpc {
                exchange,
                routing_key,
            } => Self {
                exchange: Some(ExchangePlan::topic(exchange.as_str())),
                routing_key: Cow::Borrowed(routing_key),
                declares_queue: false,
            },
            Destination::Fanout { topic } => Self {
                exchange: Some(ExchangePlan::fanout_of(topic)),
                routing_key: Cow::Borrowed(""),
                declares_queue: false,
            },
            Destination::Reply { queue } => Self {
                exchange: None,
                routing_key: Cow::Borrowed(queue),
                declares_queue: false,
            },
            Destination::Notification {
                exchange,
                topic,
                priority,
            } => Self {
                exchange: Some(ExchangePlan::topic(exchange.as_str())),
                routing_key: Cow::Owned(notification_queue(topic, priority)),
                declares_queue: true,
            },
            Destination::Queue { name } => Self {
                exchange: None,
                routing_key: Cow::Borrowed(name),
                declares_queue: true,
            },
        }
    }

    /// The queue this route declares before publishing, bound by its own name.
    pub fn declared_queue(&self) -> Option<QueuePlan> {
        if !self.declares_queue {
            return None;
        }
        Some(match &self.exchange {
            Some(exchange) => QueuePlan::new(self.routing_key.as_ref(), QueueRole::Shared)
                .bound(exchange.clone().into_owned(), self.routing_key.as_ref()),
            None => QueuePlan::new(
                self.routing_key.as_ref(),
                named_queue_role(&self.routing_key),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_server_consumes_topic_server_and_fanout_queues() {
        let plan = SubscriptionPlan::of(&Subscription::RpcServer {
            exchange: "nova".into(),
            topic: "compute".into(),
            server: "host-1".into(),
        });
        let names: Vec<&str> = plan.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names[..2], ["compute", "compute.host-1"]);
        assert!(names[2].starts_with("compute_fanout_"));
        assert_eq!(plan.delete_on_close.as_deref(), Some(names[2]));
        assert_eq!(
            plan.queues[1].bindings,
            [(ExchangePlan::topic("nova"), "compute.host-1".to_owned())]
        );
        assert_eq!(plan.queues[2].role, QueueRole::Fanout);
        assert_eq!(plan.queues[2].bindings[0].0.name, "compute_fanout");
    }

    #[test]
    fn a_pool_is_one_queue_bound_with_every_key() {
        let plan = SubscriptionPlan::of(&Subscription::Notifications {
            exchange: "ceilometer".into(),
            topics: vec!["notifications".into()],
            priorities: vec!["info".into(), "sample".into()],
            pool: Some("collector".into()),
        });
        assert_eq!(plan.queues.len(), 1);
        let keys: Vec<&str> = plan.queues[0]
            .bindings
            .iter()
            .map(|(_, k)| k.as_str())
            .collect();
        assert_eq!(keys, ["notifications.info", "notifications.sample"]);
    }

    #[test]
    fn notifications_declare_their_queue_before_publishing() {
        let destination = Destination::Notification {
            exchange: "ceilometer".into(),
            topic: "metering".into(),
            priority: "sample".into(),
        };
        let route = Route::of(&destination);
        assert_eq!(route.routing_key, "metering.sample");
        let queue = route.declared_queue().unwrap();
        assert_eq!(queue.name, "metering.sample");
        assert_eq!(queue.bindings[0].0, ExchangePlan::topic("ceilometer"));
        let reply = Destination::Reply {
            queue: "reply_x".into(),
        };
        assert_eq!(Route::of(&reply).exchange, None);
        assert_eq!(Route::of(&reply).declared_queue(), None);
    }

    #[test]
    fn a_named_queue_is_declared_unbound_and_a_dlq_name_as_a_dead_letter_queue() {
        let dlq = Destination::Queue {
            name: "metering.sample.dlq".into(),
        };
        let route = Route::of(&dlq);
        assert_eq!(route.exchange, None);
        assert_eq!(route.routing_key, "metering.sample.dlq");
        let queue = route.declared_queue().unwrap();
        assert_eq!(queue.role, QueueRole::DeadLetter);
        assert!(queue.bindings.is_empty());
        let back = Destination::Queue {
            name: "metering.sample".into(),
        };
        assert_eq!(
            Route::of(&back).declared_queue().unwrap().role,
            QueueRole::Shared
        );
    }

    #[test]
    fn ids_are_fresh_version_4_hex() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 32);
            assert!(id
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            let parsed = Uuid::parse_str(id).map(|u| u.get_version_num());
            assert_eq!(parsed.ok(), Some(4), "{id}");
        }
    }
}
