//! The library's Prometheus metrics, read as a scraper reads them: the text the process's
//! recorder renders after real calls, casts, notifications and a lost connection. One test per
//! concern; each reads the counters before and after, since the recorder is the process's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tidings::notify::{
    IncomingNotification, NotificationEndpoint, NotificationListener, Notifier, Outcome, Priority,
};
use tidings::rpc::{RpcClient, RpcError, RpcServer};
use tidings::{Context, Target, Version};
use tidings_suites::{eventually, rabbitmqctl, test_endpoint, Bus, Probe};

/// The value of the series `name{labels}` (labels as rendered, sorted by name), 0 if absent.
fn value(name: &str, labels: &str) -> f64 {
    let handle = tidings_runtime::admin::prometheus().expect("the recorder installs");
    handle.run_upkeep();
    let text = handle.render();
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter_map(|line| line.strip_prefix(&series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|number| number.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}

fn rendered() -> String {
    let handle = tidings_runtime::admin::prometheus().expect("the recorder installs");
    handle.render()
}

/// A server with the test endpoint on a topic of its own, and a client of it calling with
/// `timeout`.
async fn test_server_and_client(bus: &Bus, timeout: Duration) -> (RpcServer, RpcClient) {
    let transport = bus.transport().await;
    let topic = format!("metrics-{}", uuid::Uuid::new_v4().simple());
    let server = RpcServer::builder(&transport, Target::topic(&topic).with_server("one"))
        .endpoint(test_endpoint("one", Arc::new(Probe::default())))
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(&transport, Target::topic(&topic))
        .version(Version::new(1, 3))
        .timeout(timeout);
    (server, client)
}

#[tokio::test]
async fn calls_are_counted_and_timed_on_both_sides_by_method_and_outcome() {
    // Before anything counts, so that nothing is missed.
    tidings_runtime::admin::prometheus().unwrap();
    let bus = Bus::memory();
    let (server, client) = test_server_and_client(&bus, Duration::from_millis(300)).await;
    let ctx = Context::new();

    let ok = "method=\"echo\",outcome=\"ok\"";
    let (client_ok, server_ok) = (
        value("tidings_rpc_client_calls_total", ok),
        value("tidings_rpc_server_requests_total", ok),
    );
    for _ in 0..3 {
        let _: serde_json::Value = client.call(&ctx, "echo", json!({"x": 1})).await.unwrap();
    }
    assert_eq!(value("tidings_rpc_client_calls_total", ok), client_ok + 3.0);
    assert_eq!(
        value("tidings_rpc_server_requests_total", ok),
        server_ok + 3.0
    );
    assert!(value("tidings_rpc_client_call_duration_seconds_count", ok) >= 3.0);
    assert!(value("tidings_rpc_server_request_duration_seconds_count", ok) >= 3.0);
    assert!(
        rendered().contains("tidings_rpc_server_request_duration_seconds_bucket{method=\"echo\",outcome=\"ok\",le=\"0.001\"}"),
        "durations are histograms with buckets"
    );

    // A handler's error.
    let raised = "method=\"raise\",outcome=\"error\"";
    let before = value("tidings_rpc_server_requests_total", raised);
    let error = client
        .call::<()>(
            &ctx,
            "raise",
            json!({"class": "ValueError", "message": "no"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, RpcError::Remote { .. }), "{error}");
    assert_eq!(
        value("tidings_rpc_server_requests_total", raised),
        before + 1.0
    );
    assert!(value("tidings_rpc_client_calls_total", raised) >= 1.0);

    // A method no endpoint has: labelled as unknown, whatever the peer named.
    let unknown = "method=\"_unknown\",outcome=\"unsupported\"";
    let before = value("tidings_rpc_server_requests_total", unknown);
    let _ = client
        .call::<()>(&ctx, "no_such_method_a1b2", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        value("tidings_rpc_server_requests_total", unknown),
        before + 1.0
    );
    // The server never labels a name a peer chose (the client labels what its own code calls).
    assert!(!rendered()
        .lines()
        .any(|line| line.starts_with("tidings_rpc_server") && line.contains("no_such_method")));

    // A call that times out: the client counts a timeout; the server, once the caller's
    // deadline passes, a cancelled handler.
    let (timed_out, cancelled) = (
        "method=\"sleep\",outcome=\"timeout\"",
        "method=\"sleep\",outcome=\"cancelled\"",
    );
    let (client_before, server_before) = (
        value("tidings_rpc_client_calls_total", timed_out),
        value("tidings_rpc_server_requests_total", cancelled),
    );
    let error = client
        .call::<String>(&ctx, "sleep", json!({"secs": 5}))
        .await
        .unwrap_err();
    assert!(matches!(error, RpcError::Timeout { .. }), "{error}");
    assert_eq!(
        value("tidings_rpc_client_calls_total", timed_out),
        client_before + 1.0
    );
    assert!(
        eventually(Duration::from_secs(5), || value(
            "tidings_rpc_server_requests_total",
            cancelled
        ) == server_before + 1.0)
        .await,
        "the server counts the handler it cancelled"
    );
    server.stop(Duration::from_secs(5)).await;
}

/// A client labels every method its code calls by name; the first hundred or so get labels
/// made once and kept, and the rest are labelled afresh for each call: either way, each is
/// counted under its own name and outcome.
#[tokio::test]
async fn every_method_a_client_calls_is_counted_under_its_own_name_past_the_kept_labels() {
    tidings_runtime::admin::prometheus().unwrap();
    let bus = Bus::memory();
    let (server, client) = test_server_and_client(&bus, Duration::from_secs(5)).await;
    let ctx = Context::new();
    // More names than the library keeps labels for (128), each called twice: once to be
    // labelled, once more to be found again.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let names: Vec<String> = (0..150).map(|i| format!("absent_{run}_{i}")).collect();
    for _ in 0..2 {
        for name in &names {
            let error = client.call::<()>(&ctx, name, json!({})).await.unwrap_err();
            assert!(matches!(error, RpcError::Remote { .. }), "{error}");
        }
    }
    for name in [&names[0], &names[127], &names[128], &names[149]] {
        let labels = format!("method=\"{name}\",outcome=\"error\"");
        assert_eq!(
            value("tidings_rpc_client_calls_total", &labels),
            2.0,
            "{labels}"
        );
        assert_eq!(
            value("tidings_rpc_client_call_duration_seconds_count", &labels),
            2.0,
            "{labels}"
        );
    }
    // The known methods are still labelled as before.
    let ok = "method=\"echo\",outcome=\"ok\"";
    let before = value("tidings_rpc_client_calls_total", ok);
    let _: serde_json::Value = client.call(&ctx, "echo", json!({"x": 1})).await.unwrap();
    assert_eq!(value("tidings_rpc_client_calls_total", ok), before + 1.0);
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn publishes_deliveries_redeliveries_and_dead_letters_are_counted_on_rabbitmq() {
    tidings_runtime::admin::prometheus().unwrap();
    let bus = Bus::amqp();
    let transport = bus.transport().await;
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = refused.clone();
    let endpoint =
        NotificationEndpoint::new().on(Priority::Info, move |_: IncomingNotification| {
            let counting = counting.clone();
            async move {
                counting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, String>(Outcome::Requeue)
            }
        });
    let listener = NotificationListener::builder(&transport, vec![Target::topic("notifications")])
        .endpoint(endpoint)
        .allow_requeue(true)
        .max_requeues(2)
        .start()
        .await
        .unwrap();
    let (published, delivered, redelivered, dead) = (
        value("tidings_messages_published_total", ""),
        value("tidings_deliveries_total", ""),
        value("tidings_redeliveries_total", ""),
        value("tidings_dead_lettered_total", ""),
    );
    Notifier::new(&transport, "metrics-test")
        .info(&Context::new(), "thing.happened", json!({"n": 1}))
        .await
        .unwrap();
    // Delivered once, requeued twice (redelivered twice), then dead-lettered.
    assert!(
        eventually(Duration::from_secs(20), || value(
            "tidings_dead_lettered_total",
            ""
        ) >= dead + 1.0)
        .await,
        "the message is dead-lettered after its requeues"
    );
    assert!(value("tidings_messages_published_total", "") >= published + 1.0);
    assert!(value("tidings_deliveries_total", "") >= delivered + 3.0);
    assert!(value("tidings_redeliveries_total", "") >= redelivered + 2.0);
    assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 3);
    listener.stop(Duration::from_secs(5)).await;
    transport.close().await;
}

#[tokio::test]
async fn a_connection_the_broker_closes_counts_as_a_reconnect() {
    tidings_runtime::admin::prometheus().unwrap();
    let bus = Bus::amqp();
    let transport = bus.transport().await;
    let topic = format!("reconnect-{}", uuid::Uuid::new_v4().simple());
    let server = RpcServer::builder(&transport, Target::topic(&topic).with_server("one"))
        .endpoint(test_endpoint("one", Arc::new(Probe::default())))
        .start()
        .await
        .unwrap();
    let before = value("tidings_amqp_reconnects_total", "");
    let vhost = bus.vhost().unwrap().to_owned();
    rabbitmqctl(&["close_all_connections", "-p", &vhost, "metrics test"]);
    assert!(
        eventually(Duration::from_secs(30), || value(
            "tidings_amqp_reconnects_total",
            ""
        ) >= before + 1.0)
        .await,
        "the reconnect is counted"
    );
    let client = RpcClient::new(&transport, Target::topic(&topic)).version(Version::new(1, 3));
    let echoed: serde_json::Value = client
        .call(&Context::new(), "echo", json!({"x": "back"}))
        .await
        .unwrap();
    assert_eq!(echoed, "back");
    server.stop(Duration::from_secs(5)).await;
    transport.close().await;
}
