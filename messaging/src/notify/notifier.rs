//! The notifier: publishes events (`publisher_id`, `event_type`, priority, payload) to one or
//! more topics, as oslo.messaging's `Notifier` with the `messagingv2` (default) or `messaging`
//! driver does.

use bytes::Bytes;
use serde::Serialize;
use tracing::Instrument;

use super::{NotifyError, Priority};
use crate::codec::{json_payload, Codec, NotificationFormat, NotificationParts, Payload};
use crate::transport::{topology, Destination, OutgoingMessage, Transport};
use crate::Context;

/// The default notification topic.
pub const DEFAULT_TOPIC: &str = "notifications";

/// Publishes notifications. Cheap to clone; [`prepare`](Self::prepare) copies it to override
/// the publisher id or topics.
///
/// ```
/// # async fn demo(transport: &tidings::Transport) -> Result<(), tidings::notify::NotifyError> {
/// use tidings::notify::Notifier;
/// let notifier = Notifier::new(transport, "compute.host-1");
/// notifier
///     .info(&tidings::Context::new(), "compute.instance.create.end", serde_json::json!({"id": 7}))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Notifier {
    transport: Transport,
    publisher_id: String,
    topics: Vec<String>,
    exchange: Option<String>,
    format: NotificationFormat,
}

impl Notifier {
    /// A notifier publishing as `publisher_id` to the `notifications` topic, v2 envelope.
    pub fn new(transport: &Transport, publisher_id: impl Into<String>) -> Self {
        Self {
            transport: transport.clone(),
            publisher_id: publisher_id.into(),
            topics: vec![DEFAULT_TOPIC.to_owned()],
            exchange: None,
            format: NotificationFormat::V2,
        }
    }

    /// A copy to override fields on.
    #[must_use]
    pub fn prepare(&self) -> Self {
        self.clone()
    }

    /// Publishes as `publisher_id`.
    #[must_use]
    pub fn publisher_id(mut self, publisher_id: impl Into<String>) -> Self {
        self.publisher_id = publisher_id.into();
        self
    }

