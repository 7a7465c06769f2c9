//! The RPC server: consumes a target's queues, dispatches requests concurrently, replies.
//!
//! A server listens on `<topic>`, `<topic>.<server>` and its own fanout queue. It follows
//! oslo.messaging's delivery rule for RPC — at most once: a request is acknowledged when it is
//! taken for dispatch, before the handler runs — and drops duplicates by `_unique_id`.
//! Concurrency is bounded: a request is taken from the inbox only when a dispatch slot is free,
//! so a busy server leaves work in the broker (where other servers can take it) instead of
//! buffering it. [`RpcServer::stop`] stops consuming, lets in-flight requests finish within a
//! deadline, then closes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Layer, Service};
use tracing::Instrument;

use super::dispatcher::Dispatcher;
use super::endpoint::{Endpoint, IntoEndpoint, MethodCall, MethodService};
use crate::codec::limits;
use crate::codec::{CallInfo, Codec, RpcReply, RpcRequest};
use crate::metrics::RpcServerMetricsLayer;
use crate::serve::{Refusal, RefusalTally, Refusals, Running, Serving, StopReport};
use crate::trace::{TraceParent, TRACEPARENT_KEY};
use crate::transport::{
    ack_without_waiting, topology, ConsumeOptions, Destination, Inbox, OutgoingMessage,
    Subscription, Transport, TransportError,
};
use crate::{RemoteError, Target};

/// oslo.messaging's default executor pool size.
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;

/// How many recent `_unique_id`s a server remembers to drop duplicates. oslo keeps 16; a longer
/// window catches everything that catches and more, for a few kilobytes.
pub const DEFAULT_DEDUP_WINDOW: usize = 1024;

/// How long a reply to a vanished reply queue is retried (oslo's
/// `kombu_missing_consumer_retry_timeout`).
pub const DEFAULT_REPLY_RETRY: Duration = Duration::from_secs(60);

/// Interval between retries of an undeliverable reply.
const REPLY_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// How long a reply queue given up on stays known as gone.
const OBSOLETE_QUEUE_MEMORY: Duration = Duration::from_secs(60);

/// Reply queues remembered as gone at most (each is a short name and an instant).
const MAX_OBSOLETE_QUEUES: usize = 4096;

/// Replies being retried at once, in all: beyond this the oldest retry is given up, so peers
/// naming reply queues that do not exist cannot keep a server busy without end.
pub const MAX_REPLY_RETRIES: usize = 256;

/// Builds an [`RpcServer`].
#[derive(Debug)]
pub struct RpcServerBuilder {
    transport: Transport,
    target: Target,
    endpoints: Vec<Endpoint>,
    max_concurrency: usize,
    dedup_window: usize,
    reply_retry: Duration,
    cancel_past_deadline: bool,
    layers: Vec<ServerLayer>,
}

/// A layer put on every method of every endpoint of a server.
struct ServerLayer(Box<dyn Fn(Endpoint) -> Endpoint + Send + Sync>);

impl std::fmt::Debug for ServerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerLayer")
    }
}

impl RpcServerBuilder {
    /// Wraps every method of every endpoint of this server in `layer` (metrics, tracing, a
    /// server-wide limit), whenever the endpoints were added; layers added later wrap earlier
    /// ones. Errors become remote errors as with [`Endpoint::layer`].
    #[must_use]
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<MethodService> + Clone + Send + Sync + 'static,
        L::Service: Service<MethodCall, Response = Value> + Clone + Send + Sync + 'static,
        <L::Service as Service<MethodCall>>::Error: Into<BoxError>,
        <L::Service as Service<MethodCall>>::Future: Send + 'static,
    {
        self.layers
            .push(ServerLayer(Box::new(move |endpoint: Endpoint| {
                endpoint.layer(layer.clone())
            })));
        self
    }

    /// Whether a handler still running when its caller's deadline passes is cancelled (default
    /// true). The deadline is the call's timeout as the request's time to live says; casts have
    /// none. Turn this off for handlers that must finish what they started whoever waits.
    #[must_use]
    pub fn cancel_past_deadline(mut self, cancel: bool) -> Self {
        self.cancel_past_deadline = cancel;
        self
    }

