//! The RPC suite: the same specification run on every transport.
//!
//! Each test takes a fresh [`Bus`]; the `suite!` macro instantiates every test once per
//! transport, so the memory driver and the AMQP driver are held to the same behaviour.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tidings::codec::{CallInfo, Codec, RpcReply, RpcRequest};
use tidings::rpc::{RpcClient, RpcError, RpcServer};
use tidings::trace::{TraceParent, TRACEPARENT_KEY};
use tidings::transport::{
    DeliverySink, Destination, OutgoingMessage, TransportError, TransportOptions,
};
use tidings::{Context, Target, Transport, Version};
use tidings_suites::{eventually, take_trace_parent, test_endpoint, Bus, Probe};

const TOPIC: &str = "suite";
const V13: Version = Version::new(1, 3);

async fn serve(transport: &Transport, server: &str, probe: Arc<Probe>) -> RpcServer {
    RpcServer::builder(transport, Target::topic(TOPIC).with_server(server))
        .endpoint(test_endpoint(server, probe))
        .start()
        .await
        .expect("server starts")
}

fn client(transport: &Transport) -> RpcClient {
    RpcClient::new(transport, Target::topic(TOPIC))
        .version(V13)
        .timeout(Duration::from_secs(10))
}

pub async fn call_returns_the_typed_result(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let arg = json!({"n": 1, "f": 2.5, "s": "żółw ☃", "l": [null, true, {"deep": [1]}]});
    let got: Value = client(&transport)
        .call(&Context::new(), "echo", json!({ "x": arg }))
        .await
        .unwrap();
    assert_eq!(got, arg);
    let text: String = client(&transport)
        .call(&Context::new(), "echo", json!({"x": "plain"}))
        .await
        .unwrap();
    assert_eq!(text, "plain");
    server.stop(Duration::from_secs(5)).await;
}

/// Arguments go out as the caller's serializer writes them only when a peer cannot misread
/// them: a typed value (`__type__`/`__value__`, which kombu would decode) is refused before
/// anything is sent, a non-object is refused, `null` is no arguments, and a mere `"__type__"`
/// string goes through.
pub async fn arguments_are_checked_before_they_are_sent(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let client = client(&transport);
    let context = Context::new();
    let typed = json!({"x": [{"when": {"__type__": "datetime", "__value__": "2026-01-01"}}]});
    match client.call::<Value>(&context, "echo", typed).await {
        Err(RpcError::Codec(tidings::codec::CodecError::ForbiddenTypedValue { field })) => {
            assert_eq!(field, "args")
        }
        other => panic!("a typed value in the arguments was not refused: {other:?}"),
    }
    match client.cast(&context, "echo", json!([1, 2])).await {
        Err(RpcError::InvalidArguments { method, .. }) => assert_eq!(method, "echo"),
        other => panic!("a list as arguments was not refused: {other:?}"),
    }
    let text: String = client
        .call(&context, "echo", json!({"x": "__type__"}))
        .await
        .unwrap();
    assert_eq!(text, "__type__");
    // `context` takes no arguments: `null` must arrive as `{}`.
    let _: Value = client.call(&context, "context", Value::Null).await.unwrap();
    server.stop(Duration::from_secs(5)).await;
}

/// More calls at once than the AMQP driver lets wait for their confirm: the rest wait their
/// turn, and every one returns its own result.
pub async fn a_burst_beyond_the_publish_window_all_return(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let client = client(&transport).timeout(Duration::from_secs(60));
    let calls = 2 * tidings::transport::amqp::DEFAULT_MAX_UNCONFIRMED_PUBLISHES + 1;
    let replies = futures::future::join_all((0..calls).map(|i| {
        let client = client.clone();
        async move {
            client
                .call::<usize>(&Context::new(), "echo", json!({ "x": i }))
                .await
        }
    }))
    .await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap(), i);
    }
    server.stop(Duration::from_secs(5)).await;
}

