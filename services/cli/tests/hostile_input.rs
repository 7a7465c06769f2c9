//! Hostile input on the real RabbitMQ against running agents, each a separate `tidings`
//! process: every body is published raw (exactly these bytes, this content type) where the
//! agent consumes, then the agent must still answer correctly, must not have panicked, and its
//! peak RSS (VmHWM) must stay under the bound each test states.
//!
//! What the library promises: a body above the transport's maximum message size (16 MiB by
//! default) is rejected before it is decoded; a field a peer controls is validated, and a bad
//! one gets a remote error when `_reply_q` and `_msg_id` are usable, else the message is
//! dropped and counted; nothing a peer sends makes an agent panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hostile_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hostile_support::*;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{json, Map, Value};
use tidings_suites::Bus;

const TOPIC: &str = "hostile";
const SERVER: &str = "hostile-1";
const CONTROL_EXCHANGE: &str = "openstack";
/// Peak RSS allowed to a demo server fed malformed fields (small messages).
const FIELDS_BOUND_MIB: f64 = 100.0;
/// Peak RSS allowed to an agent fed messages of many MiB.
const SIZE_BOUND_MIB: f64 = 200.0;
/// How long the replies to the hostile calls may take.
const REPLY_WAIT: Duration = Duration::from_secs(30);

/// What the server must do with one hostile request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A reply with a `failure` (a remote error) to our reply queue.
    Failure,
    /// A reply, result or failure.
    Reply,
    /// No reply (the body may be refused before its reply address is read), or a failure.
    FailureIfAny,
    /// Never a reply: its reply address is unusable, so it is dropped.
    NoReply,
    /// Nothing to check but the server's health: the body may not be decodable at all.
    Survive,
}

struct Case {
    name: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    msg_id: Option<String>,
    expect: Expect,
}

impl Case {
    /// A JSON call built from `fields` (starting from a good call answered to `reply_q`).
    fn json(
        name: &'static str,
        reply_q: &str,
        expect: Expect,
        edit: impl FnOnce(&mut Map<String, Value>),
    ) -> Self {
        let msg_id = hex_id();
        let mut fields = call_fields(&msg_id, reply_q);
        edit(&mut fields);
        let msg_id = fields
            .get("_msg_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Self {
            name,
            content_type: JSON,
            body: envelope_of(&Value::Object(fields)),
            msg_id,
            expect,
        }
    }

    /// Raw bytes.
    fn raw(name: &'static str, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            name,
            content_type,
            body,
            msg_id: None,
            expect: Expect::Survive,
        }
    }
}

/// Our own reply queue, consumed raw: every reply, by `_msg_id`.
struct Replies {
    queue: String,
    seen: Arc<Mutex<HashMap<String, Map<String, Value>>>>,
}

impl Replies {
    async fn start(raw: &Raw) -> Self {
        let queue = format!("reply_{}", hex_id());
        let channel = raw.connection.create_channel().await.unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "hostile-replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let seen: Arc<Mutex<HashMap<String, Map<String, Value>>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let content_type = delivery
                    .properties
                    .content_type()
                    .as_ref()
                    .map(|c| c.to_string());
                let reply = if content_type.as_deref() == Some(MSGPACK) {
                    rmp_serde::from_slice::<Value>(&delivery.data)
                        .ok()
                        .and_then(|outer| outer.get("oslo.message").cloned())
                        .and_then(|inner| match inner {
                            Value::Object(map) => Some(map),
                            _ => None,
                        })
                } else {
                    open(&delivery.data)
                };
                let Some(reply) = reply else { continue };
                if let Some(id) = reply.get("_msg_id").and_then(Value::as_str) {
                    record.lock().unwrap().insert(id.to_owned(), reply.clone());
                }
            }
        });
        Self { queue, seen }
    }

    fn get(&self, msg_id: &str) -> Option<Map<String, Value>> {
        self.seen.lock().unwrap().get(msg_id).cloned()
    }
}

/// A demo server on a fresh vhost, ready to serve.
struct Served {
    // Dropped in this order: the server process, then the vhost.
    server: Peer,
    raw: Raw,
    replies: Replies,
    bus: Bus,
}

