//! The RPC client: `call` (request/reply), `cast` (one way) and fanout casts to a [`Target`].
//!
//! A client is a cheap value: [`RpcClient::prepare`] copies it so one call can override the
//! server, version, timeout or other fields without touching the original, as oslo's
//! `RPCClient.prepare()` does.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::Instrument;

use super::error::RpcError;
use super::reply::ReplyRouter;
use crate::codec::{json_arguments, Arguments, CallInfo, Codec, RequestParts};
use crate::metrics;
use crate::trace::TraceParent;
use crate::transport::{topology, Destination, OutgoingMessage, Transport, TransportError};
use crate::{Context, Target, Version};

/// oslo.messaging's default `rpc_response_timeout`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends calls and casts to one target.
///
/// ```
/// # use tidings::{rpc::RpcClient, Context, Target, Transport, Version};
/// # async fn demo(transport: &Transport) -> Result<(), tidings::rpc::RpcError> {
/// let client = RpcClient::new(transport, Target::topic("compute"));
/// let sum: i64 = client
///     .prepare()
///     .server("host-1")
///     .version(Version::new(1, 3))
///     .call(&Context::new(), "add", serde_json::json!({"a": 1, "b": 2}))
///     .await?;
/// # let _ = sum; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RpcClient {
    transport: Transport,
    target: Target,
    timeout: Duration,
    version_cap: Option<Version>,
    call_monitor_timeout: Option<Duration>,
    mandatory: bool,
    /// What every request to the target carries, worked out on the first one: a client sends
    /// many, and working it out each time cost three allocations of every request.
    routing: OnceLock<Arc<Routing>>,
}

/// The parts of a request that follow from the target alone.
#[derive(Debug)]
struct Routing {
    destination: Destination,
    /// The target's version as the request's `version` field.
    version: Option<String>,
}

impl RpcClient {
    /// A client of `target` on `transport`.
    pub fn new(transport: &Transport, target: Target) -> Self {
        Self {
            transport: transport.clone(),
            target,
            timeout: DEFAULT_CALL_TIMEOUT,
            version_cap: None,
            call_monitor_timeout: None,
            mandatory: false,
            routing: OnceLock::new(),
        }
    }

    /// A copy to override fields on; the original is unchanged.
    #[must_use]
    pub fn prepare(&self) -> Self {
        self.clone()
    }