pub async fn context_reaches_the_handler(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let ctx = Context::new()
        .with("user", "u1")
        .with("request_id", "req-7")
        .with("roles", json!(["admin"]));
    // The handler's context is the caller's plus a `traceparent` naming the server's span: a
    // new trace when the caller sent none, ...
    let mut seen: Context = client(&transport)
        .call(&ctx, "context", json!({}))
        .await
        .unwrap();
    let fresh = take_trace_parent(&mut seen);
    assert_eq!(seen, ctx);
    // ... the caller's trace when it did.
    let parent = TraceParent::new_root();
    let traced = ctx.clone().with(TRACEPARENT_KEY, parent.to_string());
    let mut seen: Context = client(&transport)
        .call(&traced, "context", json!({}))
        .await
        .unwrap();
    let child = take_trace_parent(&mut seen);
    assert_eq!(seen, ctx);
    assert_eq!(child.trace_id(), parent.trace_id());
    assert_ne!(child.span_id(), parent.span_id());
    assert_ne!(fresh.trace_id(), parent.trace_id());
    server.stop(Duration::from_secs(5)).await;
}

pub async fn calls_from_another_process_get_their_own_replies(bus: Bus) {
    let server_side = bus.transport().await;
    let server = serve(&server_side, "s1", Arc::default()).await;
    let a = bus.transport().await;
    let b = bus.transport().await;
    let (ctx, ca, cb) = (Context::new(), client(&a), client(&b));
    let (ra, rb) = tokio::join!(
        ca.call::<String>(&ctx, "echo", json!({"x": "from a"})),
        cb.call::<String>(&ctx, "echo", json!({"x": "from b"})),
    );
    assert_eq!(ra.unwrap(), "from a");
    assert_eq!(rb.unwrap(), "from b");
    server.stop(Duration::from_secs(5)).await;
}

pub async fn cast_is_delivered_once(bus: Bus) {
    let transport = bus.transport().await;
    let probe = Arc::new(Probe::default());
    let s1 = serve(&transport, "s1", probe.clone()).await;
    let s2 = serve(&transport, "s2", probe.clone()).await;
    for _ in 0..10 {
        client(&transport)
            .cast(&Context::new(), "note", json!({"text": "hi"}))
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || probe
            .casts
            .load(Ordering::SeqCst)
            == 10)
        .await
    );
    // Competing consumers: each cast went to exactly one server, none twice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(probe.casts.load(Ordering::SeqCst), 10);
    s1.stop(Duration::from_secs(5)).await;
    s2.stop(Duration::from_secs(5)).await;
}

pub async fn fanout_cast_reaches_every_server(bus: Bus) {
    let transport = bus.transport().await;
    let probes: Vec<Arc<Probe>> = (0..3).map(|_| Arc::default()).collect();
    let mut servers = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        servers.push(serve(&transport, &format!("s{i}"), probe.clone()).await);
    }
    client(&transport)
        .fanout(true)
        .cast(&Context::new(), "note", json!({"text": "all"}))
        .await
        .unwrap();
    for probe in &probes {
        assert!(
            eventually(Duration::from_secs(10), || probe
                .casts
                .load(Ordering::SeqCst)
                == 1)
            .await
        );
    }
    for server in servers {
        server.stop(Duration::from_secs(5)).await;
    }
}

pub async fn server_targeted_call_reaches_that_server(bus: Bus) {
    let transport = bus.transport().await;
    let s1 = serve(&transport, "s1", Arc::default()).await;
    let s2 = serve(&transport, "s2", Arc::default()).await;
    for _ in 0..5 {
        let who: String = client(&transport)
            .server("s2")
            .call(&Context::new(), "whoami", json!({}))
            .await
            .unwrap();
        assert_eq!(who, "s2");
    }
    // A client that has sent already, retargeted: each copy goes where it points now.
    let used = client(&transport);
    let _: String = used
        .call(&Context::new(), "whoami", json!({}))
        .await
        .unwrap();
    for server in ["s1", "s2", "s1"] {
        let who: String = used
            .prepare()
            .server(server)
            .call(&Context::new(), "whoami", json!({}))
            .await
            .unwrap();
        assert_eq!(who, server);
    }
    s1.stop(Duration::from_secs(5)).await;
    s2.stop(Duration::from_secs(5)).await;
}