    /// Publishes to each of `topics`.
    #[must_use]
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Publishes to `exchange` instead of the control exchange.
    #[must_use]
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Envelope (v2, oslo's `messagingv2` driver) or bare body (v1, the `messaging` driver).
    #[must_use]
    pub fn format(mut self, format: NotificationFormat) -> Self {
        self.format = format;
        self
    }

    /// Publishes one notification to every topic, each confirmed by the broker. The context is
    /// sent as given (oslo drops plain-dict contexts; tidings does not).
    pub async fn notify(
        &self,
        context: &Context,
        priority: Priority,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), NotifyError> {
        let span = tracing::info_span!("notify.send", event_type, %priority, publisher_id = %self.publisher_id);
        async {
            let codec = self.transport.codec();
            // oslo JSON takes the payload as serde_json writes it; otherwise it is built as a
            // value first (and so is a payload whose text may hold a typed value, to be checked).
            let written = match codec {
                Codec::OsloJson => json_payload(&payload),
                Codec::MessagePack => None,
            };
            let tree;
            let payload = match &written {
                Some(raw) => Payload::Json(raw),
                None => {
                    tree = serde_json::to_value(payload).map_err(|error| NotifyError::Payload {
                        event_type: event_type.to_owned(),
                        detail: error.to_string(),
                    })?;
                    Payload::Tree(&tree)
                }
            };
            let mut message_id = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let timestamp = oslo_timestamp(chrono::Utc::now().naive_utc());
            let unique_id = topology::new_id();
            // Encoded from borrowed parts: the context and payload are not copied per event.
            let notification = NotificationParts {
                message_id: topology::new_uuid()
                    .hyphenated()
                    .encode_lower(&mut message_id),
                publisher_id: &self.publisher_id,
                event_type,
                priority: priority.as_wire(),
                payload,
                timestamp: &timestamp,
                unique_id: Some(&unique_id),
                context,
            };
            let body = Bytes::from(codec.encode_notification_parts(notification, self.format)?);
            let exchange = self
                .exchange
                .as_deref()
                .unwrap_or(self.transport.control_exchange());
            for topic in &self.topics {
                let destination = Destination::Notification {
                    exchange: exchange.to_owned(),
                    topic: topic.clone(),
                    priority: priority.as_key().to_owned(),
                };
                let message = OutgoingMessage::new(body.clone(), codec.content_type());
                self.transport.publish(&destination, message).await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// [`notify`](Self::notify) at `audit`.
    pub async fn audit(
        &self,
        ctx: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), NotifyError> {
        self.notify(ctx, Priority::Audit, event_type, payload).await
    }

    /// [`notify`](Self::notify) at `debug`.
    pub async fn debug(
        &self,
        ctx: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), NotifyError> {
        self.notify(ctx, Priority::Debug, event_type, payload).await
    }

    /// [`notify`](Self::notify) at `info`.
    pub async fn info(
        &self,
        ctx: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), NotifyError> {
        self.notify(ctx, Priority::Info, event_type, payload).await
    }

    /// [`notify`](Self::notify) at `warn`.
    pub async fn warn(
        &self,
        ctx: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), NotifyError> {
        self.notify(ctx, Priority::Warn, event_type, payload).await
    }

    /// [`notify`](Self::notify) at `error`.
    pub async fn error(
        &self,
        ctx: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), NotifyError> {
        self.notify(ctx, Priority::Error, event_type, payload).await
    }

    /// [`notify`](Self::notify) at `critical`.
    pub async fn critical(
        &self,
        ctx: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), NotifyError> {
        self.notify(ctx, Priority::Critical, event_type, payload)
            .await
    }

    /// [`notify`](Self::notify) at `sample`.
    pub async fn sample(
        &self,
        ctx: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), NotifyError> {
        self.notify(ctx, Priority::Sample, event_type, payload)
            .await
    }
}

/// Python's `str(datetime.utcnow())`: `YYYY-MM-DD HH:MM:SS.ffffff`, without the fraction when
/// the microseconds are zero.
pub fn oslo_timestamp(at: chrono::NaiveDateTime) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    // Written directly: chrono's `format` interprets its pattern on every call, and every
    // notification carries a timestamp. Years outside 0..=9999 and leap seconds keep chrono's
    // own rendering.
    if (0..=9999).contains(&at.year()) && at.nanosecond() < 1_000_000_000 {
        let mut text = String::with_capacity(26);
        let _ = write!(
            text,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            at.year(),
            at.month(),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        );
        let micros = at.nanosecond() / 1000;
        if micros != 0 {
            let _ = write!(text, ".{micros:06}");
        }
        return text;
    }
    if at.nanosecond() / 1000 == 0 {
        at.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_pythons() {
        let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 22)
            .and_then(|d| d.and_hms_micro_opt(19, 28, 40, 220_652))
            .unwrap();
        assert_eq!(oslo_timestamp(at), "2026-11-22 19:28:40.220652");
        let whole = chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .and_then(|d| d.and_hms_opt(3, 4, 5))
            .unwrap();
        assert_eq!(oslo_timestamp(whole), "2026-01-02 03:04:05");
    }

    #[test]
    fn timestamps_match_chronos_rendering() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 9).unwrap();
        for (h, m, s, micro) in [
            (0, 0, 0, 1),
            (23, 59, 59, 999_999),
            (7, 5, 3, 40),
            (1, 2, 3, 0),
        ] {
            let at = day.and_hms_micro_opt(h, m, s, micro).unwrap();
            let chrono_text = if micro == 0 {
                at.format("%Y-%m-%d %H:%M:%S").to_string()
            } else {
                at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
            };
            assert_eq!(oslo_timestamp(at), chrono_text);
        }
    }
}
