//! What the library counts, under Prometheus' naming conventions, through the [`metrics`]
//! facade: a process that installs a recorder (`tidings_runtime::admin` installs a Prometheus
//! one; any `metrics` recorder works) sees them, and a process that installs none pays one
//! atomic load per count (and, for a request's figures, a lookup of its method's labels, made
//! once per method name).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tidings_rpc_client_calls_total` | counter | `method`, `outcome` |
//! | `tidings_rpc_client_call_duration_seconds` | histogram | `method`, `outcome` |
//! | `tidings_rpc_server_requests_total` | counter | `method`, `outcome` |
//! | `tidings_rpc_server_request_duration_seconds` | histogram | `method`, `outcome` |
//! | `tidings_messages_published_total` | counter | |
//! | `tidings_deliveries_total` | counter | |
//! | `tidings_redeliveries_total` | counter | |
//! | `tidings_dead_lettered_total` | counter | |
//! | `tidings_amqp_reconnects_total` | counter | |
//! | `tidings_amqp_publish_channels_retired_total` | counter | |
//!
//! Label values are bounded: a server labels only the methods its endpoints declare (anything
//! a peer names that no endpoint has is [`UNKNOWN_METHOD`]), and outcomes are the constants
//! below. A client labels the methods its own code calls.
//!
//! The RPC server's figures come from [`RpcServerMetricsLayer`], a tower layer every server puts
//! on its methods (see `RpcServerBuilder::layer` for adding more), and from the dispatcher for
//! requests no method takes; the transport's from hooks in `Transport` and `Delivery`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use ::metrics::{Key, Label, Level, Metadata, SharedString};
use futures::future::BoxFuture;
use serde_json::Value;
use tower::{Layer, Service};

use crate::rpc::MethodCall;
use crate::RemoteError;

/// Calls made, by method and outcome.
pub const RPC_CLIENT_CALLS: &str = "tidings_rpc_client_calls_total";
/// How long calls took until their reply (or failure), by method and outcome.
pub const RPC_CLIENT_CALL_DURATION: &str = "tidings_rpc_client_call_duration_seconds";
/// Requests (calls and casts) a server dispatched, by method and outcome.
pub const RPC_SERVER_REQUESTS: &str = "tidings_rpc_server_requests_total";
/// How long a server's handlers took, by method and outcome.
pub const RPC_SERVER_REQUEST_DURATION: &str = "tidings_rpc_server_request_duration_seconds";
/// Messages handed to the broker (or the in-memory bus) and accepted by it.
pub const MESSAGES_PUBLISHED: &str = "tidings_messages_published_total";
/// Messages delivered to a consumer of this process.
pub const DELIVERIES: &str = "tidings_deliveries_total";
/// Deliveries of messages delivered before (the broker's redelivered flag, or a requeue).
pub const REDELIVERIES: &str = "tidings_redeliveries_total";
/// Messages moved to a dead-letter queue by this process.
pub const DEAD_LETTERED: &str = "tidings_dead_lettered_total";
/// AMQP connections opened again after one was lost.
pub const AMQP_RECONNECTS: &str = "tidings_amqp_reconnects_total";
/// Publishing channels taken out of use because a publisher confirm on them was overdue.
pub const AMQP_PUBLISH_CHANNELS_RETIRED: &str = "tidings_amqp_publish_channels_retired_total";

/// The `method` label of requests for a method no endpoint declares.
pub const UNKNOWN_METHOD: &str = "_unknown";

/// The `outcome` label values.
pub mod outcome {
    /// The handler (or the remote one) returned a result.
    pub const OK: &str = "ok";
    /// The handler returned an error (a call's caller receives it as a remote error).
    pub const ERROR: &str = "error";
    /// No endpoint has the method, or none serves the namespace or version asked for.
    pub const UNSUPPORTED: &str = "unsupported";
    /// The request could not be decoded, or was too large.
    pub const MALFORMED: &str = "malformed";
    /// The handler was cancelled: its caller's deadline passed.
    pub const CANCELLED: &str = "cancelled";
    /// A call got no reply in its time.
    pub const TIMEOUT: &str = "timeout";
    /// A call reached no server (nothing consumes its topic).
    pub const NO_SERVER: &str = "no_server";
    /// A call failed before or after the remote handler: arguments, transport, codec, result.
    pub const FAILED: &str = "failed";
}

