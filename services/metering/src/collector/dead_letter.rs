//! **Contract**: where samples the store refuses go, and how the reason travels with them.
//! The collector writes it; `tidings meter dlq` (and operators' scripts) read it.
//!
//! A sample the store refuses on its own merits (see
//! [`StoreError::Refused`](crate::store::StoreError::Refused)) is moved, alone, to the
//! dead-letter queue of the queue it came from, `<queue>.dlq`, as a sample notification of its
//! own: priority `sample`, event type [`EVENT_TYPE`] (`telemetry.polling`), the original
//! publisher id and context, and the payload
//! `{"samples": [<the sample, unchanged>], "dead_letter": {<DeadLetterNote>}}`.
//! The sample keeps its signature, and the payload is one the collector (and Ceilometer's)
//! reads as it is, the note ignored: replaying the message to its queue stores the sample once
//! the cause is fixed.
//!
//! The listener itself dead-letters whole notifications it cannot read (malformed, too large,
//! requeued too often) into the same queues, unchanged and without a note.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tidings::codec::{Notification, NotificationFormat};
use tidings::notify::oslo_timestamp;
use tidings::transport::topology::{self, DEAD_LETTER_SUFFIX};
use tidings::transport::{dead_letter_queue, Destination, OutgoingMessage, TransportError};
use tidings::{Context, Transport};

use crate::retry::Backoff;
use crate::sample::contract::{
    METERING_EVENT_TYPE, METERING_TOPIC, POLLING_EVENT_TYPE, POLLING_TOPIC,
};

/// The event type of a dead-lettered sample: the polling agent's, whose payload carries a
/// list of samples under `samples`.
pub const EVENT_TYPE: &str = POLLING_EVENT_TYPE;
/// The payload key of the note beside the sample.
pub const NOTE_KEY: &str = "dead_letter";
/// The longest reason kept, in bytes (a database's message can quote the data).
pub const MAX_REASON_LEN: usize = 1024;

/// Why and from where a sample was dead-lettered: the `dead_letter` object of the payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterNote {
    /// What the store said, e.g. `postgres 22021: invalid byte sequence for encoding "UTF8": 0x00`.
    pub reason: String,
    /// The queue the sample was taken from, where a replay puts it back.
    pub queue: String,
    /// When it was dead-lettered (ISO 8601, UTC).
    pub at: String,
    /// The `message_id` of the notification that carried it.
    pub message_id: String,
    /// The event type of the notification that carried it.
    pub event_type: String,
}

/// The queue a collector took a notification of `event_type` from: its pool's, else
/// `metering.sample` for the `notifier://` publisher's `metering` event and
/// `notifications.sample` for the rest.
pub fn source_queue(pool: Option<&str>, event_type: &str) -> String {
    match pool {
        Some(pool) => pool.to_owned(),
        None if event_type == METERING_EVENT_TYPE => {
            topology::notification_queue(METERING_TOPIC, "sample")
        }
        None => topology::notification_queue(POLLING_TOPIC, "sample"),
    }
}

/// The dead-letter queues of a collector (of its pool, or of Ceilometer's two queues).
pub fn dead_letter_queues(pool: Option<&str>) -> Vec<String> {
    match pool {
        Some(pool) => vec![dead_letter_queue(pool)],
        None => [POLLING_TOPIC, METERING_TOPIC]
            .into_iter()
            .map(|topic| dead_letter_queue(&topology::notification_queue(topic, "sample")))
            .collect(),
    }
}

/// The queue a dead-letter queue's messages came from (`x.dlq` → `x`); `None` for a name
/// that is not a dead-letter queue's.
pub fn origin_of(dead_letter_queue: &str) -> Option<&str> {
    dead_letter_queue
        .strip_suffix(DEAD_LETTER_SUFFIX)
        .filter(|origin| !origin.is_empty())
}

/// `reason` cut to [`MAX_REASON_LEN`] bytes, on a character boundary.
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_LEN {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// Where a refused sample came from.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub(crate) context: Context,
    pub(crate) publisher_id: String,
    pub(crate) event_type: String,
    pub(crate) message_id: String,
    /// The queue named by the note of a replayed dead letter (taken only if it is one of the
    /// collector's own queues).
    pub(crate) noted_queue: Option<String>,
}

