//! The typed-contract suite: one contract, declared once below, served by `ContractEndpoint`
//! and called by `ServiceClient` on every transport, and against oslo.messaging in both
//! directions. Also the caller's deadline and trace as a handler sees them.
//!
//! As in the RPC suite, each test takes a fresh [`Bus`] and the `suite!` macro runs it once per
//! transport. The tests with oslo.messaging peers (module `oslo`) run on RabbitMQ only and never
//! skip: see [`tidings_suites::python`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tidings::rpc::{
    Contract, ContractEndpoint, Endpoint, Method, RpcClient, RpcError, RpcServer, ServiceClient,
    State,
};
use tidings::trace::{TraceParent, TRACEPARENT_KEY};
use tidings::transport::Subscription;
use tidings::{Context, RemoteError, Target, Transport, Version};
use tidings_suites::Bus;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::TimeoutLayer;

const TOPIC: &str = "contract";
/// How long the test waits for anything that should happen at once.
const BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The contract

/// A stock-keeping service's API, as its servers and clients (Rust or Python) know it.
pub struct Inventory;

impl Contract for Inventory {
    const NAMESPACE: Option<&'static str> = Some("inventory");
    const VERSION: Version = Version::new(1, 4);
}

/// Adds `count` items of `sku` to the stock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Restock {
    pub sku: String,
    pub count: u32,
}

/// How many items of `sku` are in stock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stock {
    pub sku: String,
    pub count: u32,
}

/// Which item to look up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lookup {
    pub sku: String,
}

/// The price of `count` items at `unit_price`; a coupon halves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    pub sku: String,
    pub count: u32,
    pub unit_price: f64,
    pub coupon: Option<String>,
}

/// A quoted price.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub sku: String,
    pub total: f64,
    pub discounted: bool,
}

/// A remark to keep (sent as a cast).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub text: String,
}

/// No arguments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

/// What a handler knows about its caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub server: String,
    /// Time left before the caller's deadline, when the handler has one.
    pub time_left_ms: Option<u64>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

/// Sleeps for `ms` milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sleep {
    pub ms: u64,
}

/// Adds to the stock; served with the endpoint's state.
pub const RESTOCK: Method<Inventory, Restock, Stock> = Method::new("restock");
/// Reads the stock; exists since 1.1, so calls send 1.1 and 1.1 servers serve them.
pub const LOOKUP: Method<Inventory, Lookup, Option<Stock>> =
    Method::new("lookup").since(Version::new(1, 1));
/// Prices an order; stateless.
pub const QUOTE: Method<Inventory, Quote, Price> = Method::new("quote");
/// Keeps a note (a cast).
pub const NOTE: Method<Inventory, Note, ()> = Method::new("note");
/// The notes kept so far.
pub const NOTES_SEEN: Method<Inventory, Empty, Vec<String>> = Method::new("notes_seen");
/// Reports the handler's deadline and trace.
pub const INSPECT: Method<Inventory, Empty, Seen> = Method::new("inspect");
/// Sleeps, behind a timeout layer (tidings servers only).
pub const PAUSE: Method<Inventory, Sleep, String> = Method::new("pause");
/// Sleeps, behind a concurrency limit of one (tidings servers only).
pub const HOLD: Method<Inventory, Sleep, usize> = Method::new("hold");
/// Sleeps, then sets a flag; reports being cancelled first (tidings servers only).
pub const WORK: Method<Inventory, Sleep, String> = Method::new("work");

/// The time limit of the timeout layer on [`PAUSE`].
const PAUSE_LIMIT: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// A tidings server of the contract

/// What the handlers report, in order.
#[derive(Debug, PartialEq)]
enum Event {
    Noted(String),
    Inspected(Seen),
    /// `work` began.
    Started,
    /// `work` ran to its end and set its flag.
    Finished,
    /// `work` was dropped before its end.
    Cancelled,
}

/// The endpoint's state: one per server, a clone per request.
#[derive(Clone, Debug)]
struct Shop {
    name: Arc<str>,
    stock: Arc<Mutex<BTreeMap<String, u32>>>,
    notes: Arc<Mutex<Vec<String>>>,
    events: mpsc::UnboundedSender<Event>,
    holding: Arc<AtomicUsize>,
    peak_holding: Arc<AtomicUsize>,
    /// Set by `work` once its sleep is over.
    worked: Arc<AtomicBool>,
}

impl Shop {
    fn new(name: &str) -> (Self, Events) {
        let (events, receiver) = mpsc::unbounded_channel();
        let shop = Self {
            name: name.into(),
            stock: Arc::default(),
            notes: Arc::default(),
            events,
            holding: Arc::default(),
            peak_holding: Arc::default(),
            worked: Arc::default(),
        };
        (shop, Events(receiver))
    }

    fn report(&self, event: Event) {
        // The test may have stopped listening; the handler goes on regardless.
        let _ = self.events.send(event);
    }
}

/// The events of one server's handlers.
#[derive(Debug)]
struct Events(mpsc::UnboundedReceiver<Event>);

