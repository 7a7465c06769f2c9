//! Blocking RPC methods: plain `fn(&Context, Args) -> Result<T, E>` served from a
//! [`BlockingPool`] on the same [`Endpoint`] as async methods, with the same wire contract.
//!
//! ```
//! use serde::Deserialize;
//! use tidings::rpc::Endpoint;
//! use tidings::{Context, RemoteError, Version};
//! use tidings_compat::{BlockingEndpointExt, BlockingPool};
//!
//! #[derive(Deserialize)]
//! struct Lookup { key: String }
//!
//! // Yesterday's handler, unchanged: it may block (files, a sync database driver, sleeps).
//! fn lookup(_ctx: &Context, Lookup { key }: Lookup) -> Result<String, RemoteError> {
//!     Ok(std::env::var(&key).unwrap_or_default())
//! }
//!
//! async fn ping(_ctx: Context, _: tidings::rpc::NoArgs) -> Result<&'static str, RemoteError> {
//!     Ok("pong")
//! }
//!
//! # fn main() -> Result<(), tidings_compat::PoolError> {
//! let pool = BlockingPool::new(16)?;
//! let endpoint = Endpoint::new()
//!     .version(Version::new(1, 0))
//!     .method("ping", ping)                          // async, on the Tokio workers
//!     .blocking_method("lookup", &pool, lookup);     // blocking, on the pool
//! assert!(endpoint.has_method("lookup"));
//! # Ok(()) }
//! ```
//!
//! # Backpressure and the server's `max_concurrency`
//!
//! A [`BlockingMethod`] is ready (`tower::Service::poll_ready`) only once it holds one of the
//! pool's permits, and the job keeps that permit until it has finished on its thread. The RPC
//! server takes a dispatch slot *before* it takes a delivery, and a request waiting for a pool
//! permit keeps its slot. So with a pool of `N` threads and a server of `max_concurrency = M`:
//!
//! - at most `N` blocking handlers run; at most `M − N` more requests (taken from the broker and
//!   acknowledged, RPC being at most once) wait in the process for a thread;
//! - when all `M` slots are held the server takes nothing more: further requests stay in the
//!   broker, where another server may take them, and the prefetch (`= M`) keeps the broker from
//!   pushing more;
//! - async methods on the same server need a free slot, not a thread: they answer while every
//!   thread is busy as long as fewer than `M` requests are in flight. A flood of blocking requests
//!   can still take every slot (oslo's single executor behaves the same); keep `M` above `N`
//!   (e.g. `pool.size() + 64`) so the pool saturates before the server does, and serve the
//!   blocking methods on a topic of their own when async latency must hold under any load.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tidings::rpc::{Contract, ContractEndpoint, Endpoint, Method, MethodCall};
use tidings::{Context, RemoteError};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::PollSemaphore;
use tower::Service;

use crate::pool::{BlockingPool, PoolError};

/// Module of the errors this crate raises, as callers see it in a remote error.
pub const COMPAT_MODULE: &str = "tidings.compat";

/// A blocking fn as a `tower::Service<MethodCall>`: what [`Endpoint::service`] takes. Made by
/// [`BlockingPool::method`]; [`BlockingEndpointExt::blocking_method`] registers one in a line.
///
/// The arguments are decoded, the handler run and its result encoded on a pool thread, so
/// `Args`, `T` and `E` need not be `Send`. Errors are the async ones: arguments that do not fit
/// are a `TypeError`, a handler's `E` converts into the [`RemoteError`] sent back, and a panic
/// becomes oslo-style `HandlerPanicked` (module `tidings.rpc`) while the thread lives on.
pub struct BlockingMethod<F, Args, T, E> {
    handler: Arc<F>,
    pool: BlockingPool,
    permits: PollSemaphore,
    /// Granted by `poll_ready`, handed to the job by `call`.
    permit: Option<OwnedSemaphorePermit>,
    _signature: PhantomData<fn(Args) -> Result<T, E>>,
}

impl<F, Args, T, E> Clone for BlockingMethod<F, Args, T, E> {
    /// A clone shares the handler and pool but not a granted permit: it must be ready on its own.
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            pool: self.pool.clone(),
            permits: self.permits.clone(),
            permit: None,
            _signature: PhantomData,
        }
    }
}

