//! Blocking RPC methods beside async ones on one server: isolation from the async workers,
//! backpressure from a full pool, and panics. Every test runs on the memory transport and on
//! RabbitMQ.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed unwrap fails the test

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tidings::rpc::{Endpoint, MethodCall, NoArgs, RpcClient, RpcServer};
use tidings::{Context, RemoteError, Target, Transport, Version};
use tidings_compat::{BlockingEndpointExt, BlockingPool};
use tidings_suites::{rabbitmqctl, Bus};
use tower::{Layer, Service};

const TOPIC: &str = "compat";
const V10: Version = Version::new(1, 0);

#[derive(Deserialize)]
struct Sleep {
    secs: f64,
}

#[derive(Deserialize)]
struct Echo {
    x: Value,
}

async fn echo(_ctx: Context, Echo { x }: Echo) -> Result<Value, RemoteError> {
    Ok(x)
}

fn client(transport: &Transport) -> RpcClient {
    RpcClient::new(transport, Target::topic(TOPIC))
        .version(V10)
        .timeout(Duration::from_secs(30))
}

async fn serve(transport: &Transport, endpoint: Endpoint, max_concurrency: usize) -> RpcServer {
    RpcServer::builder(transport, Target::topic(TOPIC).with_server("s1"))
        .max_concurrency(max_concurrency)
        .endpoint(endpoint)
        .start()
        .await
        .expect("server starts")
}

/// The AMQP connections open on the bus's vhost (empty on the memory transport): the same set
/// before and after means nothing was dropped and reopened.
fn connections(bus: &Bus) -> Vec<String> {
    let Some(vhost) = bus.vhost() else {
        return Vec::new();
    };
    let mut names: Vec<String> = rabbitmqctl(&["list_connections", "vhost", "name"])
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(v, _)| *v == vhost)
        .map(|(_, name)| name.to_owned())
        .collect();
    names.sort();
    names
}

pub async fn async_methods_answer_while_every_blocking_thread_sleeps(bus: Bus) {
    const POOL: usize = 4;
    let transport = bus.transport().await;
    let pool = BlockingPool::new(POOL).unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let counter = handled.clone();
    let endpoint = Endpoint::new()
        .version(V10)
        .method("echo", echo)
        .blocking_method(
            "blocking_sleep",
            &pool,
            move |_ctx: &Context, Sleep { secs }: Sleep| {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = started_tx.send(());
                std::thread::sleep(Duration::from_secs_f64(secs));
                Ok::<_, RemoteError>("done")
            },
        );
    let server = serve(&transport, endpoint, 64).await;
    let client = client(&transport);
    let warm: Value = client
        .call(&Context::new(), "echo", json!({"x": "warm"}))
        .await
        .unwrap();
    assert_eq!(warm, "warm");
    let before = connections(&bus);
    assert_eq!(bus.vhost().is_some(), !before.is_empty());

    let finished: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let sleepers: Vec<_> = (0..POOL)
        .map(|_| {
            let (client, finished) = (client.clone(), finished.clone());
            tokio::spawn(async move {
                let done: String = client
                    .call(&Context::new(), "blocking_sleep", json!({"secs": 2}))
                    .await
                    .unwrap();
                finished.lock().unwrap().push("blocking");
                done
            })
        })
        .collect();
    for _ in 0..POOL {
        started.recv().await.expect("a blocking call started");
    }
    assert_eq!(pool.in_use(), POOL, "every thread is asleep");

    let answer: Value = client
        .call(&Context::new(), "echo", json!({"x": "still here"}))
        .await
        .unwrap();
    finished.lock().unwrap().push("async");
    assert_eq!(answer, "still here");
    for sleeper in sleepers {
        assert_eq!(sleeper.await.unwrap(), "done");
    }
    assert_eq!(
        *finished.lock().unwrap(),
        ["async", "blocking", "blocking", "blocking", "blocking"],
        "the async call completed while every blocking one was still running"
    );
    assert_eq!(
        handled.load(Ordering::SeqCst),
        POOL,
        "each call handled once"
    );
    assert_eq!(
        connections(&bus),
        before,
        "the connections stayed up through the blocking sleeps"
    );

    // Still serving, both kinds.
    let again: String = client
        .call(&Context::new(), "blocking_sleep", json!({"secs": 0}))
        .await
        .unwrap();
    assert_eq!(again, "done");
    assert_eq!(handled.load(Ordering::SeqCst), POOL + 1);
    server.stop(Duration::from_secs(5)).await;
}

/// Counts requests between the server and a method: from the first `poll_ready` (the server
/// has taken the request and waits for the method) to the end of the call.
#[derive(Clone, Debug, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

struct Held(Gauge);

impl Held {
    fn new(gauge: &Gauge) -> Self {
        let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
        gauge.peak.fetch_max(now, Ordering::SeqCst);
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Measured<S> {
    inner: S,
    gauge: Gauge,
    held: Option<Arc<Held>>,
}

impl<S> Layer<S> for Gauge {
    type Service = Measured<S>;
    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            gauge: self.clone(),
            held: None,
        }
    }
}