impl Events {
    /// The next event, which must come within `bound`.
    async fn next(&mut self, bound: Duration) -> Event {
        match tokio::time::timeout(bound, self.0.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("every handler is gone"),
            Err(_) => panic!("no event within {bound:?}"),
        }
    }
}

async fn restock(
    State(shop): State<Shop>,
    _ctx: Context,
    Restock { sku, count }: Restock,
) -> Result<Stock, RemoteError> {
    let mut stock = shop.stock.lock().unwrap();
    let total = stock.entry(sku.clone()).or_default();
    *total += count;
    Ok(Stock { sku, count: *total })
}

async fn lookup(
    State(shop): State<Shop>,
    _ctx: Context,
    Lookup { sku }: Lookup,
) -> Result<Option<Stock>, RemoteError> {
    let stock = shop.stock.lock().unwrap();
    Ok(stock.get(&sku).map(|&count| Stock { sku, count }))
}

async fn quote(_ctx: Context, order: Quote) -> Result<Price, RemoteError> {
    let mut total = f64::from(order.count) * order.unit_price;
    if order.coupon.is_some() {
        total /= 2.0;
    }
    Ok(Price {
        sku: order.sku,
        total,
        discounted: order.coupon.is_some(),
    })
}

async fn note(
    State(shop): State<Shop>,
    _ctx: Context,
    Note { text }: Note,
) -> Result<(), RemoteError> {
    shop.notes.lock().unwrap().push(text.clone());
    shop.report(Event::Noted(text));
    Ok(())
}

async fn notes_seen(
    State(shop): State<Shop>,
    _ctx: Context,
    _: Empty,
) -> Result<Vec<String>, RemoteError> {
    Ok(shop.notes.lock().unwrap().clone())
}

async fn inspect(State(shop): State<Shop>, ctx: Context, _: Empty) -> Result<Seen, RemoteError> {
    let trace = ctx.trace_parent();
    let seen = Seen {
        server: shop.name.to_string(),
        time_left_ms: ctx
            .time_left()
            .map(|left| u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
        trace_id: trace.map(|t| t.trace_id()),
        span_id: trace.map(|t| t.span_id()),
    };
    shop.report(Event::Inspected(seen.clone()));
    Ok(seen)
}

async fn pause(_ctx: Context, Sleep { ms }: Sleep) -> Result<String, RemoteError> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok("paused".into())
}

async fn hold(
    State(shop): State<Shop>,
    _ctx: Context,
    Sleep { ms }: Sleep,
) -> Result<usize, RemoteError> {
    let now = shop.holding.fetch_add(1, Ordering::SeqCst) + 1;
    shop.peak_holding.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    shop.holding.fetch_sub(1, Ordering::SeqCst);
    Ok(now)
}

/// Reports [`Event::Cancelled`] when dropped before `done` is set.
struct CancelGuard {
    shop: Shop,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            self.shop.report(Event::Cancelled);
        }
    }
}

async fn work(
    State(shop): State<Shop>,
    _ctx: Context,
    Sleep { ms }: Sleep,
) -> Result<String, RemoteError> {
    let mut guard = CancelGuard {
        shop: shop.clone(),
        done: false,
    };
    shop.report(Event::Started);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    shop.worked.store(true, Ordering::SeqCst);
    guard.done = true;
    shop.report(Event::Finished);
    Ok("worked".into())
}

/// The contract's endpoint over `shop`. A layer wraps the methods registered before it: the
/// timeout is on `pause` alone, the concurrency limit on `hold` (and `pause`).
fn inventory_endpoint(shop: Shop) -> ContractEndpoint<Inventory, Shop> {
    ContractEndpoint::<Inventory, Shop>::with_state(shop)
        .handle(PAUSE, pause)
        .layer(TimeoutLayer::new(PAUSE_LIMIT))
        .handle(HOLD, hold)
        .layer(ConcurrencyLimitLayer::new(1))
        .handle(RESTOCK, restock)
        .handle(LOOKUP, lookup)
        .handle(QUOTE, quote)
        .handle(NOTE, note)
        .handle(NOTES_SEEN, notes_seen)
        .handle(INSPECT, inspect)
        .handle(WORK, work)
}

/// A tidings server `name` of the contract on [`TOPIC`], with its state and its events.
async fn serve(transport: &Transport, name: &str) -> (RpcServer, Shop, Events) {
    serve_with(transport, name, true).await
}

async fn serve_with(
    transport: &Transport,
    name: &str,
    cancel_past_deadline: bool,
) -> (RpcServer, Shop, Events) {
    let (shop, events) = Shop::new(name);
    let server = RpcServer::builder(transport, Target::topic(TOPIC).with_server(name))
        .endpoint(inventory_endpoint(shop.clone()))
        .cancel_past_deadline(cancel_past_deadline)
        .start()
        .await
        .expect("server starts");
    (server, shop, events)
}

fn client(transport: &Transport) -> ServiceClient<Inventory> {
    ServiceClient::<Inventory>::new(transport, Target::topic(TOPIC)).timeout(BOUND)
}

/// An untyped client sending what a typed call of the contract sends.
fn untyped_client(transport: &Transport) -> RpcClient {
    RpcClient::new(transport, Target::topic(TOPIC))
        .namespace("inventory")
        .version(Version::new(1, 4))
        .timeout(BOUND)
}

