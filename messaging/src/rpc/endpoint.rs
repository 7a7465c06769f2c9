//! Endpoints: groups of RPC methods under one namespace and version, each method a
//! `tower::Service`.
//!
//! A method is an ordinary async fn over the request [`Context`] and a `Deserialize` type of its
//! keyword arguments, registered in one line:
//!
//! ```
//! use serde::Deserialize;
//! use tidings::rpc::Endpoint;
//! use tidings::{Context, RemoteError, Version};
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! async fn add(_ctx: Context, Add { a, b }: Add) -> Result<i64, RemoteError> {
//!     Ok(a + b)
//! }
//!
//! let endpoint = Endpoint::new().version(Version::new(1, 3)).method("add", add);
//! assert!(endpoint.has_method("add"));
//! ```
//!
//! Policy (timeouts, concurrency limits, metrics) is added with [`Endpoint::layer`], as tower
//! layers, not as flags.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

use crate::{Context, RemoteError, Version};

/// One invocation of a method, as a `tower::Service` request.
#[derive(Clone, Debug)]
pub struct MethodCall {
    /// Method name.
    pub method: String,
    /// The caller's context.
    pub context: Context,
    /// Keyword arguments.
    pub args: Map<String, Value>,
}

/// A method as the dispatcher holds it.
pub type MethodService = BoxCloneSyncService<MethodCall, Value, RemoteError>;

/// An async fn usable as an RPC method: `async fn(Context, Args) -> Result<T, E>` where `Args`
/// deserialises from the keyword arguments, `T` serialises to the result and `E` converts into
/// a [`RemoteError`].
pub trait Handler<Args>: Clone + Send + Sync + 'static {
    /// Runs the method on already-decoded keyword arguments.
    fn call(self, call: MethodCall) -> BoxFuture<'static, Result<Value, RemoteError>>;
}

impl<F, Fut, Args, T, E> Handler<Args> for F
where
    F: Fn(Context, Args) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    Args: DeserializeOwned + Send + 'static,
    T: Serialize,
    E: Into<RemoteError>,
{
    fn call(self, call: MethodCall) -> BoxFuture<'static, Result<Value, RemoteError>> {
        let args = match serde_json::from_value::<Args>(Value::Object(call.args)) {
            Ok(args) => args,
            Err(error) => {
                let error = RemoteError::bad_arguments(&call.method, error);
                return Box::pin(async move { Err(error) });
            }
        };
        let future = self(call.context, args);
        let method = call.method;
        Box::pin(async move {
            let value = future.await.map_err(Into::into)?;
            serde_json::to_value(value).map_err(|error| {
                RemoteError::new(
                    "SerializationError",
                    "tidings.rpc",
                    format!("result of {method} could not be serialised: {error}"),
                )
            })
        })
    }
}

/// Arguments of a method that takes none; accepts an empty keyword map.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// Adapts a [`Handler`] to `tower::Service`.
pub struct HandlerService<H, Args> {
    handler: H,
    _args: PhantomData<fn() -> Args>,
}

impl<H: Clone, Args> Clone for HandlerService<H, Args> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            _args: PhantomData,
        }
    }
}

impl<H, Args> fmt::Debug for HandlerService<H, Args> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerService").finish_non_exhaustive()
    }
}

impl<H, Args> HandlerService<H, Args> {
    /// Wraps `handler`.
    pub fn new(handler: H) -> Self {
        Self {
            handler,
            _args: PhantomData,
        }
    }
}

impl<H, Args> Service<MethodCall> for HandlerService<H, Args>
where
    H: Handler<Args>,
{
    type Response = Value;
    type Error = RemoteError;
    type Future = Pin<Box<dyn Future<Output = Result<Value, RemoteError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), RemoteError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: MethodCall) -> Self::Future {
        self.handler.clone().call(call)
    }
}

/// Methods served under one namespace and version (oslo's endpoint object with its `target`).
#[derive(Clone)]
pub struct Endpoint {
    namespace: Option<String>,
    version: Version,
    methods: HashMap<String, MethodService>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<_> = self.methods.keys().collect();
        methods.sort();
        f.debug_struct("Endpoint")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .field("methods", &methods)
            .finish()
    }
}

impl Default for Endpoint {
    fn default() -> Self {
        Self::new()
    }
}

impl Endpoint {
    /// An endpoint with no namespace at version 1.0 and no methods.
    pub fn new() -> Self {
        Self {
            namespace: None,
            version: Version::DEFAULT,
            methods: HashMap::new(),
        }
    }

    /// Serves requests whose target names `namespace` (and only those).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The API version this endpoint implements.
    #[must_use]
    pub fn version(mut self, version: Version) -> Self {
        self.version = version;
        self
    }

    /// Adds a method served by an async fn.
    #[must_use]
    pub fn method<H, Args>(self, name: impl Into<String>, handler: H) -> Self
    where
        H: Handler<Args>,
        Args: 'static,
    {
        self.service(name, HandlerService::new(handler))
    }

    /// Adds a method served by any `tower::Service`.
    #[must_use]
    pub fn service<S>(mut self, name: impl Into<String>, service: S) -> Self
    where
        S: Service<MethodCall, Response = Value, Error = RemoteError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.methods
            .insert(name.into(), BoxCloneSyncService::new(service));
        self
    }

    /// Wraps every method registered so far in `layer`.
    #[must_use]
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<MethodService>,
        L::Service: Service<MethodCall, Response = Value, Error = RemoteError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<MethodCall>>::Future: Send + 'static,
    {
        self.methods = self
            .methods
            .into_iter()
            .map(|(name, service)| (name, BoxCloneSyncService::new(layer.layer(service))))
            .collect();
        self
    }

    /// The endpoint's namespace.
    pub fn get_namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The endpoint's version.
    pub fn get_version(&self) -> Version {
        self.version
    }

    /// Whether `name` is one of the endpoint's methods.
    pub fn has_method(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    /// The method `name` as a `tower::Service`.
    pub fn method_service(&self, name: &str) -> Option<MethodService> {
        self.methods.get(name).cloned()
    }
}
