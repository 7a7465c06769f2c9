//! Options of the AMQP driver, read from the transport URL's query string with oslo.messaging's
//! option names where oslo has one, so one URL configures both Python and Rust peers alike.

use std::time::Duration;

use crate::url::{TransportUrl, UrlError};

/// How the AMQP driver declares queues and keeps its connections.
#[derive(Clone, Debug, PartialEq)]
pub struct AmqpOptions {
    /// AMQP heartbeat in seconds (`heartbeat`, default 60; 0 disables).
    pub heartbeat: u16,
    /// Declare topic exchanges and queues durable (`amqp_durable_queues`, default false).
    pub durable_queues: bool,
    /// Declare exchanges and topic queues auto-delete (`amqp_auto_delete`, default false).
    pub auto_delete: bool,
    /// Declare topic queues as quorum queues (`rabbit_quorum_queue`, default false).
    pub quorum_queues: bool,
    /// `x-delivery-limit` of quorum queues (`rabbit_quorum_delivery_limit`, 0 = none).
    pub quorum_delivery_limit: u32,
    /// `x-expires` of fanout and reply queues (`rabbit_transient_queues_ttl`, default 1800 s).
    pub transient_queues_ttl: Duration,
    /// First delay between reconnection attempts (`rabbit_retry_interval`, default 0.2 s).
    pub retry_interval: Duration,
    /// Cap of the reconnection delay (`rabbit_interval_max`, default 3 s: a returning broker is
    /// noticed quickly).
    pub retry_interval_max: Duration,
    /// How long a publish waits for a lost connection to come back before failing
    /// (`publish_recovery_timeout`, default 30 s).
    pub publish_recovery_timeout: Duration,
    /// How long opening the transport waits for the first connection (`connection_timeout`,
    /// seconds, default 10).
    pub connection_timeout: Duration,
    /// Most messages a dead-letter queue keeps (`dead_letter_max_length`, default 10 000; 0
    /// for no limit), so that a peer sending junk cannot fill the broker's disk.
    pub dead_letter_max_length: u32,
    /// What a full dead-letter queue does (`dead_letter_overflow`, default `drop-head`: the
    /// oldest message goes; `reject-publish` keeps the old ones and the new one is requeued).
    pub dead_letter_overflow: DeadLetterOverflow,
}

/// What a full dead-letter queue does with one more message (RabbitMQ's `x-overflow`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeadLetterOverflow {
    /// The oldest message is dropped.
    #[default]
    DropHead,
    /// The new message is refused; the listener puts it back in its queue.
    RejectPublish,
}

impl DeadLetterOverflow {
    /// RabbitMQ's name of the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterOverflow::DropHead => "drop-head",
            DeadLetterOverflow::RejectPublish => "reject-publish",
        }
    }
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            heartbeat: 60,
            durable_queues: false,
            auto_delete: false,
            quorum_queues: false,
            quorum_delivery_limit: 0,
            transient_queues_ttl: Duration::from_secs(1800),
            retry_interval: Duration::from_millis(200),
            retry_interval_max: Duration::from_secs(3),
            publish_recovery_timeout: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(10),
            dead_letter_max_length: 10_000,
            dead_letter_overflow: DeadLetterOverflow::DropHead,
        }
    }
}