/// Gives each metric above its help text, for the recorder installed now (Prometheus shows it
/// as `# HELP`). Call it once the process's recorder is installed.
pub fn describe() {
    use ::metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(RPC_CLIENT_CALLS, "RPC calls made, by method and outcome");
    describe_histogram!(
        RPC_CLIENT_CALL_DURATION,
        Unit::Seconds,
        "Time from an RPC call to its reply or failure"
    );
    describe_counter!(
        RPC_SERVER_REQUESTS,
        "RPC requests (calls and casts) served, by method and outcome"
    );
    describe_histogram!(
        RPC_SERVER_REQUEST_DURATION,
        Unit::Seconds,
        "Time RPC handlers took"
    );
    describe_counter!(
        MESSAGES_PUBLISHED,
        "Messages the broker accepted from this process"
    );
    describe_counter!(DELIVERIES, "Messages delivered to this process's consumers");
    describe_counter!(REDELIVERIES, "Deliveries of messages delivered before");
    describe_counter!(DEAD_LETTERED, "Messages moved to a dead-letter queue");
    describe_counter!(
        AMQP_RECONNECTS,
        "AMQP connections re-established after a loss"
    );
    describe_counter!(
        AMQP_PUBLISH_CHANNELS_RETIRED,
        "Publishing channels retired because a publisher confirm on them was overdue"
    );
}

/// Every outcome a figure is labelled with, in the order of a method's kept labels.
const OUTCOMES: [&str; 8] = [
    outcome::OK,
    outcome::ERROR,
    outcome::UNSUPPORTED,
    outcome::MALFORMED,
    outcome::CANCELLED,
    outcome::TIMEOUT,
    outcome::NO_SERVER,
    outcome::FAILED,
];

/// How many method names get labels made once and kept for the life of the process; any
/// method beyond them is labelled afresh for each request, as all were before.
const METHODS_KEPT: usize = 128;

/// A method's name, and its labels for each of [`OUTCOMES`] in turn.
struct KeptMethod {
    name: SharedString,
    labels: [[Label; 2]; OUTCOMES.len()],
}

/// What the macros give a metric registered here.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The labels of the methods named so far. Every request is counted, recorder or not, and
/// labelling it afresh cost three allocations for each pair of figures (the method's name, and
/// a list for each figure) where a lookup costs none. The names are the ones the code calls
/// and serves (a server labels methods no endpoint declares as [`UNKNOWN_METHOD`]), so the set
/// stays small, and [`METHODS_KEPT`] bounds it all the same. A recorder keeps every key it
/// sees for as long.
fn kept_methods() -> &'static RwLock<HashMap<Box<str>, &'static KeptMethod>> {
    static KEPT: OnceLock<RwLock<HashMap<Box<str>, &'static KeptMethod>>> = OnceLock::new();
    KEPT.get_or_init(RwLock::default)
}

/// `method`'s kept labels, made on its first request; `None` once [`METHODS_KEPT`] names are
/// kept and `method` is not one of them.
fn kept_method(method: &str) -> Option<&'static KeptMethod> {
    let kept = kept_methods();
    if let Some(labels) = kept
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(method)
    {
        return Some(labels);
    }
    let mut kept = kept.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(labels) = kept.get(method) {
        return Some(labels);
    }
    if kept.len() >= METHODS_KEPT {
        return None;
    }
    let name = SharedString::from(Arc::<str>::from(method));
    let labels = OUTCOMES.map(|outcome| {
        [
            Label::new("method", name.clone()),
            Label::from_static_parts("outcome", outcome),
        ]
    });
    let method_kept: &'static KeptMethod = Box::leak(Box::new(KeptMethod { name, labels }));
    kept.insert(method.into(), method_kept);
    Some(method_kept)
}

/// The method a request's figures are labelled with: kept, or named afresh when
/// [`METHODS_KEPT`] others are.
enum MethodLabel {
    Kept(&'static KeptMethod),
    Named(SharedString),
}

impl MethodLabel {
    fn of(method: &str) -> Self {
        match kept_method(method) {
            Some(kept) => MethodLabel::Kept(kept),
            None => MethodLabel::Named(SharedString::from(Arc::<str>::from(method))),
        }
    }