impl<S> Service<MethodCall> for Measured<S>
where
    S: Service<MethodCall, Response = Value, Error = RemoteError>,
    S::Future: Send + 'static,
{
    type Response = Value;
    type Error = RemoteError;
    type Future = Pin<Box<dyn Future<Output = Result<Value, RemoteError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), RemoteError>> {
        if self.held.is_none() {
            self.held = Some(Arc::new(Held::new(&self.gauge)));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: MethodCall) -> Self::Future {
        let held = self
            .held
            .take()
            .unwrap_or_else(|| Arc::new(Held::new(&self.gauge)));
        let future = self.inner.call(call);
        Box::pin(async move {
            let outcome = future.await;
            drop(held);
            outcome
        })
    }
}

pub async fn a_burst_never_runs_more_than_the_pool_and_waits_in_the_broker(bus: Bus) {
    const POOL: usize = 4;
    const SLOTS: usize = POOL * 2;
    const BURST: usize = POOL * 10;
    let transport = bus.transport().await;
    let pool = BlockingPool::new(POOL).unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak_running = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (running.clone(), peak_running.clone());
    let in_server = Gauge::default();
    let endpoint = Endpoint::new()
        .version(V10)
        .blocking_method(
            "work",
            &pool,
            move |_ctx: &Context, Sleep { secs }: Sleep| {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(running, Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs_f64(secs));
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, RemoteError>("done")
            },
        )
        .layer(in_server.clone());
    let server = serve(&transport, endpoint, SLOTS).await;
    let client = client(&transport);
    let calls = (0..BURST).map(|_| {
        let client = client.clone();
        async move {
            client
                .call::<String>(&Context::new(), "work", json!({"secs": 0.05}))
                .await
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    assert!(
        outcomes.iter().all(|o| o.as_deref().ok() == Some("done")),
        "{outcomes:?}"
    );
    assert_eq!(
        peak_running.load(Ordering::SeqCst),
        POOL,
        "the pool filled up and never ran more than its threads"
    );
    let peak_in_server = in_server.peak.load(Ordering::SeqCst);
    assert!(
        peak_in_server > POOL && peak_in_server <= SLOTS,
        "requests waiting for a thread hold server slots, and no more than the slots were taken \
         from the broker: peak {peak_in_server}"
    );
    // A thread gives its permit back just after sending its result: allow it a moment.
    assert!(
        tidings_suites::eventually(Duration::from_secs(5), || pool.in_use() == 0).await,
        "every permit is returned"
    );
    server.stop(Duration::from_secs(5)).await;
}

pub async fn panics_in_blocking_and_async_handlers_are_remote_errors(bus: Bus) {
    let transport = bus.transport().await;
    let pool = BlockingPool::new(1).unwrap();
    let endpoint = Endpoint::new()
        .version(V10)
        .method("echo", echo)
        .method("async_panic", |_ctx: Context, _: NoArgs| async move {
            if true {
                panic!("deliberate async panic");
            }
            Ok::<(), RemoteError>(())
        })
        .blocking_method("blocking_panic", &pool, |_ctx: &Context, _: NoArgs| {
            if true {
                panic!("deliberate blocking panic");
            }
            Ok::<(), RemoteError>(())
        })
        .blocking_method("thread", &pool, |_ctx: &Context, _: NoArgs| {
            let thread = std::thread::current();
            Ok::<_, RemoteError>(format!(
                "{}/{:?}",
                thread.name().unwrap_or("?"),
                thread.id()
            ))
        });
    let server = serve(&transport, endpoint, 64).await;
    let client = client(&transport);
    let ctx = Context::new();
    let thread_before: String = client.call(&ctx, "thread", json!({})).await.unwrap();
    assert!(
        thread_before.starts_with("tidings-blocking-0/"),
        "{thread_before}"
    );

    for (method, message) in [
        ("blocking_panic", "deliberate blocking panic"),
        ("async_panic", "deliberate async panic"),
        ("blocking_panic", "deliberate blocking panic"),
    ] {
        let error = client
            .call::<Value>(&ctx, method, json!({}))
            .await
            .unwrap_err();
        let remote = error.remote().expect("a remote error, not a timeout");
        assert_eq!(
            (remote.class.as_str(), remote.module.as_str()),
            ("HandlerPanicked", "tidings.rpc")
        );
        assert_eq!(
            remote.message,
            format!("handler for {method} panicked: {message}")
        );
    }
    client
        .cast(&ctx, "blocking_panic", json!({}))
        .await
        .unwrap();

    let thread_after: String = client.call(&ctx, "thread", json!({})).await.unwrap();
    assert_eq!(
        thread_after, thread_before,
        "the pool's one thread survived the panics"
    );
    let still: Value = client
        .call(&ctx, "echo", json!({"x": "serving"}))
        .await
        .unwrap();
    assert_eq!(still, "serving");
    server.stop(Duration::from_secs(5)).await;
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

mod memory {
    suite!(tidings_suites::Bus::memory();
        async_methods_answer_while_every_blocking_thread_sleeps,
        a_burst_never_runs_more_than_the_pool_and_waits_in_the_broker,
        panics_in_blocking_and_async_handlers_are_remote_errors,
    );
}

mod amqp {
    // One-second heartbeats: a blocked async worker would miss them during the 2 s sleeps, and
    // RabbitMQ would close the connection.
    suite!(tidings_suites::Bus::amqp_with_query("heartbeat=1");
        async_methods_answer_while_every_blocking_thread_sleeps,
        a_burst_never_runs_more_than_the_pool_and_waits_in_the_broker,
        panics_in_blocking_and_async_handlers_are_remote_errors,
    );
}