impl AmqpOptions {
    /// Defaults overridden by the URL's query options.
    pub fn from_url(url: &TransportUrl) -> Result<Self, UrlError> {
        let mut options = Self::default();
        if let Some(v) = url.option_parsed::<u16>("heartbeat")? {
            options.heartbeat = v;
        }
        if let Some(v) = url.option_bool("amqp_durable_queues")? {
            options.durable_queues = v;
        }
        if let Some(v) = url.option_bool("amqp_auto_delete")? {
            options.auto_delete = v;
        }
        if let Some(v) = url.option_bool("rabbit_quorum_queue")? {
            options.quorum_queues = v;
        }
        if let Some(v) = url.option_parsed::<u32>("rabbit_quorum_delivery_limit")? {
            options.quorum_delivery_limit = v;
        }
        if let Some(v) = url.option_parsed::<u64>("rabbit_transient_queues_ttl")? {
            options.transient_queues_ttl = Duration::from_secs(v);
        }
        if let Some(v) = url.option_parsed::<f64>("rabbit_retry_interval")? {
            options.retry_interval = seconds(v, "rabbit_retry_interval")?;
        }
        if let Some(v) = url.option_parsed::<f64>("rabbit_interval_max")? {
            options.retry_interval_max = seconds(v, "rabbit_interval_max")?;
        }
        if let Some(v) = url.option_parsed::<f64>("publish_recovery_timeout")? {
            options.publish_recovery_timeout = seconds(v, "publish_recovery_timeout")?;
        }
        if let Some(v) = url.option_parsed::<f64>("connection_timeout")? {
            options.connection_timeout = seconds(v, "connection_timeout")?;
        }
        if let Some(v) = url.option_parsed::<u32>("dead_letter_max_length")? {
            options.dead_letter_max_length = v;
        }
        if let Some(v) = url.option("dead_letter_overflow") {
            options.dead_letter_overflow = match v {
                "drop-head" => DeadLetterOverflow::DropHead,
                "reject-publish" => DeadLetterOverflow::RejectPublish,
                other => {
                    return Err(UrlError::BadOption {
                        key: "dead_letter_overflow".to_owned(),
                        value: other.to_owned(),
                        expected: "drop-head or reject-publish".to_owned(),
                    })
                }
            };
        }
        Ok(options)
    }

    /// Durability of topic exchanges and queues: oslo makes them durable for either option.
    pub fn durable(&self) -> bool {
        self.durable_queues || self.quorum_queues
    }
}

fn seconds(value: f64, key: &str) -> Result<Duration, UrlError> {
    Duration::try_from_secs_f64(value).map_err(|_| UrlError::BadOption {
        key: key.to_owned(),
        value: value.to_string(),
        expected: "a non-negative number of seconds".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_options_override_defaults() {
        let url: TransportUrl = "rabbit://h/?heartbeat=10&amqp_durable_queues=true&rabbit_quorum_queue=1&rabbit_quorum_delivery_limit=5&rabbit_interval_max=1.5"
            .parse()
            .unwrap();
        let o = AmqpOptions::from_url(&url).unwrap();
        assert_eq!(o.heartbeat, 10);
        assert!(o.durable_queues && o.quorum_queues && o.durable());
        assert_eq!(o.quorum_delivery_limit, 5);
        assert_eq!(o.retry_interval_max, Duration::from_millis(1500));
    }

    #[test]
    fn dead_letter_queues_are_bounded_unless_told_otherwise() {
        let o = AmqpOptions::default();
        assert_eq!(o.dead_letter_max_length, 10_000);
        assert_eq!(o.dead_letter_overflow, DeadLetterOverflow::DropHead);
        let url: TransportUrl =
            "rabbit://h/?dead_letter_max_length=5&dead_letter_overflow=reject-publish"
                .parse()
                .unwrap();
        let o = AmqpOptions::from_url(&url).unwrap();
        assert_eq!(o.dead_letter_max_length, 5);
        assert_eq!(o.dead_letter_overflow.as_str(), "reject-publish");
        let url: TransportUrl = "rabbit://h/?dead_letter_overflow=explode".parse().unwrap();
        assert!(AmqpOptions::from_url(&url).is_err());
    }

    #[test]
    fn bad_option_values_are_named() {
        let url: TransportUrl = "rabbit://h/?heartbeat=often".parse().unwrap();
        let error = AmqpOptions::from_url(&url).unwrap_err().to_string();
        assert!(error.contains("heartbeat"), "{error}");
    }
}
