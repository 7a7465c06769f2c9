//! A flood of unsolicited replies into a client's reply queue, on the real RabbitMQ. The client
//! is this test process (one test in this binary, so the process's peak RSS is the client's,
//! plus the raw publisher that floods it); the server it calls is a `tidings demo-server`
//! process. 100 000 replies with valid envelopes and random `_msg_id`s (one in ten carrying
//! 10 KiB) must leave the client's peak RSS under the bound and its real calls working,
//! during the flood and after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hostile_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hostile_support::*;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use serde_json::{json, Value};
use tidings::rpc::RpcClient;
use tidings::{Context, Target, Transport};
use tidings_suites::Bus;

/// Peak RSS allowed to the client process (which also publishes the flood).
const CLIENT_BOUND_MIB: f64 = 150.0;
const FLOOD: usize = 100_000;
/// Publishes in flight before waiting for the broker's confirms.
const WINDOW: usize = 500;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics anywhere in the process (a library task's panic would not fail the test).
fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

/// One unsolicited reply: a valid envelope, a `_msg_id` nobody waits for.
fn stray_reply(i: usize) -> Vec<u8> {
    let result = if i % 10 == 0 {
        json!("r".repeat(10 * 1024))
    } else {
        json!({"i": i})
    };
    envelope_of(&json!({
        "result": result,
        "failure": null,
        "ending": true,
        "_msg_id": hex_id(),
        "_unique_id": hex_id(),
    }))
}

/// Learns the client's reply queue: one call to a topic served here, raw, answered by hand.
async fn reply_queue_of(client: &RpcClient, raw: &Raw) -> String {
    let channel = raw.connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "openstack".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            "spy".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "spy".into(),
            "openstack".into(),
            "spy".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            "spy".into(),
            "spy".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let spied = client.prepare().topic("spy");
    let call = tokio::spawn(async move {
        spied
            .call::<Value>(&Context::new(), "whoami", json!({}))
            .await
    });
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("the client's call never reached the spy queue")
        .unwrap()
        .unwrap();
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    let request = open(&delivery.data).expect("an oslo JSON request");
    let reply_q = request["_reply_q"].as_str().unwrap().to_owned();
    let msg_id = request["_msg_id"].as_str().unwrap().to_owned();
    let reply = envelope_of(&json!({
        "result": "spied", "failure": null, "ending": true,
        "_msg_id": msg_id, "_unique_id": hex_id(),
    }));
    raw.publish("", &reply_q, JSON, &reply).await;
    let answered = call.await.unwrap().expect("the spied call gets its reply");
    assert_eq!(answered, "spied");
    reply_q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_100000_unsolicited_replies_leaves_the_client_bounded_and_calling() {
    count_panics();
    let bus = Bus::amqp();
    let mut server = Peer::start(
        "demo-server",
        &[
            "demo-server",
            "--url",
            bus.url(),
            "--topic",
            "flooded",
            "--server",
            "flooded-1",
        ],
    );
    server.wait_for_stderr("serving demo methods", Duration::from_secs(30));

    let transport = Transport::connect(bus.url())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", bus.url()));
    let client =
        RpcClient::new(&transport, Target::topic("flooded")).timeout(Duration::from_secs(30));
    let raw = Raw::open(&bus).await;
    let reply_q = reply_queue_of(&client, &raw).await;
    let sum: Value = client
        .call(&Context::new(), "add", json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    assert_eq!(sum, 3);
    let before = peak_rss_mib(std::process::id());

    // The reply queue is consumed with acknowledgements and a bounded prefetch.
    let consumers = tidings_suites::rabbitmqctl(&[
        "list_consumers",
        "-p",
        bus.vhost().unwrap(),
        "--no-table-headers",
        "queue_name",
        "ack_required",
        "prefetch_count",
    ]);
    let reply_consumer: Vec<&str> = consumers
        .lines()
        .find(|l| l.split('\t').next() == Some(reply_q.as_str()))
        .unwrap_or_else(|| panic!("no consumer on {reply_q}: {consumers}"))
        .split('\t')
        .collect();
    assert_eq!(
        reply_consumer.get(1),
        Some(&"true"),
        "the reply queue is consumed without acknowledgements: {reply_consumer:?}"
    );
    let prefetch: u32 = reply_consumer[2].trim().parse().unwrap();
    assert!(
        (1..=1000).contains(&prefetch),
        "the reply queue's prefetch is {prefetch} (0 is unbounded)"
    );

    // Real calls all through the flood.
    let flooding = Arc::new(AtomicBool::new(true));
    let caller = {
        let client = client.clone();
        let flooding = flooding.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            while flooding.load(Ordering::SeqCst) || done < 5 {
                let echoed: Value = client
                    .call(&Context::new(), "echo", json!({"x": done}))
                    .await
                    .unwrap_or_else(|e| panic!("call {done} during the flood: {e}"));
                assert_eq!(echoed, done);
                done += 1;
            }
            done
        })
    };

    let started = Instant::now();
    let mut sent = 0;
    while sent < FLOOD {
        let mut confirms = Vec::with_capacity(WINDOW);
        for i in sent..(sent + WINDOW).min(FLOOD) {
            let body = stray_reply(i);
            confirms.push(
                raw.channel
                    .basic_publish(
                        "".into(),
                        reply_q.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties(JSON),
                    )
                    .await
                    .unwrap(),
            );
        }
        sent += confirms.len();
        for confirm in futures::future::join_all(confirms).await {
            assert!(
                confirm.unwrap().is_ack(),
                "the broker refused a stray reply"
            );
        }
    }
    eprintln!("published {FLOOD} stray replies in {:?}", started.elapsed());
    flooding.store(false, Ordering::SeqCst);
    let during = tokio::time::timeout(Duration::from_secs(120), caller)
        .await
        .expect("calls during the flood hung")
        .unwrap();
    eprintln!("{during} calls answered during the flood");

    until(
        Duration::from_secs(120),
        "the reply queue to drain",
        async || (raw.ready(&reply_q).await == 0).then_some(()),
    )
    .await;
    eprintln!("reply queue drained after {:?}", started.elapsed());
    for i in 0..20 {
        let sum: Value = client
            .call(&Context::new(), "add", json!({"a": i, "b": 1}))
            .await
            .unwrap_or_else(|e| panic!("call {i} after the flood: {e}"));
        assert_eq!(sum, i + 1);
    }

    let peak = peak_rss_mib(std::process::id());
    eprintln!(
        "client peak RSS: {before:.1} MiB before the flood, {peak:.1} MiB after (bound {CLIENT_BOUND_MIB} MiB)"
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    assert!(
        peak < CLIENT_BOUND_MIB,
        "the client's peak RSS reached {peak:.1} MiB, over {CLIENT_BOUND_MIB} MiB"
    );
    server.assert_healthy(CLIENT_BOUND_MIB);
    transport.close().await;
}
