//! Options of the AMQP driver, read from the transport URL's query string with oslo.messaging's
//! option names where oslo has one, so one URL configures both Python and Rust peers alike.

use std::path::PathBuf;
use std::time::Duration;

use crate::url::{bad_option, Scheme, TransportUrl, UrlError};

/// Every query option the AMQP driver reads. Any other is named in a warning when the transport
/// opens, so that a typo does not silently change nothing.
pub const KNOWN_OPTIONS: &[&str] = &[
    "heartbeat",
    "amqp_durable_queues",
    "amqp_auto_delete",
    "rabbit_quorum_queue",
    "rabbit_quorum_delivery_limit",
    "rabbit_transient_queues_ttl",
    "rabbit_retry_interval",
    "rabbit_interval_max",
    "publish_recovery_timeout",
    "connection_timeout",
    "dead_letter_max_length",
    "dead_letter_overflow",
    "max_unconfirmed_publishes",
    "ssl",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_enforce_fips_mode",
];

/// Bounds of the options given in seconds: a retry interval of 0 would spin, and one of 10^12
/// seconds never retries; both are mistakes worth an error at start.
const RETRY_INTERVAL_BOUNDS: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
const TIMEOUT_BOUNDS: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(24 * 3600));
/// RabbitMQ's `x-expires` is a 32-bit count of milliseconds; a queue TTL beyond 30 days is a typo.
const QUEUE_TTL_BOUNDS: (u64, u64) = (1, 30 * 24 * 3600);
/// Most publishes of one driver waiting for their confirm at once, unless the URL says
/// otherwise (`max_unconfirmed_publishes`). Past it a burst waits in its callers' futures rather
/// than as frames and confirm slots in lapin, whose queues keep the capacity a burst gave them
/// for the life of the connection: three frames a publish, so 256 in flight left a frame queue
/// of 1024 entries (384 KiB) on each publishing connection after 10 000 calls at once, and 64
/// leave a quarter of it. Calls, casts, fanout and notifications measured the same with 64 as
/// with 256 and 1024 on a local broker; 32 carried fewer casts.
pub const DEFAULT_MAX_UNCONFIRMED_PUBLISHES: usize = 64;
/// Bounds of `max_unconfirmed_publishes`: none would never publish, and the window is what
/// bounds the frames lapin queues (and keeps) per connection.
pub(super) const UNCONFIRMED_PUBLISHES_BOUNDS: (usize, usize) = (1, 4096);

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
    /// Most publishes of one transport waiting for their publisher confirm at once
    /// (`max_unconfirmed_publishes`, default 64, from 1 to 4096). More publishes wait in their
    /// callers until confirms come back. Raise it where confirms take long to come back (a
    /// broker far away, quorum queues replicating over a slow network): throughput is at most
    /// this many publishes per confirm's round trip.
    pub max_unconfirmed_publishes: usize,
    /// TLS, as oslo.messaging configures it (`ssl`, `ssl_ca_file`, `ssl_cert_file`,
    /// `ssl_key_file`); always on for `amqps://`.
    pub tls: TlsOptions,
}

