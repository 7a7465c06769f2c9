//! RPC: clients that call and cast, endpoints of async fns, servers that dispatch them with
//! oslo.messaging's rules.

mod client;
pub mod dispatcher;
pub mod endpoint;
mod error;
pub(crate) mod reply;
mod server;

pub use client::{RpcClient, DEFAULT_CALL_TIMEOUT};
pub use dispatcher::Dispatcher;
pub use endpoint::{Endpoint, Handler, MethodCall, MethodService, NoArgs};
pub use error::RpcError;
pub use server::{
    RpcServer, RpcServerBuilder, StopReport, DEFAULT_DEDUP_WINDOW, DEFAULT_MAX_CONCURRENCY,
    DEFAULT_REPLY_RETRY,
};
