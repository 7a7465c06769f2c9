//! The notification agent: what every OpenStack service already announces on the bus
//! (`compute.instance.create.end`, `volume.create.end`, `image.upload`, …) becomes samples, by
//! the declarative definitions of Ceilometer's `meters.yaml`, as Ceilometer's notification
//! agent makes them.
//!
//! - **Listens** like Ceilometer's: queues `<topic>.<priority>` (topic `notifications`) for all
//!   seven priorities, each bound to every configured control exchange
//!   ([`config::DEFAULT_CONTROL_EXCHANGES`] by default), in batches. `info` and `sample` are
//!   processed; `audit`, `debug`, `warn`, `error` and `critical` are consumed and dropped.
//! - **Makes samples** with [`definitions`] (the dialect is [`jsonpath`]'s), and re-publishes
//!   the polling agent's `telemetry.polling` samples, as Ceilometer's `TelemetryIpc` does (both
//!   agents listen on `notifications.sample` of exchange `ceilometer`).
//! - **Publishes** as Ceilometer's `notifier://` publisher: one notification per processed
//!   notification that gave at least one sample (or, with
//!   [`NotificationConfig::group_samples`], one per batch: the same format, fewer messages), priority `sample`, event type `metering`,
//!   publisher id `telemetry.publisher.<host>`, on exchange `ceilometer`, topic `metering`
//!   (routing key `metering.sample`), the payload the list of meter messages, each signed with
//!   the telemetry secret ([`crate::sample::contract`]). The collector (tidings' or Python's)
//!   takes them from there.
//! - **Bad notifications never stop it and never loop**: where Ceilometer raises and requeues
//!   forever (a timestamp that does not parse, a list or object as volume, a sample type that is
//!   not gauge/delta/cumulative, a payload that is not an object), the notification goes to the
//!   dead-letter queue of its queue (`notifications.info.dlq`, …) with the reason, in the note
//!   format of [`crate::collector::dead_letter`]: the payload becomes `{"payload": <the
//!   original>, "dead_letter": {reason, queue, at, message_id, event_type}}`, so `tidings meter
//!   dlq list --queue notifications.info.dlq` shows why, and a replay is processed as the
//!   original. Notifications the listener cannot read at all (no timestamp, an unknown
//!   priority, not JSON) it dead-letters itself, unchanged, counting the reason.
//!
//! [`NotificationAgent::start`] runs it without the engine; [`manifold`] declares it;
//! [`NotificationConfig`] says how; [`check`] is `tidings meter check-definitions`.

pub mod check;
pub mod config;
mod dead_letter;
pub mod definitions;
pub mod jsonpath;
mod manifold;
mod telemetry;
pub mod timestamp;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings::notify::{
    IncomingNotification, NotificationEndpoint, NotificationListener, Notifier, Outcome, Priority,
};
use tidings::transport::TransportError;
use tidings::{Context, Target, Transport};

pub use self::config::{NotificationConfig, DEFAULT_CONTROL_EXCHANGES, DEFAULT_TOPIC};
pub use self::definitions::{DefinitionSet, MeterDefinitions, Source};
pub use self::manifold::{manifold, NotificationInputs};

use self::dead_letter::DeadLetters;
use self::definitions::{Fatal, Finished, SampleOptions};
use crate::collector::dead_letter::{DeadLetterNote, NOTE_KEY};
use crate::sample::contract::{EXCHANGE, METERING_EVENT_TYPE, METERING_TOPIC, POLLING_EVENT_TYPE};

