//! Notifications the agent cannot meter, moved to the dead-letter queue of the queue they came
//! from (`notifications.info.dlq`, …) with the reason, in the collector's note format (see
//! [`crate::collector::dead_letter`]): the same publisher, event type, priority, timestamp and
//! context, and the payload `{"payload": <the original>, "dead_letter": <note>}`.

use std::time::Duration;

use serde_json::json;
use tidings::codec::{Notification, NotificationFormat};
use tidings::notify::IncomingNotification;
use tidings::transport::topology;
use tidings::transport::{dead_letter_queue, Destination, OutgoingMessage, TransportError};
use tidings::Transport;

use crate::collector::dead_letter::{bounded_reason, DeadLetterNote, NOTE_KEY};
use crate::retry::Backoff;

/// Attempts at publishing one dead letter before the batch goes back to the broker.
const PUBLISH_ATTEMPTS: u32 = 5;
/// Waits between those attempts.
const PUBLISH_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

#[derive(Debug)]
pub(super) struct DeadLetters {
    transport: Transport,
}

impl DeadLetters {
    pub(super) fn new(transport: Transport) -> Self {
        Self { transport }
    }

    /// Publishes `notification` with `reason` to `<queue>.dlq`, with confirms, retrying a few
    /// times; an error means it is not there.
    pub(super) async fn send(
        &self,
        queue: &str,
        notification: &IncomingNotification,
        reason: &str,
    ) -> Result<(), TransportError> {
        let note = DeadLetterNote {
            reason: bounded_reason(reason),
            queue: queue.to_owned(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            message_id: notification.metadata.message_id.clone(),
            event_type: notification.event_type.clone(),
        };
        let letter = Notification {
            message_id: uuid::Uuid::new_v4().to_string(),
            publisher_id: notification.publisher_id.clone(),
            event_type: notification.event_type.clone(),
            priority: notification.priority.as_wire().to_owned(),
            payload: json!({ "payload": notification.payload, NOTE_KEY: note }),
            timestamp: notification.metadata.timestamp.clone(),
            unique_id: Some(topology::new_id()),
            context: notification.context.clone(),
        };
        let codec = self.transport.codec();
        let body = codec
            .encode_notification(&letter, NotificationFormat::V2)
            .map_err(|e| TransportError::Driver(format!("dead letter not encoded: {e}")))?;
        let destination = Destination::Queue {
            name: dead_letter_queue(queue),
        };
        let mut attempt = 0;
        loop {
            let message = OutgoingMessage::new(body.clone(), codec.content_type());
            match self.transport.publish(&destination, message).await {
                Ok(()) => return Ok(()),
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
