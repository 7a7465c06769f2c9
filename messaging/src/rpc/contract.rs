//! Typed contracts: a service's methods declared once, as constants, so that the compiler checks
//! both the client's calls and the server's handlers against one definition — on oslo's wire
//! format, unchanged (a Python peer cannot tell a typed call from any other).
//!
//! A contract is a type naming its namespace and version, and one [`Method`] constant per method
//! with its keyword-argument type and its result type:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tidings::rpc::{Contract, ContractEndpoint, Method, RpcServer, ServiceClient};
//! use tidings::{Context, RemoteError, Target, Transport, Version};
//!
//! /// The calculator's API.
//! pub struct Calculator;
//!
//! impl Contract for Calculator {
//!     const NAMESPACE: Option<&'static str> = None;
//!     const VERSION: Version = Version::new(1, 3);
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Add { pub a: i64, pub b: i64 }
//!
//! /// Adds two numbers.
//! pub const ADD: Method<Calculator, Add, i64> = Method::new("add");
//!
//! async fn add(_ctx: Context, Add { a, b }: Add) -> Result<i64, RemoteError> {
//!     Ok(a + b)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = Transport::connect("memory://contract-doc").await?;
//! let server = RpcServer::builder(&transport, Target::topic("calc"))
//!     .endpoint(ContractEndpoint::<Calculator>::new().handle(ADD, add))
//!     .start()
//!     .await?;
//! let client = ServiceClient::<Calculator>::new(&transport, Target::topic("calc"));
//! let sum = client.call(&Context::new(), ADD, Add { a: 1, b: 2 }).await?;
//! assert_eq!(sum, 3);
//! # server.stop(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```
//!
//! Registering a handler whose arguments or result differ from the method's, or a method of
//! another contract, does not compile; neither does calling with the wrong arguments or reading
//! the wrong result type.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::endpoint::{Endpoint, Handler, IntoEndpoint, MethodService};
use super::{RpcClient, RpcError};
use crate::rpc::MethodCall;
use crate::{Context, RemoteError, Target, Transport, Version};
use serde_json::Value;
use tower::{BoxError, Layer, Service};

/// A service's API: its namespace and the version its servers implement, declared once.
pub trait Contract: 'static {
    /// The namespace requests name (`None` for oslo's default, unnamed one).
    const NAMESPACE: Option<&'static str>;
    /// The version a server of this contract implements; clients send it unless a method says
    /// it exists since an older one.
    const VERSION: Version;
}

/// The types a [`Method`] stands for, held without owning any value of them.
type MethodTypes<C, Args, Reply> = PhantomData<fn() -> (C, Args, Reply)>;

/// One method of contract `C`: its name on the wire, its keyword arguments `Args` and its result
/// `Reply`. Declared as a constant next to the contract, used by both sides.
pub struct Method<C, Args, Reply> {
    name: &'static str,
    since: Option<Version>,
    _types: MethodTypes<C, Args, Reply>,
}

impl<C, Args, Reply> Method<C, Args, Reply> {
    /// The method called `name` on the wire.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            since: None,
            _types: PhantomData,
        }
    }

    /// The method exists since `version` of the contract: calls send that version, so servers
    /// of any later minor version serve them (oslo's rule for adding methods).
    #[must_use]
    pub const fn since(mut self, version: Version) -> Self {
        self.since = Some(version);
        self
    }

    /// The name on the wire.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<C: Contract, Args, Reply> Method<C, Args, Reply> {
    /// The version a call of this method sends.
    pub fn version(&self) -> Version {
        self.since.unwrap_or(C::VERSION)
    }
}

impl<C, Args, Reply> Clone for Method<C, Args, Reply> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C, Args, Reply> Copy for Method<C, Args, Reply> {}

impl<C, Args, Reply> fmt::Debug for Method<C, Args, Reply> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.name)
            .field("since", &self.since)
            .finish()
    }
}

/// A typed client of contract `C`: every call names a [`Method`] of `C` and gets its result
/// type back. Namespace and version come from the contract.
pub struct ServiceClient<C> {
    client: RpcClient,
    _contract: PhantomData<fn() -> C>,
}

impl<C> Clone for ServiceClient<C> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            _contract: PhantomData,
        }
    }
}

impl<C> fmt::Debug for ServiceClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceClient")
            .field("client", &self.client)
            .finish()
    }
}

impl<C: Contract> ServiceClient<C> {
    /// A client of `C`'s servers at `target` (its topic, and server when it names one).
    pub fn new(transport: &Transport, target: Target) -> Self {
        Self::from_client(RpcClient::new(transport, target))
    }

    /// A typed view of `client`, which keeps its timeout, cap and other settings; the
    /// contract's namespace replaces the client's.
    pub fn from_client(client: RpcClient) -> Self {
        let client = match C::NAMESPACE {
            Some(namespace) => client.namespace(namespace),
            None => client.without_namespace(),
        };
        Self {
            client: client.version(C::VERSION),
            _contract: PhantomData,
        }
    }

