//! Errors of the transport layer: what went wrong between us and the broker.

use crate::url::UrlError;

/// A transport failed to connect, publish or consume.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL did not parse.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The URL's scheme has no driver in this build.
    #[error("no transport driver for scheme {0:?}")]
    UnsupportedScheme(String),
    /// A mandatory message reached no queue: nobody listens there.
    #[error("no queue bound for {destination}: no server is listening")]
    Unroutable {
        /// Where the message was sent.
        destination: String,
    },
    /// The broker refused or lost the message (negative confirm, channel error).
    #[error("broker did not accept the message for {destination}: {reason}")]
    Rejected {
        /// Where the message was sent.
        destination: String,
        /// What the broker said.
        reason: String,
    },
    /// The connection is down and could not be restored in time.
    #[error("connection to the broker lost: {0}")]
    ConnectionLost(String),
    /// The message is larger than the transport's limit
    /// ([`TransportOptions::max_message_size`](super::TransportOptions::max_message_size)).
    #[error("message of {size} bytes for {destination} is larger than the limit of {limit} bytes")]
    MessageTooLarge {
        /// Where the message was sent.
        destination: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// No host of the URL could be reached when the transport opened (refused, timed out, a
    /// TLS certificate not trusted); the message names each host and its error.
    #[error("cannot reach the broker: {0}")]
    Unreachable(String),
    /// TLS could not be set up: a certificate or key file that does not load.
    #[error("TLS: {0}")]
    Tls(String),
    /// The transport was closed by its owner.
    #[error("transport is closed")]
    Closed,
    /// Another failure of the driver.
    #[error("transport driver error: {0}")]
    Driver(String),
}