pub async fn remote_errors_carry_class_module_and_message(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let c = client(&transport);
    let error = c
        .call::<Value>(
            &Context::new(),
            "raise",
            json!({"class": "QuotaExceeded", "message": "too many"}),
        )
        .await
        .unwrap_err();
    let remote = error.remote().expect("a remote error");
    assert_eq!(
        (remote.class.as_str(), remote.module.as_str()),
        ("QuotaExceeded", "tests.module")
    );
    assert_eq!(remote.message, "too many");
    assert_eq!(remote.args, vec![json!("too many")]);

    let error = c
        .call::<Value>(&Context::new(), "nope", json!({}))
        .await
        .unwrap_err();
    let remote = error.remote().expect("NoSuchMethod");
    assert!(remote.is_no_such_method());
    assert_eq!(remote.message, "Endpoint does not support RPC method nope");

    let error = c
        .prepare()
        .version(Version::new(1, 4))
        .call::<Value>(&Context::new(), "echo", json!({"x": 1}))
        .await
        .unwrap_err();
    let remote = error.remote().expect("UnsupportedVersion");
    assert!(remote.is_unsupported_version());
    assert_eq!(
        remote.message,
        "Endpoint does not support RPC version 1.4. Attempted method: echo"
    );

    let error = c
        .prepare()
        .namespace("other")
        .call::<Value>(&Context::new(), "echo", json!({"x": 1}))
        .await
        .unwrap_err();
    assert!(error.remote().is_some_and(|r| r.is_unsupported_version()));

    let error = c
        .call::<Value>(&Context::new(), "echo", json!({"y": 1}))
        .await
        .unwrap_err();
    assert_eq!(error.remote().map(|r| r.class.as_str()), Some("TypeError"));
    server.stop(Duration::from_secs(5)).await;
}

pub async fn a_panicking_handler_becomes_a_remote_error(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let c = client(&transport);
    let error = c
        .call::<Value>(&Context::new(), "panic", json!({}))
        .await
        .unwrap_err();
    let remote = error.remote().expect("a remote error");
    assert!(remote.message.contains("deliberate panic"), "{remote}");
    let still: String = c
        .call(&Context::new(), "echo", json!({"x": "alive"}))
        .await
        .unwrap();
    assert_eq!(still, "alive");
    server.stop(Duration::from_secs(5)).await;
}

