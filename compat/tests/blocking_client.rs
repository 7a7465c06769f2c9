//! The blocking side from plain threads: `BlockingClient` (call, cast, fanout), `BlockingNotifier`,
//! blocking notification handlers, and the refusal to block inside async code. Every test runs
//! on the memory transport and on RabbitMQ.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed unwrap fails the test

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tidings::notify::{
    IncomingNotification, NotificationEndpoint, NotificationListener, Outcome, Priority,
};
use tidings::rpc::{Endpoint, RpcClient, RpcError, RpcServer};
use tidings::{Context, RemoteError, Target, Transport, Version};
use tidings_compat::{
    BlockingClient, BlockingEndpointExt, BlockingNotificationEndpointExt, BlockingNotifier,
    BlockingPool, BlockingTransport, ClientError,
};
use tidings_suites::{eventually, Bus};

const TOPIC: &str = "legacy";
const V10: Version = Version::new(1, 0);
const WAIT: Duration = Duration::from_secs(10);

/// Runs `work` on a plain OS thread (no runtime context) and awaits its result without
/// blocking the test's runtime.
async fn on_plain_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result.await.expect("the thread finished without panicking")
}

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct Raise {
    message: String,
}

/// An async server `name` counting the casts it receives.
async fn serve(transport: &Transport, name: &str, casts: Arc<AtomicUsize>) -> RpcServer {
    let endpoint = Endpoint::new()
        .version(V10)
        .method("add", |_ctx: Context, Add { a, b }: Add| async move {
            Ok::<_, RemoteError>(a + b)
        })
        .method(
            "raise",
            |_ctx: Context, Raise { message }: Raise| async move {
                Err::<(), _>(RemoteError::new("LegacyError", "legacy.module", message))
            },
        )
        .method("note", move |_ctx: Context, _: Value| {
            let casts = casts.clone();
            async move {
                casts.fetch_add(1, Ordering::SeqCst);
                Ok::<_, RemoteError>(())
            }
        });
    RpcServer::builder(transport, Target::topic(TOPIC).with_server(name))
        .endpoint(endpoint)
        .start()
        .await
        .unwrap()
}

