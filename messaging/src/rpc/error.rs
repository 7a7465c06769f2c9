//! Errors an RPC client sees.

use std::time::Duration;

use crate::codec::CodecError;
use crate::transport::TransportError;
use crate::{RemoteError, Target, Version};

/// A call or cast that did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No reply within the call's timeout.
    #[error("timed out after {timeout:?} waiting for a reply to {method} on {target}")]
    Timeout {
        /// Where the call went.
        target: Target,
        /// The method called.
        method: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The server stopped sending call-monitor keepalives.
    #[error("server stopped answering {method} on {target}: no keepalive for {after:?}")]
    MonitorTimeout {
        /// Where the call went.
        target: Target,
        /// The method called.
        method: String,
        /// The call-monitor timeout that elapsed.
        after: Duration,
    },
    /// The server raised an error.
    #[error("remote error from {method} on {target}: {error}")]
    Remote {
        /// Where the call went.
        target: Target,
        /// The method called.
        method: String,
        /// What the server raised.
        error: RemoteError,
    },
    /// A mandatory request reached no queue.
    #[error("no server for topic {topic}: {method} was not delivered")]
    NoServer {
        /// The topic nobody serves.
        topic: String,
        /// The method called.
        method: String,
    },
    /// The requested version is above the client's cap.
    #[error("version {version} is above the version cap {cap}")]
    VersionCapped {
        /// The version asked for.
        version: Version,
        /// The client's cap.
        cap: Version,
    },
    /// A call was asked of a fanout target.
    #[error("a call cannot be fanout: use cast for {target}")]
    FanoutCall {
        /// The target.
        target: Target,
    },
    /// The arguments did not serialise to a JSON object of keyword arguments.
    #[error("arguments of {method} must serialise to a JSON object: {detail}")]
    InvalidArguments {
        /// The method called.
        method: String,
        /// What was wrong.
        detail: String,
    },
    /// The result did not fit the type the caller asked for.
    #[error("result of {method} did not fit the expected type: {detail}")]
    UnexpectedResult {
        /// The method called.
        method: String,
        /// What serde said.
        detail: String,
    },
    /// The reply queue went away while waiting (connection lost).
    #[error("connection lost while waiting for a reply to {method} on {target}")]
    ReplyLost {
        /// Where the call went.
        target: Target,
        /// The method called.
        method: String,
    },
    /// Encoding or decoding failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl RpcError {
    /// The remote error, when the server raised one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            RpcError::Remote { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether the call timed out (overall or by the call monitor).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            RpcError::Timeout { .. } | RpcError::MonitorTimeout { .. }
        )
    }
}