pub async fn call_times_out_when_nobody_listens(bus: Bus) {
    let transport = bus.transport().await;
    let started = tokio::time::Instant::now();
    let error = client(&transport)
        .timeout(Duration::from_millis(300))
        .call::<Value>(&Context::new(), "echo", json!({"x": 1}))
        .await
        .unwrap_err();
    assert!(matches!(error, RpcError::Timeout { .. }), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

pub async fn mandatory_call_fails_fast_when_no_queue_exists(bus: Bus) {
    let transport = bus.transport().await;
    let error = client(&transport)
        .topic("nobody-serves-this")
        .mandatory(true)
        .timeout(Duration::from_secs(30))
        .call::<Value>(&Context::new(), "echo", json!({"x": 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RpcError::NoServer { ref topic, .. } if topic == "nobody-serves-this"),
        "{error}"
    );
}

/// Mandatory requests published side by side, to a server that exists and to one that does
/// not: each learns its own fate, never the other's return.
pub async fn concurrent_mandatory_calls_each_learn_their_own_fate(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let mandatory = |server: &str| {
        client(&transport)
            .server(server)
            .mandatory(true)
            .timeout(Duration::from_secs(10))
    };
    let (present, absent) = (mandatory("s1"), mandatory("nobody"));
    for _ in 0..20 {
        let calls = (0..4).map(|_| {
            let (present, absent) = (&present, &absent);
            async move {
                let context = Context::new();
                tokio::join!(
                    present.call::<String>(&context, "echo", json!({"x": "here"})),
                    absent.call::<Value>(&context, "echo", json!({"x": "gone"})),
                )
            }
        });
        for (reached, missed) in futures::future::join_all(calls).await {
            assert_eq!(reached.unwrap(), "here");
            let error = missed.unwrap_err();
            assert!(matches!(error, RpcError::NoServer { .. }), "{error}");
        }
    }
    server.stop(Duration::from_secs(5)).await;
}

pub async fn version_cap_is_checked_before_sending(bus: Bus) {
    let transport = bus.transport().await;
    let c = client(&transport).version_cap(Version::new(1, 2));
    assert!(!c.can_send_version(None));
    assert!(c.can_send_version(Some(Version::new(1, 1))));
    let error = c
        .call::<Value>(&Context::new(), "echo", json!({"x": 1}))
        .await
        .unwrap_err();
    assert!(matches!(error, RpcError::VersionCapped { .. }), "{error}");
}

pub async fn concurrent_calls_run_in_parallel_up_to_the_limit(bus: Bus) {
    let transport = bus.transport().await;
    let probe = Arc::new(Probe::default());
    let server = RpcServer::builder(&transport, Target::topic(TOPIC).with_server("s1"))
        .endpoint(test_endpoint("s1", probe.clone()))
        .max_concurrency(4)
        .start()
        .await
        .unwrap();
    let c = client(&transport);
    let ctx = Context::new();
    let calls = (0..12).map(|_| c.call::<String>(&ctx, "sleep", json!({"secs": 0.2})));
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.as_deref().ok() == Some("slept")));
    assert_eq!(
        probe.peak.load(Ordering::SeqCst),
        4,
        "ran in parallel, never above the limit"
    );
    server.stop(Duration::from_secs(5)).await;
}

pub async fn graceful_stop_finishes_calls_in_flight(bus: Bus) {
    let transport = bus.transport().await;
    let probe = Arc::new(Probe::default());
    let server = serve(&transport, "s1", probe.clone()).await;
    let c = client(&transport);
    let calls = tokio::spawn(async move {
        let ctx = Context::new();
        let calls = (0..3).map(|_| c.call::<String>(&ctx, "sleep", json!({"secs": 0.5})));
        futures::future::join_all(calls).await
    });
    assert!(
        eventually(Duration::from_secs(5), || probe
            .running
            .load(Ordering::SeqCst)
            == 3)
        .await
    );
    let report = server.stop(Duration::from_secs(10)).await;
    assert_eq!(report.finished, 3);
    assert_eq!(report.abandoned, 0);
    let results = calls.await.unwrap();
    assert!(
        results.iter().all(|r| r.as_deref().ok() == Some("slept")),
        "{results:?}"
    );
}

pub async fn stop_deadline_abandons_what_is_left(bus: Bus) {
    let transport = bus.transport().await;
    let probe = Arc::new(Probe::default());
    let server = serve(&transport, "s1", probe.clone()).await;
    let c = client(&transport).timeout(Duration::from_secs(2));
    let call = tokio::spawn(async move {
        c.call::<String>(&Context::new(), "sleep", json!({"secs": 30}))
            .await
    });
    assert!(
        eventually(Duration::from_secs(5), || probe
            .running
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    let report = server.stop(Duration::from_millis(100)).await;
    assert_eq!(report.abandoned, 1);
    assert!(call.await.unwrap().unwrap_err().is_timeout());
}

/// A process going down closes its connection first: stopping its servers afterwards must not
/// wait on the broker (the fanout queue's deletion has no connection left to ask on).
pub async fn stop_after_the_transport_closed_keeps_its_deadline(bus: Bus) {
    for _ in 0..5 {
        let transport = bus.transport().await;
        let server = serve(&transport, "s1", Arc::default()).await;
        let _: String = client(&transport)
            .call(&Context::new(), "echo", json!({"x": "up"}))
            .await
            .unwrap();
        transport.close().await;
        let stopped = tokio::time::timeout(
            Duration::from_secs(10),
            server.stop(Duration::from_millis(100)),
        )
        .await;
        assert!(stopped.is_ok(), "stop waited past its deadline");
    }
}

pub async fn duplicate_requests_are_dropped(bus: Bus) {
    let transport = bus.transport().await;
    let probe = Arc::new(Probe::default());
    let server = serve(&transport, "s1", probe.clone()).await;
    let body = json!({
        "oslo.version": "2.0",
        "oslo.message": json!({
            "method": "note", "args": {"text": "dup"}, "version": "1.3",
            "_unique_id": "0123456789abcdef0123456789abcdef"
        }).to_string()
    })
    .to_string();
    for _ in 0..3 {
        let message = OutgoingMessage::new(body.clone().into_bytes(), "application/json");
        let destination = Destination::Rpc {
            exchange: "openstack".into(),
            routing_key: TOPIC.into(),
        };
        transport
            .driver()
            .publish(&destination, message)
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || probe
            .casts
            .load(Ordering::SeqCst)
            >= 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(probe.casts.load(Ordering::SeqCst), 1);
    server.stop(Duration::from_secs(5)).await;
}

pub async fn malformed_requests_do_not_stop_the_server(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let destination = Destination::Rpc {
        exchange: "openstack".into(),
        routing_key: TOPIC.into(),
    };
    let bad_bodies: [(&[u8], &str); 4] = [
        (b"not json", "application/json"),
        (
            br#"{"oslo.version": "9.0", "oslo.message": "{}"}"#,
            "application/json",
        ),
        (
            br#"{"oslo.version": "2.0", "oslo.message": "{\"args\": {}}"}"#,
            "application/json",
        ),
        (b"{}", "text/plain"),
    ];
    for (body, content_type) in bad_bodies {
        let message = OutgoingMessage::new(body.to_vec(), content_type_static(content_type));
        transport
            .driver()
            .publish(&destination, message)
            .await
            .unwrap();
    }
    let alive: String = client(&transport)
        .call(&Context::new(), "echo", json!({"x": "ok"}))
        .await
        .unwrap();
    assert_eq!(alive, "ok");
    server.stop(Duration::from_secs(5)).await;
}

fn content_type_static(ct: &str) -> &'static str {
    match ct {
        "application/json" => "application/json",
        _ => "text/plain",
    }
}

pub async fn call_monitor_keeps_a_long_call_alive(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    // The call outlasts the monitor timeout; keepalives every 1 s keep it going.
    let slept: String = client(&transport)
        .call_monitor_timeout(Duration::from_secs(2))
        .call(&Context::new(), "sleep", json!({"secs": 3.5}))
        .await
        .unwrap();
    assert_eq!(slept, "slept");
    server.stop(Duration::from_secs(5)).await;
}

pub async fn msgpack_and_json_clients_share_one_server(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let packed = Transport::connect_with(
        bus.url().parse().unwrap(),
        tidings::transport::TransportOptions {
            codec: tidings::codec::Codec::MessagePack,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let a: String = client(&packed)
        .call(&Context::new(), "echo", json!({"x": "packed"}))
        .await
        .unwrap();
    let b: String = client(&transport)
        .call(&Context::new(), "echo", json!({"x": "json"}))
        .await
        .unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("packed", "json"));
    server.stop(Duration::from_secs(5)).await;
}

/// Publishes a hand-built call to the suite topic with its own raw reply queue, and collects
/// the replies that arrive within `listen_for` (keepalives included).
async fn raw_call(
    transport: &Transport,
    method: &str,
    args: Value,
    timeout: Value,
    listen_for: Duration,
) -> Vec<RpcReply> {
    let (reply_q, mut inbox) = transport.driver().open_reply_queue().await.unwrap();
    let request = RpcRequest {
        method: method.into(),
        args: args.as_object().cloned().unwrap_or_default(),
        namespace: None,
        version: Some("1.3".into()),
        call: Some(CallInfo {
            msg_id: "feedfacefeedfacefeedfacefeedface".into(),
            reply_q,
            timeout: timeout.as_number().cloned(),
        }),
        unique_id: uuid::Uuid::new_v4().simple().to_string(),
        context: Context::new(),
    };
    let body = Codec::OsloJson.encode_request(&request).unwrap();
    let destination = Destination::Rpc {
        exchange: "openstack".into(),
        routing_key: TOPIC.into(),
    };
    transport
        .driver()
        .publish(&destination, OutgoingMessage::new(body, "application/json"))
        .await
        .unwrap();
    let mut replies = Vec::new();
    let until = tokio::time::Instant::now() + listen_for;
    while let Ok(Some(delivery)) = tokio::time::timeout_at(until, inbox.recv()).await {
        let reply = Codec::OsloJson.decode_reply(&delivery.body).unwrap();
        delivery.ack().await.unwrap();
        replies.push((tokio::time::Instant::now(), reply));
    }
    inbox.close().await;
    replies.into_iter().map(|(_, r)| r).collect()
}

/// Collects the bodies its driver hands it; a body of `panic` makes it panic.
struct CollectingSink(tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

impl DeliverySink for CollectingSink {
    fn take(&self, delivery: tidings::transport::Delivery) {
        let (body, _, acker) = delivery.into_parts();
        assert_ne!(&body[..], b"panic", "the sink was told to panic");
        let _ = self.0.send(body.to_vec());
        // A sink must not wait: settle on a task of its own.
        tokio::spawn(acker.ack());
    }
}

pub async fn a_reply_queue_sink_takes_each_reply_and_outlives_its_own_panic(bus: Bus) {
    let transport = bus.transport().await;
    let (sender, mut taken) = tokio::sync::mpsc::unbounded_channel();
    let (queue, mut ended) = transport
        .driver()
        .open_reply_queue_into(Arc::new(CollectingSink(sender)))
        .await
        .unwrap();
    let destination = Destination::Reply {
        queue: queue.clone(),
    };
    for body in ["first", "panic", "second"] {
        transport
            .driver()
            .publish(
                &destination,
                OutgoingMessage::new(body.as_bytes().to_vec(), "application/json"),
            )
            .await
            .unwrap();
    }
    for expected in ["first", "second"] {
        let body = tokio::time::timeout(Duration::from_secs(10), taken.recv())
            .await
            .expect("the sink takes the reply")
            .expect("the sink is still held");
        assert_eq!(body, expected.as_bytes());
    }
    // The inbox carries nothing but the consumer's end.
    let nothing = tokio::time::timeout(Duration::from_millis(100), ended.recv()).await;
    assert!(nothing.is_err(), "the inbox yielded {nothing:?}");
    // Closing it stops the consumer, which lets go of the sink.
    ended.close().await;
    let released = tokio::time::timeout(Duration::from_secs(10), async {
        while taken.recv().await.is_some() {}
    })
    .await;
    assert!(released.is_ok(), "the sink is still held after the close");
}

pub async fn keepalives_follow_the_interval_and_stop_at_the_final_reply(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    // _timeout = 2 → a keepalive every int(2)/2 = 1 s while the 2.5 s handler runs.
    let replies = raw_call(
        &transport,
        "sleep",
        json!({"secs": 2.5}),
        json!(2),
        Duration::from_secs(4),
    )
    .await;
    let (last, keepalives) = replies.split_last().expect("replies");
    assert_eq!(keepalives.len(), 2, "{replies:?}");
    assert!(keepalives
        .iter()
        .all(|r| !r.ending && r.result.is_null() && r.failure.is_none()));
    assert!(last.ending, "nothing follows the final reply: {replies:?}");
    assert_eq!(last.result, json!("slept"));
    server.stop(Duration::from_secs(5)).await;
}

pub async fn a_call_with_an_unusable_timeout_is_refused_with_a_value_error(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    for timeout in [json!(1e20), json!(-1), json!(1e300)] {
        let replies = raw_call(
            &transport,
            "echo",
            json!({"x": 1}),
            timeout.clone(),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(replies.len(), 1, "{timeout}: {replies:?}");
        let failure = replies[0].failure.as_ref().expect("a refusal");
        assert_eq!(
            (failure.class.as_str(), failure.module.as_str()),
            ("ValueError", "builtins")
        );
        assert!(failure.message.contains("_timeout"), "{failure:?}");
    }
    assert_eq!(server.refusals().malformed, 3);
    // The server goes on serving.
    let echoed: Value = client(&transport)
        .call(&Context::new(), "echo", json!({"x": 2}))
        .await
        .unwrap();
    assert_eq!(echoed, json!(2));
    server.stop(Duration::from_secs(5)).await;
}

pub async fn messages_above_the_size_limit_are_refused_on_both_sides(bus: Bus) {
    let limited = Transport::connect_with(
        bus.url().parse().unwrap(),
        TransportOptions::default().max_message_size(4096),
    )
    .await
    .unwrap();
    let server = serve(&limited, "s1", Arc::default()).await;
    let big = "x".repeat(8192);
    // A sender refuses to publish what is over its own limit.
    let refused = client(&limited)
        .call::<Value>(&Context::new(), "echo", json!({ "x": big }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            RpcError::Transport(TransportError::MessageTooLarge { limit: 4096, .. })
        ),
        "{refused}"
    );
    // A receiver drops what is over its limit without decoding it.
    let unlimited = bus.transport().await;
    let dropped = client(&unlimited)
        .timeout(Duration::from_secs(1))
        .call::<Value>(&Context::new(), "echo", json!({ "x": big }))
        .await
        .unwrap_err();
    assert!(matches!(dropped, RpcError::Timeout { .. }), "{dropped}");
    assert_eq!(server.refusals().too_large, 1);
    let echoed: Value = client(&unlimited)
        .call(&Context::new(), "echo", json!({"x": "small"}))
        .await
        .unwrap();
    assert_eq!(echoed, json!("small"));
    server.stop(Duration::from_secs(5)).await;
}

pub async fn no_keepalive_follows_an_error_reply(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    let replies = raw_call(
        &transport,
        "nope",
        json!({}),
        json!(2),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].ending);
    assert!(replies[0]
        .failure
        .as_ref()
        .is_some_and(|f| f.is_no_such_method()));
    server.stop(Duration::from_secs(5)).await;
}

pub async fn no_keepalive_without_a_call_monitor(bus: Bus) {
    let transport = bus.transport().await;
    let server = serve(&transport, "s1", Arc::default()).await;
    // Python clients crash on a keepalive they did not ask for.
    let replies = raw_call(
        &transport,
        "sleep",
        json!({"secs": 2.5}),
        Value::Null,
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].ending);
    server.stop(Duration::from_secs(5)).await;
}

pub async fn call_monitor_fails_fast_when_keepalives_stop(bus: Bus) {
    let transport = bus.transport().await;
    // A server that takes the request and never answers: the topic queue is consumed by a raw
    // inbox that sends nothing back.
    let mut silent = transport
        .driver()
        .subscribe(
            &tidings::transport::Subscription::RpcServer {
                exchange: "openstack".into(),
                topic: TOPIC.into(),
                server: "silent".into(),
            },
            Default::default(),
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = client(&transport)
        .timeout(Duration::from_secs(30))
        .call_monitor_timeout(Duration::from_secs(2))
        .call::<Value>(&Context::new(), "echo", json!({"x": 1}))
        .await
        .unwrap_err();
    assert!(matches!(error, RpcError::MonitorTimeout { .. }), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed on the monitor, not the 30 s timeout"
    );
    let taken = silent
        .recv()
        .await
        .expect("the request reached the silent server");
    taken.ack().await.unwrap();
    silent.close().await;
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

macro_rules! rpc_suite {
    ($bus:expr) => {
        suite!($bus;
            call_returns_the_typed_result,
            arguments_are_checked_before_they_are_sent,
            a_burst_beyond_the_publish_window_all_return,
            context_reaches_the_handler,
            calls_from_another_process_get_their_own_replies,
            cast_is_delivered_once,
            fanout_cast_reaches_every_server,
            server_targeted_call_reaches_that_server,
            remote_errors_carry_class_module_and_message,
            a_panicking_handler_becomes_a_remote_error,
            call_times_out_when_nobody_listens,
            mandatory_call_fails_fast_when_no_queue_exists,
            concurrent_mandatory_calls_each_learn_their_own_fate,
            version_cap_is_checked_before_sending,
            concurrent_calls_run_in_parallel_up_to_the_limit,
            graceful_stop_finishes_calls_in_flight,
            stop_deadline_abandons_what_is_left,
            stop_after_the_transport_closed_keeps_its_deadline,
            duplicate_requests_are_dropped,
            malformed_requests_do_not_stop_the_server,
            call_monitor_keeps_a_long_call_alive,
            msgpack_and_json_clients_share_one_server,
            keepalives_follow_the_interval_and_stop_at_the_final_reply,
            a_reply_queue_sink_takes_each_reply_and_outlives_its_own_panic,
            no_keepalive_follows_an_error_reply,
            a_call_with_an_unusable_timeout_is_refused_with_a_value_error,
            messages_above_the_size_limit_are_refused_on_both_sides,
            no_keepalive_without_a_call_monitor,
            call_monitor_fails_fast_when_keepalives_stop,
        );
    };
}

mod memory {
    rpc_suite!(tidings_suites::Bus::memory());
}

mod amqp {
    rpc_suite!(tidings_suites::Bus::amqp());

    /// A window of one: each publish waits for the confirm of the one before it, and replies
    /// still get through while the calls that wait for them hold none of the room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_through_a_window_of_one_all_return() {
        let bus = tidings_suites::Bus::amqp_with_query("max_unconfirmed_publishes=1");
        super::a_burst_beyond_the_publish_window_all_return(bus).await;
    }
}