    /// The untyped client underneath.
    pub fn client(&self) -> &RpcClient {
        &self.client
    }

    /// A copy with the untyped client changed by `change` (a server, a timeout, fanout), as
    /// oslo's `prepare()`.
    #[must_use]
    pub fn prepare(&self, change: impl FnOnce(RpcClient) -> RpcClient) -> Self {
        Self {
            client: change(self.client.clone()),
            _contract: PhantomData,
        }
    }

    /// Sends to one server's queue.
    #[must_use]
    pub fn server(&self, server: impl Into<String>) -> Self {
        self.prepare(|client| client.server(server))
    }

    /// Calls wait at most `timeout`.
    #[must_use]
    pub fn timeout(&self, timeout: Duration) -> Self {
        self.prepare(|client| client.timeout(timeout))
    }

    /// Calls `method` and waits for its result.
    pub async fn call<Args, Reply>(
        &self,
        context: &Context,
        method: Method<C, Args, Reply>,
        args: Args,
    ) -> Result<Reply, RpcError>
    where
        Args: Serialize,
        Reply: DeserializeOwned,
    {
        self.for_method(&method)
            .call(context, method.name, args)
            .await
    }

    /// Sends `method` without waiting for a result.
    pub async fn cast<Args, Reply>(
        &self,
        context: &Context,
        method: Method<C, Args, Reply>,
        args: Args,
    ) -> Result<(), RpcError>
    where
        Args: Serialize,
    {
        self.for_method(&method)
            .cast(context, method.name, args)
            .await
    }

    /// Casts `method` to every server of the topic.
    pub async fn fanout<Args, Reply>(
        &self,
        context: &Context,
        method: Method<C, Args, Reply>,
        args: Args,
    ) -> Result<(), RpcError>
    where
        Args: Serialize,
    {
        self.for_method(&method)
            .fanout(true)
            .cast(context, method.name, args)
            .await
    }

    fn for_method<Args, Reply>(&self, method: &Method<C, Args, Reply>) -> RpcClient {
        match method.since {
            Some(version) => self.client.clone().version(version),
            None => self.client.clone(),
        }
    }
}

/// A server's endpoint for contract `C`: its namespace and version come from the contract, and
/// each handler is checked against its [`Method`] when registered.
pub struct ContractEndpoint<C, S = ()> {
    endpoint: Endpoint<S>,
    _contract: PhantomData<fn() -> C>,
}

impl<C, S> fmt::Debug for ContractEndpoint<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContractEndpoint")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl<C: Contract> ContractEndpoint<C> {
    /// An endpoint of `C` without state.
    pub fn new() -> Self {
        Self::with_state(())
    }
}

impl<C: Contract> Default for ContractEndpoint<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Contract, S> ContractEndpoint<C, S> {
    /// An endpoint of `C` whose handlers may take `State<S>`.
    pub fn with_state(state: S) -> Self {
        let endpoint = Endpoint::with_state(state).version(C::VERSION);
        let endpoint = match C::NAMESPACE {
            Some(namespace) => endpoint.namespace(namespace),
            None => endpoint,
        };
        Self {
            endpoint,
            _contract: PhantomData,
        }
    }

    /// Serves `method` with `handler`, whose arguments and result must be the method's.
    #[must_use]
    pub fn handle<Args, Reply, H, M>(self, method: Method<C, Args, Reply>, handler: H) -> Self
    where
        H: Handler<M, S, Args = Args, Reply = Reply>,
        S: Clone + Send + Sync + 'static,
        M: 'static,
    {
        Self {
            endpoint: self.endpoint.method(method.name, handler),
            _contract: PhantomData,
        }
    }

    /// Serves `method` with any `tower::Service` (a blocking method from the compat crate, a
    /// service built elsewhere); its types are the caller's to keep.
    #[must_use]
    pub fn handle_service<Args, Reply, T>(self, method: Method<C, Args, Reply>, service: T) -> Self
    where
        T: Service<MethodCall, Response = Value, Error = RemoteError>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Future: Send + 'static,
    {
        Self {
            endpoint: self.endpoint.service(method.name, service),
            _contract: PhantomData,
        }
    }

    /// Wraps every method registered so far in `layer` (see [`Endpoint::layer`]).
    #[must_use]
    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<MethodService>,
        L::Service: Service<MethodCall, Response = Value> + Clone + Send + Sync + 'static,
        <L::Service as Service<MethodCall>>::Error: Into<BoxError>,
        <L::Service as Service<MethodCall>>::Future: Send + 'static,
    {
        Self {
            endpoint: self.endpoint.layer(layer),
            _contract: PhantomData,
        }
    }

    /// The untyped endpoint.
    pub fn into_inner(self) -> Endpoint<S> {
        self.endpoint
    }
}

impl<C, S> IntoEndpoint for ContractEndpoint<C, S> {
    fn into_endpoint(self) -> Endpoint {
        self.endpoint.into_stateless()
    }
}