    /// Adds an endpoint (an [`Endpoint`] with any state, or a typed
    /// [`ContractEndpoint`](super::ContractEndpoint)); endpoints are tried in the order added.
    #[must_use]
    pub fn endpoint(mut self, endpoint: impl IntoEndpoint) -> Self {
        self.endpoints.push(endpoint.into_endpoint());
        self
    }

    /// Requests dispatched at once (default 64). Also the consumer prefetch, so the broker never
    /// hands this server more than it can run.
    #[must_use]
    pub fn max_concurrency(mut self, limit: usize) -> Self {
        self.max_concurrency = limit.max(1);
        self
    }

    /// How many recent `_unique_id`s to remember for duplicate detection (default 1024).
    #[must_use]
    pub fn dedup_window(mut self, size: usize) -> Self {
        self.dedup_window = size;
        self
    }

    /// How long a reply to a reply queue that no longer exists is retried (every 0.25 s, as
    /// oslo does) before it is dropped with a warning (default 60 s). The dispatch slot is freed
    /// while retrying; a queue given up on is remembered for a minute and later replies to it are
    /// dropped at once.
    #[must_use]
    pub fn reply_retry(mut self, timeout: Duration) -> Self {
        self.reply_retry = timeout;
        self
    }

    /// Declares the queues and starts serving.
    pub async fn start(self) -> Result<RpcServer, TransportError> {
        let server = self.target.server.clone().unwrap_or_else(topology::new_id);
        let subscription = Subscription::RpcServer {
            exchange: self
                .target
                .exchange_or(self.transport.control_exchange())
                .to_owned(),
            topic: self.target.topic.clone(),
            server,
        };
        let prefetch = u16::try_from(self.max_concurrency).unwrap_or(u16::MAX);
        let inbox = self
            .transport
            .driver()
            .subscribe(&subscription, ConsumeOptions { prefetch })
            .await?;
        let serving = Serving::new(self.max_concurrency);
        let worker = ServerLoop {
            transport: self.transport,
            cancel_past_deadline: self.cancel_past_deadline,
            target: Arc::new(self.target.clone()),
            dispatcher: Arc::new(Dispatcher::new(
                self.endpoints
                    .into_iter()
                    .map(|endpoint| self.layers.iter().fold(endpoint, |e, layer| (layer.0)(e)))
                    // Outermost, so that the figures include the user's layers (limits,
                    // timeouts).
                    .map(|endpoint| endpoint.layer(RpcServerMetricsLayer))
                    .collect(),
            )),
            intake: Arc::new(Intake {
                target: self.target.clone(),
                seen: Mutex::new(RecentIds::new(self.dedup_window)),
                refusals: RefusalTally::default(),
            }),
            replies: Arc::new(ReplyPolicy::new(self.reply_retry)),
        };
        let intake = worker.intake.clone();
        let running = serving.run(|serving| worker.run(serving, inbox));
        Ok(RpcServer {
            target: self.target,
            running,
            intake,
        })
    }
}

/// A running RPC server.
#[derive(Debug)]
pub struct RpcServer {
    target: Target,
    running: Running,
    intake: Arc<Intake>,
}

impl RpcServer {
    /// Starts building a server for `target` (its `server` names this server's queue; a fresh
    /// name is made when it is `None`).
    pub fn builder(transport: &Transport, target: Target) -> RpcServerBuilder {
        RpcServerBuilder {
            transport: transport.clone(),
            target,
            endpoints: Vec::new(),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            reply_retry: DEFAULT_REPLY_RETRY,
            cancel_past_deadline: true,
            layers: Vec::new(),
        }
    }

    /// The target served.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Stops consuming at once, waits up to `deadline` for requests in flight, abandons the
    /// rest, and closes the server's queues (its fanout queue is deleted).
    pub async fn stop(self, deadline: Duration) -> StopReport {
        self.running.stop(deadline).await
    }

