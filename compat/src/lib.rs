//! # tidings-compat
//!
//! The bridge from the blocking world, for services that move from thread-pool handlers to
//! async one method at a time while their peers keep talking to them:
//!
//! - **Blocking handlers** beside async ones: [`BlockingEndpointExt::blocking_method`] registers
//!   a plain `fn(&Context, Args) -> Result<T, E>` on the same [`tidings::rpc::Endpoint`] as async
//!   methods, and [`BlockingNotificationEndpointExt::on_blocking`] does the same for
//!   notifications. They run on a [`BlockingPool`]: a fixed set of OS threads (64 by default,
//!   oslo's `executor_thread_pool_size`), never on the async workers. A full pool pushes back on
//!   the server, which then leaves messages in the broker ([`endpoint`] explains how).
//! - **A blocking client** for code with no async in sight: [`BlockingClient`] (`call`, `cast`,
//!   fanout through `prepare()`) and [`BlockingNotifier`] on a [`BlockingTransport`], which owns
//!   a small runtime or borrows one ([`transport`] says which, and why it refuses to block
//!   inside async code).
//! - **The porting path**: `docs/porting.md`, and the worked example in `compat/examples/inventory/`
//!   (one agent served all blocking, half ported, all async; one test suite for all three).
//!
//! ```
//! use serde::Deserialize;
//! use tidings::rpc::{Endpoint, RpcServer};
//! use tidings::{Context, RemoteError, Target, Version};
//! use tidings_compat::{BlockingClient, BlockingEndpointExt, BlockingPool, BlockingTransport};
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! fn add(_ctx: &Context, Add { a, b }: Add) -> Result<i64, RemoteError> {
//!     std::thread::sleep(std::time::Duration::from_millis(1)); // blocking is fine here
//!     Ok(a + b)
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A plain program: the blocking transport owns the runtime the server runs on too.
//! let transport = BlockingTransport::connect("memory://compat-doc")?;
//! let pool = BlockingPool::new(8)?;
//! let endpoint = Endpoint::new()
//!     .version(Version::new(1, 0))
//!     .blocking_method("add", &pool, add);
//! let server = transport.handle().block_on(
//!     RpcServer::builder(transport.transport(), Target::topic("calc").with_server("c1"))
//!         .endpoint(endpoint)
//!         .start(),
//! )?;
//!
//! let client = BlockingClient::new(&transport, Target::topic("calc"));
//! let sum: i64 = client.call(&Context::new(), "add", serde_json::json!({"a": 2, "b": 3}))?;
//! assert_eq!(sum, 5);
//! transport.handle().block_on(server.stop(std::time::Duration::from_secs(1)));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod endpoint;
pub mod error;
pub mod notifier;
pub mod notify;
pub mod pool;
pub mod transport;

pub use client::BlockingClient;
pub use endpoint::{BlockingContractExt, BlockingEndpointExt, BlockingMethod};
pub use error::ClientError;
pub use notifier::BlockingNotifier;
pub use notify::BlockingNotificationEndpointExt;
pub use pool::{BlockingPool, BlockingPoolBuilder, PoolError, DEFAULT_POOL_SIZE};
pub use tidings;
pub use transport::BlockingTransport;
