//! Endpoints: groups of RPC methods under one namespace and version, each method a
//! `tower::Service`.
//!
//! A method is an ordinary async fn over the request [`Context`] and a `Deserialize` type of its
//! keyword arguments, registered in one line; a method that needs the service's state (a store,
//! a client) takes [`State`] first, as in axum, and the endpoint is made with
//! [`Endpoint::with_state`]:
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicI64, Ordering};
//! use serde::Deserialize;
//! use tidings::rpc::{Endpoint, State};
//! use tidings::{Context, RemoteError, Version};
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! async fn add(_ctx: Context, Add { a, b }: Add) -> Result<i64, RemoteError> {
//!     Ok(a + b)
//! }
//!
//! #[derive(Deserialize)]
//! struct Bump { by: i64 }
//!
//! async fn bump(State(total): State<Arc<AtomicI64>>, _ctx: Context, Bump { by }: Bump) -> Result<i64, RemoteError> {
//!     Ok(total.fetch_add(by, Ordering::Relaxed) + by)
//! }
//!
//! let endpoint = Endpoint::with_state(Arc::new(AtomicI64::new(0)))
//!     .version(Version::new(1, 3))
//!     .method("add", add)
//!     .method("bump", bump);
//! assert!(endpoint.has_method("bump"));
//! ```
//!
//! Policy (timeouts, concurrency limits, metrics) is added with [`Endpoint::layer`], as tower
//! layers, not as flags. A layer's own errors become remote errors the caller can read: a
//! `tower::timeout` that elapses is a `HandlerTimeout`, a `tower::load_shed` refusal an
//! `Overloaded`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceExt};

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

/// The state of an endpoint made with [`Endpoint::with_state`], handed to methods that ask for
/// it as their first parameter (a clone per request: use an `Arc` or a cheap handle).
#[derive(Clone, Copy, Debug, Default)]
pub struct State<S>(pub S);

/// An async fn usable as an RPC method, either `async fn(Context, Args) -> Result<T, E>` or
/// `async fn(State<S>, Context, Args) -> Result<T, E>`, where `Args` deserialises from the
/// keyword arguments, `T` serialises to the result and `E` converts into a [`RemoteError`].
///
/// `M` tells the two shapes apart; it is inferred, never written.
pub trait Handler<M, S>: Clone + Send + Sync + 'static {
    /// The keyword arguments.
    type Args;
    /// The result sent back.
    type Reply;

    /// Runs the method on already-decoded keyword arguments.
    fn call(self, state: &S, call: MethodCall) -> BoxFuture<'static, Result<Value, RemoteError>>;
}

impl<F, Fut, Args, T, E, S> Handler<(Context, Args), S> for F
where
    F: Fn(Context, Args) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    Args: DeserializeOwned + Send + 'static,
    T: Serialize,
    E: Into<RemoteError>,
{
    type Args = Args;
    type Reply = T;

    fn call(self, _state: &S, call: MethodCall) -> BoxFuture<'static, Result<Value, RemoteError>> {
        let (method, context, args) = match decode_arguments::<Args>(call) {
            Ok(parts) => parts,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        let future = self(context, args);
        Box::pin(async move { encode_result(&method, future.await) })
    }
}

impl<F, Fut, Args, T, E, S> Handler<(State<S>, Context, Args), S> for F
where
    F: Fn(State<S>, Context, Args) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    Args: DeserializeOwned + Send + 'static,
    T: Serialize,
    E: Into<RemoteError>,
    S: Clone + Send + Sync + 'static,
{
    type Args = Args;
    type Reply = T;

    fn call(self, state: &S, call: MethodCall) -> BoxFuture<'static, Result<Value, RemoteError>> {
        let (method, context, args) = match decode_arguments::<Args>(call) {
            Ok(parts) => parts,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        let future = self(State(state.clone()), context, args);
        Box::pin(async move { encode_result(&method, future.await) })
    }
}

/// Splits a call into its method name (kept for errors), context and decoded arguments.
fn decode_arguments<Args: DeserializeOwned>(
    call: MethodCall,
) -> Result<(String, Context, Args), RemoteError> {
    let MethodCall {
        method,
        context,
        args,
    } = call;
    match serde_json::from_value::<Args>(Value::Object(args)) {
        Ok(args) => Ok((method, context, args)),
        Err(error) => Err(RemoteError::bad_arguments(&method, error)),
    }
}

/// A handler's outcome as the reply's result.
fn encode_result<T: Serialize, E: Into<RemoteError>>(
    method: &str,
    outcome: Result<T, E>,
) -> Result<Value, RemoteError> {
    let value = outcome.map_err(Into::into)?;
    serde_json::to_value(value).map_err(|error| {
        RemoteError::new(
            "SerializationError",
            "tidings.rpc",
            format!("result of {method} could not be serialised: {error}"),
        )
    })
}

/// Arguments of a method that takes none; accepts an empty keyword map.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// Adapts a [`Handler`] and the endpoint's state to `tower::Service`.
pub struct HandlerService<H, M, S> {
    handler: H,
    state: S,
    _marker: PhantomData<fn() -> M>,
}