pub async fn plain_threads_call_cast_and_fanout_on_their_own_runtime(bus: Bus) {
    let transport = bus.transport().await;
    let (casts_1, casts_2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let s1 = serve(&transport, "s1", casts_1.clone()).await;
    let s2 = serve(&transport, "s2", casts_2.clone()).await;
    let url = bus.url().to_owned();
    let sum = on_plain_thread(move || -> Result<i64, ClientError> {
        // No async anywhere on this thread: the transport owns its runtime.
        let transport = BlockingTransport::connect(&url)?;
        let client = BlockingClient::new(&transport, Target::topic(TOPIC))
            .version(V10)
            .timeout(WAIT);
        let ctx = Context::new().with("request_id", "req-plain");
        let sum: i64 = client.call(&ctx, "add", json!({"a": 40, "b": 2}))?;
        client
            .prepare()
            .server("s2")
            .cast(&ctx, "note", json!({}))?;
        client
            .prepare()
            .fanout(true)
            .cast(&ctx, "note", json!({}))?;
        Ok(sum)
    })
    .await
    .unwrap();
    assert_eq!(sum, 42);
    assert!(
        eventually(WAIT, || casts_1.load(Ordering::SeqCst) == 1
            && casts_2.load(Ordering::SeqCst) == 2)
        .await,
        "s1 got the fanout, s2 the targeted cast and the fanout"
    );
    s1.stop(Duration::from_secs(5)).await;
    s2.stop(Duration::from_secs(5)).await;
}

pub async fn remote_errors_and_timeouts_reach_the_blocking_caller(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let bridge =
        BlockingTransport::with_handle(transport.clone(), tokio::runtime::Handle::current());
    let (remote, timeout, mistyped) = on_plain_thread(move || {
        let client = BlockingClient::new(&bridge, Target::topic(TOPIC))
            .version(V10)
            .timeout(WAIT);
        let ctx = Context::new();
        let remote = client
            .call::<Value>(&ctx, "raise", json!({"message": "as asked"}))
            .unwrap_err();
        let timeout = client
            .prepare()
            .topic("nobody-serves-this")
            .timeout(Duration::from_millis(300))
            .call::<Value>(&ctx, "add", json!({"a": 1, "b": 1}))
            .unwrap_err();
        let mistyped = client
            .call::<String>(&ctx, "add", json!({"a": 1, "b": 1}))
            .unwrap_err();
        (remote, timeout, mistyped)
    })
    .await;
    let error = remote.remote().expect("a remote error");
    assert_eq!(
        (
            error.class.as_str(),
            error.module.as_str(),
            error.message.as_str()
        ),
        ("LegacyError", "legacy.module", "as asked")
    );
    assert!(timeout.is_timeout(), "{timeout}");
    assert!(
        matches!(
            mistyped,
            ClientError::Rpc(RpcError::UnexpectedResult { .. })
        ),
        "{mistyped}"
    );
    server.stop(Duration::from_secs(5)).await;
}

pub async fn blocking_calls_inside_async_code_are_refused_and_send_nothing(bus: Bus) {
    let transport = bus.transport().await;
    let casts = Arc::new(AtomicUsize::new(0));
    let server = serve(&transport, "s1", casts.clone()).await;
    let bridge =
        BlockingTransport::with_handle(transport.clone(), tokio::runtime::Handle::current());
    let client = BlockingClient::new(&bridge, Target::topic(TOPIC)).version(V10);
    let notifier = BlockingNotifier::new(&bridge, "test");
    let ctx = Context::new();

    let refusals = [
        client.cast(&ctx, "note", json!({})).unwrap_err(),
        client
            .call::<i64>(&ctx, "add", json!({"a": 1, "b": 2}))
            .unwrap_err(),
        notifier.info(&ctx, "event", json!({})).unwrap_err(),
        BlockingTransport::connect(bus.url()).unwrap_err(),
    ];
    for refusal in &refusals {
        assert!(
            matches!(refusal, ClientError::InsideAsyncContext { .. }),
            "{refusal}"
        );
        assert!(
            refusal.to_string().contains("inside a Tokio runtime"),
            "{refusal}"
        );
    }
    // The rule has no exceptions: spawn_blocking runs on the runtime's threads too.
    let in_blocking_task = {
        let client = client.clone();
        tokio::task::spawn_blocking(move || client.cast(&Context::new(), "note", json!({})))
            .await
            .unwrap()
    };
    assert!(matches!(
        in_blocking_task,
        Err(ClientError::InsideAsyncContext {
            operation: "BlockingClient::cast"
        })
    ));

    // The async API underneath is the way from async code.
    let sum: i64 = client
        .as_async()
        .call(&ctx, "add", json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    assert_eq!(sum, 3);
    assert_eq!(casts.load(Ordering::SeqCst), 0, "no refused cast was sent");

    // An owned transport may be dropped in async code: no blocking, no panic.
    let url = bus.url().to_owned();
    let owned = on_plain_thread(move || BlockingTransport::connect(&url))
        .await
        .unwrap();
    drop(owned);
    server.stop(Duration::from_secs(5)).await;
}

pub async fn blocking_handlers_call_other_services_through_the_blocking_client(bus: Bus) {
    let transport = bus.transport().await;
    let backend = serve(&transport, "backend", Arc::default()).await;
    let pool = BlockingPool::new(2).unwrap();
    // A legacy handler that calls another service: on a pool thread, through the service's own
    // transport and runtime.
    let bridge =
        BlockingTransport::with_handle(transport.clone(), tokio::runtime::Handle::current());
    let backend_client = BlockingClient::new(&bridge, Target::topic(TOPIC))
        .version(V10)
        .timeout(WAIT);
    let front = RpcServer::builder(&transport, Target::topic("front").with_server("f1"))
        .endpoint(Endpoint::new().version(V10).blocking_method(
            "double_sum",
            &pool,
            move |ctx: &Context, Add { a, b }: Add| {
                let sum: i64 = backend_client
                    .call(ctx, "add", json!({"a": a, "b": b}))
                    .map_err(|e| RemoteError::new("BackendError", "legacy.front", e.to_string()))?;
                Ok::<_, RemoteError>(sum * 2)
            },
        ))
        .start()
        .await
        .unwrap();
    let doubled: i64 = RpcClient::new(&transport, Target::topic("front"))
        .version(V10)
        .timeout(WAIT)
        .call(&Context::new(), "double_sum", json!({"a": 20, "b": 1}))
        .await
        .unwrap();
    assert_eq!(doubled, 42);
    front.stop(Duration::from_secs(5)).await;
    backend.stop(Duration::from_secs(5)).await;
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

pub async fn the_blocking_notifier_reaches_blocking_notification_handlers(bus: Bus) {
    let transport = bus.transport().await;
    let pool = BlockingPool::new(2).unwrap();
    let seen: Seen = Arc::default();
    let (info_seen, batch_seen) = (seen.clone(), seen.clone());
    let endpoint = NotificationEndpoint::new()
        .on_blocking(Priority::Info, &pool, move |n: IncomingNotification| {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            info_seen.lock().unwrap().push((n.event_type, thread));
            Ok::<_, String>(Outcome::Handled)
        })
        .on_batch_blocking(
            Priority::Sample,
            &pool,
            move |batch: Vec<IncomingNotification>| {
                let thread = std::thread::current().name().unwrap_or("?").to_owned();
                for n in batch {
                    batch_seen
                        .lock()
                        .unwrap()
                        .push((n.event_type, thread.clone()));
                }
                Ok::<_, String>(Outcome::Handled)
            },
        );
    let listener = NotificationListener::builder(&transport, vec![Target::topic("notifications")])
        .endpoint(endpoint)
        .start()
        .await
        .unwrap();
    let url = bus.url().to_owned();
    on_plain_thread(move || -> Result<(), ClientError> {
        let transport = BlockingTransport::connect(&url)?;
        let notifier = BlockingNotifier::new(&transport, "legacy.host-1");
        let ctx = Context::new();
        notifier.info(&ctx, "legacy.thing.done", json!({"id": 1}))?;
        notifier.sample(&ctx, "legacy.meter", json!({"volume": 2}))?;
        notifier.notify(&ctx, Priority::Debug, "unhandled", json!({}))?;
        Ok(())
    })
    .await
    .unwrap();
    assert!(eventually(WAIT, || seen.lock().unwrap().len() == 2).await);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen.iter()
            .map(|(event, _)| event.as_str())
            .collect::<Vec<_>>(),
        ["legacy.meter", "legacy.thing.done"]
    );
    for (_, thread) in &seen {
        assert!(thread.starts_with("tidings-blocking-"), "ran on {thread}");
    }
    listener.stop(Duration::from_secs(5)).await;
}

pub async fn a_panicking_blocking_notification_handler_requeues_and_its_thread_survives(bus: Bus) {
    let transport = bus.transport().await;
    let pool = BlockingPool::new(1).unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let threads: Arc<Mutex<Vec<std::thread::ThreadId>>> = Arc::default();
    let (tries, ids) = (attempts.clone(), threads.clone());
    let endpoint = NotificationEndpoint::new().on_blocking(
        Priority::Info,
        &pool,
        move |_n: IncomingNotification| {
            ids.lock().unwrap().push(std::thread::current().id());
            if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("deliberate panic in a blocking notification handler");
            }
            Ok::<_, String>(Outcome::Handled)
        },
    );
    let listener = NotificationListener::builder(&transport, vec![Target::topic("notifications")])
        .endpoint(endpoint)
        .allow_requeue(true)
        .start()
        .await
        .unwrap();
    tidings::notify::Notifier::new(&transport, "test")
        .info(&Context::new(), "flaky", json!({}))
        .await
        .unwrap();
    assert!(
        eventually(WAIT, || attempts.load(Ordering::SeqCst) == 2).await,
        "the panic requeued the message and the retry was handled"
    );
    let threads = threads.lock().unwrap().clone();
    assert_eq!(threads[0], threads[1], "the same pool thread handled both");
    listener.stop(Duration::from_secs(5)).await;
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

macro_rules! client_suite {
    ($bus:expr) => {
        suite!($bus;
            plain_threads_call_cast_and_fanout_on_their_own_runtime,
            remote_errors_and_timeouts_reach_the_blocking_caller,
            blocking_calls_inside_async_code_are_refused_and_send_nothing,
            blocking_handlers_call_other_services_through_the_blocking_client,
            the_blocking_notifier_reaches_blocking_notification_handlers,
            a_panicking_blocking_notification_handler_requeues_and_its_thread_survives,
        );
    };
}

mod memory {
    client_suite!(tidings_suites::Bus::memory());
}

mod amqp {
    client_suite!(tidings_suites::Bus::amqp());
}