    /// Counts one request (or call) ending with `outcome` under `count`, and records how long
    /// it took, when given, under `duration`.
    fn record(
        &self,
        count: &'static str,
        duration: &'static str,
        outcome: &'static str,
        seconds: Option<f64>,
    ) {
        let (count, duration) = match self {
            MethodLabel::Kept(kept) => match OUTCOMES.iter().position(|known| *known == outcome) {
                Some(index) => (
                    Key::from_static_parts(count, &kept.labels[index]),
                    Key::from_static_parts(duration, &kept.labels[index]),
                ),
                None => fresh_keys(count, duration, &kept.name, outcome),
            },
            MethodLabel::Named(name) => fresh_keys(count, duration, name, outcome),
        };
        ::metrics::with_recorder(|recorder| {
            recorder.register_counter(&count, &METADATA).increment(1);
            if let Some(seconds) = seconds {
                recorder
                    .register_histogram(&duration, &METADATA)
                    .record(seconds);
            }
        });
    }
}

/// Keys labelled for this request alone.
fn fresh_keys(
    count: &'static str,
    duration: &'static str,
    method: &SharedString,
    outcome: &'static str,
) -> (Key, Key) {
    let labels = vec![
        Label::new("method", method.clone()),
        Label::from_static_parts("outcome", outcome),
    ];
    (
        Key::from_parts(count, labels.clone()),
        Key::from_parts(duration, labels),
    )
}

/// Counts one request that reached no handler: refused before dispatch (`outcome` is
/// [`outcome::UNSUPPORTED`] or [`outcome::MALFORMED`]), under [`UNKNOWN_METHOD`].
pub(crate) fn record_server_refusal(outcome: &'static str) {
    MethodLabel::of(UNKNOWN_METHOD).record(
        RPC_SERVER_REQUESTS,
        RPC_SERVER_REQUEST_DURATION,
        outcome,
        None,
    );
}

/// Counts one client call of `method` ending with `outcome` after `seconds`.
pub(crate) fn record_client_call(method: &str, outcome: &'static str, seconds: f64) {
    MethodLabel::of(method).record(
        RPC_CLIENT_CALLS,
        RPC_CLIENT_CALL_DURATION,
        outcome,
        Some(seconds),
    );
}

/// Counts `name` (one of the unlabelled counters above) by one.
pub(crate) fn count(name: &'static str) {
    ::metrics::counter!(name).increment(1);
}

/// A tower layer that counts and times every request of the methods it wraps, under
/// [`RPC_SERVER_REQUESTS`] and [`RPC_SERVER_REQUEST_DURATION`]. A request whose handler is
/// dropped before it finishes (its caller's deadline passed) counts as
/// [`outcome::CANCELLED`].
///
/// Every RPC server puts it on its methods; it is public for servers assembled by hand.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcServerMetricsLayer;

impl<S> Layer<S> for RpcServerMetricsLayer {
    type Service = RpcServerMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcServerMetrics { inner }
    }
}

/// The service of [`RpcServerMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcServerMetrics<S> {
    inner: S,
}

impl<S> Service<MethodCall> for RpcServerMetrics<S>
where
    S: Service<MethodCall, Response = Value, Error = RemoteError>,
    S::Future: Send + 'static,
{
    type Response = Value;
    type Error = RemoteError;
    type Future = BoxFuture<'static, Result<Value, RemoteError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: MethodCall) -> Self::Future {
        let mut timing = Timing::start(&call.method);
        let work = self.inner.call(call);
        Box::pin(async move {
            let result = work.await;
            timing.finish(if result.is_ok() {
                outcome::OK
            } else {
                outcome::ERROR
            });
            result
        })
    }
}

/// One request being timed; counted as cancelled if dropped unfinished.
struct Timing {
    method: MethodLabel,
    started: Instant,
    finished: bool,
}

impl Timing {
    fn start(method: &str) -> Self {
        Self {
            method: MethodLabel::of(method),
            started: Instant::now(),
            finished: false,
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        self.finished = true;
        self.method.record(
            RPC_SERVER_REQUESTS,
            RPC_SERVER_REQUEST_DURATION,
            outcome,
            Some(self.started.elapsed().as_secs_f64()),
        );
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped unfinished: by a panic in the handler (an error to its caller), or by
            // the server at the caller's deadline.
            self.finish(if std::thread::panicking() {
                outcome::ERROR
            } else {
                outcome::CANCELLED
            });
        }
    }
}
