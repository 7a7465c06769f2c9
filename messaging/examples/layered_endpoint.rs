//! Policy as tower layers on an endpoint, and a handler that paces itself by its caller's
//! deadline, on the in-memory transport.
//!
//! ```sh
//! cargo run -p tidings --example layered_endpoint
//! ```
//!
//! `ContractEndpoint::layer` (and `Endpoint::layer`) wraps every method registered so far, so
//! the order of registration says which policy applies where:
//!
//! - `export` runs one at a time (`ConcurrencyLimitLayer`), however many callers ask at once;
//! - `export` and `render` get at most 250 ms each (`TimeoutLayer`); a render that takes longer
//!   fails at its caller with the remote error `HandlerTimeout`;
//! - `search` has no server-side limit: it reads the time its caller still waits with
//!   `ctx.time_left()` and returns what it has found before that runs out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidings::rpc::{Contract, ContractEndpoint, Method, RpcServer, ServiceClient, State};
use tidings::{Context, RemoteError, Target, Transport, Version};
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::TimeoutLayer;

/// The report service's API.
#[derive(Debug)]
struct Reports;

impl Contract for Reports {
    const NAMESPACE: Option<&'static str> = Some("reports");
    const VERSION: Version = Version::new(1, 0);
}

/// The topic report servers listen on.
const TOPIC: &str = "examples.reports";

/// Keyword arguments of [`EXPORT`] and [`RENDER`]: how long the work takes.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    millis: u64,
}

/// Keyword arguments of [`SEARCH`].
#[derive(Debug, Serialize, Deserialize)]
struct Query {
    text: String,
}

/// What a search got through before its caller's deadline.
#[derive(Debug, Serialize, Deserialize)]
struct Found {
    pages: u32,
    complete: bool,
}

/// Writes a report out; the store takes one writer at a time.
const EXPORT: Method<Reports, Job, ()> = Method::new("export");
/// Renders a report.
const RENDER: Method<Reports, Job, String> = Method::new("render");
/// Scans report pages for `text`, as many as the caller's deadline allows.
const SEARCH: Method<Reports, Query, Found> = Method::new("search");

/// The server-side time limit of `export` and `render`.
const HANDLER_TIME_LIMIT: Duration = Duration::from_millis(250);
/// Pages a complete search scans.
const PAGES: u32 = 40;
/// Time a page takes to scan.
const PAGE_TIME: Duration = Duration::from_millis(20);
/// Time a search keeps for its reply to reach the caller before the deadline.
const REPLY_MARGIN: Duration = Duration::from_millis(150);

/// Exports running now, and the most that ever ran at once.
#[derive(Clone, Debug, Default)]
struct Exports {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

/// Serves [`EXPORT`]: sleeps for the job's time, counting how many exports run at once.
async fn export(
    State(exports): State<Exports>,
    _ctx: Context,
    Job { millis }: Job,
) -> Result<(), RemoteError> {
    let now = exports.running.fetch_add(1, Ordering::SeqCst) + 1;
    exports.most.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(millis)).await;
    exports.running.fetch_sub(1, Ordering::SeqCst);
    Ok(())
}

/// Serves [`RENDER`]: sleeps for the job's time.
async fn render(_ctx: Context, Job { millis }: Job) -> Result<String, RemoteError> {
    // No cancellation code here: when the time limit passes, the timeout layer drops this
    // future, and the sleep with it.
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(format!("rendered in {millis} ms"))
}

/// Serves [`SEARCH`]: scans pages while the caller still waits.
async fn search(ctx: Context, Query { text }: Query) -> Result<Found, RemoteError> {
    // The server sets the context's deadline from the call's timeout. Past it, the server
    // would cancel this handler and the caller would get nothing; stopping short of it returns
    // a partial result instead. A cast has no deadline and scans everything.
    let mut pages = 0;
    while pages < PAGES && ctx.time_left().is_none_or(|left| left > REPLY_MARGIN) {
        tokio::time::sleep(PAGE_TIME).await; // one page scanned for `text`
        pages += 1;
    }
    println!("  server: scanned {pages} pages for {text:?}");
    Ok(Found {
        pages,
        complete: pages == PAGES,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = Transport::connect("memory://layered-endpoint").await?;
    let exports = Exports::default();

    // Each `layer` wraps the methods registered before it. `ConcurrencyLimitLayer` makes one
    // limit per method it wraps (here only `export`); a caller over the limit waits for a slot.
    let endpoint = ContractEndpoint::<Reports, Exports>::with_state(exports.clone())
        .handle(EXPORT, export)
        .layer(ConcurrencyLimitLayer::new(1))
        .handle(RENDER, render)
        .layer(TimeoutLayer::new(HANDLER_TIME_LIMIT))
        .handle(SEARCH, search);
    let server = RpcServer::builder(&transport, Target::topic(TOPIC))
        .endpoint(endpoint)
        .start()
        .await?;
    let client = ServiceClient::<Reports>::new(&transport, Target::topic(TOPIC));
    let ctx = Context::new().with("request_id", "req-layered-endpoint");

    // Four exports at once: the server dispatches them concurrently, the layer runs them in
    // turn. Each finishes well within the time limit.
    let started = Instant::now();
    let calls = (0..4).map(|_| client.call(&ctx, EXPORT, Job { millis: 40 }));
    for outcome in futures::future::join_all(calls).await {
        outcome?;
    }
    let most = exports.most.load(Ordering::SeqCst);
    assert_eq!(most, 1);
    println!(
        "4 exports, at most {most} at a time, in {:?}",
        started.elapsed()
    );

    // A quick render passes the timeout layer; a slow one is cut off at 250 ms and the caller,
    // which would have waited 60 s, learns why at once.
    let rendered = client.call(&ctx, RENDER, Job { millis: 10 }).await?;
    println!("{rendered}");
    let started = Instant::now();
    match client.call(&ctx, RENDER, Job { millis: 5_000 }).await {
        Ok(text) => return Err(format!("the slow render was not cut off: {text}").into()),
        Err(error) => {
            let remote = error.remote().ok_or("expected a remote error")?;
            assert_eq!(remote.class, "HandlerTimeout");
            assert!(started.elapsed() < Duration::from_secs(5));
            println!("slow render: {} ({})", remote.class, remote.message);
        }
    }

    // The caller's timeout travels with the request: with 500 ms to spare, the search stops
    // early and says so; with the default 60 s it scans every page.
    let query = || Query {
        text: "overdue".to_owned(),
    };
    let hurried = client
        .timeout(Duration::from_millis(500))
        .call(&ctx, SEARCH, query())
        .await?;
    assert!(!hurried.complete && hurried.pages > 0 && hurried.pages < PAGES);
    println!("with 500 ms: {} of {PAGES} pages", hurried.pages);
    let patient = client.call(&ctx, SEARCH, query()).await?;
    assert!(patient.complete && patient.pages == PAGES);
    println!("with 60 s: {} of {PAGES} pages", patient.pages);

    let report = server.stop(Duration::from_secs(5)).await;
    assert_eq!(report.abandoned, 0);
    Ok(())
}