/// TLS settings of the AMQP connections. Certificates are always verified: against the
/// system's roots, and the CA file's when one is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Connect over TLS (`ssl`; implied by `amqps://` and by any of the files below).
    pub enabled: bool,
    /// PEM file of CA certificates trusted beside the system's (`ssl_ca_file`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate presented to the broker (`ssl_cert_file`; needs `ssl_key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM (PKCS#8) private key of the client certificate (`ssl_key_file`).
    pub key_file: Option<PathBuf>,
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
            max_unconfirmed_publishes: DEFAULT_MAX_UNCONFIRMED_PUBLISHES,
            tls: TlsOptions::default(),
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
            let key = "rabbit_transient_queues_ttl";
            let v = within(v, key, QUEUE_TTL_BOUNDS, "a whole number of seconds")?;
            options.transient_queues_ttl = Duration::from_secs(v);
        }
        if let Some(v) = url.option_parsed::<f64>("rabbit_retry_interval")? {
            options.retry_interval = seconds(v, "rabbit_retry_interval", RETRY_INTERVAL_BOUNDS)?;
        }
        if let Some(v) = url.option_parsed::<f64>("rabbit_interval_max")? {
            options.retry_interval_max = seconds(v, "rabbit_interval_max", RETRY_INTERVAL_BOUNDS)?;
        }
        if options.retry_interval_max < options.retry_interval {
            return Err(bad_option(
                "rabbit_interval_max",
                &format!("{}", options.retry_interval_max.as_secs_f64()),
                "at least rabbit_retry_interval",
            ));
        }
        if let Some(v) = url.option_parsed::<f64>("publish_recovery_timeout")? {
            options.publish_recovery_timeout =
                seconds(v, "publish_recovery_timeout", TIMEOUT_BOUNDS)?;
        }
        if let Some(v) = url.option_parsed::<f64>("connection_timeout")? {
            options.connection_timeout = seconds(v, "connection_timeout", TIMEOUT_BOUNDS)?;
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
        if let Some(v) = url.option_parsed::<usize>("max_unconfirmed_publishes")? {
            let key = "max_unconfirmed_publishes";
            options.max_unconfirmed_publishes =
                within(v, key, UNCONFIRMED_PUBLISHES_BOUNDS, "a whole number")?;
        }
        options.tls = TlsOptions::from_url(url)?;
        Ok(options)
    }

    /// The query options of `url` that no part of the driver reads, in order.
    pub fn unknown_options(url: &TransportUrl) -> Vec<&str> {
        url.options()
            .map(|(key, _)| key)
            .filter(|key| !KNOWN_OPTIONS.contains(key))
            .collect()
    }

    /// Durability of topic exchanges and queues: oslo makes them durable for either option.
    pub fn durable(&self) -> bool {
        self.durable_queues || self.quorum_queues
    }
}

impl TlsOptions {
    /// oslo.messaging's TLS options from the URL's query; `amqps://` turns TLS on.
    pub fn from_url(url: &TransportUrl) -> Result<Self, UrlError> {
        if url.option_bool("ssl_enforce_fips_mode")? == Some(true) {
            return Err(bad_option(
                "ssl_enforce_fips_mode",
                "true",
                "false: FIPS mode is not available in this build (its TLS library is not \
                 FIPS-validated)",
            ));
        }
        let file = |key: &str| -> Result<Option<PathBuf>, UrlError> {
            match url.option(key) {
                None => Ok(None),
                Some("") => Err(bad_option(key, "", "a path to a PEM file")),
                Some(path) => Ok(Some(PathBuf::from(path))),
            }
        };
        let tls = Self {
            ca_file: file("ssl_ca_file")?,
            cert_file: file("ssl_cert_file")?,
            key_file: file("ssl_key_file")?,
            enabled: false,
        };
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            let (given, missing) = if tls.cert_file.is_some() {
                ("ssl_cert_file", "ssl_key_file")
            } else {
                ("ssl_key_file", "ssl_cert_file")
            };
            return Err(bad_option(
                given,
                "(set)",
                &format!("to be given together with {missing}"),
            ));
        }
        let files = tls.ca_file.is_some() || tls.cert_file.is_some();
        let enabled = match url.option_bool("ssl")? {
            Some(false) if url.scheme() == Scheme::Amqps => {
                return Err(bad_option("ssl", "false", "true (or absent) with amqps://"))
            }
            Some(false) if files => {
                return Err(bad_option(
                    "ssl",
                    "false",
                    "true (or absent) when TLS files are given",
                ))
            }
            Some(asked) => asked || url.scheme() == Scheme::Amqps,
            None => files || url.scheme() == Scheme::Amqps,
        };
        Ok(Self { enabled, ..tls })
    }
}

/// `value` if it lies within the bounds, else an error naming `key` and saying it takes `what`
/// from `low` to `high`.
fn within<T: PartialOrd + Copy + std::fmt::Display>(
    value: T,
    key: &str,
    (low, high): (T, T),
    what: &str,
) -> Result<T, UrlError> {
    if (low..=high).contains(&value) {
        Ok(value)
    } else {
        Err(bad_option(
            key,
            &value.to_string(),
            &format!("{what} from {low} to {high}"),
        ))
    }
}

