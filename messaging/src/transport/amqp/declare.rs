//! Exchanges and queues declared exactly as oslo.messaging's rabbit driver declares them: the
//! same names, flags and arguments, or the broker refuses one side with PRECONDITION_FAILED.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::options::AmqpOptions;
use crate::transport::topology::{ExchangeKind as PlannedKind, ExchangePlan, QueuePlan, QueueRole};

/// An exchange to declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ExchangeSpec {
    pub(super) name: String,
    pub(super) fanout: bool,
    pub(super) durable: bool,
    pub(super) auto_delete: bool,
}

impl ExchangeSpec {
    /// A topic exchange for RPC and notifications (`openstack`, `nova`, …).
    pub(super) fn topic(name: &str, options: &AmqpOptions) -> Self {
        Self {
            name: name.to_owned(),
            fanout: false,
            durable: options.durable(),
            auto_delete: options.auto_delete,
        }
    }

    /// A `<topic>_fanout` exchange: fanout, transient, auto-delete.
    fn fanout(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            fanout: true,
            durable: false,
            auto_delete: true,
        }
    }

    /// The exchange of the layout's `plan`, with oslo's flags for its kind.
    pub(super) fn of(plan: &ExchangePlan<'_>, options: &AmqpOptions) -> Self {
        match plan.kind {
            PlannedKind::Topic => Self::topic(&plan.name, options),
            PlannedKind::Fanout => Self::fanout(&plan.name),
        }
    }

    pub(super) async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let kind = if self.fanout {
            ExchangeKind::Fanout
        } else {
            ExchangeKind::Topic
        };
        channel
            .exchange_declare(
                self.name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: self.durable,
                    auto_delete: self.auto_delete,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
    }
}

/// A queue to declare, with the bindings that feed it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct QueueSpec {
    pub(super) name: String,
    pub(super) durable: bool,
    pub(super) auto_delete: bool,
    pub(super) arguments: Vec<(&'static str, AMQPValue)>,
    pub(super) bindings: Vec<(ExchangeSpec, String)>,
}

impl QueueSpec {
    /// The queue of the layout's `plan`, with oslo's flags and arguments for its role.
    pub(super) fn of(plan: &QueuePlan, options: &AmqpOptions) -> Self {
        let mut spec = match plan.role {
            QueueRole::Shared => Self::topic(&plan.name, options),
            QueueRole::Fanout | QueueRole::Reply => Self::transient(&plan.name, options),
            QueueRole::DeadLetter => Self::dead_letter(&plan.name, options),
        };
        spec.bindings = plan
            .bindings
            .iter()
            .map(|(exchange, key)| (ExchangeSpec::of(exchange, options), key.clone()))
            .collect();
        spec
    }

    /// `<topic>` or `<topic>.<server>` (or a notification queue): bound by its own name unless
    /// given other keys; quorum arguments when asked for.
    pub(super) fn topic(name: &str, options: &AmqpOptions) -> Self {
        let mut arguments = Vec::new();
        if options.quorum_queues {
            arguments.push(("x-queue-type", AMQPValue::LongString("quorum".into())));
            if options.quorum_delivery_limit > 0 {
                arguments.push((
                    "x-delivery-limit",
                    long_int(u64::from(options.quorum_delivery_limit)),
                ));
            }
        }
        Self {
            name: name.to_owned(),
            durable: options.durable(),
            auto_delete: options.auto_delete,
            arguments,
            bindings: Vec::new(),
        }
    }

    /// A `<queue>.dlq` dead-letter queue: declared like a topic queue, with a length limit and
    /// an overflow policy when the options set one.
    pub(super) fn dead_letter(name: &str, options: &AmqpOptions) -> Self {
        let mut spec = Self::topic(name, options);
        if options.dead_letter_max_length > 0 {
            spec.arguments.push((
                "x-max-length",
                long_int(u64::from(options.dead_letter_max_length)),
            ));
            spec.arguments.push((
                "x-overflow",
                AMQPValue::LongString(options.dead_letter_overflow.as_str().into()),
            ));
        }
        spec
    }

    /// A server's `<topic>_fanout_<hex>` queue or a client's `reply_<hex>` queue: transient,
    /// expiring when unused.
    fn transient(name: &str, options: &AmqpOptions) -> Self {
        Self {
            name: name.to_owned(),
            durable: false,
            auto_delete: false,
            arguments: vec![("x-expires", expires(options))],
            bindings: Vec::new(),
        }
    }

    /// Declares the queue, its exchanges and bindings.
    pub(super) async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let mut arguments = FieldTable::default();
        for (key, value) in &self.arguments {
            arguments.insert((*key).into(), value.clone());
        }
        channel
            .queue_declare(
                self.name.as_str().into(),
                QueueDeclareOptions {
                    durable: self.durable,
                    auto_delete: self.auto_delete,
                    exclusive: false,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        for (exchange, key) in &self.bindings {
            exchange.declare(channel).await?;
            channel
                .queue_bind(
                    self.name.as_str().into(),
                    exchange.name.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// `x-expires` in milliseconds, typed as Python's AMQP client types small integers (a signed
/// 32-bit "long"), so re-declarations from either side are equivalent.
fn expires(options: &AmqpOptions) -> AMQPValue {
    long_int(u64::try_from(options.transient_queues_ttl.as_millis()).unwrap_or(u64::MAX))
}

fn long_int(value: u64) -> AMQPValue {
    match i32::try_from(value) {
        Ok(small) => AMQPValue::LongInt(small),
        Err(_) => AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
    }
}
