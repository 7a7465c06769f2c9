//! Transports: a connection to a message bus, chosen by URL, with the driver behind one trait.
//!
//! [`Transport`] is what users hold: cheap to clone, shared by clients, servers, notifiers and
//! listeners of one process. It owns the driver, the codec used for outgoing messages and the
//! control exchange. It knows nothing of RPC or notifications: the layers above keep what they
//! share per transport (the RPC reply queue) as [`Attachment`]s, which close with it.

pub mod amqp;
mod driver;
mod error;
pub mod memory;
mod merge;
pub mod topology;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

pub use driver::{
    dead_letter_queue, sink_from_task, Acknowledge, CloseHook, ConsumeOptions, ConsumerHealth,
    Delivery, DeliverySink, Destination, Driver, Inbox, OutgoingMessage, Subscription,
    TransportStats,
};
pub use error::TransportError;

pub(crate) use driver::{ack_without_waiting, sink_guarded};
pub(crate) use merge::Merge;

use crate::codec::Codec;
use crate::url::{Scheme, TransportUrl};

/// State that a layer above the driver keeps once per transport (the RPC layer's reply queue),
/// made on first use by [`Transport::attachment`] and told when the transport closes.
pub trait Attachment: Any + Send + Sync + Default {
    /// The transport is closing: stop what this attachment runs.
    fn on_close(&self);
}

type Attached = Arc<dyn Any + Send + Sync>;
type CloseAttachment = Box<dyn Fn() + Send + Sync>;

/// The default largest message body: 16 MiB, RabbitMQ 4's own default limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Options of a transport that are not in its URL.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// Codec of outgoing messages; servers reply in the codec of each request.
    pub codec: Codec,
    /// Exchange used by targets without one (oslo's `control_exchange`).
    pub control_exchange: String,
    /// The largest message body sent or accepted (default 16 MiB). A larger one is refused on
    /// publish with [`TransportError::MessageTooLarge`], and on receipt is never decoded:
    /// servers drop it, listeners dead-letter it, the reply queue drops it, each counted and
    /// logged with its size.
    pub max_message_size: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            codec: Codec::default(),
            control_exchange: topology::DEFAULT_CONTROL_EXCHANGE.to_owned(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl TransportOptions {
    /// The same options with `codec` for outgoing messages.
    #[must_use]
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The same options with `exchange` as the control exchange.
    #[must_use]
    pub fn control_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.control_exchange = exchange.into();
        self
    }

    /// The same options with `limit` as the largest message body.
    #[must_use]
    pub fn max_message_size(mut self, limit: usize) -> Self {
        self.max_message_size = limit;
        self
    }
}

/// A connection to a message bus. Clone it freely: clones share the driver and reply queue.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    url: TransportUrl,
    options: TransportOptions,
    driver: Arc<dyn Driver>,
    attachments: Mutex<HashMap<TypeId, (Attached, CloseAttachment)>>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("url", &self.inner.url)
            .field("codec", &self.inner.options.codec)
            .field("control_exchange", &self.inner.options.control_exchange)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Connects to `url` with default options.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tidings::transport::TransportError> {
    /// let transport = tidings::Transport::connect("memory://doc").await?;
    /// # drop(transport); Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, TransportError> {
        Self::connect_with(url.parse()?, TransportOptions::default()).await
    }

    /// Connects to `url` with `options`.
    pub async fn connect_with(
        url: TransportUrl,
        options: TransportOptions,
    ) -> Result<Self, TransportError> {
        let driver: Arc<dyn Driver> = match url.scheme() {
            Scheme::Memory => Arc::new(memory::MemoryDriver::new(url.memory_name().unwrap_or(""))),
            Scheme::Rabbit | Scheme::Amqp | Scheme::Amqps => {
                Arc::new(amqp::AmqpDriver::connect(&url).await?)
            }
        };
        Ok(Self::from_driver(url, options, driver))
    }

    /// A transport over a driver built elsewhere.
    pub fn from_driver(
        url: TransportUrl,
        options: TransportOptions,
        driver: Arc<dyn Driver>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                url,
                options,
                driver,
                attachments: Mutex::default(),
            }),
        }
    }

    /// Whether the transport can carry messages now, or what it waits for (see
    /// [`Driver::health`]).
    pub fn health(&self) -> Result<(), String> {
        self.inner.driver.health()
    }

    /// Counters of the transport's connections and consumers since it opened.
    pub fn stats(&self) -> TransportStats {
        self.inner.driver.stats()
    }

    /// The URL this transport was opened with (prints without passwords).
    pub fn url(&self) -> &TransportUrl {
        &self.inner.url
    }

    /// Codec of outgoing messages.
    pub fn codec(&self) -> Codec {
        self.inner.options.codec
    }

    /// The exchange used by targets without one.
    pub fn control_exchange(&self) -> &str {
        &self.inner.options.control_exchange
    }

    /// The largest message body sent or accepted.
    pub fn max_message_size(&self) -> usize {
        self.inner.options.max_message_size
    }

    /// Whether a received body is too large to be decoded.
    pub fn is_too_large(&self, body: &[u8]) -> bool {
        body.len() > self.inner.options.max_message_size
    }

    /// Publishes through the driver, refusing a body larger than the transport's limit.
    pub async fn publish(
        &self,
        destination: &Destination,
        message: OutgoingMessage,
    ) -> Result<(), TransportError> {
        let limit = self.inner.options.max_message_size;
        if message.body.len() > limit {
            return Err(TransportError::MessageTooLarge {
                destination: destination.to_string(),
                size: message.body.len(),
                limit,
            });
        }
        self.inner.driver.publish(destination, message).await?;
        crate::metrics::count(crate::metrics::MESSAGES_PUBLISHED);
        Ok(())
    }

    /// The driver, for the RPC and notification layers.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.inner.driver
    }

    /// This transport's attachment of type `T`, made on first use.
    pub fn attachment<T: Attachment>(&self) -> Arc<T> {
        // The map stays consistent under panic: each use is one lookup or insert.
        let mut attachments = self
            .inner
            .attachments
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (attached, _) = attachments.entry(TypeId::of::<T>()).or_insert_with(|| {
            let attachment = Arc::new(T::default());
            let closing = attachment.clone();
            (attachment, Box::new(move || closing.on_close()))
        });
        match attached.clone().downcast::<T>() {
            Ok(attachment) => attachment,
            // Unreachable: the entry of `TypeId::of::<T>()` always holds a `T`.
            Err(_) => Arc::new(T::default()),
        }
    }

    /// Closes the transport: attachments stop (the reply queue goes), the driver's connections
    /// close.
    pub async fn close(&self) {
        let attachments: Vec<_> = self
            .inner
            .attachments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, (_, on_close)) in attachments {
            on_close();
        }
        self.inner.driver.close().await;
    }
}