/// The publisher id of the samples: Ceilometer's `telemetry.publisher.<host>`.
pub fn publisher_id(host: &str) -> String {
    format!("telemetry.publisher.{host}")
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotificationError {
    /// The meter definitions could not be loaded.
    #[error(transparent)]
    Definitions(#[from] definitions::LoadError),
    /// A listener could not subscribe.
    #[error("notification listener on topic {topic}: {source}")]
    Listener {
        /// The topic.
        topic: String,
        /// Why.
        source: TransportError,
    },
    /// Nothing to listen to.
    #[error("no control exchange or no topic to listen on")]
    NothingToListenTo,
}

/// What the agent has done since it started; shown in the worker's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationReport {
    /// Notifications received, all priorities.
    pub received: u64,
    /// Notifications of a priority Ceilometer does not meter (audit, debug, warn, error,
    /// critical), dropped.
    pub ignored_priority: u64,
    /// Notifications no definition matched.
    pub unmatched: u64,
    /// Notifications that gave samples.
    pub metered: u64,
    /// Samples published.
    pub samples_published: u64,
    /// Notifications published (one per metered notification).
    pub messages_published: u64,
    /// Samples dropped as Ceilometer drops them, by kind (`no_volume`, …).
    pub samples_dropped: BTreeMap<String, u64>,
    /// Notifications dead-lettered, by kind (`bad_timestamp`, …).
    pub dead_lettered: BTreeMap<String, u64>,
    /// Notifications the listeners dead-lettered unread, unchanged (no timestamp, an unknown
    /// priority, not decodable, too large).
    pub dead_lettered_unread: u64,
    /// Batches given back to the broker because a publish failed.
    pub publish_failures: u64,
    /// Definitions loaded now.
    pub definitions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    ignored_priority: AtomicU64,
    unmatched: AtomicU64,
    metered: AtomicU64,
    samples_published: AtomicU64,
    messages_published: AtomicU64,
    publish_failures: AtomicU64,
    definitions: AtomicU64,
    samples_dropped: Mutex<BTreeMap<&'static str, u64>>,
    dead_lettered: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, kind: &'static str, n: u64) {
    if let Ok(mut map) = map.lock() {
        *map.entry(kind).or_default() += n;
    }
}

impl Counters {
    fn report(&self) -> NotificationReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let owned = |m: &Mutex<BTreeMap<&'static str, u64>>| {
            m.lock()
                .map(|m| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
                .unwrap_or_default()
        };
        NotificationReport {
            received: load(&self.received),
            ignored_priority: load(&self.ignored_priority),
            unmatched: load(&self.unmatched),
            metered: load(&self.metered),
            samples_published: load(&self.samples_published),
            messages_published: load(&self.messages_published),
            samples_dropped: owned(&self.samples_dropped),
            dead_lettered: owned(&self.dead_lettered),
            dead_lettered_unread: 0,
            publish_failures: load(&self.publish_failures),
            definitions: load(&self.definitions),
        }
    }
}

/// What became of one notification.
enum Verdict {
    /// Nothing to publish.
    Nothing,
    /// Samples to publish in one notification.
    Publish(Vec<Value>),
    /// To the dead-letter queue, with the reason.
    DeadLetter(Box<IncomingNotification>, Fatal),
}

/// The state the handlers share.
#[derive(Debug)]
struct Shared {
    definitions: MeterDefinitions,
    options: SampleOptions,
    secret: String,
    notifier: Notifier,
    dead_letters: DeadLetters,
    counters: Counters,
    group_samples: bool,
}

/// The most samples one grouped message carries.
const MAX_GROUPED_SAMPLES: usize = 1000;

/// The samples of several notifications in as few messages as `max` allows (one
/// notification's samples may straddle two).
fn group(publishes: Vec<Vec<Value>>, max: usize) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = Vec::new();
    for sample in publishes.into_iter().flatten() {
        match out.last_mut() {
            Some(last) if last.len() < max => last.push(sample),
            _ => out.push(vec![sample]),
        }
    }
    out
}

