//! RPC: clients that call and cast, endpoints of async fns, servers that dispatch them with
//! oslo.messaging's rules.

mod client;
pub mod contract;
pub mod dispatcher;
pub mod endpoint;
mod error;
pub(crate) mod reply;
mod server;

pub use crate::serve::StopReport;
pub use client::{RpcClient, DEFAULT_CALL_TIMEOUT};
pub use contract::{Contract, ContractEndpoint, Method, ServiceClient};
pub use dispatcher::Dispatcher;
pub use endpoint::{
    layer_error, Endpoint, Handler, IntoEndpoint, MethodCall, MethodService, NoArgs, State,
};
pub use error::RpcError;
pub use server::{
    RpcServer, RpcServerBuilder, DEFAULT_DEDUP_WINDOW, DEFAULT_MAX_CONCURRENCY, DEFAULT_REPLY_RETRY,
};