    /// Resolves when the server ends on its own (its inbox closed) or has been stopped.
    pub async fn stopped(&self) {
        self.running.stopped().await;
    }

    /// Requests refused before reaching a handler so far, by reason.
    pub fn refusals(&self) -> Refusals {
        self.intake.refusals.snapshot()
    }
}

/// The last N `_unique_id`s seen, each kept as a keyed 128-bit digest: no allocation per
/// request and 16 bytes an id however long a peer makes it, and no id a peer could craft to
/// pass for another (the keys are random per process). The ids of a burst stayed live
/// scattered through the heap as strings and kept its pages from going back to the system.
#[derive(Debug)]
struct RecentIds {
    order: VecDeque<u128>,
    set: HashSet<u128>,
    capacity: usize,
    keys: [RandomState; 2],
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::with_capacity(capacity),
            set: HashSet::with_capacity(capacity),
            capacity,
            keys: [RandomState::new(), RandomState::new()],
        }
    }

    fn digest(&self, id: &str) -> u128 {
        let [high, low] = &self.keys;
        (u128::from(high.hash_one(id)) << 64) | u128::from(low.hash_one(id))
    }

    /// Records `id`; false when it was seen within the window.
    fn first_time(&mut self, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let digest = self.digest(id);
        if self.set.contains(&digest) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(digest);
        self.order.push_back(digest);
        true
    }
}

struct ServerLoop {
    transport: Transport,
    cancel_past_deadline: bool,
    target: Arc<Target>,
    dispatcher: Arc<Dispatcher>,
    intake: Arc<Intake>,
    replies: Arc<ReplyPolicy>,
}

/// What every request passes through before dispatch, shared by the loop and its tasks.
#[derive(Debug)]
struct Intake {
    target: Target,
    seen: Mutex<RecentIds>,
    refusals: RefusalTally,
}

impl Intake {
    /// Counts a refused request and logs it, a few lines per window at most; the text of
    /// `why` is cut, since a peer controls it.
    fn refuse(&self, refusal: Refusal, why: &dyn std::fmt::Display, bytes: usize) {
        crate::metrics::record_server_refusal(crate::metrics::outcome::MALFORMED);
        if let Some((left_out, reason)) = self.refusals.record(refusal, why) {
            tracing::warn!(target = %self.target, bytes, left_out, %reason, "refused an RPC request");
        }
    }
}

/// What became of a request taken from the inbox.
enum Decoded {
    /// A request to dispatch, in its codec.
    Request(RpcRequest, Codec),
    /// A call refused for a reason its caller can be told.
    Refused(CallInfo, Codec, RemoteError),
    /// Dropped (counted): nobody to tell.
    Dropped,
}

/// A request taken from the inbox (and acknowledged), not decoded yet.
struct Taken {
    body: Bytes,
    content_type: String,
    /// When the caller stops waiting: arrival plus the time the request had left to live.
    deadline: Option<tokio::time::Instant>,
    intake: Arc<Intake>,
}

impl Taken {
    /// Decodes and checks the request, and drops it if its `_unique_id` was seen within the
    /// window.
    fn decode(self) -> Decoded {
        let codec = match Codec::from_content_type(&self.content_type) {
            Ok(codec) => codec,
            Err(error) => {
                self.intake
                    .refuse(Refusal::Malformed, &error, self.body.len());
                return Decoded::Dropped;
            }
        };
        match codec.decode_request_salvaging(&self.body) {
            Ok(mut request) => {
                request.context.set_deadline(self.deadline);
                // The window stays consistent under panic: each call is one insert or lookup.
                let mut seen = self.intake.seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.first_time(&request.unique_id) {
                    Decoded::Request(request, codec)
                } else {
                    drop(seen);
                    self.intake.refusals.count(Refusal::Duplicate);
                    tracing::debug!(unique_id = %request.unique_id, "dropped a duplicate request");
                    Decoded::Dropped
                }
            }
            Err((error, call)) => {
                self.intake
                    .refuse(Refusal::Malformed, &error, self.body.len());
                match call {
                    Some(call) => {
                        let why = error.to_string();
                        let refusal = RemoteError::new(
                            "ValueError",
                            "builtins",
                            format!("request refused: {}", limits::truncate_for_log(&why)),
                        );
                        Decoded::Refused(call, codec, refusal)
                    }
                    None => Decoded::Dropped,
                }
            }
        }
    }
}

