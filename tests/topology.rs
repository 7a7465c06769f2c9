//! What tidings declares on RabbitMQ, read back from the broker: names, types, flags and
//! arguments must equal oslo.messaging's, or the broker refuses one side of a mixed deployment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tidings::notify::{
    IncomingNotification, NotificationEndpoint, NotificationListener, Notifier, Outcome, Priority,
};
use tidings::rpc::{RpcClient, RpcServer};
use tidings::transport::{Destination, OutgoingMessage};
use tidings::{Context, Target};
use tidings_suites::{eventually, rabbitmqctl, test_endpoint, Bus};

fn listing(what: &str, vhost: &str, columns: &[&str]) -> Vec<Value> {
    let mut args = vec![what, "-p", vhost];
    args.extend_from_slice(columns);
    args.extend_from_slice(&["--formatter", "json"]);
    let text = rabbitmqctl(&args);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what} output is not JSON ({e}): {text}"))
}

fn find<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|row| row["name"] == name)
        .unwrap_or_else(|| panic!("{name} not declared; have {rows:?}"))
}

fn find_prefix<'a>(rows: &'a [Value], prefix: &str) -> &'a Value {
    rows.iter()
        .find(|row| row["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no {prefix}* declared; have {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_equal_oslo_messaging_defaults() {
    let bus = Bus::amqp();
    let vhost = bus.vhost().unwrap();
    let transport = bus.transport().await;
    let server = RpcServer::builder(&transport, Target::topic("topo").with_server("host-1"))
        .endpoint(test_endpoint("host-1", Arc::default()))
        .start()
        .await
        .unwrap();
    let client =
        RpcClient::new(&transport, Target::topic("topo")).version(tidings::Version::new(1, 3));
    let echoed: Value = client
        .call(&Context::new(), "echo", json!({"x": 1}))
        .await
        .unwrap();
    assert_eq!(echoed, json!(1));
    client
        .prepare()
        .fanout(true)
        .cast(&Context::new(), "echo", json!({"x": 2}))
        .await
        .unwrap();
    let notification = Destination::Notification {
        exchange: "openstack".into(),
        topic: "notifications".into(),
        priority: "info".into(),
    };
    transport
        .driver()
        .publish(
            &notification,
            OutgoingMessage::new(b"{}".to_vec(), "application/json"),
        )
        .await
        .unwrap();

    let exchanges = listing(
        "list_exchanges",
        vhost,
        &["name", "type", "durable", "auto_delete", "arguments"],
    );
    let control = find(&exchanges, "openstack");
    assert_eq!(
        (
            &control["type"],
            &control["durable"],
            &control["auto_delete"]
        ),
        (&json!("topic"), &json!(false), &json!(false))
    );
    let fanout = find(&exchanges, "topo_fanout");
    assert_eq!(
        (&fanout["type"], &fanout["durable"], &fanout["auto_delete"]),
        (&json!("fanout"), &json!(false), &json!(true))
    );

    let queues = listing(
        "list_queues",
        vhost,
        &["name", "durable", "auto_delete", "exclusive", "arguments"],
    );
    for name in ["topo", "topo.host-1", "notifications.info"] {
        let queue = find(&queues, name);
        assert_eq!(
            (
                &queue["durable"],
                &queue["auto_delete"],
                &queue["exclusive"],
                &queue["arguments"]
            ),
            (&json!(false), &json!(false), &json!(false), &json!([])),
            "{name}"
        );
    }
    let expires = json!([["x-expires", "signedint", 1_800_000]]);
    for prefix in ["topo_fanout_", "reply_"] {
        let queue = find_prefix(&queues, prefix);
        let name = queue["name"].as_str().unwrap();
        let hex = &name[prefix.len()..];
        assert!(
            hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(
            (
                &queue["durable"],
                &queue["auto_delete"],
                &queue["exclusive"],
                &queue["arguments"]
            ),
            (&json!(false), &json!(false), &json!(false), &expires),
            "{name}"
        );
    }

    let bindings = listing(
        "list_bindings",
        vhost,
        &["source_name", "destination_name", "routing_key"],
    );
    let bound = |source: &str, queue: &str, key: &str| {
        bindings.iter().any(|b| {
            b["source_name"] == source && b["destination_name"] == queue && b["routing_key"] == key
        })
    };
    assert!(bound("openstack", "topo", "topo"));
    assert!(bound("openstack", "topo.host-1", "topo.host-1"));
    assert!(bound(
        "openstack",
        "notifications.info",
        "notifications.info"
    ));
    let fanout_queue = find_prefix(&queues, "topo_fanout_")["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(bindings
        .iter()
        .any(|b| b["source_name"] == "topo_fanout" && b["destination_name"] == fanout_queue));
    let reply_queue = find_prefix(&queues, "reply_")["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !bindings
            .iter()
            .any(|b| b["destination_name"] == reply_queue && b["source_name"] != ""),
        "the reply queue is reached through the default exchange only"
    );

    // A clean stop deletes the fanout queue; the shared topic queues stay.
    server.stop(Duration::from_secs(5)).await;
    let queues = listing("list_queues", vhost, &["name"]);
    assert!(
        !queues.iter().any(|q| q["name"] == fanout_queue.as_str()),
        "{queues:?}"
    );
    assert!(queues.iter().any(|q| q["name"] == "topo"));
    transport.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_and_durable_options_use_oslo_arguments() {
    let bus = Bus::amqp_with_query("rabbit_quorum_queue=true&rabbit_quorum_delivery_limit=5");
    let vhost = bus.vhost().unwrap();
    let transport = bus.transport().await;
    let server = RpcServer::builder(&transport, Target::topic("quorum").with_server("h"))
        .endpoint(test_endpoint("h", Arc::default()))
        .start()
        .await
        .unwrap();
    let exchanges = listing("list_exchanges", vhost, &["name", "durable"]);
    assert_eq!(find(&exchanges, "openstack")["durable"], json!(true));
    let queues = listing("list_queues", vhost, &["name", "durable", "arguments"]);
    let queue = find(&queues, "quorum");
    assert_eq!(queue["durable"], json!(true));
    let arguments = queue["arguments"].as_array().unwrap();
    assert!(
        arguments.contains(&json!(["x-queue-type", "longstr", "quorum"])),
        "{arguments:?}"
    );
    assert!(
        arguments.contains(&json!(["x-delivery-limit", "signedint", 5])),
        "{arguments:?}"
    );
    server.stop(Duration::from_secs(5)).await;
    transport.close().await;
}

/// Messages on `queue` the broker has delivered and not seen acknowledged, polled until they
/// are none or `limit` runs out; the last count.
async fn unacknowledged_after(vhost: &str, queue: &str, limit: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (vhost, name) = (vhost.to_owned(), queue.to_owned());
        let rows = tokio::task::spawn_blocking(move || {
            listing("list_queues", &vhost, &["name", "messages_unacknowledged"])
        })
        .await
        .unwrap();
        let unacknowledged = find(&rows, &name)["messages_unacknowledged"]
            .as_u64()
            .unwrap_or(u64::MAX);
        if unacknowledged == 0 || tokio::time::Instant::now() >= deadline {
            return unacknowledged;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acknowledgements wait a moment for company, to share a frame; a lone one still reaches the
/// broker, for a server's request and for a listener's notification alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_delivery_is_acknowledged_without_waiting_for_company() {
    let bus = Bus::amqp();
    let vhost = bus.vhost().unwrap();
    let transport = bus.transport().await;
    let server = RpcServer::builder(&transport, Target::topic("lone"))
        .endpoint(test_endpoint("lone", Arc::default()))
        .start()
        .await
        .unwrap();
    let client = RpcClient::new(&transport, Target::topic("lone"));
    let echoed: Value = client
        .call(&Context::new(), "echo", json!({"x": 7}))
        .await
        .unwrap();
    assert_eq!(echoed, json!(7));

    let handled = Arc::new(AtomicUsize::new(0));
    let counted = handled.clone();
    let endpoint =
        NotificationEndpoint::new().on(Priority::Info, move |_: IncomingNotification| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, String>(Outcome::Handled) }
        });
    let listener = NotificationListener::builder(&transport, vec![Target::topic("lone")])
        .endpoint(endpoint)
        .start()
        .await
        .unwrap();
    Notifier::new(&transport, "lone.host")
        .topics(["lone"])
        .info(&Context::new(), "lone.event", json!({}))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || handled.load(Ordering::SeqCst)
            == 1)
        .await,
        "the notification was not handled"
    );

    // Both consumers stay open: what is acknowledged here was sent while they ran.
    let limit = Duration::from_secs(10);
    assert_eq!(unacknowledged_after(vhost, "lone", limit).await, 0);
    assert_eq!(unacknowledged_after(vhost, "lone.info", limit).await, 0);
    listener.stop(Duration::from_secs(5)).await;
    server.stop(Duration::from_secs(5)).await;
    transport.close().await;
}
