//! The blocking notifier: [`Notifier::notify`] for plain threads, on a [`BlockingTransport`]'s
//! runtime (see [`crate::transport`] for what runs where).

use serde::Serialize;
use tidings::codec::NotificationFormat;
use tidings::notify::{Notifier, NotifyError, Priority};
use tidings::Context;

use crate::error::ClientError;
use crate::transport::BlockingTransport;

/// Publishes notifications from plain threads. Cheap to clone.
///
/// ```
/// use tidings::notify::Priority;
/// use tidings_compat::{BlockingNotifier, BlockingTransport};
///
/// # fn main() -> Result<(), tidings_compat::ClientError> {
/// let transport = BlockingTransport::connect("memory://doc-notifier")?;
/// let notifier = BlockingNotifier::new(&transport, "compute.host-1");
/// notifier.notify(
///     &tidings::Context::new(),
///     Priority::Info,
///     "compute.instance.create.end",
///     serde_json::json!({"id": 7}),
/// )?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct BlockingNotifier {
    transport: BlockingTransport,
    notifier: Notifier,
}

impl BlockingNotifier {
    /// A notifier publishing as `publisher_id` to the `notifications` topic, v2 envelope.
    pub fn new(transport: &BlockingTransport, publisher_id: impl Into<String>) -> Self {
        Self {
            notifier: Notifier::new(transport.transport(), publisher_id),
            transport: transport.clone(),
        }
    }

    /// A copy to override fields on.
    #[must_use]
    pub fn prepare(&self) -> Self {
        self.clone()
    }

    /// The async notifier underneath, for code that is async already.
    pub fn as_async(&self) -> &Notifier {
        &self.notifier
    }

    /// Publishes as `publisher_id`.
    #[must_use]
    pub fn publisher_id(mut self, publisher_id: impl Into<String>) -> Self {
        self.notifier = self.notifier.publisher_id(publisher_id);
        self
    }

    /// Publishes to each of `topics`.
    #[must_use]
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.notifier = self.notifier.topics(topics);
        self
    }

    /// Publishes to `exchange` instead of the control exchange.
    #[must_use]
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.notifier = self.notifier.exchange(exchange);
        self
    }

    /// Envelope (v2) or bare body (v1).
    #[must_use]
    pub fn format(mut self, format: NotificationFormat) -> Self {
        self.notifier = self.notifier.format(format);
        self
    }

    /// Publishes one notification to every topic and blocks until each is confirmed.
    pub fn notify(
        &self,
        context: &Context,
        priority: Priority,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), ClientError> {
        // Serialised on the caller's thread, so `payload` need not be `Send` or `'static`.
        let payload = serde_json::to_value(payload).map_err(|error| {
            ClientError::Notify(NotifyError::Payload {
                event_type: event_type.to_owned(),
                detail: error.to_string(),
            })
        })?;
        let (notifier, context, event_type) = (
            self.notifier.clone(),
            context.clone(),
            event_type.to_owned(),
        );
        self.transport
            .block_on("BlockingNotifier::notify", async move {
                notifier
                    .notify(&context, priority, &event_type, payload)
                    .await
            })??;
        Ok(())
    }

    /// [`notify`](Self::notify) at `info`.
    pub fn info(
        &self,
        context: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), ClientError> {
        self.notify(context, Priority::Info, event_type, payload)
    }

    /// [`notify`](Self::notify) at `warn`.
    pub fn warn(
        &self,
        context: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), ClientError> {
        self.notify(context, Priority::Warn, event_type, payload)
    }

    /// [`notify`](Self::notify) at `error`.
    pub fn error(
        &self,
        context: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), ClientError> {
        self.notify(context, Priority::Error, event_type, payload)
    }

    /// [`notify`](Self::notify) at `sample` (metering).
    pub fn sample(
        &self,
        context: &Context,
        event_type: &str,
        payload: impl Serialize,
    ) -> Result<(), ClientError> {
        self.notify(context, Priority::Sample, event_type, payload)
    }
}