/// The source queue a replayed dead letter's note names, if any.
pub(crate) fn noted_queue(payload: &Value) -> Option<String> {
    payload
        .get(NOTE_KEY)?
        .get("queue")?
        .as_str()
        .map(str::to_owned)
}

/// Moves refused samples to dead-letter queues.
#[derive(Debug)]
pub(crate) struct DeadLetters {
    transport: Transport,
    pool: Option<String>,
}

/// Attempts at publishing one dead letter before the batch is given back to the broker.
const PUBLISH_ATTEMPTS: u32 = 5;
/// Waits between those attempts.
const PUBLISH_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

impl DeadLetters {
    pub(crate) fn new(transport: Transport, pool: Option<String>) -> Self {
        Self { transport, pool }
    }

    /// Publishes `sample` with `reason` to the dead-letter queue of the queue `origin` came
    /// from, with confirms, retrying a few times; an error means it is not there.
    pub(crate) async fn send(
        &self,
        origin: &Origin,
        sample: &Value,
        reason: &str,
    ) -> Result<String, TransportError> {
        // A sample replayed from a dead-letter queue and refused again goes back to the same
        // one: its note names the queue (believed only when it is one of ours, since anyone
        // can publish a note).
        let ours = dead_letter_queues(self.pool.as_deref());
        let queue = match &origin.noted_queue {
            Some(noted) if ours.contains(&dead_letter_queue(noted)) => noted.clone(),
            _ => source_queue(self.pool.as_deref(), &origin.event_type),
        };
        let note = DeadLetterNote {
            reason: bounded_reason(reason),
            queue: queue.clone(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            message_id: origin.message_id.clone(),
            event_type: origin.event_type.clone(),
        };
        let notification = Notification {
            message_id: uuid::Uuid::new_v4().to_string(),
            publisher_id: origin.publisher_id.clone(),
            event_type: EVENT_TYPE.to_owned(),
            priority: "SAMPLE".to_owned(),
            payload: json!({ "samples": [sample], NOTE_KEY: note }),
            timestamp: oslo_timestamp(chrono::Utc::now().naive_utc()),
            unique_id: Some(topology::new_id()),
            context: origin.context.clone(),
        };
        let codec = self.transport.codec();
        let body = codec
            .encode_notification(&notification, NotificationFormat::V2)
            .map_err(|e| TransportError::Driver(format!("dead letter not encoded: {e}")))?;
        let destination = Destination::Queue {
            name: dead_letter_queue(&queue),
        };
        let mut attempt = 0;
        loop {
            let message = OutgoingMessage::new(body.clone(), codec.content_type());
            match self.transport.publish(&destination, message).await {
                Ok(()) => return Ok(destination_name(&destination)),
                Err(error) if attempt + 1 < PUBLISH_ATTEMPTS => {
                    tracing::debug!(%error, %destination, "dead letter not published; retrying");
                    tokio::time::sleep(PUBLISH_RETRY.delay(attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

fn destination_name(destination: &Destination) -> String {
    match destination {
        Destination::Queue { name } => name.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_samples_go_to_the_dead_letter_queue_of_their_queue() {
        assert_eq!(
            source_queue(None, "telemetry.polling"),
            "notifications.sample"
        );
        assert_eq!(source_queue(None, "metering"), "metering.sample");
        assert_eq!(source_queue(Some("pool-a"), "metering"), "pool-a");
        assert_eq!(
            dead_letter_queues(None),
            ["notifications.sample.dlq", "metering.sample.dlq"]
        );
        assert_eq!(dead_letter_queues(Some("pool-a")), ["pool-a.dlq"]);
        assert_eq!(origin_of("metering.sample.dlq"), Some("metering.sample"));
        assert_eq!(origin_of("metering.sample"), None);
        assert_eq!(origin_of(".dlq"), None);
    }

    #[test]
    fn reasons_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(MAX_REASON_LEN);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON_LEN + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(bounded_reason("short"), "short");
    }
}
