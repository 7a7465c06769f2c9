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
//!
//! Runnable examples (`cargo run -p tidings --example <name>`), each checking its own outcome:
//! `tour` (an endpoint of plain async fns and a client), `typed_service` (a contract, a handler
//! with state, typed calls and casts), `notifications` (a notifier, a filtered listener and a
//! batch listener), `layered_endpoint` (tower timeout and concurrency layers, a handler reading
//! its caller's deadline) and `amqp` (the typed service over RabbitMQ).

#![warn(missing_docs)]

pub mod codec;
pub mod context;
pub mod metrics;
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