impl<H: Clone, M, S: Clone> Clone for HandlerService<H, M, S> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            state: self.state.clone(),
            _marker: PhantomData,
        }
    }
}

impl<H, M, S> fmt::Debug for HandlerService<H, M, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerService").finish_non_exhaustive()
    }
}

impl<H, M, S> HandlerService<H, M, S> {
    /// Wraps `handler`, which will be given `state`.
    pub fn new(handler: H, state: S) -> Self {
        Self {
            handler,
            state,
            _marker: PhantomData,
        }
    }
}

impl<H, M, S> Service<MethodCall> for HandlerService<H, M, S>
where
    H: Handler<M, S>,
{
    type Response = Value;
    type Error = RemoteError;
    type Future = Pin<Box<dyn Future<Output = Result<Value, RemoteError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), RemoteError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: MethodCall) -> Self::Future {
        self.handler.clone().call(&self.state, call)
    }
}

/// The remote error a layer's own error becomes: a [`RemoteError`] stays itself; tower's
/// elapsed timeout and load-shedding refusal get names a caller can act on.
pub fn layer_error(method: &str, error: BoxError) -> RemoteError {
    let error = match error.downcast::<RemoteError>() {
        Ok(remote) => return *remote,
        Err(other) => other,
    };
    if error.is::<tower::timeout::error::Elapsed>() {
        return RemoteError::new(
            "HandlerTimeout",
            "tidings.rpc",
            format!("{method} did not finish within the time limit of its endpoint"),
        );
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        return RemoteError::new(
            "Overloaded",
            "tidings.rpc",
            format!("{method} is at its concurrency limit; try again later"),
        );
    }
    RemoteError::new(
        "LayerError",
        "tidings.rpc",
        format!("{method} failed in a layer: {error}"),
    )
}

/// Methods served under one namespace and version (oslo's endpoint object with its `target`),
/// with the state its methods share.
#[derive(Clone)]
pub struct Endpoint<S = ()> {
    namespace: Option<String>,
    version: Version,
    methods: HashMap<String, MethodService>,
    state: S,
}

impl<S> fmt::Debug for Endpoint<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<_> = self.methods.keys().collect();
        methods.sort();
        f.debug_struct("Endpoint")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .field("methods", &methods)
            .finish_non_exhaustive()
    }
}

impl Default for Endpoint {
    fn default() -> Self {
        Self::new()
    }
}

impl Endpoint {
    /// An endpoint with no namespace at version 1.0, no methods and no state.
    pub fn new() -> Self {
        Self::with_state(())
    }
}

impl<S> Endpoint<S> {
    /// An endpoint whose methods may take `State<S>` (a clone of `state` per request).
    pub fn with_state(state: S) -> Self {
        Self {
            namespace: None,
            version: Version::DEFAULT,
            methods: HashMap::new(),
            state,
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

    /// Adds a method served by an async fn (with or without [`State`]).
    #[must_use]
    pub fn method<H, M>(self, name: impl Into<String>, handler: H) -> Self
    where
        H: Handler<M, S>,
        S: Clone + Send + Sync + 'static,
        M: 'static,
    {
        let service = HandlerService::new(handler, self.state.clone());
        self.service(name, service)
    }

    /// Adds a method served by any `tower::Service`.
    #[must_use]
    pub fn service<T>(mut self, name: impl Into<String>, service: T) -> Self
    where
        T: Service<MethodCall, Response = Value, Error = RemoteError>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Future: Send + 'static,
    {
        self.methods
            .insert(name.into(), BoxCloneSyncService::new(service));
        self
    }

    /// Wraps every method registered so far in `layer`. The layer may fail with any error:
    /// errors other than a [`RemoteError`] are turned into one by [`layer_error`], so tower's
    /// own layers (`TimeoutLayer`, `ConcurrencyLimitLayer`, `LoadShedLayer`) plug in as they
    /// are.
    #[must_use]
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<MethodService>,
        L::Service: Service<MethodCall, Response = Value> + Clone + Send + Sync + 'static,
        <L::Service as Service<MethodCall>>::Error: Into<BoxError>,
        <L::Service as Service<MethodCall>>::Future: Send + 'static,
    {
        self.methods = self
            .methods
            .into_iter()
            .map(|(name, service)| {
                // Shared: the service, this closure with it, is cloned for every request.
                let method: Arc<str> = Arc::from(name.as_str());
                let layered = layer
                    .layer(service)
                    .map_err(move |error| layer_error(&method, error.into()));
                (name, BoxCloneSyncService::new(layered))
            })
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

    /// The endpoint as a server holds it: its methods already carry the state.
    pub fn into_stateless(self) -> Endpoint {
        Endpoint {
            namespace: self.namespace,
            version: self.version,
            methods: self.methods,
            state: (),
        }
    }
}

/// What a server takes as an endpoint: an [`Endpoint`] with any state, or a typed
/// [`ContractEndpoint`](super::ContractEndpoint).
pub trait IntoEndpoint {
    /// The endpoint, its state already bound into its methods.
    fn into_endpoint(self) -> Endpoint;
}

impl<S> IntoEndpoint for Endpoint<S> {
    fn into_endpoint(self) -> Endpoint {
        self.into_stateless()
    }
}
