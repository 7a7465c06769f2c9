//! Notifications: a [`Notifier`] publishes events; a [`NotificationListener`] consumes them with
//! [`NotificationEndpoint`]s (per priority, filtered, one at a time or in batches) and settles
//! each after handling.

mod endpoint;
mod filter;
mod listener;
mod notifier;
mod priority;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::serve::StopReport;
pub use endpoint::{NotificationEndpoint, Outcome};
pub use filter::Filter;
pub use listener::{
    NotificationListener, NotificationListenerBuilder, DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_REQUEUES,
};
pub use notifier::{oslo_timestamp, Notifier, DEFAULT_TOPIC};
pub use priority::{Priority, UnknownPriority};

use crate::codec::CodecError;
use crate::transport::TransportError;
use crate::Context;

/// The notification's own metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// `message_id` (a uuid with dashes).
    pub message_id: String,
    /// `timestamp`, as sent (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC).
    pub timestamp: String,
}

/// A notification as a handler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingNotification {
    /// The sender's context.
    pub context: Context,
    /// Priority it was sent with.
    pub priority: Priority,
    /// Who sent it, e.g. `compute.host-1`.
    pub publisher_id: String,
    /// What happened, e.g. `compute.instance.create.end`.
    pub event_type: String,
    /// The event's data.
    pub payload: Value,
    /// Message id and timestamp.
    pub metadata: Metadata,
}

impl IncomingNotification {
    /// The payload as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
}

/// A notification that could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The payload did not serialise to JSON.
    #[error("payload of {event_type} could not be serialised: {detail}")]
    Payload {
        /// The event type.
        event_type: String,
        /// What serde said.
        detail: String,
    },
    /// Encoding failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}