async fn serve() -> Served {
    let bus = Bus::amqp();
    let mut server = Peer::start(
        "demo-server",
        &[
            "demo-server",
            "--url",
            bus.url(),
            "--topic",
            TOPIC,
            "--server",
            SERVER,
        ],
    );
    server.wait_for_stderr("serving demo methods", Duration::from_secs(30));
    let raw = Raw::open(&bus).await;
    let replies = Replies::start(&raw).await;
    Served {
        server,
        raw,
        replies,
        bus,
    }
}

async fn call_ok(url: &str, extra: &[&str], method: &str, args: &str, expected: &str) {
    let url = url.to_owned();
    let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    let (method, args, expected) = (method.to_owned(), args.to_owned(), expected.to_owned());
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        assert_call(&url, &extra, &method, &args, &expected);
    })
    .await
    .unwrap();
}

/// The demo server still answers, on its topic and on its own queue.
async fn assert_serves(url: &str) {
    call_ok(
        url,
        &["--topic", TOPIC],
        "echo",
        r#"{"x": "after"}"#,
        r#""after""#,
    )
    .await;
    call_ok(
        url,
        &["--topic", TOPIC, "--server", SERVER],
        "add",
        r#"{"a": 40, "b": 2}"#,
        "42",
    )
    .await;
}

/// Publishes each case to the server's topic queue, then a good raw call, and checks what
/// came back, that the server still serves, never panicked and stayed under `bound_mib`.
async fn attack_server(build: impl FnOnce(&str) -> Vec<Case>, bound_mib: f64) {
    let mut s = serve().await;
    let cases = build(&s.replies.queue);
    for case in &cases {
        s.raw
            .publish(CONTROL_EXCHANGE, TOPIC, case.content_type, &case.body)
            .await;
    }
    let good_id = hex_id();
    s.raw
        .publish(
            CONTROL_EXCHANGE,
            &format!("{TOPIC}.{SERVER}"),
            JSON,
            &envelope_of(&Value::Object(call_fields(&good_id, &s.replies.queue))),
        )
        .await;

    let deadline = Instant::now() + REPLY_WAIT;
    let wanted: Vec<&Case> = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Failure | Expect::Reply))
        .collect();
    let missing: Vec<&str> = loop {
        s.server.assert_running();
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|c| s.replies.get(c.msg_id.as_deref().unwrap()).is_none())
            .map(|c| c.name)
            .collect();
        if (missing.is_empty() && s.replies.get(&good_id).is_some()) || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(report) = s.server.panic_report() {
        panic!("the server panicked:\n{report}");
    }
    let good = s
        .replies
        .get(&good_id)
        .unwrap_or_else(|| panic!("no reply to a good call sent after the hostile ones"));
    assert_eq!(good["result"], "hostile", "{good:?}");
    assert!(good["failure"].is_null(), "{good:?}");
    assert!(missing.is_empty(), "no reply to: {missing:?}");
    for case in &cases {
        let reply = case.msg_id.as_deref().and_then(|id| s.replies.get(id));
        match case.expect {
            Expect::Failure => {
                let reply = reply.unwrap();
                assert!(
                    !reply["failure"].is_null(),
                    "{}: answered with a result instead of a remote error: {:.300}",
                    case.name,
                    Value::Object(reply).to_string()
                );
            }
            Expect::NoReply => assert!(
                reply.is_none(),
                "{}: answered, though its reply address is unusable",
                case.name
            ),
            Expect::FailureIfAny => {
                if let Some(reply) = reply {
                    assert!(
                        !reply["failure"].is_null(),
                        "{}: served instead of refused",
                        case.name
                    );
                }
            }
            Expect::Reply | Expect::Survive => {}
        }
    }
    assert_serves(s.bus.url()).await;
    s.server.assert_healthy(bound_mib);
}