impl Shared {
    /// Processes a batch of one priority from `topic`'s queues: samples published (one
    /// notification each, in parallel), bad notifications dead-lettered; any publish that
    /// fails gives the whole batch back to the broker.
    async fn handle(
        &self,
        topic: &str,
        priority: Priority,
        batch: Vec<IncomingNotification>,
    ) -> Result<Outcome, String> {
        let n = batch.len() as u64;
        self.counters.received.fetch_add(n, Ordering::Relaxed);
        if !matches!(priority, Priority::Info | Priority::Sample) {
            self.counters
                .ignored_priority
                .fetch_add(n, Ordering::Relaxed);
            return Ok(Outcome::Handled);
        }
        let definitions = self
            .definitions
            .snapshot()
            .map_err(|e| format!("meter definitions: {e}"))?;
        self.counters
            .definitions
            .store(definitions.len() as u64, Ordering::Relaxed);
        let mut publishes = Vec::new();
        let mut dead = Vec::new();
        for notification in batch {
            match self.process(&definitions, notification) {
                Verdict::Nothing => {}
                Verdict::Publish(samples) => publishes.push(samples),
                Verdict::DeadLetter(notification, fatal) => dead.push((notification, fatal)),
            }
        }
        if self.group_samples && publishes.len() > 1 {
            publishes = group(publishes, MAX_GROUPED_SAMPLES);
        }
        let context = Context::new();
        let sent = futures::future::join_all(
            publishes
                .iter()
                .map(|samples| self.notifier.sample(&context, METERING_EVENT_TYPE, samples)),
        )
        .await;
        let mut failure = None;
        for (samples, result) in publishes.iter().zip(sent) {
            match result {
                Ok(()) => {
                    self.counters
                        .messages_published
                        .fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .samples_published
                        .fetch_add(samples.len() as u64, Ordering::Relaxed);
                }
                Err(error) => failure = Some(error.to_string()),
            }
        }
        let queue = tidings::transport::topology::notification_queue(topic, priority.as_key());
        let lettered = futures::future::join_all(
            dead.iter()
                .map(|(n, fatal)| self.dead_letters.send(&queue, n, &fatal.reason)),
        )
        .await;
        for ((notification, fatal), result) in dead.iter().zip(lettered) {
            match result {
                Ok(()) => {
                    tracing::warn!(
                        event_type = %cut(&notification.event_type),
                        message_id = %cut(&notification.metadata.message_id),
                        reason = %fatal.reason,
                        "notification dead-lettered"
                    );
                    bump(&self.counters.dead_lettered, fatal.kind, 1);
                }
                Err(error) => failure = Some(format!("dead letter not published: {error}")),
            }
        }
        match failure {
            None => Ok(Outcome::Handled),
            Some(error) => {
                self.counters
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// What one notification gives.
    fn process(&self, definitions: &DefinitionSet, mut n: IncomingNotification) -> Verdict {
        unwrap_replayed(&mut n.payload);
        if n.event_type == POLLING_EVENT_TYPE {
            return match telemetry::republish(&n.payload, &self.secret) {
                Ok((samples, dropped)) => {
                    for kind in dropped {
                        bump(&self.counters.samples_dropped, kind, 1);
                    }
                    self.verdict(samples)
                }
                Err(fatal) => Verdict::DeadLetter(Box::new(n), fatal),
            };
        }
        if !definitions.any_match(&n.event_type) {
            self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
            return Verdict::Nothing;
        }
        if !n.payload.is_object() {
            let fatal = Fatal::new("payload_not_an_object", "the payload is not an object");
            return Verdict::DeadLetter(Box::new(n), fatal);
        }
        // The root takes the notification's parts; they come back out for a dead letter.
        let root = definitions::root(
            std::mem::take(&mut n.context).into_map(),
            std::mem::take(&mut n.publisher_id),
            std::mem::take(&mut n.event_type),
            std::mem::take(&mut n.payload),
            std::mem::take(&mut n.metadata.message_id),
            std::mem::take(&mut n.metadata.timestamp),
        );
        let result = definitions.evaluate(&root, &self.options);
        let fatal = match result {
            Err(error) => Some(Fatal::new("too_many_matches", error.to_string())),
            Ok(outcomes) => {
                let mut samples = Vec::new();
                let mut fatal = None;
                for outcome in outcomes {
                    match outcome.result {
                        Err(f) => {
                            fatal = Some(Fatal::new(
                                f.kind,
                                format!("definition {}: {}", outcome.definition, f.reason),
                            ));
                            break;
                        }
                        Ok(finished) => {
                            for f in finished {
                                match f {
                                    Finished::Sample(sample) => samples.push(Value::Object(
                                        sample.to_message(&new_id(), &self.secret),
                                    )),
                                    Finished::Dropped { kind, .. } => {
                                        bump(&self.counters.samples_dropped, kind, 1);
                                    }
                                }
                            }
                        }
                    }
                }
                if fatal.is_none() {
                    return self.verdict(samples);
                }
                fatal
            }
        };
        let fatal = fatal.unwrap_or_else(|| Fatal::new("unknown", "unknown"));
        Verdict::DeadLetter(Box::new(back_from_root(root, n)), fatal)
    }

    fn verdict(&self, samples: Vec<Value>) -> Verdict {
        if samples.is_empty() {
            Verdict::Nothing
        } else {
            self.counters.metered.fetch_add(1, Ordering::Relaxed);
            Verdict::Publish(samples)
        }
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn cut(text: &str) -> String {
    text.chars().take(128).collect()
}

/// A notification's parts taken back from its evaluation root.
fn back_from_root(root: Value, mut n: IncomingNotification) -> IncomingNotification {
    let Value::Object(mut root) = root else {
        return n;
    };
    let mut text = |key: &str| match root.remove(key) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    n.publisher_id = text("publisher_id");
    n.event_type = text("event_type");
    n.payload = root.remove("payload").unwrap_or(Value::Null);
    if let Some(Value::Object(mut metadata)) = root.remove("metadata") {
        let mut text = |key: &str| match metadata.remove(key) {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        n.metadata.message_id = text("message_id");
        n.metadata.timestamp = text("timestamp");
    }
    if let Some(Value::Object(mut context)) = root.remove("ctxt") {
        if context.get("client_timeout") == Some(&Value::Null) {
            context.remove("client_timeout");
        }
        n.context = Context::from(context);
    }
    n
}

/// A dead letter replayed to its queue is processed as the notification it was: a payload
/// `{"payload": <original>, "dead_letter": <note>}` becomes the original.
fn unwrap_replayed(payload: &mut Value) {
    let Value::Object(map) = payload else {
        return;
    };
    if map.len() != 2 || !map.contains_key("payload") {
        return;
    }
    let is_note = map
        .get(NOTE_KEY)
        .is_some_and(|note| serde_json::from_value::<DeadLetterNote>(note.clone()).is_ok());
    if is_note {
        *payload = map.remove("payload").unwrap_or(Value::Null);
    }
}

/// The agent's counters, readable while it runs and after (without the listeners' own
/// dead-lettering, which [`NotificationAgent::report`] adds).
#[derive(Clone, Debug)]
pub struct NotificationStatus(Arc<Shared>);

impl NotificationStatus {
    /// The counters so far.
    pub fn report(&self) -> NotificationReport {
        self.0.counters.report()
    }
}

/// A running notification agent.
#[derive(Debug)]
pub struct NotificationAgent {
    listeners: Vec<NotificationListener>,
    shared: Arc<Shared>,
    stop_deadline: Duration,
}

impl NotificationAgent {
    /// Loads the definitions (unless loaded already), subscribes, and starts.
    pub async fn start(
        transport: &Transport,
        config: NotificationConfig,
    ) -> Result<Self, NotificationError> {
        if config.control_exchanges.is_empty() || config.topics.is_empty() {
            return Err(NotificationError::NothingToListenTo);
        }
        let loaded = config.definitions.snapshot()?;
        let notifier = Notifier::new(transport, publisher_id(&config.host))
            .exchange(EXCHANGE)
            .topics([METERING_TOPIC]);
        let shared = Arc::new(Shared {
            definitions: config.definitions.clone(),
            options: config.samples.clone(),
            secret: config.telemetry_secret.clone().unwrap_or_default(),
            notifier,
            dead_letters: DeadLetters::new(transport.clone()),
            counters: Counters::default(),
            group_samples: config.group_samples,
        });
        shared
            .counters
            .definitions
            .store(loaded.len() as u64, Ordering::Relaxed);
        let mut listeners = Vec::new();
        for topic in &config.topics {
            let mut endpoint = NotificationEndpoint::new();
            for priority in Priority::ALL {
                let shared = shared.clone();
                let topic = topic.clone();
                endpoint = endpoint.on_batch(priority, move |batch| {
                    let shared = shared.clone();
                    let topic = topic.clone();
                    async move { shared.handle(&topic, priority, batch).await }
                });
            }
            let targets = config
                .control_exchanges
                .iter()
                .map(|exchange| Target::topic(topic.clone()).with_exchange(exchange.clone()))
                .collect();
            let started = NotificationListener::builder(transport, targets)
                .endpoint(endpoint)
                .allow_requeue(true)
                .max_concurrency(config.max_batches_in_flight)
                .batch(config.batch_size, config.batch_timeout)
                .start()
                .await;
            match started {
                Ok(listener) => listeners.push(listener),
                Err(source) => {
                    for listener in listeners {
                        listener.stop(config.stop_deadline).await;
                    }
                    return Err(NotificationError::Listener {
                        topic: topic.clone(),
                        source,
                    });
                }
            }
        }
        tracing::info!(
            exchanges = config.control_exchanges.len(),
            topics = ?config.topics,
            definitions = loaded.len(),
            "notification agent listening"
        );
        Ok(Self {
            listeners,
            shared,
            stop_deadline: config.stop_deadline,
        })
    }

    /// The counters so far.
    pub fn report(&self) -> NotificationReport {
        let mut report = self.shared.counters.report();
        for listener in &self.listeners {
            let refused = listener.refusals();
            report.dead_lettered_unread += refused.malformed + refused.too_large;
        }
        report
    }

    /// A handle on the counters that outlives the agent (for reports).
    pub fn status(&self) -> NotificationStatus {
        NotificationStatus(self.shared.clone())
    }

    /// Resolves when a listener ends on its own (its transport closed). Cancellation safe.
    pub async fn stopped(&self) {
        let all = self.listeners.iter().map(|l| Box::pin(l.stopped()));
        futures::future::select_all(all).await;
    }

    /// Stops consuming and lets batches in flight finish within the configured deadline.
    pub async fn stop(self) {
        let deadline = self.stop_deadline;
        futures::future::join_all(self.listeners.into_iter().map(|l| l.stop(deadline))).await;
    }
}
