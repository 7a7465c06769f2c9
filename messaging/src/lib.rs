//! # tidings
//!
//! Async RPC and notifications for Rust services over AMQP, speaking oslo.messaging's wire format
//! so that Python and Rust peers share one bus.
//!
//! - [`Target`] and [`Version`] say where a message goes and which API it speaks.
//! - [`Transport`] connects to `rabbit://…` or `memory://name`; drivers sit behind one trait.
//! - [`rpc`] holds the client (`call`, `cast`, fanout), endpoints of plain async fns, and the server.
//! - [`notify`] holds the notifier and notification listeners (pools, filters, batches).
//! - [`codec`] holds the oslo JSON envelope (the default) and MessagePack.

pub mod codec;
pub mod context;
pub mod notify;
pub mod remote_error;
pub mod rpc;
pub mod serve;
pub mod target;
pub mod trace;
pub mod transport;
pub mod url;

pub use context::Context;
pub use remote_error::RemoteError;
pub use target::{Target, Version};
pub use transport::Transport;
pub use url::TransportUrl;