fn seconds(value: f64, key: &str, (low, high): (Duration, Duration)) -> Result<Duration, UrlError> {
    match Duration::try_from_secs_f64(value) {
        Ok(duration) if (low..=high).contains(&duration) => Ok(duration),
        _ => Err(bad_option(
            key,
            &value.to_string(),
            &format!(
                "a number of seconds from {} to {}",
                low.as_secs_f64(),
                high.as_secs_f64()
            ),
        )),
    }
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
    fn intervals_out_of_bounds_are_refused_by_name() {
        for (query, key) in [
            ("rabbit_retry_interval=0", "rabbit_retry_interval"),
            (
                "rabbit_retry_interval=1000000000000",
                "rabbit_retry_interval",
            ),
            ("rabbit_interval_max=-1", "rabbit_interval_max"),
            (
                "rabbit_retry_interval=5&rabbit_interval_max=1",
                "rabbit_interval_max",
            ),
            ("connection_timeout=0", "connection_timeout"),
            ("publish_recovery_timeout=NaN", "publish_recovery_timeout"),
            (
                "rabbit_transient_queues_ttl=0",
                "rabbit_transient_queues_ttl",
            ),
        ] {
            let url: TransportUrl = format!("rabbit://h/?{query}").parse().unwrap();
            let error = AmqpOptions::from_url(&url).unwrap_err().to_string();
            assert!(error.contains(key), "{query}: {error}");
        }
        let url: TransportUrl = "rabbit://h/?rabbit_retry_interval=0.05&rabbit_interval_max=60"
            .parse()
            .unwrap();
        let o = AmqpOptions::from_url(&url).unwrap();
        assert_eq!(o.retry_interval, Duration::from_millis(50));
    }

    #[test]
    fn tls_follows_oslo_options_and_the_scheme() {
        let parse = |u: &str| AmqpOptions::from_url(&u.parse::<TransportUrl>().unwrap());
        assert!(!parse("rabbit://h/").unwrap().tls.enabled);
        assert!(parse("rabbit://h/?ssl=1").unwrap().tls.enabled);
        assert!(parse("amqps://h/").unwrap().tls.enabled);
        let tls = parse("rabbit://h/?ssl_ca_file=/ca.pem").unwrap().tls;
        assert!(tls.enabled);
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let tls = parse("rabbit://h/?ssl=true&ssl_cert_file=/c.pem&ssl_key_file=/k.pem")
            .unwrap()
            .tls;
        assert!(tls.cert_file.is_some() && tls.key_file.is_some());
        for (url, key) in [
            ("rabbit://h/?ssl_cert_file=/c.pem", "ssl_cert_file"),
            ("rabbit://h/?ssl_key_file=/k.pem", "ssl_key_file"),
            ("amqps://h/?ssl=0", "ssl"),
            ("rabbit://h/?ssl=0&ssl_ca_file=/ca.pem", "ssl"),
            (
                "rabbit://h/?ssl_enforce_fips_mode=true",
                "ssl_enforce_fips_mode",
            ),
            ("rabbit://h/?ssl=maybe", "ssl"),
        ] {
            let error = parse(url).unwrap_err().to_string();
            assert!(error.contains(key), "{url}: {error}");
        }
        assert!(
            !parse("rabbit://h/?ssl_enforce_fips_mode=false")
                .unwrap()
                .tls
                .enabled
        );
    }

    #[test]
    fn unknown_options_are_found_by_name() {
        let url: TransportUrl = "rabbit://h/?heartbeat=5&rabit_quorum_queue=1&ssl=1&colour=blue"
            .parse()
            .unwrap();
        assert_eq!(
            AmqpOptions::unknown_options(&url),
            ["rabit_quorum_queue", "colour"]
        );
    }

    #[test]
    fn the_window_of_unconfirmed_publishes_is_bounded() {
        let parse = |u: &str| AmqpOptions::from_url(&u.parse::<TransportUrl>().unwrap());
        assert_eq!(
            parse("rabbit://h/").unwrap().max_unconfirmed_publishes,
            DEFAULT_MAX_UNCONFIRMED_PUBLISHES
        );
        let o = parse("rabbit://h/?max_unconfirmed_publishes=1024").unwrap();
        assert_eq!(o.max_unconfirmed_publishes, 1024);
        for value in ["0", "4097", "-1", "18446744073709551616", "many"] {
            let error = parse(&format!("rabbit://h/?max_unconfirmed_publishes={value}"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("max_unconfirmed_publishes"),
                "{value}: {error}"
            );
        }
    }

    #[test]
    fn bad_option_values_are_named() {
        let url: TransportUrl = "rabbit://h/?heartbeat=often".parse().unwrap();
        let error = AmqpOptions::from_url(&url).unwrap_err().to_string();
        assert!(error.contains("heartbeat"), "{error}");
    }
}