/// The inner message of a good call with `_timeout` written as the bare `literal`.
fn timeout_literal(reply_q: &str, literal: &str) -> Case {
    let msg_id = hex_id();
    let mut fields = call_fields(&msg_id, reply_q);
    fields.insert("_timeout".into(), json!("@TIMEOUT@"));
    let inner = Value::Object(fields)
        .to_string()
        .replace(r#""@TIMEOUT@""#, literal);
    Case {
        name: "_timeout NaN",
        content_type: JSON,
        body: envelope(&inner),
        msg_id: Some(msg_id),
        expect: Expect::Survive,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_answers_calls_with_absurd_timeouts_and_keeps_serving() {
    attack_server(
        |q| {
            vec![
                Case::json("_timeout 1e20", q, Expect::Reply, |f| {
                    f.insert("_timeout".into(), json!(1e20));
                }),
                Case::json("_timeout 1e300", q, Expect::Reply, |f| {
                    f.insert("_timeout".into(), json!(1e300));
                }),
                Case::json("_timeout -1", q, Expect::Reply, |f| {
                    f.insert("_timeout".into(), json!(-1));
                }),
                Case::json("_timeout a string", q, Expect::Failure, |f| {
                    f.insert("_timeout".into(), json!("soon"));
                }),
                timeout_literal(q, "NaN"),
            ]
        },
        FIELDS_BOUND_MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_drops_calls_whose_reply_address_is_unusable() {
    attack_server(
        |q| {
            vec![
                Case::json("_reply_q of 300 bytes", q, Expect::Survive, |f| {
                    f.insert(
                        "_reply_q".into(),
                        json!(format!("reply_{}", "r".repeat(294))),
                    );
                }),
                Case::json(
                    "_reply_q with control characters",
                    q,
                    Expect::Survive,
                    |f| {
                        f.insert(
                            "_reply_q".into(),
                            json!("reply_\u{0}\u{1}\n\r\u{7f}\u{1b}[2J"),
                        );
                    },
                ),
                Case::json("_msg_id of 100 KiB", q, Expect::NoReply, |f| {
                    f.insert("_msg_id".into(), json!("m".repeat(100 * 1024)));
                }),
            ]
        },
        FIELDS_BOUND_MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_answers_a_unique_id_of_100_kib_with_a_remote_error() {
    attack_server(
        |q| {
            vec![Case::json(
                "_unique_id of 100 KiB",
                q,
                Expect::Failure,
                |f| {
                    f.insert("_unique_id".into(), json!("u".repeat(100 * 1024)));
                },
            )]
        },
        FIELDS_BOUND_MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_answers_unparsable_versions_with_a_remote_error() {
    attack_server(
        |q| {
            vec![
                Case::json("version 99999999999999999999.1", q, Expect::Failure, |f| {
                    f.insert("version".into(), json!("99999999999999999999.1"));
                }),
                Case::json("version a.b", q, Expect::Failure, |f| {
                    f.insert("version".into(), json!("a.b"));
                }),
            ]
        },
        FIELDS_BOUND_MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_answers_a_namespace_or_method_of_64_kib_with_a_remote_error() {
    attack_server(
        |q| {
            vec![
                Case::json("namespace of 64 KiB", q, Expect::Failure, |f| {
                    f.insert("namespace".into(), json!("n".repeat(64 * 1024)));
                }),
                Case::json("method of 64 KiB", q, Expect::Failure, |f| {
                    f.insert("method".into(), json!("m".repeat(64 * 1024)));
                }),
            ]
        },
        FIELDS_BOUND_MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_answers_a_call_whose_context_has_100000_keys() {
    attack_server(
        |q| {
            vec![Case::json(
                "context of 100 000 keys",
                q,
                Expect::Reply,
                |f| {
                    for i in 0..100_000 {
                        f.insert(format!("_context_k{i}"), json!(i));
                    }
                },
            )]
        },
        FIELDS_BOUND_MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_answers_args_that_are_not_an_object_with_a_remote_error() {
    attack_server(
        |q| {
            vec![
                Case::json("args a list", q, Expect::Failure, |f| {
                    f.insert("args".into(), json!([1, 2]));
                }),
                Case::json("args a string", q, Expect::Failure, |f| {
                    f.insert("args".into(), json!("x"));
                }),
                Case::json("args a number", q, Expect::Failure, |f| {
                    f.insert("args".into(), json!(5));
                }),
            ]
        },
        FIELDS_BOUND_MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_drops_bodies_it_cannot_decode_and_keeps_serving() {
    attack_server(
        |q| {
            let good = envelope_of(&Value::Object(call_fields(&hex_id(), q)));
            let mut bad_utf8 = good.clone();
            let at = bad_utf8.windows(4).position(|w| w == b"echo").unwrap();
            bad_utf8[at] = 0xff;
            bad_utf8[at + 1] = 0xfe;
            let surrogate = String::from_utf8(good.clone())
                .unwrap()
                .replacen("echo", r"\\ud800echo", 1)
                .into_bytes();
            let msgpack = msgpack_request(&call_fields(&hex_id(), q), None);
            let mut v3 = serde_json::from_slice::<Value>(&good).unwrap();
            v3["oslo.version"] = json!("3.0");
            vec![
                Case::raw(
                    "envelope oslo.version 3.0",
                    JSON,
                    v3.to_string().into_bytes(),
                ),
                Case::raw("invalid UTF-8", JSON, bad_utf8),
                Case::raw("a lone surrogate", JSON, surrogate),
                Case::raw(
                    "truncated MessagePack",
                    MSGPACK,
                    msgpack[..msgpack.len() / 2].to_vec(),
                ),
                Case::raw("MessagePack as JSON", JSON, msgpack.clone()),
                Case::raw("JSON as MessagePack", MSGPACK, good.clone()),
                Case::raw("inner message not JSON", JSON, envelope("{\"method\": ")),
                Case::raw(
                    "inner message a number",
                    JSON,
                    br#"{"oslo.version": "2.0", "oslo.message": 5}"#.to_vec(),
                ),
                Case::raw("body a list", JSON, b"[]".to_vec()),
                Case::raw("body null", JSON, b"null".to_vec()),
                Case::raw("empty body", JSON, Vec::new()),
                Case::raw("nesting 100 000 deep", JSON, {
                    let mut deep = "[".repeat(100_000).into_bytes();
                    deep.extend(b"]".repeat(100_000));
                    deep
                }),
                Case::raw("unknown content type", "text/plain", good.clone()),
                Case::raw("junk", JSON, junk(4096, 7)),
            ]
        },
        FIELDS_BOUND_MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_never_serves_msgpack_args_of_4_mib_nils() {
    attack_server(
        |q| {
            let msg_id = hex_id();
            let mut nils = vec![0xdd];
            nils.extend_from_slice(&u32::try_from(4 * MIB).unwrap().to_be_bytes());
            nils.resize(nils.len() + 4 * MIB, 0xc0);
            let body = msgpack_request(&call_fields(&msg_id, q), Some(("args", &nils)));
            vec![Case {
                name: "MessagePack args of 4 MiB nils",
                content_type: MSGPACK,
                body,
                msg_id: Some(msg_id),
                expect: Expect::FailureIfAny,
            }]
        },
        SIZE_BOUND_MIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_server_stays_under_200_mib_after_1000_junk_mib_and_a_64_mib_call() {
    let mut s = serve().await;
    let started = Instant::now();
    let server_queue = format!("{TOPIC}.{SERVER}");
    let mib = junk(MIB, 42);
    let mut sent = 0u32;
    while sent < 1000 {
        // A few publishes in flight, then their confirms.
        let mut confirms = Vec::new();
        for i in sent..sent + 8 {
            let key = if i % 2 == 0 { TOPIC } else { &server_queue };
            let content_type = if i % 3 == 0 { MSGPACK } else { JSON };
            let mut body = mib.clone();
            body[1..5].copy_from_slice(&i.to_le_bytes());
            confirms.push(
                s.raw
                    .channel
                    .basic_publish(
                        CONTROL_EXCHANGE.into(),
                        key.into(),
                        lapin::options::BasicPublishOptions::default(),
                        &body,
                        properties(content_type),
                    )
                    .await
                    .unwrap(),
            );
        }
        sent += 8;
        for confirm in futures::future::join_all(confirms).await {
            assert!(confirm.unwrap().is_ack());
        }
    }
    eprintln!("published 1000 MiB of junk in {:?}", started.elapsed());
    let drained = async |raw: &Raw| {
        until(
            Duration::from_secs(120),
            "the server's queues to drain",
            async || {
                (raw.ready(TOPIC).await == 0 && raw.ready(&server_queue).await == 0).then_some(())
            },
        )
        .await;
    };
    drained(&s.raw).await;
    assert_serves(s.bus.url()).await;
    eprintln!(
        "junk consumed after {:?}; server peak RSS so far {:.1} MiB",
        started.elapsed(),
        s.server.peak_rss_mib()
    );

    // A well-formed call whose body is 64 MiB: over the limit, it must not be decoded.
    let big_id = hex_id();
    let mut fields = call_fields(&big_id, &s.replies.queue);
    fields.insert("args".into(), json!({"x": "x".repeat(64 * MIB)}));
    let big = envelope_of(&Value::Object(fields));
    s.raw.publish(CONTROL_EXCHANGE, TOPIC, JSON, &big).await;
    drop(big);
    drained(&s.raw).await;
    assert_serves(s.bus.url()).await;
    eprintln!("64 MiB call consumed after {:?}", started.elapsed());
    s.server.assert_healthy(SIZE_BOUND_MIB);
    assert!(
        s.replies.get(&big_id).is_none(),
        "the 64 MiB call was decoded and answered"
    );
}

// ---------------------------------------------------------------------------------------------
// Notifications to `tidings listen`.

/// A v2 notification body (inner message as given).
fn notification(event_type: &str, payload: Value) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "message_id": uuid::Uuid::new_v4().to_string(),
        "publisher_id": "hostile.test",
        "event_type": event_type,
        "priority": "INFO",
        "payload": payload,
        "timestamp": "2026-01-01 00:00:00.000001",
        "_unique_id": hex_id(),
    }) else {
        unreachable!()
    };
    map
}

fn edited(event_type: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
    let mut n = notification(event_type, json!({"hostile": true}));
    edit(&mut n);
    envelope_of(&Value::Object(n))
}

/// Hostile notification bodies: (what, content type, body).
fn hostile_notifications() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let good = envelope_of(&Value::Object(notification("hostile.plain", json!({}))));
    let mut bad_utf8 = good.clone();
    let at = bad_utf8.windows(5).position(|w| w == b"plain").unwrap();
    bad_utf8[at] = 0xff;
    let msgpack = {
        let mut out = Vec::new();
        mp_map(&mut out, 2);
        mp_str(&mut out, "oslo.version");
        mp_str(&mut out, "2.0");
        mp_str(&mut out, "oslo.message");
        mp_value(
            &mut out,
            &Value::Object(notification("hostile.msgpack", json!({}))),
        );
        out
    };
    let mut nan = notification("hostile.nan", json!("@NAN@"));
    nan.insert("_context_user".into(), json!("u"));
    let nan = envelope(&Value::Object(nan).to_string().replace(r#""@NAN@""#, "NaN"));
    let mut v3: Value = serde_json::from_slice(&good).unwrap();
    v3["oslo.version"] = json!("3.0");
    let mut out = vec![
        ("junk", JSON, junk(4096, 3)),
        ("invalid UTF-8", JSON, bad_utf8),
        (
            "truncated MessagePack",
            MSGPACK,
            msgpack[..msgpack.len() / 2].to_vec(),
        ),
        ("payload with a bare NaN", JSON, nan),
        ("envelope 3.0", JSON, v3.to_string().into_bytes()),
        (
            "inner message not JSON",
            JSON,
            envelope("{\"event_type\": "),
        ),
        ("body a list", JSON, b"[]".to_vec()),
        ("body a string", JSON, br#""x""#.to_vec()),
        ("empty body", JSON, Vec::new()),
        (
            "priority a number",
            JSON,
            edited("hostile.priority", |n| {
                n.insert("priority".into(), json!(5));
            }),
        ),
        (
            "priority unknown",
            JSON,
            edited("hostile.priority2", |n| {
                n.insert("priority".into(), json!("LOUD"));
            }),
        ),
        (
            "event_type an object",
            JSON,
            edited("hostile.x", |n| {
                n.insert("event_type".into(), json!({"a": 1}));
            }),
        ),
        (
            "publisher_id a list",
            JSON,
            edited("hostile.publisher", |n| {
                n.insert("publisher_id".into(), json!([1]));
            }),
        ),
        (
            "timestamp a number",
            JSON,
            edited("hostile.timestamp", |n| {
                n.insert("timestamp".into(), json!(12));
            }),
        ),
        (
            "message_id of 100 KiB",
            JSON,
            edited("hostile.message_id", |n| {
                n.insert("message_id".into(), json!("i".repeat(100 * 1024)));
            }),
        ),
        (
            "no payload",
            JSON,
            edited("hostile.nopayload", |n| {
                n.remove("payload");
            }),
        ),
        (
            "context of 100 000 keys",
            JSON,
            edited("hostile.context", |n| {
                for i in 0..100_000 {
                    n.insert(format!("_context_k{i}"), json!(i));
                }
            }),
        ),
    ];
    for i in 0..20u32 {
        let mut body = junk(MIB, 100 + u64::from(i));
        body[1..5].copy_from_slice(&i.to_le_bytes());
        out.push((
            "1 MiB of junk",
            if i % 2 == 0 { JSON } else { MSGPACK },
            body,
        ));
    }
    out
}

/// Valid but over the 16 MiB limit: must be rejected, never handled.
fn oversized_notification(event_type: &str, payload: Value) -> Vec<u8> {
    envelope_of(&Value::Object(notification(event_type, payload)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_drops_hostile_notifications_and_prints_the_next_good_one() {
    let bus = Bus::amqp();
    let url = bus.url().to_owned();
    let notify = |event_type: &str, payload: &str| {
        let (code, _, err) = tidings(&[
            "notify",
            "--url",
            &url,
            "--topic",
            "notifications",
            "--priority",
            "info",
            "--event-type",
            event_type,
            "--publisher-id",
            "good.test",
            payload,
        ]);
        assert_eq!(code, Some(0), "tidings notify: {err}");
    };
    let mut listener = Peer::start(
        "listener",
        &["listen", "--url", &url, "--topic", "notifications"],
    );
    // The first good one proves the listener consumes.
    notify("good.before", r#"{"n": 1}"#);
    let first = listener
        .next_line(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("nothing printed; stderr:\n{}", listener.stderr_tail()));
    assert!(first.contains("good.before"), "{first}");

    let raw = Raw::open(&bus).await;
    for (_, content_type, body) in hostile_notifications() {
        raw.publish(CONTROL_EXCHANGE, "notifications.info", content_type, &body)
            .await;
    }
    let oversized = oversized_notification("hostile.oversized", json!("o".repeat(20 * MIB)));
    raw.publish(CONTROL_EXCHANGE, "notifications.error", JSON, &oversized)
        .await;
    drop(oversized);
    notify("good.after", r#"{"n": 2}"#);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    loop {
        listener.assert_running();
        assert!(
            Instant::now() < deadline,
            "good.after never printed; printed {} other lines; stderr:\n{}",
            printed.len(),
            listener.stderr_tail()
        );
        let Some(line) = listener.next_line(Duration::from_secs(1)) else {
            continue;
        };
        let parsed: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {:.300}", line));
        if parsed["event_type"] == "good.after" {
            assert_eq!(parsed["payload"], json!({"n": 2}));
            break;
        }
        printed.push(parsed["event_type"].to_string());
    }
    assert!(
        !printed.iter().any(|e| e.contains("hostile.oversized")),
        "a notification over the size limit was handled"
    );
    // The oversized one went to another queue: it has been delivered once that queue is empty.
    until(
        Duration::from_secs(60),
        "notifications.error to drain",
        async || (raw.ready("notifications.error").await == 0).then_some(()),
    )
    .await;
    notify("good.last", r#"{"n": 3}"#);
    loop {
        let line = listener
            .next_line(Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "good.last never printed; stderr:\n{}",
                    listener.stderr_tail()
                )
            });
        assert!(
            !line.contains("hostile.oversized"),
            "a notification over the size limit was handled"
        );
        if line.contains("good.last") {
            break;
        }
    }
    listener.assert_healthy(SIZE_BOUND_MIB);
}

// ---------------------------------------------------------------------------------------------
// Samples to `tidings meter collector`.

const SAMPLES: &str = "ceilometer";

fn sample(name: &str, volume: Value) -> Value {
    json!({
        "source": "openstack",
        "counter_name": name,
        "counter_type": "gauge",
        "counter_unit": "%",
        "counter_volume": volume,
        "user_id": "u-1",
        "user_name": null,
        "project_id": "p-1",
        "project_name": null,
        "resource_id": "vm-hostile",
        "timestamp": chrono_now(),
        "resource_metadata": {},
        "message_id": uuid::Uuid::new_v4().to_string(),
        "monotonic_time": null,
        "message_signature": "",
    })
}

/// Now, as Ceilometer writes sample timestamps (naive UTC ISO 8601).
fn chrono_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

/// A sample notification on the notifier publisher's path (`metering.sample`).
fn sample_notification(payload: Value) -> Map<String, Value> {
    let mut n = notification("metering", payload);
    n.insert("priority".into(), json!("SAMPLE"));
    n.insert("publisher_id".into(), json!("telemetry.publisher.hostile"));
    n
}

fn hostile_samples() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let good = envelope_of(&Value::Object(sample_notification(json!([sample(
        "hostile.bad.utf8",
        json!(1)
    )]))));
    let mut bad_utf8 = good.clone();
    let at = bad_utf8.windows(4).position(|w| w == b"utf8").unwrap();
    bad_utf8[at] = 0xff;
    let msgpack = {
        let mut out = Vec::new();
        mp_map(&mut out, 2);
        mp_str(&mut out, "oslo.version");
        mp_str(&mut out, "2.0");
        mp_str(&mut out, "oslo.message");
        mp_value(
            &mut out,
            &Value::Object(sample_notification(json!([sample(
                "hostile.bad.mp",
                json!(1)
            )]))),
        );
        out
    };
    let nan = envelope(
        &Value::Object(sample_notification(json!([sample(
            "hostile.bad.nan",
            json!("@NAN@")
        )])))
        .to_string()
        .replace(r#""@NAN@""#, "NaN"),
    );
    let of = |payload: Value| envelope_of(&Value::Object(sample_notification(payload)));
    let mut wrong = sample("hostile.bad.types", json!("lots"));
    wrong["timestamp"] = json!(5);
    wrong["resource_metadata"] = json!("x");
    let mut no_id = sample("hostile.bad.noid", json!(1));
    no_id["message_id"] = json!(null);
    let mut out = vec![
        ("junk", JSON, junk(4096, 11)),
        ("invalid UTF-8", JSON, bad_utf8),
        (
            "truncated MessagePack",
            MSGPACK,
            msgpack[..msgpack.len() / 2].to_vec(),
        ),
        ("a bare NaN volume", JSON, nan),
        ("payload a string", JSON, of(json!("samples"))),
        ("payload samples a number", JSON, of(json!({"samples": 5}))),
        ("payload a list of numbers", JSON, of(json!([1, 2, 3]))),
        ("sample fields of the wrong types", JSON, of(json!([wrong]))),
        ("sample without a message_id", JSON, of(json!([no_id]))),
        (
            "100 000 junk samples",
            JSON,
            of(Value::Array(vec![json!({"counter_name": 1}); 100_000])),
        ),
        ("body a list", JSON, b"[]".to_vec()),
        ("empty body", JSON, Vec::new()),
    ];
    for i in 0..20u32 {
        let mut body = junk(MIB, 200 + u64::from(i));
        body[1..5].copy_from_slice(&i.to_le_bytes());
        out.push((
            "1 MiB of junk",
            if i % 2 == 0 { JSON } else { MSGPACK },
            body,
        ));
    }
    out
}

fn list_meters(url: &str) -> Option<Vec<Value>> {
    let (code, out, _) = tidings(&[
        "call",
        "--url",
        url,
        "--exchange",
        SAMPLES,
        "--topic",
        "metering",
        "--timeout",
        "5",
        "list_meters",
        "{}",
    ]);
    if code != Some(0) {
        return None;
    }
    serde_json::from_str::<Value>(&out)
        .ok()?
        .as_array()
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_drops_hostile_samples_and_stores_the_next_good_one() {
    let bus = Bus::amqp();
    let url = bus.url().to_owned();
    let dir = TempDir::new();
    let store = format!("sqlite://{}", dir.0.join("metering.sqlite").display());
    let mut collector = Peer::start(
        "collector",
        &["meter", "collector", "--url", &url, "--store", &store],
    );
    {
        let url = url.clone();
        let collector = &mut collector;
        until(Duration::from_secs(60), "the collector's RPC", async || {
            collector.assert_running();
            let url = url.clone();
            tokio::task::spawn_blocking(move || list_meters(&url))
                .await
                .unwrap()
        })
        .await;
    }

    let raw = Raw::open(&bus).await;
    for (i, (_, content_type, body)) in hostile_samples().into_iter().enumerate() {
        let key = if i % 2 == 0 {
            "metering.sample"
        } else {
            "notifications.sample"
        };
        raw.publish(SAMPLES, key, content_type, &body).await;
    }
    let oversized = envelope_of(&Value::Object(sample_notification(json!([sample(
        &format!("hostile.bad.{}", "o".repeat(20 * MIB)),
        json!(1)
    )]))));
    raw.publish(SAMPLES, "metering.sample", JSON, &oversized)
        .await;
    drop(oversized);
    let good = envelope_of(&Value::Object(sample_notification(json!([sample(
        "hostile.survivor",
        json!(42)
    )]))));
    raw.publish(SAMPLES, "metering.sample", JSON, &good).await;
    // The polling agent's path too.
    let polling = {
        let mut n =
            sample_notification(json!({"samples": [sample("hostile.survivor.polling", json!(7))]}));
        n.insert("event_type".into(), json!("telemetry.polling"));
        n.insert("publisher_id".into(), json!("ceilometer.polling"));
        envelope_of(&Value::Object(n))
    };
    raw.publish(SAMPLES, "notifications.sample", JSON, &polling)
        .await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let meters = loop {
        collector.assert_running();
        let names = |meters: &[Value]| -> Vec<String> {
            meters
                .iter()
                .filter_map(|m| m["name"].as_str())
                .map(|n| n.chars().take(40).collect())
                .collect()
        };
        let meters = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || list_meters(&url))
                .await
                .unwrap()
                .unwrap_or_default()
        };
        let seen = names(&meters);
        if seen.iter().any(|n| n == "hostile.survivor")
            && seen.iter().any(|n| n == "hostile.survivor.polling")
        {
            break meters;
        }
        assert!(
            Instant::now() < deadline,
            "the good samples were not stored within 60 s (meters: {seen:?}); collector stderr:\n{}",
            collector.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let stored_bad: Vec<String> = meters
        .iter()
        .filter_map(|m| m["name"].as_str())
        .filter(|n| n.starts_with("hostile.bad"))
        .map(|n| n.chars().take(40).collect())
        .collect();
    assert!(
        stored_bad.is_empty(),
        "bad samples were stored: {stored_bad:?}"
    );
    let (code, out, err) = tidings(&[
        "call",
        "--url",
        &url,
        "--exchange",
        SAMPLES,
        "--topic",
        "metering",
        "--timeout",
        "10",
        "get_statistics",
        r#"{"meter": "hostile.survivor"}"#,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["count"], 1, "{stats}");
    assert_eq!(stats[0]["max"], 42.0, "{stats}");
    collector.assert_healthy(SIZE_BOUND_MIB);
}

/// A directory removed on drop, even when the test fails.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tidings-hostile-{}", hex_id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