impl ServerLoop {
    async fn run(self, mut serving: Serving, mut inbox: Inbox) -> StopReport {
        loop {
            let Some(slot) = serving.meanwhile(serving.slot()).await else {
                break;
            };
            let next = serving.unless_stopping(inbox.recv());
            let Some(delivery) = serving.meanwhile(next).await else {
                break;
            };
            let Some(delivery) = delivery else {
                tracing::warn!(target = %self.target, "server inbox closed by the transport");
                break;
            };
            let deadline = delivery
                .expiration
                .map(|left| tokio::time::Instant::now() + left);
            // Acknowledged here, in arrival order (oslo's at-most-once rule); decoded in the
            // dispatch task, so that decoding runs on every worker thread, not on this loop's.
            let (body, content_type, acker) = delivery.into_parts();
            ack_without_waiting(acker, "an RPC request");
            if self.transport.is_too_large(&body) {
                let limit = self.transport.max_message_size();
                self.intake.refuse(
                    Refusal::TooLarge,
                    &format_args!("larger than the limit of {limit} bytes; not decoded"),
                    body.len(),
                );
                continue;
            }
            let taken = Taken {
                body,
                content_type,
                deadline,
                intake: self.intake.clone(),
            };
            let (transport, dispatcher, replies) = (
                self.transport.clone(),
                self.dispatcher.clone(),
                self.replies.clone(),
            );
            let cancel_past_deadline = self.cancel_past_deadline;
            serving.start(taken.body.len(), async move {
                let dispatch = |codec| Dispatch {
                    transport,
                    cancel_past_deadline,
                    dispatcher,
                    replies,
                    codec,
                };
                // The decoded message is taken apart before the request runs, so the future
                // does not keep the message's place beside the request's.
                let (request, codec) = match taken.decode() {
                    Decoded::Request(request, codec) => (request, codec),
                    Decoded::Refused(call, codec, error) => {
                        return dispatch(codec).refuse(&call, error, slot).await;
                    }
                    Decoded::Dropped => return,
                };
                dispatch(codec).run(request, slot).await;
            });
        }
        serving.begin_stop();
        serving.detach();
        let health = inbox.health();
        inbox.close().await;
        let mut report = serving.drain().await;
        report.unrestored_queues = health.unrestored();
        report
    }
}

