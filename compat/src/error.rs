//! Errors of the blocking client side: [`BlockingTransport`](crate::BlockingTransport),
//! [`BlockingClient`](crate::BlockingClient) and [`BlockingNotifier`](crate::BlockingNotifier).

use tidings::notify::NotifyError;
use tidings::rpc::RpcError;
use tidings::transport::TransportError;
use tidings::RemoteError;

/// A blocking call, cast, notification or connection that did not succeed.
// The library's `RpcError` is carried unboxed, so callers match `ClientError::Rpc(RpcError::…)`
// as they match the async client's errors; errors are the cold path (see clippy.toml).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A blocking operation was called from code running on a Tokio runtime, where blocking
    /// would stall the runtime's workers (or deadlock a current-thread runtime). Nothing was
    /// sent.
    #[error(
        "{operation} blocks and was called from inside a Tokio runtime (an async task, \
         spawn_blocking or block_in_place); from async code use the async API \
         (BlockingClient::as_async, BlockingNotifier::as_async) and .await it, or call from a \
         plain thread"
    )]
    InsideAsyncContext {
        /// The blocking operation, e.g. `BlockingClient::call`.
        operation: &'static str,
    },
    /// The client's own runtime could not start.
    #[error("could not start the blocking client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The runtime the client runs on shut down before the operation finished.
    #[error("the runtime running {operation} has shut down")]
    RuntimeShutDown {
        /// The blocking operation.
        operation: &'static str,
    },
    /// The call or cast failed, as the async client reports it (a remote error, a timeout…).
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The notification could not be sent.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// Connecting or closing failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl ClientError {
    /// The remote error, when the server raised one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            ClientError::Rpc(error) => error.remote(),
            _ => None,
        }
    }

    /// Whether a call timed out (overall or by the call monitor).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Rpc(error) if error.is_timeout())
    }
}