    /// The target requests go to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends to one server's queue (`<topic>.<server>`).
    #[must_use]
    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.target.server = Some(server.into());
        self.retarget()
    }

    /// Sends to another exchange.
    #[must_use]
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.target.exchange = Some(exchange.into());
        self.retarget()
    }

    /// Sends to another topic.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.target.topic = topic.into();
        self.retarget()
    }

    /// Requests methods of `namespace`.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.target.namespace = Some(namespace.into());
        self.retarget()
    }

    /// Requests methods of oslo's default (unnamed) namespace.
    #[must_use]
    pub fn without_namespace(mut self) -> Self {
        self.target.namespace = None;
        self.retarget()
    }

    /// Requests API `version`.
    #[must_use]
    pub fn version(mut self, version: Version) -> Self {
        self.target.version = Some(version);
        self.retarget()
    }

    /// Casts go to every server on the topic.
    #[must_use]
    pub fn fanout(mut self, fanout: bool) -> Self {
        self.target.fanout = fanout;
        self.retarget()
    }

    /// How long a call waits for its reply (default 60 s). Also the request's expiration, so a
    /// request nobody took in time is dropped by the broker.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Refuses to send a version the receiving side may not have yet.
    #[must_use]
    pub fn version_cap(mut self, cap: Version) -> Self {
        self.version_cap = Some(cap);
        self
    }

    /// Asks the server for keepalives every `timeout / 2` and fails the call when they stop, so
    /// a long call to a live server may outlast this while a dead server is noticed quickly.
    #[must_use]
    pub fn call_monitor_timeout(mut self, timeout: Duration) -> Self {
        self.call_monitor_timeout = Some(timeout);
        self
    }

    /// Publishes with the mandatory flag: a request no queue receives fails at once with
    /// [`RpcError::NoServer`] instead of timing out.
    #[must_use]
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Replies the transport's reply queue dropped so far (too large, malformed, or waited for
    /// by no call), by reason; `None` before the first call opened it.
    pub async fn reply_queue_refusals(&self) -> Option<crate::serve::Refusals> {
        ReplyRouter::refusals_of(&self.transport).await
    }

    /// oslo's `can_send_version`: whether `version` (the target's when `None`) is within the cap.
    pub fn can_send_version(&self, version: Option<Version>) -> bool {
        match (self.version_cap, version.or(self.target.version)) {
            (Some(cap), Some(version)) => cap.can_serve(&version),
            _ => true,
        }
    }

    /// Calls `method` and waits for its result.
    ///
    /// The call waits at most the client's timeout, and no longer than the context's deadline
    /// when it has one (a handler calling on with the context it was given). The server learns
    /// the time left and cancels the work once it has passed. The context's `traceparent`, or a
    /// new trace when it has none, goes with the request as this call's span.
    pub async fn call<R: DeserializeOwned>(
        &self,
        context: &Context,
        method: &str,
        args: impl Serialize,
    ) -> Result<R, RpcError> {
        let trace = next_hop(context);
        let span = tracing::info_span!(
            "rpc.call",
            topic = %self.target.topic,
            server = self.target.server.as_deref(),
            method,
            trace_id = %trace.trace_id(),
            span_id = %trace.span_id(),
            request_id = context.request_id(),
            global_request_id = context.global_request_id(),
        );
        let started = std::time::Instant::now();
        let result = self
            .call_value(context, method, args, &trace)
            .instrument(span)
            .await
            .and_then(|value| {
                serde_json::from_value(value).map_err(|error| RpcError::UnexpectedResult {
                    method: method.to_owned(),
                    detail: error.to_string(),
                })
            });
        let outcome = match &result {
            Ok(_) => metrics::outcome::OK,
            Err(RpcError::Remote { .. }) => metrics::outcome::ERROR,
            Err(RpcError::Timeout { .. } | RpcError::MonitorTimeout { .. }) => {
                metrics::outcome::TIMEOUT
            }
            Err(RpcError::NoServer { .. }) => metrics::outcome::NO_SERVER,
            Err(_) => metrics::outcome::FAILED,
        };
        metrics::record_client_call(method, outcome, started.elapsed().as_secs_f64());
        result
    }

    /// How long a call with `context` may wait: the client's timeout, cut to the context's
    /// deadline.
    fn call_timeout(&self, context: &Context) -> Duration {
        context
            .time_left()
            .map_or(self.timeout, |left| left.min(self.timeout))
    }

    async fn call_value(
        &self,
        context: &Context,
        method: &str,
        args: impl Serialize,
        trace: &TraceParent,
    ) -> Result<Value, RpcError> {
        if self.target.fanout {
            return Err(RpcError::FanoutCall {
                target: self.target.clone(),
            });
        }
        // Everything, reconnecting included, happens within the call's timeout.
        let timeout = self.call_timeout(context);
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || RpcError::Timeout {
            target: self.target.clone(),
            method: method.to_owned(),
            timeout,
        };
        let router = tokio::time::timeout_at(deadline, ReplyRouter::of(&self.transport))
            .await
            .map_err(|_| timed_out())??;
        let msg_id = topology::new_id();
        let mut waiter = router.register(msg_id.clone());
        let call = CallInfo {
            msg_id,
            reply_q: router.queue().to_owned(),
            timeout: self.call_monitor_timeout.and_then(seconds_number),
        };
        let request = Outgoing {
            context,
            method,
            call: Some(call),
            trace,
            expires_at: Some(deadline),
        };
        // The reply can arrive before the publisher confirm (it proves the request was
        // routed): wait for whichever comes first, not for one and then the other.
        let publish = tokio::time::timeout_at(deadline, self.publish(request, args));
        let mut early = None;
        tokio::select! {
            biased;
            published = publish => published.map_err(|_| timed_out())??,
            reply = waiter.next() => early = Some(reply),
        }

        let mut monitor_deadline = self
            .call_monitor_timeout
            .map(|t| tokio::time::Instant::now() + t);
        loop {
            let wake_at = monitor_deadline.map_or(deadline, |m| m.min(deadline));
            let reply = if let Some(reply) = early.take() {
                reply
            } else {
                tokio::select! {
                    reply = waiter.next() => reply,
                    () = tokio::time::sleep_until(wake_at) => {
                        return Err(if wake_at < deadline {
                            RpcError::MonitorTimeout {
                                target: self.target.clone(),
                                method: method.to_owned(),
                                after: self.call_monitor_timeout.unwrap_or_default(),
                            }
                        } else {
                            timed_out()
                        });
                    }
                }
            };
            let Some(reply) = reply else {
                return Err(RpcError::ReplyLost {
                    target: self.target.clone(),
                    method: method.to_owned(),
                });
            };
            if !reply.ending {
                // A call-monitor keepalive: the server is alive and still working.
                tracing::trace!("call-monitor keepalive");
                monitor_deadline = self
                    .call_monitor_timeout
                    .map(|t| tokio::time::Instant::now() + t);
                continue;
            }
            return match reply.failure {
                Some(error) => Err(RpcError::Remote {
                    target: self.target.clone(),
                    method: method.to_owned(),
                    error,
                }),
                None => Ok(reply.result),
            };
        }
    }

    /// Sends `method` without waiting for a result; to every server on the topic when the
    /// target is fanout. Returns once the transport has taken the message.
    pub async fn cast(
        &self,
        context: &Context,
        method: &str,
        args: impl Serialize,
    ) -> Result<(), RpcError> {
        let trace = next_hop(context);
        let span = tracing::info_span!(
            "rpc.cast",
            topic = %self.target.topic,
            server = self.target.server.as_deref(),
            fanout = self.target.fanout,
            method,
            trace_id = %trace.trace_id(),
            span_id = %trace.span_id(),
            request_id = context.request_id(),
            global_request_id = context.global_request_id(),
        );
        let request = Outgoing {
            context,
            method,
            call: None,
            trace: &trace,
            expires_at: None,
        };
        self.publish(request, args).instrument(span).await
    }

    async fn publish(&self, request: Outgoing<'_>, args: impl Serialize) -> Result<(), RpcError> {
        let Outgoing {
            context,
            method,
            call,
            trace,
            expires_at,
        } = request;
        if let (Some(cap), Some(version)) = (self.version_cap, self.target.version) {
            if !cap.can_serve(&version) {
                return Err(RpcError::VersionCapped { version, cap });
            }
        }
        let codec = self.transport.codec();
        // oslo JSON takes the arguments as serde_json writes them; otherwise they are built as
        // an object first.
        let json_args = match codec {
            Codec::OsloJson => json_arguments(&args),
            Codec::MessagePack => None,
        };
        let object_args = match json_args {
            Some(_) => Map::new(),
            None => keyword_arguments(method, &args)?,
        };
        let args = match &json_args {
            Some(raw) => Arguments::Json(raw),
            None => Arguments::Tree(&object_args),
        };
        let is_call = call.is_some();
        let routing = self.routing();
        let unique_id = topology::new_id();
        let traceparent = trace.to_string();
        // Encoded from borrowed parts: the context and target are not copied per request.
        let request = RequestParts {
            method,
            args,
            namespace: self.target.namespace.as_deref(),
            version: routing.version.as_deref(),
            call: call.as_ref(),
            unique_id: &unique_id,
            context,
            traceparent: Some(&traceparent),
        };
        let body = codec.encode_request_parts(request)?;
        let mut message = OutgoingMessage::new(Bytes::from(body), codec.content_type());
        message.mandatory = self.mandatory;
        if is_call {
            // The time left, not the whole timeout: the server takes it as the caller's
            // deadline, and the broker drops the request once nobody waits for it.
            let left = expires_at.map_or(self.timeout, |at| {
                at.saturating_duration_since(tokio::time::Instant::now())
            });
            message.expiration = Some(left.max(Duration::from_millis(1)));
        }
        let destination = &routing.destination;
        tracing::debug!(%destination, "publishing RPC request");
        self.transport
            .publish(destination, message)
            .await
            .map_err(|error| match error {
                TransportError::Unroutable { .. } => RpcError::NoServer {
                    topic: self.target.topic.clone(),
                    method: method.to_owned(),
                },
                other => RpcError::Transport(other),
            })
    }

    /// Forgets the routing of the target as it was.
    fn retarget(mut self) -> Self {
        self.routing = OnceLock::new();
        self
    }

    fn routing(&self) -> &Routing {
        self.routing.get_or_init(|| {
            Arc::new(Routing {
                destination: self.destination(),
                version: self.target.version.map(|v| v.to_string()),
            })
        })
    }

    fn destination(&self) -> Destination {
        if self.target.fanout {
            return Destination::Fanout {
                topic: self.target.topic.clone(),
            };
        }
        let routing_key = match &self.target.server {
            Some(server) => topology::server_queue(&self.target.topic, server),
            None => self.target.topic.clone(),
        };
        Destination::Rpc {
            exchange: self
                .target
                .exchange_or(self.transport.control_exchange())
                .to_owned(),
            routing_key,
        }
    }
}

