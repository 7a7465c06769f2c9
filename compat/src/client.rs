//! The blocking RPC client: [`RpcClient`]'s `call` and `cast` for plain threads.
//!
//! It is the async client underneath — same target overrides, timeouts, version cap, call
//! monitor, mandatory flag, same errors — run on a [`BlockingTransport`]'s runtime while the
//! calling thread waits. What runs where, and why it refuses to run inside async code, is in
//! [`crate::transport`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tidings::rpc::{RpcClient, RpcError};
use tidings::{Context, Target, Version};

use crate::error::ClientError;
use crate::transport::BlockingTransport;

/// Sends calls and casts to one target from plain threads. Cheap to clone; share it between
/// threads freely.
///
/// ```no_run
/// use serde_json::json;
/// use tidings::{Context, Target, Version};
/// use tidings_compat::{BlockingClient, BlockingTransport};
///
/// # fn main() -> Result<(), tidings_compat::ClientError> {
/// let transport = BlockingTransport::connect("rabbit://guest:guest@localhost:5672/")?;
/// let client = BlockingClient::new(&transport, Target::topic("compute")).version(Version::new(1, 3));
/// let sum: i64 = client.call(&Context::new(), "add", json!({"a": 1, "b": 2}))?;
/// client.prepare().server("host-1").cast(&Context::new(), "refresh", json!({}))?;
/// client.prepare().fanout(true).cast(&Context::new(), "reload", json!({}))?;
/// # let _ = sum; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct BlockingClient {
    transport: BlockingTransport,
    client: RpcClient,
}

impl BlockingClient {
    /// A client of `target` on `transport`.
    pub fn new(transport: &BlockingTransport, target: Target) -> Self {
        Self {
            client: RpcClient::new(transport.transport(), target),
            transport: transport.clone(),
        }
    }

    /// A copy to override fields on (oslo's `prepare()`); the original is unchanged.
    #[must_use]
    pub fn prepare(&self) -> Self {
        self.clone()
    }

    /// The async client underneath, for code that is async already (the same target and
    /// settings).
    pub fn as_async(&self) -> &RpcClient {
        &self.client
    }

    /// The target requests go to.
    pub fn target(&self) -> &Target {
        self.client.target()
    }

    fn map(mut self, change: impl FnOnce(RpcClient) -> RpcClient) -> Self {
        self.client = change(self.client);
        self
    }

    /// Sends to one server's queue (`<topic>.<server>`).
    #[must_use]
    pub fn server(self, server: impl Into<String>) -> Self {
        self.map(|c| c.server(server))
    }

    /// Sends to another exchange.
    #[must_use]
    pub fn exchange(self, exchange: impl Into<String>) -> Self {
        self.map(|c| c.exchange(exchange))
    }

    /// Sends to another topic.
    #[must_use]
    pub fn topic(self, topic: impl Into<String>) -> Self {
        self.map(|c| c.topic(topic))
    }

    /// Requests methods of `namespace`.
    #[must_use]
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        self.map(|c| c.namespace(namespace))
    }

    /// Requests API `version`.
    #[must_use]
    pub fn version(self, version: Version) -> Self {
        self.map(|c| c.version(version))
    }

    /// Casts go to every server on the topic.
    #[must_use]
    pub fn fanout(self, fanout: bool) -> Self {
        self.map(|c| c.fanout(fanout))
    }

    /// How long a call waits for its reply (default 60 s); also how long the thread blocks.
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|c| c.timeout(timeout))
    }

    /// Refuses to send a version the receiving side may not have yet.
    #[must_use]
    pub fn version_cap(self, cap: Version) -> Self {
        self.map(|c| c.version_cap(cap))
    }

    /// Asks the server for keepalives and fails the call when they stop (see
    /// [`RpcClient::call_monitor_timeout`]).
    #[must_use]
    pub fn call_monitor_timeout(self, timeout: Duration) -> Self {
        self.map(|c| c.call_monitor_timeout(timeout))
    }

    /// Fails at once with `RpcError::NoServer` when no queue receives the request.
    #[must_use]
    pub fn mandatory(self, mandatory: bool) -> Self {
        self.map(|c| c.mandatory(mandatory))
    }

    /// oslo's `can_send_version`.
    pub fn can_send_version(&self, version: Option<Version>) -> bool {
        self.client.can_send_version(version)
    }

    /// Calls `method` and blocks until its result (or error, or timeout) arrives.
    pub fn call<R: DeserializeOwned>(
        &self,
        context: &Context,
        method: &str,
        args: impl Serialize,
    ) -> Result<R, ClientError> {
        let args = arguments(method, args)?;
        let (client, context, name) = (self.client.clone(), context.clone(), method.to_owned());
        let value = self
            .transport
            .block_on("BlockingClient::call", async move {
                client.call::<Value>(&context, &name, args).await
            })??;
        // Decoded on the caller's thread: `R` need not be `Send`.
        serde_json::from_value(value).map_err(|error| {
            ClientError::Rpc(RpcError::UnexpectedResult {
                method: method.to_owned(),
                detail: error.to_string(),
            })
        })
    }

    /// Sends `method` without a reply (to every server when fanout); blocks until the
    /// transport has taken the message (the broker confirmed it, on AMQP).
    pub fn cast(
        &self,
        context: &Context,
        method: &str,
        args: impl Serialize,
    ) -> Result<(), ClientError> {
        let args = arguments(method, args)?;
        let (client, context, name) = (self.client.clone(), context.clone(), method.to_owned());
        self.transport
            .block_on("BlockingClient::cast", async move {
                client.cast(&context, &name, args).await
            })??;
        Ok(())
    }
}

/// Serialises the arguments on the caller's thread, so `args` need not be `Send` or `'static`.
/// The async client checks that they are a keyword map.
fn arguments(method: &str, args: impl Serialize) -> Result<Value, ClientError> {
    serde_json::to_value(args).map_err(|error| {
        ClientError::Rpc(RpcError::InvalidArguments {
            method: method.to_owned(),
            detail: error.to_string(),
        })
    })
}