fn widgets(count: u32) -> Restock {
    Restock {
        sku: "widget".into(),
        count,
    }
}

fn order(coupon: Option<&str>) -> Quote {
    Quote {
        sku: "widget".into(),
        count: 3,
        unit_price: 2.5,
        coupon: coupon.map(str::to_owned),
    }
}

/// The remote error of a failed call.
fn remote(result: Result<impl std::fmt::Debug, RpcError>) -> RemoteError {
    match result {
        Err(error) => error
            .remote()
            .cloned()
            .unwrap_or_else(|| panic!("not a remote error: {error}")),
        Ok(value) => panic!("expected a remote error, got {value:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The specification, on every transport

pub async fn typed_calls_return_the_methods_result_types(bus: Bus) {
    let transport = bus.transport().await;
    let (server, _shop, _events) = serve(&transport, "s1").await;
    let c = client(&transport);
    let ctx = Context::new();
    let stock: Stock = c.call(&ctx, RESTOCK, widgets(5)).await.unwrap();
    assert_eq!(
        stock,
        Stock {
            sku: "widget".into(),
            count: 5
        }
    );
    let found: Option<Stock> = c
        .call(
            &ctx,
            LOOKUP,
            Lookup {
                sku: "widget".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(found, Some(stock));
    let missing = c
        .call(
            &ctx,
            LOOKUP,
            Lookup {
                sku: "gadget".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(missing, None);
    let price: Price = c.call(&ctx, QUOTE, order(None)).await.unwrap();
    assert_eq!(
        price,
        Price {
            sku: "widget".into(),
            total: 7.5,
            discounted: false
        }
    );
    let price = c.call(&ctx, QUOTE, order(Some("HALF"))).await.unwrap();
    assert_eq!(
        price,
        Price {
            sku: "widget".into(),
            total: 3.75,
            discounted: true
        }
    );
    let () = c
        .call(
            &ctx,
            NOTE,
            Note {
                text: "called".into(),
            },
        )
        .await
        .unwrap();
    server.stop(Duration::from_secs(5)).await;
}

pub async fn handlers_with_state_share_it_across_calls(bus: Bus) {
    let transport = bus.transport().await;
    let (server, shop, _events) = serve(&transport, "s1").await;
    let c = client(&transport);
    let ctx = Context::new();
    for (count, total) in [(2, 2), (3, 5), (10, 15)] {
        let stock = c.call(&ctx, RESTOCK, widgets(count)).await.unwrap();
        assert_eq!(stock.count, total);
    }
    let found = c
        .call(
            &ctx,
            LOOKUP,
            Lookup {
                sku: "widget".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(found.map(|s| s.count), Some(15));
    // The state the handlers got is the one the endpoint was made with.
    assert_eq!(shop.stock.lock().unwrap().get("widget"), Some(&15));
    server.stop(Duration::from_secs(5)).await;
}

pub async fn a_method_since_an_older_version_is_served_by_servers_of_that_version(bus: Bus) {
    assert_eq!(LOOKUP.version(), Version::new(1, 1));
    assert_eq!(RESTOCK.version(), Inventory::VERSION);
    let transport = bus.transport().await;
    // A server of the contract as it was at 1.1: it has `lookup` but not the later methods.
    let older = Endpoint::new()
        .namespace("inventory")
        .version(Version::new(1, 1))
        .method(
            "lookup",
            |_ctx: Context, Lookup { sku }: Lookup| async move {
                Ok::<_, RemoteError>(Some(Stock { sku, count: 1 }))
            },
        );
    let server = RpcServer::builder(&transport, Target::topic(TOPIC).with_server("old"))
        .endpoint(older)
        .start()
        .await
        .unwrap();
    let c = client(&transport);
    let ctx = Context::new();
    let found = c
        .call(
            &ctx,
            LOOKUP,
            Lookup {
                sku: "widget".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        found,
        Some(Stock {
            sku: "widget".into(),
            count: 1
        })
    );
    let error = remote(c.call(&ctx, RESTOCK, widgets(1)).await);
    assert!(error.is_unsupported_version(), "{error}");
    assert_eq!(
        error.message,
        "Endpoint does not support RPC version 1.4. Attempted method: restock"
    );
    server.stop(Duration::from_secs(5)).await;
}

pub async fn requests_outside_the_contract_are_refused(bus: Bus) {
    let transport = bus.transport().await;
    let (server, _shop, _events) = serve(&transport, "s1").await;
    let ctx = Context::new();
    let untyped = untyped_client(&transport);
    let error = remote(
        untyped
            .prepare()
            .without_namespace()
            .call::<Value>(&ctx, "restock", json!({"sku": "w", "count": 1}))
            .await,
    );
    assert!(error.is_unsupported_version(), "{error}");
    let error = remote(
        untyped
            .prepare()
            .version(Version::new(1, 5))
            .call::<Value>(&ctx, "restock", json!({"sku": "w", "count": 1}))
            .await,
    );
    assert!(error.is_unsupported_version(), "{error}");
    let error = remote(untyped.call::<Value>(&ctx, "nope", json!({})).await);
    assert!(error.is_no_such_method(), "{error}");
    // Arguments that do not fit the method's type: the `TypeError` a Python method raises.
    let error = remote(
        untyped
            .call::<Value>(&ctx, "restock", json!({"sku": "w", "count": "many"}))
            .await,
    );
    assert_eq!(
        (error.class.as_str(), error.module.as_str()),
        ("TypeError", "builtins")
    );
    // A result that does not fit the caller's type.
    let error = untyped
        .call::<Vec<u8>>(&ctx, "restock", json!({"sku": "w", "count": 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RpcError::UnexpectedResult { .. }),
        "{error}"
    );
    server.stop(Duration::from_secs(5)).await;
}

/// One request as it was published: the oslo message (the JSON inside the envelope) and
/// whether it had a time to live.
#[derive(Debug)]
struct Wire {
    message: Map<String, Value>,
    expiration: Option<Duration>,
}

impl Wire {
    /// The message without what is fresh per request (ids, reply queue, the request's span).
    fn stable(&self) -> Map<String, Value> {
        let mut message = self.message.clone();
        for key in ["_msg_id", "_unique_id", "_reply_q", "_context_traceparent"] {
            message.remove(key);
        }
        message
    }

    fn keys(&self) -> Vec<&str> {
        self.message.keys().map(String::as_str).collect()
    }

    fn trace_id(&self) -> String {
        let parent = self.message["_context_traceparent"]
            .as_str()
            .unwrap_or_default();
        TraceParent::parse(parent)
            .unwrap_or_else(|| panic!("no valid traceparent in {:?}", self.message))
            .trace_id()
    }
}

/// Runs `send` while a raw consumer stands in for the topic's server, and returns the request
/// it published. A call is left unanswered (and abandoned).
async fn published<F>(transport: &Transport, send: F) -> Wire
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    let mut inbox = transport
        .driver()
        .subscribe(
            &Subscription::RpcServer {
                exchange: "openstack".into(),
                topic: TOPIC.into(),
                server: "wire".into(),
            },
            Default::default(),
        )
        .await
        .unwrap();
    let sending = tokio::spawn(send);
    let delivery = tokio::time::timeout(BOUND, inbox.recv())
        .await
        .expect("the request was published")
        .expect("the inbox is open");
    sending.abort();
    let envelope: Value = serde_json::from_slice(&delivery.body).unwrap();
    let message: Map<String, Value> =
        serde_json::from_str(envelope["oslo.message"].as_str().unwrap()).unwrap();
    let wire = Wire {
        message,
        expiration: delivery.expiration,
    };
    delivery.ack().await.unwrap();
    inbox.close().await;
    wire
}

pub async fn typed_requests_put_the_same_message_on_the_wire_as_untyped_ones(bus: Bus) {
    let transport = bus.transport().await;
    let parent = TraceParent::new_root();
    let ctx = Context::new()
        .with("request_id", "req-typed")
        .with(TRACEPARENT_KEY, parent.to_string());
    let (typed, untyped) = (client(&transport), untyped_client(&transport));

    let mut pairs = Vec::new();
    let (c, x) = (typed.clone(), ctx.clone());
    let a = published(
        &transport,
        async move { c.call(&x, RESTOCK, widgets(2)).await },
    )
    .await;
    let (c, x) = (untyped.clone(), ctx.clone());
    let b = published(&transport, async move {
        c.call::<Value>(&x, "restock", json!({"sku": "widget", "count": 2}))
            .await
    })
    .await;
    assert_eq!(a.message["version"], "1.4");
    pairs.push(("call", a, b));

    let (c, x) = (typed.clone(), ctx.clone());
    let a = published(&transport, async move {
        c.call(
            &x,
            LOOKUP,
            Lookup {
                sku: "widget".into(),
            },
        )
        .await
    })
    .await;
    let (c, x) = (untyped.clone(), ctx.clone());
    let b = published(&transport, async move {
        c.prepare()
            .version(Version::new(1, 1))
            .call::<Value>(&x, "lookup", json!({"sku": "widget"}))
            .await
    })
    .await;
    assert_eq!(a.message["version"], "1.1", "a method since 1.1 sends 1.1");
    pairs.push(("call of a method since 1.1", a, b));

    let (c, x) = (typed.clone(), ctx.clone());
    let a = published(&transport, async move {
        c.cast(&x, NOTE, Note { text: "hi".into() }).await
    })
    .await;
    let (c, x) = (untyped.clone(), ctx.clone());
    let b = published(&transport, async move {
        c.cast(&x, "note", json!({"text": "hi"})).await
    })
    .await;
    pairs.push(("cast", a, b));

    let (c, x) = (typed.clone(), ctx.clone());
    let a = published(&transport, async move {
        c.fanout(&x, NOTE, Note { text: "all".into() }).await
    })
    .await;
    let (c, x) = (untyped.clone(), ctx.clone());
    let b = published(&transport, async move {
        c.prepare()
            .fanout(true)
            .cast(&x, "note", json!({"text": "all"}))
            .await
    })
    .await;
    pairs.push(("fanout", a, b));

    for (what, typed, untyped) in &pairs {
        assert_eq!(typed.keys(), untyped.keys(), "{what}");
        assert_eq!(typed.stable(), untyped.stable(), "{what}");
        assert_eq!(typed.message["namespace"], "inventory", "{what}");
        assert_eq!(typed.trace_id(), parent.trace_id(), "{what}");
        assert_eq!(untyped.trace_id(), parent.trace_id(), "{what}");
        let is_call = typed.message.contains_key("_msg_id");
        assert_eq!(is_call, what.starts_with("call"), "{what}");
        // A call's time to live is its timeout; a cast has none.
        for wire in [typed, untyped] {
            assert_eq!(wire.expiration.is_some(), is_call, "{what}: {wire:?}");
            assert!(
                wire.expiration.is_none_or(|ttl| ttl <= BOUND),
                "{what}: {wire:?}"
            );
        }
    }
}

pub async fn typed_casts_and_fanouts_reach_the_contract_handlers(bus: Bus) {
    let transport = bus.transport().await;
    let (s1, _, mut e1) = serve(&transport, "s1").await;
    let (s2, _, mut e2) = serve(&transport, "s2").await;
    let c = client(&transport);
    let ctx = Context::new();
    c.server("s2")
        .cast(
            &ctx,
            NOTE,
            Note {
                text: "to s2".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(e2.next(BOUND).await, Event::Noted("to s2".into()));
    c.fanout(
        &ctx,
        NOTE,
        Note {
            text: "to all".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(e1.next(BOUND).await, Event::Noted("to all".into()));
    assert_eq!(e2.next(BOUND).await, Event::Noted("to all".into()));
    let seen = c
        .server("s1")
        .call(&ctx, NOTES_SEEN, Empty {})
        .await
        .unwrap();
    assert_eq!(seen, ["to all"]);
    s1.stop(Duration::from_secs(5)).await;
    s2.stop(Duration::from_secs(5)).await;
}

pub async fn a_prepared_client_reaches_the_server_it_names(bus: Bus) {
    let transport = bus.transport().await;
    let (s1, _, _e1) = serve(&transport, "s1").await;
    let (s2, _, _e2) = serve(&transport, "s2").await;
    let c = client(&transport);
    for server in ["s2", "s1", "s2", "s2"] {
        let seen = c
            .server(server)
            .call(&Context::new(), INSPECT, Empty {})
            .await
            .unwrap();
        assert_eq!(seen.server, server);
        let seen = c
            .prepare(|untyped| untyped.server(server))
            .call(&Context::new(), INSPECT, Empty {})
            .await
            .unwrap();
        assert_eq!(seen.server, server);
    }
    s1.stop(Duration::from_secs(5)).await;
    s2.stop(Duration::from_secs(5)).await;
}

pub async fn a_timeout_layer_turns_a_slow_method_into_a_handler_timeout(bus: Bus) {
    let transport = bus.transport().await;
    let (server, _shop, _events) = serve(&transport, "s1").await;
    let c = client(&transport);
    let ctx = Context::new();
    let started = Instant::now();
    let error = remote(c.call(&ctx, PAUSE, Sleep { ms: 5_000 }).await);
    assert_eq!(
        (error.class.as_str(), error.module.as_str()),
        ("HandlerTimeout", "tidings.rpc"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the layer's limit, not the sleep"
    );
    let quick = c.call(&ctx, PAUSE, Sleep { ms: 10 }).await.unwrap();
    assert_eq!(quick, "paused");
    // Methods registered after the layer are not limited by it.
    let error = c
        .timeout(Duration::from_millis(600))
        .call(&ctx, WORK, Sleep { ms: 5_000 })
        .await;
    assert!(error.is_err_and(|e| e.is_timeout()));
    server.stop(Duration::from_secs(5)).await;
}

pub async fn a_concurrency_limit_layer_runs_one_call_of_its_method_at_a_time(bus: Bus) {
    let transport = bus.transport().await;
    let (server, shop, _events) = serve(&transport, "s1").await;
    let c = client(&transport);
    let ctx = Context::new();
    let calls = (0..4).map(|_| c.call(&ctx, HOLD, Sleep { ms: 100 }));
    let results = futures::future::join_all(calls).await;
    for result in results {
        assert_eq!(result.unwrap(), 1, "each call ran alone");
    }
    assert_eq!(shop.peak_holding.load(Ordering::SeqCst), 1);
    server.stop(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Deadline and trace

pub async fn the_callers_deadline_reaches_the_handler(bus: Bus) {
    let transport = bus.transport().await;
    let (server, _shop, mut events) = serve(&transport, "s1").await;
    let c = client(&transport);
    let timeout = Duration::from_secs(8);
    let seen = c
        .timeout(timeout)
        .call(&Context::new(), INSPECT, Empty {})
        .await
        .unwrap();
    let left = seen.time_left_ms.expect("a call has a deadline");
    assert!((4_000..=8_000).contains(&left), "{left} ms left of 8 s");
    assert!(matches!(events.next(BOUND).await, Event::Inspected(_)));

    // A context with a deadline of its own (a handler calling on) cuts the client's timeout.
    let ctx = Context::new().with_deadline(Instant::now() + Duration::from_secs(3));
    let seen = c
        .timeout(Duration::from_secs(60))
        .call(&ctx, INSPECT, Empty {})
        .await
        .unwrap();
    let left = seen.time_left_ms.expect("a call has a deadline");
    assert!((1_000..=3_000).contains(&left), "{left} ms left of 3 s");
    assert!(matches!(events.next(BOUND).await, Event::Inspected(_)));

    // Nobody waits for a cast: its handler has no deadline.
    c.cast(&Context::new(), INSPECT, Empty {}).await.unwrap();
    match events.next(BOUND).await {
        Event::Inspected(seen) => assert_eq!(seen.time_left_ms, None),
        other => panic!("{other:?}"),
    }
    server.stop(Duration::from_secs(5)).await;
}

pub async fn a_call_waits_no_longer_than_its_contexts_deadline(bus: Bus) {
    let transport = bus.transport().await;
    let (server, _shop, mut events) = serve(&transport, "s1").await;
    let ctx = Context::new().with_deadline(Instant::now() + Duration::from_millis(400));
    let started = Instant::now();
    let error = client(&transport)
        .timeout(Duration::from_secs(60))
        .call(&ctx, WORK, Sleep { ms: 5_000 })
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(events.next(BOUND).await, Event::Started);
    assert_eq!(events.next(BOUND).await, Event::Cancelled);
    server.stop(Duration::from_secs(5)).await;
}

pub async fn the_callers_trace_reaches_the_handler(bus: Bus) {
    let transport = bus.transport().await;
    let (server, _shop, _events) = serve(&transport, "s1").await;
    let c = client(&transport);
    let parent = TraceParent::new_root();
    let ctx = Context::new().with(TRACEPARENT_KEY, parent.to_string());
    let first = c.call(&ctx, INSPECT, Empty {}).await.unwrap();
    let second = c.call(&ctx, INSPECT, Empty {}).await.unwrap();
    for seen in [&first, &second] {
        assert_eq!(seen.trace_id.as_deref(), Some(parent.trace_id().as_str()));
        assert_ne!(seen.span_id.as_deref(), Some(parent.span_id().as_str()));
    }
    assert_ne!(first.span_id, second.span_id, "a span per request");
    // Without one the request starts a trace, and the handler is in it.
    let fresh = c.call(&Context::new(), INSPECT, Empty {}).await.unwrap();
    let trace_id = fresh.trace_id.expect("a new trace");
    assert_eq!(trace_id.len(), 32);
    assert_ne!(trace_id, parent.trace_id());
    server.stop(Duration::from_secs(5)).await;
}

pub async fn a_handler_still_running_past_the_callers_deadline_is_cancelled(bus: Bus) {
    let transport = bus.transport().await;
    let (server, shop, mut events) = serve(&transport, "s1").await;
    let c = client(&transport);
    let work_for = Duration::from_secs(3);
    let started = Instant::now();
    let error = c
        .timeout(Duration::from_millis(300))
        .call(&Context::new(), WORK, Sleep { ms: 3_000 })
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert_eq!(events.next(BOUND).await, Event::Started);
    // Dropped well before its sleep would have ended: it never sets its flag.
    let bound = work_for.saturating_sub(started.elapsed());
    assert_eq!(events.next(bound).await, Event::Cancelled);
    assert!(!shop.worked.load(Ordering::SeqCst));
    // The server goes on serving.
    let stock = c.call(&Context::new(), RESTOCK, widgets(1)).await.unwrap();
    assert_eq!(stock.count, 1);
    assert!(!shop.worked.load(Ordering::SeqCst));
    server.stop(Duration::from_secs(5)).await;
}

pub async fn without_cancel_past_deadline_a_handler_runs_to_completion(bus: Bus) {
    let transport = bus.transport().await;
    let (server, shop, mut events) = serve_with(&transport, "s1", false).await;
    let c = client(&transport);
    let error = c
        .timeout(Duration::from_millis(300))
        .call(&Context::new(), WORK, Sleep { ms: 800 })
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert_eq!(events.next(BOUND).await, Event::Started);
    assert_eq!(events.next(BOUND).await, Event::Finished);
    assert!(shop.worked.load(Ordering::SeqCst));
    let stock = c.call(&Context::new(), RESTOCK, widgets(1)).await.unwrap();
    assert_eq!(stock.count, 1);
    server.stop(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// oslo.messaging peers (RabbitMQ only)

mod oslo {
    use super::*;
    use tidings_suites::python::{self as peers, Python};

    fn namespace() -> &'static str {
        Inventory::NAMESPACE.expect("the contract has a namespace")
    }

    /// An oslo.messaging server `name` on [`TOPIC`] whose Inventory endpoint has the contract's
    /// namespace and version (`tests/interop/rpc_server.py`).
    async fn python_server(bus: &Bus, name: &str) -> Python {
        let version = Inventory::VERSION.to_string();
        peers::rpc_server(bus, TOPIC, name, &[namespace(), &version]).await
    }

    /// Calls `method` of a Python server's plain endpoint (no namespace, version 1.3).
    async fn plain_call<R: serde::de::DeserializeOwned>(
        transport: &Transport,
        method: &str,
        args: Value,
    ) -> R {
        RpcClient::new(transport, Target::topic(TOPIC))
            .version(Version::new(1, 3))
            .timeout(BOUND)
            .call(&Context::new(), method, args)
            .await
            .unwrap()
    }

    /// The requests for `method` the Python server received (message and context each),
    /// once there are `count` of them.
    async fn received(transport: &Transport, method: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + BOUND;
        loop {
            let requests: Vec<Value> =
                plain_call(transport, "received", json!({ "method": method })).await;
            if requests.len() >= count {
                assert_eq!(requests.len(), count, "{requests:#?}");
                return requests;
            }
            assert!(Instant::now() < deadline, "{method}: {requests:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oslo_client_calls_the_contract_endpoint() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let (server, _shop, mut events) = serve(&transport, "rs1").await;
        let (ns, version, since) = (
            namespace(),
            Inventory::VERSION.to_string(),
            LOOKUP.version().to_string(),
        );
        let call = |id: &str, method: &str, version: &str, args: Value| {
            json!({"id": id, "op": "call", "method": method, "namespace": ns,
                   "version": version, "args": args})
        };
        let outcomes = peers::rpc_client(
            &bus,
            TOPIC,
            json!([
                call("restock", "restock", &version, json!(widgets(4))),
                call("restock_again", "restock", &version, json!(widgets(1))),
                call("lookup", "lookup", &since, json!(Lookup { sku: "widget".into() })),
                call("lookup_missing", "lookup", &since, json!({"sku": "gadget"})),
                call("quote", "quote", &version, json!(order(Some("HALF")))),
                {"id": "note", "op": "cast", "method": "note", "namespace": ns,
                 "version": version, "args": {"text": "from python"}},
                {"id": "inspect", "op": "call", "method": "inspect", "namespace": ns,
                 "version": version, "timeout": 8},
                {"id": "no_namespace", "op": "call", "method": "restock", "version": version,
                 "args": widgets(1)},
                call("too_new", "restock", "1.5", json!(widgets(1))),
                call("slow", "pause", &version, json!(Sleep { ms: 5_000 })),
            ]),
        )
        .await;
        let typed = |id: &str| outcomes.result(id).clone();
        let stock: Stock = serde_json::from_value(typed("restock")).unwrap();
        assert_eq!(
            stock,
            Stock {
                sku: "widget".into(),
                count: 4
            }
        );
        let stock: Stock = serde_json::from_value(typed("restock_again")).unwrap();
        assert_eq!(stock.count, 5, "the handlers share the endpoint's state");
        let found: Option<Stock> = serde_json::from_value(typed("lookup")).unwrap();
        assert_eq!(
            found,
            Some(Stock {
                sku: "widget".into(),
                count: 5
            })
        );
        assert_eq!(typed("lookup_missing"), Value::Null);
        let price: Price = serde_json::from_value(typed("quote")).unwrap();
        assert_eq!(
            price,
            Price {
                sku: "widget".into(),
                total: 3.75,
                discounted: true
            }
        );
        assert_eq!(typed("note"), Value::Null);

        // oslo's call sends its timeout as the request's time to live: the handler's deadline.
        let seen: Seen = serde_json::from_value(typed("inspect")).unwrap();
        let left = seen.time_left_ms.expect("a Python call has a deadline");
        assert!((4_000..=8_000).contains(&left), "{left} ms left of 8 s");
        // A Python client sends no traceparent: the request starts a trace.
        assert!(seen.trace_id.is_some_and(|id| id.len() == 32));

        for id in ["no_namespace", "too_new"] {
            let error = outcomes.error(id);
            assert_eq!(error["exc_type"], "UnsupportedVersion", "{id}: {error:#}");
        }
        let error = outcomes.error("slow");
        assert_eq!(
            (&error["class"], &error["exc_type"]),
            (&json!("RemoteError"), &json!("HandlerTimeout")),
            "{error:#}"
        );

        let mut noted = false;
        while !noted {
            noted = events.next(BOUND).await == Event::Noted("from python".into());
        }
        server.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_client_calls_an_oslo_endpoint_of_the_contract() {
        let bus = Bus::amqp();
        let _python = python_server(&bus, "py1").await;
        let transport = bus.transport().await;
        let c = client(&transport);
        let ctx = Context::new();
        assert_eq!(c.call(&ctx, RESTOCK, widgets(4)).await.unwrap().count, 4);
        let stock = c.call(&ctx, RESTOCK, widgets(1)).await.unwrap();
        assert_eq!(
            stock,
            Stock {
                sku: "widget".into(),
                count: 5
            }
        );
        let found = c
            .call(
                &ctx,
                LOOKUP,
                Lookup {
                    sku: "widget".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(found, Some(stock));
        let missing = c
            .call(
                &ctx,
                LOOKUP,
                Lookup {
                    sku: "gadget".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(missing, None);
        let price = c.call(&ctx, QUOTE, order(Some("HALF"))).await.unwrap();
        assert_eq!(
            price,
            Price {
                sku: "widget".into(),
                total: 3.75,
                discounted: true
            }
        );
        let price = c.call(&ctx, QUOTE, order(None)).await.unwrap();
        assert_eq!((price.total, price.discounted), (7.5, false));

        c.cast(
            &ctx,
            NOTE,
            Note {
                text: "cast".into(),
            },
        )
        .await
        .unwrap();
        c.fanout(
            &ctx,
            NOTE,
            Note {
                text: "fanout".into(),
            },
        )
        .await
        .unwrap();
        let deadline = Instant::now() + BOUND;
        loop {
            let notes = c
                .server("py1")
                .call(&ctx, NOTES_SEEN, Empty {})
                .await
                .unwrap();
            if notes.len() == 2 {
                assert_eq!(notes, ["cast", "fanout"]);
                break;
            }
            assert!(Instant::now() < deadline, "{notes:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The Python endpoint sees the caller's trace (the request's span as its parent).
        let parent = TraceParent::new_root();
        let traced = Context::new().with(TRACEPARENT_KEY, parent.to_string());
        let seen = c.call(&traced, INSPECT, Empty {}).await.unwrap();
        assert_eq!(seen.server, "py1");
        assert_eq!(seen.trace_id, Some(parent.trace_id()));
        assert_ne!(seen.span_id, Some(parent.span_id()));

        // Python raises its own dispatcher errors for methods the contract's server lacks.
        let error = remote(c.call(&ctx, WORK, Sleep { ms: 1 }).await);
        assert!(error.is_no_such_method(), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn typed_and_untyped_requests_reach_an_oslo_server_as_the_same_request() {
        let bus = Bus::amqp();
        let _python = python_server(&bus, "py1").await;
        let transport = bus.transport().await;
        let (typed, untyped) = (client(&transport), untyped_client(&transport));
        let ctx = Context::new()
            .with("request_id", "req-contract")
            .with("user", "u-1")
            .with(TRACEPARENT_KEY, TraceParent::new_root().to_string());

        typed.call(&ctx, RESTOCK, widgets(2)).await.unwrap();
        let _: Value = untyped
            .call(&ctx, "restock", json!({"sku": "widget", "count": 2}))
            .await
            .unwrap();
        typed
            .call(
                &ctx,
                LOOKUP,
                Lookup {
                    sku: "widget".into(),
                },
            )
            .await
            .unwrap();
        let _: Value = untyped
            .prepare()
            .version(Version::new(1, 1))
            .call(&ctx, "lookup", json!({"sku": "widget"}))
            .await
            .unwrap();
        typed
            .cast(
                &ctx,
                NOTE,
                Note {
                    text: "same".into(),
                },
            )
            .await
            .unwrap();
        untyped
            .cast(&ctx, "note", json!({"text": "same"}))
            .await
            .unwrap();

        let expect = [
            ("restock", json!({"sku": "widget", "count": 2}), "1.4"),
            ("lookup", json!({"sku": "widget"}), "1.1"),
            ("note", json!({"text": "same"}), "1.4"),
        ];
        for (method, args, version) in expect {
            let requests = received(&transport, method, 2).await;
            let want = json!({"method": method, "args": args, "namespace": "inventory",
                              "version": version});
            let mut contexts = Vec::new();
            for request in &requests {
                assert_eq!(request["message"], want, "{method}: {requests:#?}");
                let mut context = request["context"].as_object().cloned().unwrap();
                // Fresh per request: the span, and a call's reply address.
                for key in ["traceparent", "msg_id", "reply_q"] {
                    context.remove(key);
                }
                contexts.push(context);
            }
            assert_eq!(contexts[0], contexts[1], "{method}");
            assert_eq!(contexts[0]["request_id"], "req-contract", "{method}");
        }
    }
}

macro_rules! suite {
    ($bus:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test($bus).await;
            }
        )*
    };
}

macro_rules! contract_suite {
    ($bus:expr) => {
        suite!($bus;
            typed_calls_return_the_methods_result_types,
            handlers_with_state_share_it_across_calls,
            a_method_since_an_older_version_is_served_by_servers_of_that_version,
            requests_outside_the_contract_are_refused,
            typed_requests_put_the_same_message_on_the_wire_as_untyped_ones,
            typed_casts_and_fanouts_reach_the_contract_handlers,
            a_prepared_client_reaches_the_server_it_names,
            a_timeout_layer_turns_a_slow_method_into_a_handler_timeout,
            a_concurrency_limit_layer_runs_one_call_of_its_method_at_a_time,
            the_callers_deadline_reaches_the_handler,
            a_call_waits_no_longer_than_its_contexts_deadline,
            the_callers_trace_reaches_the_handler,
            a_handler_still_running_past_the_callers_deadline_is_cancelled,
            without_cancel_past_deadline_a_handler_runs_to_completion,
        );
    };
}

mod memory {
    contract_suite!(tidings_suites::Bus::memory());
}

mod amqp {
    contract_suite!(tidings_suites::Bus::amqp());
}