/// What to do with replies whose queue is gone.
#[derive(Debug)]
struct ReplyPolicy {
    retry_for: Duration,
    /// Reply queues given up on, and when; pruned at most once a second.
    obsolete: Mutex<ObsoleteQueues>,
    /// Replies being retried, oldest first, each with the token that gives it up.
    retrying: Mutex<VecDeque<(u64, CancellationToken)>>,
    next_retry: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct ObsoleteQueues {
    since: HashMap<String, tokio::time::Instant>,
    pruned: Option<tokio::time::Instant>,
}

impl ReplyPolicy {
    fn new(retry_for: Duration) -> Self {
        Self {
            retry_for,
            obsolete: Mutex::default(),
            retrying: Mutex::default(),
            next_retry: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn obsolete(&self) -> std::sync::MutexGuard<'_, ObsoleteQueues> {
        self.obsolete.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_obsolete(&self, queue: &str) -> bool {
        let mut obsolete = self.obsolete();
        let now = tokio::time::Instant::now();
        if obsolete
            .pruned
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            obsolete
                .since
                .retain(|_, since| now.duration_since(*since) < OBSOLETE_QUEUE_MEMORY);
            obsolete.pruned = Some(now);
        }
        obsolete
            .since
            .get(queue)
            .is_some_and(|since| now.duration_since(*since) < OBSOLETE_QUEUE_MEMORY)
    }

    fn give_up_on(&self, queue: &str) {
        let mut obsolete = self.obsolete();
        if obsolete.since.len() < MAX_OBSOLETE_QUEUES {
            obsolete
                .since
                .insert(queue.to_owned(), tokio::time::Instant::now());
        }
    }

    fn retrying(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, CancellationToken)>> {
        self.retrying.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a retry; when [`MAX_REPLY_RETRIES`] are already running, the oldest is given
    /// up to make room.
    fn start_retry(&self) -> (u64, CancellationToken) {
        let id = self
            .next_retry
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut retrying = self.retrying();
        if retrying.len() >= MAX_REPLY_RETRIES {
            if let Some((_, oldest)) = retrying.pop_front() {
                oldest.cancel();
            }
        }
        retrying.push_back((id, token.clone()));
        (id, token)
    }

    fn end_retry(&self, id: u64) {
        let mut retrying = self.retrying();
        if let Some(at) = retrying.iter().position(|(i, _)| *i == id) {
            retrying.remove(at);
        }
    }
}

/// Runs one request and sends its reply.
struct Dispatch {
    transport: Transport,
    cancel_past_deadline: bool,
    dispatcher: Arc<Dispatcher>,
    replies: Arc<ReplyPolicy>,
    codec: Codec,
}

impl Dispatch {
    /// Runs `request` holding `slot`; the slot is released once the handler is done, even if
    /// the reply must still be retried.
    ///
    /// The span is made before the future, so the future holds the request's parts once, not
    /// the request beside them: it is what every request in flight costs.
    fn run(
        self,
        mut request: RpcRequest,
        slot: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send {
        // The handler's span is the next hop of the caller's trace (or starts one), and the
        // handler's context names it, so calls it makes are this span's children.
        let caller = request.context.trace_parent();
        let trace = caller.map_or_else(TraceParent::new_root, |parent| parent.child());
        request.context.insert(TRACEPARENT_KEY, trace.to_string());
        let span = tracing::info_span!(
            "rpc.dispatch",
            method = %request.method,
            namespace = request.namespace.as_deref(),
            version = request.version.as_deref(),
            call = request.call.is_some(),
            trace_id = %trace.trace_id(),
            span_id = %trace.span_id(),
            parent_span_id = caller.map(|parent| parent.span_id()),
            request_id = request.context.request_id(),
            global_request_id = request.context.global_request_id(),
        );
        let RpcRequest {
            method,
            args,
            namespace,
            version,
            call,
            context,
            ..
        } = request;
        async move {
            let deadline = context.deadline().filter(|_| self.cancel_past_deadline);
            // Each part of the state lives in one place: the work is pinned where it runs and
            // ends before the reply is sent, keepalives exist only once a handler has run past
            // the first interval, and a reply's retries are boxed. A request in flight costs
            // its work once and little besides.
            let reply = {
                // Work the caller no longer waits for is cancelled (dropped) at its deadline.
                let mut work = std::pin::pin!(async {
                    let work = self.dispatcher.dispatch(
                        namespace.as_deref(),
                        version.as_deref(),
                        &method,
                        context,
                        args,
                    );
                    match deadline {
                        Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok(),
                        None => Some(work.await),
                    }
                });
                // The call is borrowed where the request left it, not moved to a second place.
                let Some(call) = call.as_ref() else {
                    match work.await {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => tracing::warn!(%error, "cast handler failed"),
                        None => tracing::info!("cast handler cancelled at its deadline"),
                    }
                    drop(slot);
                    return;
                };
                let outcome = match keepalive_interval(call) {
                    Some(every) => match tokio::time::timeout(every, work.as_mut()).await {
                        Ok(outcome) => outcome,
                        Err(_first_interval_passed) => {
                            let keepalives = Box::pin(self.keepalives(call, every));
                            tokio::select! {
                                outcome = work.as_mut() => outcome,
                                never = keepalives => match never {},
                            }
                        }
                    },
                    None => work.await,
                };
                let Some(result) = outcome else {
                    // The caller has given up: a reply would only be dropped on its side.
                    tracing::info!("handler cancelled: the caller's deadline passed");
                    return;
                };
                final_reply(call, result)
            };
            let Some(call) = call.as_ref() else { return };
            if !self.reply(call, &reply).await {
                drop(slot);
                // Rare (the caller's queue was missing): its state goes on the heap rather
                // than into every request's future.
                Box::pin(self.retry_reply(call, &reply)).await;
            }
        }
        .instrument(span)
    }

    /// Retries a reply whose queue was missing, every 0.25 s for the policy's time, unless
    /// newer retries push it out.
    async fn retry_reply(&self, call: &CallInfo, reply: &RpcReply) {
        let (id, given_up) = self.replies.start_retry();
        let give_up_at = tokio::time::Instant::now() + self.replies.retry_for;
        let outcome = async {
            while tokio::time::Instant::now() < give_up_at {
                tokio::time::sleep(REPLY_RETRY_INTERVAL).await;
                if self.replies.is_obsolete(&call.reply_q) || self.reply(call, reply).await {
                    return true;
                }
            }
            false
        };
        let delivered = tokio::select! {
            delivered = outcome => delivered,
            () = given_up.cancelled() => {
                tracing::warn!(reply_q = %limits::truncate_for_log(&call.reply_q), limit = MAX_REPLY_RETRIES, "too many replies waiting for their queues; the oldest dropped");
                false
            }
        };
        self.replies.end_retry(id);
        if !delivered {
            if !given_up.is_cancelled() {
                tracing::warn!(reply_q = %limits::truncate_for_log(&call.reply_q), after = ?self.replies.retry_for, "reply queue is gone; reply dropped");
            }
            self.replies.give_up_on(&call.reply_q);
        }
    }

    /// Tells the caller its request was refused, holding `slot` until the reply is sent.
    async fn refuse(self, call: &CallInfo, error: RemoteError, slot: OwnedSemaphorePermit) {
        let reply = RpcReply {
            result: Value::Null,
            failure: Some(error),
            ending: true,
            msg_id: call.msg_id.clone(),
            unique_id: topology::new_id(),
        };
        // A refusal is not retried: its queue is there or the caller is gone.
        self.reply(call, &reply).await;
        drop(slot);
    }

    /// Sends `ending: false` replies every `every`, the first at once, until cancelled (by the
    /// handler finishing).
    async fn keepalives(&self, call: &CallInfo, every: Duration) -> std::convert::Infallible {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            let heartbeat = RpcReply {
                result: Value::Null,
                failure: None,
                ending: false,
                msg_id: call.msg_id.clone(),
                unique_id: topology::new_id(),
            };
            // A keepalive that cannot be delivered is not retried: the next one follows.
            let _ = self.reply(call, &heartbeat).await;
        }
    }

    /// Sends `reply`; false only when its queue does not exist (worth retrying).
    async fn reply(&self, call: &CallInfo, reply: &RpcReply) -> bool {
        if self.replies.is_obsolete(&call.reply_q) {
            tracing::debug!(reply_q = %call.reply_q, "reply to a queue known to be gone dropped");
            return true;
        }
        let body = match self.codec.encode_reply(reply) {
            Ok(body) => body,
            Err(error) => {
                // The result could not be encoded (e.g. a forbidden typed value): tell the
                // caller instead of leaving it to time out.
                tracing::warn!(%error, "reply could not be encoded");
                let fallback = RpcReply {
                    result: Value::Null,
                    failure: Some(RemoteError::new(
                        "SerializationError",
                        "tidings.rpc",
                        format!("reply could not be encoded: {error}"),
                    )),
                    ..reply.clone()
                };
                match self.codec.encode_reply(&fallback) {
                    Ok(body) => body,
                    Err(_) => return true,
                }
            }
        };
        let mut message = OutgoingMessage::new(Bytes::from(body), self.codec.content_type());
        message.mandatory = true;
        let destination = Destination::Reply {
            queue: call.reply_q.clone(),
        };
        match self.transport.publish(&destination, message).await {
            Ok(()) => true,
            Err(TransportError::Unroutable { .. }) => false,
            Err(error) => {
                tracing::warn!(%error, reply_q = %call.reply_q, "reply not delivered");
                true
            }
        }
    }
}

/// The reply that ends a call: its result, or the handler's error.
fn final_reply(call: &CallInfo, result: Result<Value, RemoteError>) -> RpcReply {
    let (result, failure) = match result {
        Ok(result) => (result, None),
        Err(error) => {
            tracing::debug!(%error, "handler returned an error");
            (Value::Null, Some(error))
        }
    };
    RpcReply {
        result,
        failure,
        ending: true,
        msg_id: call.msg_id.clone(),
        unique_id: topology::new_id(),
    }
}

/// oslo's call-monitor rule: keepalives every `int(_timeout) / 2` seconds, only when `_timeout`
/// is set and that interval is at least one second.
fn keepalive_interval(call: &CallInfo) -> Option<Duration> {
    let timeout = call.timeout.as_ref()?.as_f64()?;
    if !timeout.is_finite() || timeout < 0.0 {
        return None;
    }
    // Truncation is the rule: Python computes int(timeout) / 2. The codec bounds `_timeout`;
    // a value past any duration still yields none rather than a panic.
    let seconds = (timeout.min(limits::MAX_CALL_MONITOR_SECONDS).trunc() / 2.0).max(0.0);
    if seconds < 1.0 {
        return None;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_with(timeout: Option<serde_json::Number>) -> CallInfo {
        CallInfo {
            msg_id: "m".into(),
            reply_q: "q".into(),
            timeout,
        }
    }

    #[test]
    fn keepalives_follow_oslo_interval_rule() {
        assert_eq!(keepalive_interval(&call_with(None)), None);
        assert_eq!(keepalive_interval(&call_with(Some(1.into()))), None);
        assert_eq!(
            keepalive_interval(&call_with(Some(3.into()))),
            Some(Duration::from_secs_f64(1.5))
        );
        assert_eq!(
            keepalive_interval(&call_with(Some(10.into()))),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn keepalives_never_panic_on_huge_or_odd_timeouts() {
        for seconds in [1e20, 1e300, f64::MAX] {
            let timeout = serde_json::Number::from_f64(seconds);
            assert!(keepalive_interval(&call_with(timeout)).is_some());
        }
        assert_eq!(keepalive_interval(&call_with(Some((-5).into()))), None);
    }

    #[test]
    fn reply_retries_are_bounded_in_total_and_the_oldest_goes_first() {
        let policy = ReplyPolicy::new(DEFAULT_REPLY_RETRY);
        let retries: Vec<_> = (0..MAX_REPLY_RETRIES + 2)
            .map(|_| policy.start_retry())
            .collect();
        assert!(retries[0].1.is_cancelled() && retries[1].1.is_cancelled());
        assert!(retries[2..].iter().all(|(_, token)| !token.is_cancelled()));
        assert_eq!(policy.retrying().len(), MAX_REPLY_RETRIES);
        policy.end_retry(retries[5].0);
        assert_eq!(policy.retrying().len(), MAX_REPLY_RETRIES - 1);
    }

    #[test]
    fn recent_ids_forget_beyond_the_window() {
        let mut seen = RecentIds::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c"));
        assert!(seen.first_time("a"), "a left the window");
    }

    #[test]
    fn recent_ids_tell_near_ids_apart_and_keep_long_ones_small() {
        let mut seen = RecentIds::new(4);
        let id = "0123456789abcdef0123456789abcdef";
        assert!(seen.first_time(id));
        assert!(seen.first_time("0123456789abcdef0123456789abcdee"));
        assert!(!seen.first_time(id));
        let long = "x".repeat(1 << 20);
        assert!(seen.first_time(&long));
        assert!(!seen.first_time(&long));
        assert!(seen.first_time(&long[1..]));
    }
}