impl<F, Args, T, E> fmt::Debug for BlockingMethod<F, Args, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingMethod")
            .field("pool", &self.pool)
            .field("ready", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl BlockingPool {
    /// `handler` as a method service running on this pool, for [`Endpoint::service`] or for
    /// wrapping in tower layers first.
    pub fn method<F, Args, T, E>(&self, handler: F) -> BlockingMethod<F, Args, T, E>
    where
        F: Fn(&Context, Args) -> Result<T, E> + Send + Sync + 'static,
        Args: DeserializeOwned + 'static,
        T: Serialize + 'static,
        E: Into<RemoteError> + 'static,
    {
        BlockingMethod {
            handler: Arc::new(handler),
            pool: self.clone(),
            permits: PollSemaphore::new(self.permits()),
            permit: None,
            _signature: PhantomData,
        }
    }
}

impl<F, Args, T, E> Service<MethodCall> for BlockingMethod<F, Args, T, E>
where
    F: Fn(&Context, Args) -> Result<T, E> + Send + Sync + 'static,
    Args: DeserializeOwned + 'static,
    T: Serialize + 'static,
    E: Into<RemoteError> + 'static,
{
    type Response = Value;
    type Error = RemoteError;
    type Future = BoxFuture<'static, Result<Value, RemoteError>>;

    /// Ready once a pool thread is reserved for the next call; pending while every thread is
    /// taken, which is how a full pool holds the server back.
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), RemoteError>> {
        if self.permit.is_none() {
            match ready!(self.permits.poll_acquire(cx)) {
                Some(permit) => self.permit = Some(permit),
                None => return Poll::Ready(Err(pool_closed())),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: MethodCall) -> Self::Future {
        let permit = self.permit.take();
        let pool = self.pool.clone();
        let handler = self.handler.clone();
        Box::pin(async move {
            // A caller that skipped `poll_ready` (against tower's contract) waits here instead.
            let permit = match permit {
                Some(permit) => permit,
                None => pool.acquire().await.map_err(|_| pool_closed())?,
            };
            let method = call.method.clone();
            match pool
                .run_with(permit, move || invoke(handler.as_ref(), call))
                .await
            {
                Ok(outcome) => outcome,
                Err(PoolError::Panicked { detail }) => {
                    tracing::error!(method, %detail, "blocking RPC handler panicked");
                    Err(RemoteError::handler_panicked(&method, &detail))
                }
                Err(_) => Err(pool_closed()),
            }
        })
    }
}

/// Decodes the arguments, runs the handler and encodes its result, on the pool thread.
fn invoke<F, Args, T, E>(handler: &F, call: MethodCall) -> Result<Value, RemoteError>
where
    F: Fn(&Context, Args) -> Result<T, E>,
    Args: DeserializeOwned,
    T: Serialize,
    E: Into<RemoteError>,
{
    let MethodCall {
        method,
        context,
        args,
    } = call;
    let args = serde_json::from_value::<Args>(Value::Object(args))
        .map_err(|error| RemoteError::bad_arguments(&method, error))?;
    let value = handler(&context, args).map_err(Into::into)?;
    // The same error an async method's unserialisable result gives.
    serde_json::to_value(value).map_err(|error| {
        RemoteError::new(
            "SerializationError",
            "tidings.rpc",
            format!("result of {method} could not be serialised: {error}"),
        )
    })
}

fn pool_closed() -> RemoteError {
    RemoteError::new(
        "PoolClosed",
        COMPAT_MODULE,
        "the blocking pool serving this method has shut down",
    )
}

/// Registers blocking methods on an [`Endpoint`], one line each, beside its async ones.
pub trait BlockingEndpointExt: Sized {
    /// Adds `name`, served by the blocking fn `handler` on `pool`. See the
    /// [module docs](crate::endpoint) for how a full pool pushes back on the server.
    #[must_use]
    fn blocking_method<F, Args, T, E>(
        self,
        name: impl Into<String>,
        pool: &BlockingPool,
        handler: F,
    ) -> Self
    where
        F: Fn(&Context, Args) -> Result<T, E> + Send + Sync + 'static,
        Args: DeserializeOwned + 'static,
        T: Serialize + 'static,
        E: Into<RemoteError> + 'static;
}

impl<S> BlockingEndpointExt for Endpoint<S> {
    fn blocking_method<F, Args, T, E>(
        self,
        name: impl Into<String>,
        pool: &BlockingPool,
        handler: F,
    ) -> Self
    where
        F: Fn(&Context, Args) -> Result<T, E> + Send + Sync + 'static,
        Args: DeserializeOwned + 'static,
        T: Serialize + 'static,
        E: Into<RemoteError> + 'static,
    {
        self.service(name, pool.method(handler))
    }
}

/// Typed blocking methods on a [`ContractEndpoint`]: the handler's arguments and result are
/// checked against the contract's [`Method`], as async handlers are, so a method can move from
/// blocking to async without its contract changing.
pub trait BlockingContractExt<C>: Sized {
    /// Serves `method` with the blocking fn `handler` on `pool`.
    #[must_use]
    fn blocking_handle<F, Args, Reply, E>(
        self,
        method: Method<C, Args, Reply>,
        pool: &BlockingPool,
        handler: F,
    ) -> Self
    where
        F: Fn(&Context, Args) -> Result<Reply, E> + Send + Sync + 'static,
        Args: DeserializeOwned + 'static,
        Reply: Serialize + 'static,
        E: Into<RemoteError> + 'static;
}

impl<C: Contract, S> BlockingContractExt<C> for ContractEndpoint<C, S> {
    fn blocking_handle<F, Args, Reply, E>(
        self,
        method: Method<C, Args, Reply>,
        pool: &BlockingPool,
        handler: F,
    ) -> Self
    where
        F: Fn(&Context, Args) -> Result<Reply, E> + Send + Sync + 'static,
        Args: DeserializeOwned + 'static,
        Reply: Serialize + 'static,
        E: Into<RemoteError> + 'static,
    {
        self.handle_service(method, pool.method(handler))
    }
}