/// One request on its way out, borrowed from the caller.
struct Outgoing<'a> {
    context: &'a Context,
    method: &'a str,
    call: Option<CallInfo>,
    trace: &'a TraceParent,
    /// When the caller stops waiting (calls only).
    expires_at: Option<tokio::time::Instant>,
}

/// The trace parent a request sends: a child of the context's, or the root of a new trace.
fn next_hop(context: &Context) -> TraceParent {
    context
        .trace_parent()
        .map_or_else(TraceParent::new_root, |parent| parent.child())
}

/// The arguments as oslo's keyword-argument object.
fn keyword_arguments(method: &str, args: impl Serialize) -> Result<Map<String, Value>, RpcError> {
    match serde_json::to_value(args) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(other) => Err(RpcError::InvalidArguments {
            method: method.to_owned(),
            detail: format!("got {other}"),
        }),
        Err(error) => Err(RpcError::InvalidArguments {
            method: method.to_owned(),
            detail: error.to_string(),
        }),
    }
}

/// Seconds as a JSON number: an integer when whole, as Python callers send it.
fn seconds_number(duration: Duration) -> Option<serde_json::Number> {
    if duration.subsec_nanos() == 0 {
        Some(duration.as_secs().into())
    } else {
        serde_json::Number::from_f64(duration.as_secs_f64())
    }
}
