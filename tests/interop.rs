//! Live interop with the real oslo.messaging (18.3.1 from PyPI) over RabbitMQ: RPC and
//! notifications, both ways.
//!
//! The Python peers are the scripts in `tests/interop/`, run with the interpreter named by
//! `TIDINGS_INTEROP_PYTHON` (`scripts/test` creates `.venv/interop` and sets it), else
//! `.venv/interop/bin/python` in the workspace. Without one that imports oslo.messaging 18.3.1
//! every test here fails: these tests are the proof of wire compatibility and never skip.
//!
//! Each test has its own vhost ([`Bus::amqp`]). A Python process prints one JSON object per
//! line; its guard ([`Python`]) kills it when dropped, so a failing test leaves nothing running.
//! Notifications have their own scripts (`notify_send.py`, `notify_listen.py`) and modules.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tidings::codec::NotificationFormat;
use tidings::notify::{
    IncomingNotification, NotificationEndpoint, NotificationListener, Notifier, Outcome, Priority,
};
use tidings::rpc::{Endpoint, RpcClient, RpcServer};
use tidings::trace::{TraceParent, TRACEPARENT_KEY};
use tidings::{Context, RemoteError, Target, Transport, Version};
use tidings_suites::python::{self, python, Outcomes, Python};
use tidings_suites::{eventually, take_trace_parent, test_endpoint, Bus, Probe};

const TOPIC: &str = "interop";
const V13: Version = Version::new(1, 3);

// ---------------------------------------------------------------------------------------------
// Python processes

/// An oslo.messaging RPC server (`tests/interop/rpc_server.py`) named `name` on [`TOPIC`],
/// ready: its queues exist.
async fn python_server(bus: &Bus, name: &str) -> Python {
    python::rpc_server(bus, TOPIC, name, &[]).await
}

/// Starts several Python servers at once (each costs about a second of start-up).
async fn python_servers<const N: usize>(bus: &Bus, names: [&str; N]) -> Vec<Python> {
    futures::future::join_all(names.map(|name| python_server(bus, name))).await
}

/// Runs `ops` (see `tests/interop/rpc_client.py`) in order with an oslo.messaging RPC client
/// on [`TOPIC`].
async fn python_client(bus: &Bus, ops: Value) -> Outcomes {
    python::rpc_client(bus, TOPIC, ops).await
}

// ---------------------------------------------------------------------------------------------
// tidings peers

/// What a service's own `ValueError('bad value', 42)` looks like from Python.
fn python_value_error() -> RemoteError {
    let mut error = RemoteError::new("ValueError", "builtins", "('bad value', 42)");
    error.args = vec![json!("bad value"), json!(42)];
    error
}

/// Methods the shared test endpoint lacks: a builtin Python exception.
fn interop_endpoint() -> Endpoint {
    Endpoint::new().version(V13).method(
        "value_error",
        |_ctx: Context, _: tidings::rpc::NoArgs| async move { Err::<(), _>(python_value_error()) },
    )
}

/// A tidings server `name` on [`TOPIC`] serving the shared test endpoint (version 1.3: echo,
/// context, sleep, note, raise, whoami, panic) and [`interop_endpoint`].
async fn tidings_server(transport: &Transport, name: &str, probe: Arc<Probe>) -> RpcServer {
    RpcServer::builder(transport, Target::topic(TOPIC).with_server(name))
        .endpoint(test_endpoint(name, probe))
        .endpoint(interop_endpoint())
        .start()
        .await
        .expect("tidings server starts")
}

fn tidings_client(transport: &Transport) -> RpcClient {
    RpcClient::new(transport, Target::topic(TOPIC))
        .version(V13)
        .timeout(Duration::from_secs(15))
}

/// One value of every JSON type, by name.
fn every_json_type() -> Vec<(&'static str, Value)> {
    vec![
        ("int", json!(7)),
        ("negative_int", json!(-42)),
        ("int_beyond_f64_precision", json!(9_007_199_254_740_993_i64)),
        ("float", json!(2.5)),
        ("float_needing_17_digits", json!(0.1 + 0.2)),
        ("int64_extremes", json!([i64::MIN, u64::MAX])),
        ("small_float", json!(1e-7)),
        ("true", json!(true)),
        ("false", json!(false)),
        ("null", Value::Null),
        ("unicode_string", json!("żółw ☃ 🐢 \"quoted\" \\ \n tab\t")),
        ("empty_string", json!("")),
        ("empty_list", json!([])),
        ("empty_dict", json!({})),
        (
            "nested",
            json!({"list": [1, 2.5, null, true, "s", [[]], {"deep": {"deeper": [false]}}],
                   "dict": {"ключ": "значение", "n": 0}}),
        ),
    ]
}

/// A context with the keys an OpenStack service sends, and a few of other types.
fn openstack_context() -> Context {
    Context::new()
        .with("user", "u-1")
        .with("project_id", "p-1")
        .with("request_id", "req-5e1c0f9a")
        .with("global_request_id", Value::Null)
        .with("roles", json!(["admin", "member"]))
        .with("is_admin", true)
        .with("auth_token", "gAAAA-not-a-real-token")
        .with("quota", json!({"cores": 4, "ratio": 1.5}))
}

// ---------------------------------------------------------------------------------------------
// A Python RPC client calling tidings servers

mod python_client_to_tidings_server {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn call_returns_every_json_type() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let server = tidings_server(&transport, "rs1", Arc::default()).await;
        let values = every_json_type();
        let ops: Vec<Value> = values
            .iter()
            .map(|(id, x)| json!({"id": id, "op": "call", "method": "echo", "args": {"x": x}}))
            .collect();
        let outcomes = python_client(&bus, Value::Array(ops)).await;
        for (id, sent) in &values {
            assert_eq!(outcomes.result(id), sent, "{id}");
        }
        server.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cast_is_handled_once() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let probe = Arc::new(Probe::default());
        let server = tidings_server(&transport, "rs1", probe.clone()).await;
        let ops: Vec<Value> = (0..3)
            .map(|i| json!({"id": i.to_string(), "op": "cast", "method": "note", "args": {"text": "hi"}}))
            .collect();
        let outcomes = python_client(&bus, Value::Array(ops)).await;
        for i in 0..3 {
            assert_eq!(outcomes.result(&i.to_string()), &Value::Null);
        }
        assert!(
            eventually(Duration::from_secs(10), || probe
                .casts
                .load(Ordering::SeqCst)
                == 3)
            .await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            probe.casts.load(Ordering::SeqCst),
            3,
            "each cast handled once"
        );
        server.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fanout_cast_reaches_every_tidings_server() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let probes = [Arc::new(Probe::default()), Arc::new(Probe::default())];
        let s1 = tidings_server(&transport, "rs1", probes[0].clone()).await;
        let s2 = tidings_server(&transport, "rs2", probes[1].clone()).await;
        let ops = json!([{"id": "fanout", "op": "cast", "fanout": true, "method": "note",
                          "args": {"text": "to all"}}]);
        python_client(&bus, ops).await.result("fanout");
        for probe in &probes {
            assert!(
                eventually(Duration::from_secs(10), || probe
                    .casts
                    .load(Ordering::SeqCst)
                    == 1)
                .await
            );
        }
        s1.stop(Duration::from_secs(5)).await;
        s2.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_targeted_call_reaches_that_server() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let s1 = tidings_server(&transport, "rs1", Arc::default()).await;
        let s2 = tidings_server(&transport, "rs2", Arc::default()).await;
        let ops: Vec<Value> = ["rs2", "rs1", "rs2", "rs1", "rs2", "rs2"]
            .iter()
            .enumerate()
            .map(|(i, server)| json!({"id": format!("{i}-{server}"), "op": "call", "method": "whoami", "server": server}))
            .collect();
        let outcomes = python_client(&bus, Value::Array(ops)).await;
        assert_eq!(outcomes.0.len(), 6);
        for (id, outcome) in &outcomes.0 {
            let server = id.split_once('-').unwrap().1;
            assert_eq!(outcome["result"], server, "{outcome}");
        }
        s1.stop(Duration::from_secs(5)).await;
        s2.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote_error_arrives_with_class_and_message() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let server = tidings_server(&transport, "rs1", Arc::default()).await;
        let outcomes = python_client(
            &bus,
            json!([
                {"id": "service_error", "op": "call", "method": "raise",
                 "args": {"class": "QuotaExceeded", "message": "too many ☃"}},
                {"id": "builtin_error", "op": "call", "method": "value_error"},
            ]),
        )
        .await;
        // A module the caller does not allow (`tests.module`): oslo_messaging.RemoteError.
        let error = outcomes.error("service_error");
        assert_eq!(error["class"], "RemoteError", "{error:#}");
        assert_eq!(error["exc_type"], "QuotaExceeded", "{error:#}");
        assert_eq!(error["value"], "too many ☃", "{error:#}");
        // A builtin is re-raised as itself, its args rebuilt (the first one gains the traceback).
        let error = outcomes.error("builtin_error");
        assert_eq!(
            (&error["class"], &error["module"]),
            (&json!("ValueError"), &json!("builtins")),
            "{error:#}"
        );
        assert!(
            error["args"][0]
                .as_str()
                .unwrap()
                .starts_with("('bad value', 42)"),
            "{error:#}"
        );
        assert_eq!(error["args"][1], 42, "{error:#}");
        server.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dispatcher_errors_arrive_as_no_such_method_and_unsupported_version() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let server = tidings_server(&transport, "rs1", Arc::default()).await;
        let dispatcher = ["oslo_messaging.rpc.dispatcher"];
        let outcomes = python_client(
            &bus,
            json!([
                {"id": "no_such_method", "op": "call", "method": "nope"},
                {"id": "too_new", "op": "call", "method": "echo", "version": "1.4", "args": {"x": 1}},
                {"id": "other_major", "op": "call", "method": "echo", "version": "2.0", "args": {"x": 1}},
                {"id": "other_namespace", "op": "call", "method": "echo", "namespace": "other",
                 "args": {"x": 1}},
                {"id": "private", "op": "call", "method": "_secret"},
                // A caller allowing the dispatcher's module rebuilds the real classes from
                // the failure's args and kwargs.
                {"id": "no_such_method_rebuilt", "op": "call", "method": "nope",
                 "allowed_remote_exmods": dispatcher},
                {"id": "too_new_rebuilt", "op": "call", "method": "echo", "version": "1.4",
                 "args": {"x": 1}, "allowed_remote_exmods": dispatcher},
            ]),
        )
        .await;
        let expect = [
            (
                "no_such_method",
                "NoSuchMethod",
                "Endpoint does not support RPC method nope",
            ),
            (
                "too_new",
                "UnsupportedVersion",
                "Endpoint does not support RPC version 1.4. Attempted method: echo",
            ),
            (
                "other_major",
                "UnsupportedVersion",
                "Endpoint does not support RPC version 2.0. Attempted method: echo",
            ),
            (
                "other_namespace",
                "UnsupportedVersion",
                "Endpoint does not support RPC version 1.0. Attempted method: echo",
            ),
            (
                "private",
                "NoSuchMethod",
                "Endpoint does not support RPC method _secret",
            ),
        ];
        for (id, class, message) in expect {
            let error = outcomes.error(id);
            assert_eq!(error["class"], "RemoteError", "{id}: {error:#}");
            assert_eq!(
                (error["exc_type"].as_str(), error["value"].as_str()),
                (Some(class), Some(message)),
                "{id}: {error:#}"
            );
        }
        for (id, class, message) in [
            (
                "no_such_method_rebuilt",
                "NoSuchMethod_Remote",
                "Endpoint does not support RPC method nope",
            ),
            (
                "too_new_rebuilt",
                "UnsupportedVersion_Remote",
                "Endpoint does not support RPC version 1.4. Attempted method: echo",
            ),
        ] {
            let error = outcomes.error(id);
            assert_eq!(error["class"], class, "{id}: {error:#}");
            assert_eq!(
                error["module"], "oslo_messaging.rpc.dispatcher_Remote",
                "{id}: {error:#}"
            );
            assert!(
                error["message"].as_str().unwrap().starts_with(message),
                "{id}: {error:#}"
            );
        }
        server.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn context_reaches_the_tidings_handler() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let server = tidings_server(&transport, "rs1", Arc::default()).await;
        let ctx = openstack_context();
        let outcomes = python_client(
            &bus,
            json!([
                {"id": "context", "op": "call", "method": "context", "context": ctx},
                {"id": "monitored", "op": "call", "method": "context", "context": ctx,
                 "call_monitor_timeout": 4},
            ]),
        )
        .await;
        // Exactly the caller's keys (`_timeout`, `_msg_id`, `_reply_q` are not context), and a
        // `traceparent` of the server's span: a Python client sends none, so a new trace.
        let mut traces = Vec::new();
        for id in ["context", "monitored"] {
            let mut seen = Context::from(
                outcomes
                    .result(id)
                    .as_object()
                    .cloned()
                    .unwrap_or_else(|| panic!("{id}: not a context")),
            );
            traces.push(take_trace_parent(&mut seen).trace_id());
            assert_eq!(seen, ctx, "{id}");
        }
        assert_ne!(traces[0], traces[1], "each call starts its own trace");
        server.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn call_monitor_keepalives_carry_a_call_past_the_monitor_timeout() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let server = tidings_server(&transport, "rs1", Arc::default()).await;
        let outcomes = python_client(
            &bus,
            json!([
                {"id": "monitored", "op": "call", "method": "sleep", "args": {"secs": 3},
                 "call_monitor_timeout": 2, "timeout": 10},
                // Without a call monitor no keepalive may come: oslo's client crashes on one.
                {"id": "unmonitored", "op": "call", "method": "sleep", "args": {"secs": 2.5},
                 "timeout": 10},
            ]),
        )
        .await;
        assert_eq!(outcomes.result("monitored"), "slept");
        assert!(outcomes.get("monitored")["elapsed"].as_f64().unwrap() >= 3.0);
        assert_eq!(outcomes.result("unmonitored"), "slept");
        server.stop(Duration::from_secs(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A tidings RPC client calling Python servers

mod tidings_client_to_python_server {
    use super::*;

    /// Polls the Python server `server`'s `seen` (the `note` casts it got) until it is `want`.
    async fn wait_for_notes(client: &RpcClient, server: &str, want: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen: Vec<String> = client
                .prepare()
                .server(server)
                .call(&Context::new(), "seen", json!({}))
                .await
                .unwrap();
            if seen == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{server} saw {seen:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Flavor {
        name: String,
        vcpus: u32,
        ratio: f64,
        extra: Option<bool>,
        tags: Vec<String>,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn call_returns_every_json_type() {
        let bus = Bus::amqp();
        let _python = python_server(&bus, "py1").await;
        let transport = bus.transport().await;
        let client = tidings_client(&transport);
        let ctx = Context::new();
        for (id, sent) in every_json_type() {
            let got: Value = client
                .call(&ctx, "echo", json!({ "x": sent }))
                .await
                .unwrap();
            assert_eq!(got, sent, "{id}");
        }
        // Typed results.
        let int: i64 = client
            .call(&ctx, "echo", json!({"x": -9_007_199_254_740_993_i64}))
            .await
            .unwrap();
        assert_eq!(int, -9_007_199_254_740_993);
        let text: String = client
            .call(&ctx, "echo", json!({"x": "żółw"}))
            .await
            .unwrap();
        assert_eq!(text, "żółw");
        let nothing: Option<u8> = client.call(&ctx, "echo", json!({"x": null})).await.unwrap();
        assert_eq!(nothing, None);
        let flavor: Flavor = client
            .call(
                &ctx,
                "echo",
                json!({"x": {"name": "m1.tiny", "vcpus": 1, "ratio": 0.5, "extra": null, "tags": ["a"]}}),
            )
            .await
            .unwrap();
        assert_eq!(
            flavor,
            Flavor {
                name: "m1.tiny".into(),
                vcpus: 1,
                ratio: 0.5,
                extra: None,
                tags: vec!["a".into()]
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cast_is_handled_once() {
        let bus = Bus::amqp();
        let _python = python_server(&bus, "py1").await;
        let transport = bus.transport().await;
        let client = tidings_client(&transport);
        client
            .cast(&Context::new(), "note", json!({"text": "hello"}))
            .await
            .unwrap();
        wait_for_notes(&client, "py1", &["hello"]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        wait_for_notes(&client, "py1", &["hello"]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fanout_cast_reaches_every_python_server() {
        let bus = Bus::amqp();
        let _python = python_servers(&bus, ["py1", "py2"]).await;
        let transport = bus.transport().await;
        let client = tidings_client(&transport);
        client
            .prepare()
            .fanout(true)
            .cast(&Context::new(), "note", json!({"text": "to all"}))
            .await
            .unwrap();
        wait_for_notes(&client, "py1", &["to all"]).await;
        wait_for_notes(&client, "py2", &["to all"]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_targeted_call_reaches_that_server() {
        let bus = Bus::amqp();
        let _python = python_servers(&bus, ["py1", "py2"]).await;
        let transport = bus.transport().await;
        let client = tidings_client(&transport);
        for server in ["py2", "py1", "py2", "py1", "py2", "py2"] {
            let who: String = client
                .prepare()
                .server(server)
                .call(&Context::new(), "whoami", json!({}))
                .await
                .unwrap();
            assert_eq!(who, server);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_exceptions_arrive_as_remote_errors_with_class_and_module() {
        let bus = Bus::amqp();
        let _python = python_server(&bus, "py1").await;
        let transport = bus.transport().await;
        let client = tidings_client(&transport);
        let call = |kind: &'static str, message: &'static str| {
            let client = client.clone();
            async move {
                client
                    .call::<Value>(
                        &Context::new(),
                        "fail",
                        json!({"kind": kind, "message": message}),
                    )
                    .await
                    .unwrap_err()
            }
        };

        // The service's own exception (a ValueError subclass in `__main__`, with kwargs).
        let error = call("custom", "quota gone ☃").await;
        let remote = error.remote().expect("a remote error");
        assert_eq!(
            (remote.class.as_str(), remote.module.as_str()),
            ("InteropError", "__main__")
        );
        assert_eq!(remote.message, "quota gone ☃");
        assert_eq!(remote.args, vec![json!("quota gone ☃")]);
        assert_eq!(
            remote.kwargs,
            Map::from_iter([("code".to_owned(), json!(409))])
        );
        assert!(
            remote
                .tb
                .last()
                .is_some_and(|line| line.contains("InteropError: quota gone")),
            "{:?}",
            remote.tb
        );

        // A builtin, as tidings' own `python_value_error` describes it.
        let error = call("builtin", "bad value").await;
        let remote = error.remote().expect("a remote error");
        assert_eq!(
            remote.clone().with_traceback(Vec::new()),
            python_value_error()
        );
        assert!(!remote.tb.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dispatcher_errors_arrive_as_no_such_method_and_unsupported_version() {
        let bus = Bus::amqp();
        let _python = python_server(&bus, "py1").await;
        let transport = bus.transport().await;
        let client = tidings_client(&transport);
        let ctx = Context::new();
        let remote =
            |error: tidings::rpc::RpcError| error.remote().cloned().expect("a remote error");

        let got = remote(
            client
                .call::<Value>(&ctx, "nope", json!({}))
                .await
                .unwrap_err(),
        );
        let want = RemoteError::no_such_method("nope");
        assert!(got.is_no_such_method(), "{got}");
        assert_eq!((&got.message, &got.args), (&want.message, &want.args));

        let got = remote(
            client
                .call::<Value>(&ctx, "_private", json!({}))
                .await
                .unwrap_err(),
        );
        assert!(got.is_no_such_method(), "{got}");

        for (client, version) in [
            (client.prepare().version(Version::new(1, 4)), "1.4"),
            (client.prepare().version(Version::new(2, 0)), "2.0"),
            (client.prepare().namespace("other"), "1.3"),
        ] {
            let got = remote(
                client
                    .call::<Value>(&ctx, "echo", json!({"x": 1}))
                    .await
                    .unwrap_err(),
            );
            let want = RemoteError::unsupported_version(version, "echo");
            assert!(got.is_unsupported_version(), "{got}");
            assert_eq!((&got.message, &got.args), (&want.message, &want.args));
        }

        // oslo 18.3.1 keeps sending keepalives after a dispatcher error when the caller set a
        // call monitor (its watchdog is never told the dispatch ended): the stray keepalives
        // must not disturb the next call on the same reply queue.
        let monitored = client
            .prepare()
            .call_monitor_timeout(Duration::from_secs(2));
        let got = remote(
            monitored
                .call::<Value>(&ctx, "nope", json!({}))
                .await
                .unwrap_err(),
        );
        assert!(got.is_no_such_method(), "{got}");
        let slept: String = client
            .call(&ctx, "sleep", json!({"secs": 2.5}))
            .await
            .unwrap();
        assert_eq!(slept, "slept");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn context_reaches_the_python_endpoint() {
        let bus = Bus::amqp();
        let _python = python_server(&bus, "py1").await;
        let transport = bus.transport().await;
        let client = tidings_client(&transport);
        let parent = TraceParent::new_root();
        let ctx = openstack_context().with(TRACEPARENT_KEY, parent.to_string());
        // The endpoint gets the caller's keys plus `client_timeout`, from the call's `_timeout`;
        // its `traceparent` is the call's span: the caller's trace, untouched by Python.
        let mut want = ctx.clone();
        want.remove(TRACEPARENT_KEY);
        want.insert("client_timeout", Value::Null);
        let mut seen: Context = client.call(&ctx, "context", json!({})).await.unwrap();
        let call = take_trace_parent(&mut seen);
        assert_eq!(seen, want);
        assert_eq!(call.trace_id(), parent.trace_id());
        assert_ne!(call.span_id(), parent.span_id());
        let mut seen: Context = client
            .prepare()
            .call_monitor_timeout(Duration::from_secs(4))
            .call(&ctx, "context", json!({}))
            .await
            .unwrap();
        let monitored = take_trace_parent(&mut seen);
        want.insert("client_timeout", json!(4));
        assert_eq!(seen, want);
        assert_eq!(monitored.trace_id(), parent.trace_id());
        assert_ne!(monitored.span_id(), call.span_id(), "one span per call");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn call_monitor_keepalives_carry_a_call_past_the_monitor_timeout() {
        let bus = Bus::amqp();
        let _python = python_server(&bus, "py1").await;
        let transport = bus.transport().await;
        let started = tokio::time::Instant::now();
        let slept: String = tidings_client(&transport)
            .timeout(Duration::from_secs(10))
            .call_monitor_timeout(Duration::from_secs(2))
            .call(&Context::new(), "sleep", json!({"secs": 3}))
            .await
            .unwrap();
        assert_eq!(slept, "slept");
        assert!(started.elapsed() >= Duration::from_secs(3));
    }
}

// ---------------------------------------------------------------------------------------------
// Python and tidings together

mod mixed {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_topic_served_by_python_and_tidings_answers_both_clients() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        // Python declares the exchange and queues first; tidings' declarations must match
        // its flags or the broker refuses them (PRECONDITION_FAILED). The other tests cover
        // the other order.
        let _python = python_server(&bus, "py1").await;
        let rust_server = tidings_server(&transport, "rs1", Arc::default()).await;

        let python_calls: Vec<Value> = (0..12)
            .map(|i| json!({"id": i.to_string(), "op": "call", "method": "whoami"}))
            .collect();
        let tidings_calls = async {
            let client = tidings_client(&transport);
            let mut answers = Vec::new();
            for _ in 0..12 {
                let who: String = client
                    .call(&Context::new(), "whoami", json!({}))
                    .await
                    .unwrap();
                answers.push(who);
            }
            answers
        };
        let (python_outcomes, tidings_answers) = tokio::join!(
            python_client(&bus, Value::Array(python_calls)),
            tidings_calls
        );

        let mut answered_by = BTreeSet::new();
        for i in 0..12 {
            answered_by.insert(
                python_outcomes
                    .result(&i.to_string())
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        answered_by.extend(tidings_answers);
        assert_eq!(
            answered_by,
            BTreeSet::from(["py1".to_owned(), "rs1".to_owned()]),
            "every call answered, by both servers"
        );
        rust_server.stop(Duration::from_secs(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications: shared pieces

/// oslo's default notification topic.
const NOTIFICATIONS: &str = "notifications";
/// The metering service's exchange, and the topic its samples use in these tests.
const CEILOMETER: &str = "ceilometer";
const METERING: &str = "metering";

type Seen = Arc<Mutex<Vec<IncomingNotification>>>;

/// A tidings endpoint recording every notification of `priorities`.
fn recorder(priorities: &[Priority]) -> (NotificationEndpoint, Seen) {
    let seen: Seen = Arc::default();
    let mut endpoint = NotificationEndpoint::new();
    for priority in priorities {
        let seen = seen.clone();
        endpoint = endpoint.on(*priority, move |n: IncomingNotification| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(n);
                Ok::<_, String>(Outcome::Handled)
            }
        });
    }
    (endpoint, seen)
}

fn seen(seen: &Seen) -> Vec<IncomingNotification> {
    seen.lock().unwrap().clone()
}

/// oslo's `message_id`: a uuid4 with dashes.
fn is_oslo_message_id(id: &str) -> bool {
    id.len() == 36
        && uuid::Uuid::parse_str(id).is_ok_and(|uuid| uuid.get_version_num() == 4)
        && id == id.to_ascii_lowercase()
}

/// oslo's `timestamp`: `str(utcnow())`, `YYYY-MM-DD HH:MM:SS` and `.ffffff` unless zero.
fn is_oslo_timestamp(at: &str) -> bool {
    let shape = |pattern: &str| {
        at.len() == pattern.len()
            && at.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
                b'd' => c.is_ascii_digit(),
                _ => c == p,
            })
    };
    shape("dddd-dd-dd dd:dd:dd.dddddd") || shape("dddd-dd-dd dd:dd:dd")
}

/// The metadata oslo hands an endpoint, checked for shape; returns the message id.
fn check_metadata(metadata: &Value) -> String {
    let id = metadata["message_id"].as_str().unwrap_or_default();
    let at = metadata["timestamp"].as_str().unwrap_or_default();
    assert!(is_oslo_message_id(id), "{metadata}");
    assert!(is_oslo_timestamp(at), "{metadata}");
    assert_eq!(metadata.as_object().map(Map::len), Some(2), "{metadata}");
    id.to_owned()
}

/// What a Python service builds its notification context from
/// (`oslo_context.context.RequestContext` keyword arguments).
fn python_request_context() -> Value {
    json!({"user_id": "u-1", "project_id": "p-1", "request_id": "req-interop-1",
           "auth_token": "gAAAA-not-a-real-token", "roles": ["admin", "member"],
           "is_admin": true, "domain_id": "домен-☃", "resource_uuid": "r-1",
           "read_only": true})
}

/// Sends `ops` (see `tests/interop/notify_send.py`) with an oslo.messaging Notifier; returns
/// the context oslo put on the wire for each, by op id.
async fn python_notifier(bus: &Bus, ops: Vec<Value>) -> HashMap<String, Value> {
    let count = ops.len();
    let lines = Python::spawn(
        "notify_send.py",
        &[bus.url(), &Value::Array(ops).to_string()],
    )
    .finish()
    .await;
    let sent: HashMap<String, Value> = lines
        .into_iter()
        .map(|line| {
            let id = line["id"].as_str().unwrap_or_default().to_owned();
            (id, line["sent_context"].clone())
        })
        .collect();
    assert_eq!(sent.len(), count, "one line per notification: {sent:#?}");
    sent
}

/// An oslo.messaging notification listener (`tests/interop/notify_listen.py`) configured by
/// `config`, ready: its queues exist.
async fn python_listener(bus: &Bus, config: Value) -> Python {
    let mut listener = Python::spawn("notify_listen.py", &[bus.url(), &config.to_string()]);
    match listener.next_line().await {
        Some(line) if line["event"] == "ready" => listener,
        Some(line) => listener.fail(&format!("expected the ready line, got {line}")),
        None => {
            listener.drain_stderr().await;
            listener.fail("exited before it was ready")
        }
    }
}

/// The next `count` lines of a Python listener.
async fn listener_lines(listener: &mut Python, count: usize) -> Vec<Value> {
    let mut lines = Vec::with_capacity(count);
    while lines.len() < count {
        match listener.next_line().await {
            Some(line) => lines.push(line),
            None => {
                listener.drain_stderr().await;
                listener.fail(&format!("exited after {} of {count} lines", lines.len()))
            }
        }
    }
    lines
}

/// Stops a Python listener (closing its stdin); returns the lines it printed meanwhile.
async fn stop_listener(mut listener: Python) -> Vec<Value> {
    listener.close_stdin();
    listener.finish().await
}

// ---------------------------------------------------------------------------------------------
// An oslo.messaging Notifier publishing to tidings listeners

mod python_notifier_to_tidings_listener {
    use super::*;

    /// One Python notification: `id` names it, `driver` is `messagingv2` or `messaging`.
    fn op(driver: &str, id: &str, priority: &str, event_type: &str, payload: Value) -> Value {
        json!({"id": format!("{driver}/{id}"), "driver": driver, "priority": priority,
               "publisher_id": format!("py.{driver}"), "event_type": event_type,
               "payload": payload, "context": {"request": python_request_context()}})
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_field_arrives_from_both_drivers_on_both_exchanges() {
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        let (info_sample, seen_info_sample) = recorder(&[Priority::Info, Priority::Sample]);
        let (warn_error, seen_warn_error) = recorder(&[Priority::Warn, Priority::Error]);
        let (error_only, seen_error) = recorder(&[Priority::Error]);
        let targets = vec![
            Target::topic(NOTIFICATIONS),
            Target::topic(METERING).with_exchange(CEILOMETER),
        ];
        let listener = NotificationListener::builder(&transport, targets)
            .endpoint(info_sample)
            .endpoint(warn_error)
            .endpoint(error_only)
            .start()
            .await
            .unwrap();

        let drivers = ["messagingv2", "messaging"];
        let mut ops = Vec::new();
        for driver in drivers {
            for (name, value) in every_json_type() {
                ops.push(op(driver, name, "info", &format!("payload.{name}"), value));
            }
            // audit, debug and critical: no endpoint handles them, so nothing consumes them.
            for priority in [
                "warn", "warning", "error", "sample", "audit", "debug", "critical",
            ] {
                let payload = json!({ "priority": priority });
                let event_type = format!("priority.{priority}");
                ops.push(op(driver, priority, priority, &event_type, payload));
            }
            // oslo replaces a plain dict context by {} (and would replace None the same way).
            let mut dict = op(driver, "dict_context", "info", "context.dict", json!({}));
            dict["context"] = json!({"dict": {"user": "u-1", "request_id": "req-dict"}});
            ops.push(dict);
            let mut none = op(driver, "no_context", "info", "context.none", json!(null));
            none["context"] = Value::Null;
            ops.push(none);
            // The metering service's exchange.
            let sample = json!([{"counter_name": "cpu", "counter_volume": 1.5,
                                 "resource_id": "ресурс-1"}]);
            let mut ceilometer = op(driver, "ceilometer", "sample", "ceilometer.sample", sample);
            ceilometer["exchange"] = json!(CEILOMETER);
            ceilometer["topics"] = json!([METERING]);
            ops.push(ceilometer);
        }
        let sent = python_notifier(&bus, ops).await;

        // Per driver: 15 payloads + 2 context cases + sample + ceilometer sample; warn twice
        // (warn, warning) + error; error.
        let want = |seen: &Seen, n: usize| seen.lock().unwrap().len() == n;
        assert!(
            eventually(Duration::from_secs(15), || want(&seen_info_sample, 38)
                && want(&seen_warn_error, 6)
                && want(&seen_error, 2))
            .await,
            "info/sample {}, warn/error {}, error {}",
            seen(&seen_info_sample).len(),
            seen(&seen_warn_error).len(),
            seen(&seen_error).len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        listener.stop(Duration::from_secs(5)).await;

        // Each endpoint got only its priorities.
        let info_sample = seen(&seen_info_sample);
        let warn_error = seen(&seen_warn_error);
        let error_only = seen(&seen_error);
        assert_eq!(
            (info_sample.len(), warn_error.len(), error_only.len()),
            (38, 6, 2)
        );
        let priorities = |seen: &[IncomingNotification]| -> BTreeSet<Priority> {
            seen.iter().map(|n| n.priority).collect()
        };
        assert_eq!(
            priorities(&info_sample),
            BTreeSet::from([Priority::Info, Priority::Sample])
        );
        assert_eq!(
            priorities(&warn_error),
            BTreeSet::from([Priority::Warn, Priority::Error])
        );
        assert_eq!(priorities(&error_only), BTreeSet::from([Priority::Error]));

        // By (publisher, event type): each notification once per endpoint.
        let mut by_key: HashMap<(String, String), IncomingNotification> = HashMap::new();
        for n in info_sample.iter().chain(&warn_error) {
            let key = (n.publisher_id.clone(), n.event_type.clone());
            let earlier = by_key.insert(key, n.clone());
            assert!(earlier.is_none(), "delivered twice: {n:?}");
        }
        for n in &error_only {
            let key = (n.publisher_id.clone(), n.event_type.clone());
            assert_eq!(
                by_key.get(&key),
                Some(n),
                "the same error reaches both endpoints"
            );
        }
        let message_ids: BTreeSet<&str> = by_key
            .values()
            .map(|n| n.metadata.message_id.as_str())
            .collect();
        assert_eq!(message_ids.len(), by_key.len(), "message ids are unique");

        for driver in drivers {
            let publisher = format!("py.{driver}");
            let get = |event_type: &str| {
                by_key
                    .get(&(publisher.clone(), event_type.to_owned()))
                    .unwrap_or_else(|| panic!("{driver}: no {event_type}"))
            };
            // The context as oslo sent it (its RequestContext, redacted) ...
            let sent_context = |id: &str| -> Context {
                let sent = &sent[&format!("{driver}/{id}")];
                serde_json::from_value(sent.clone()).unwrap()
            };
            for (name, value) in every_json_type() {
                let n = get(&format!("payload.{name}"));
                assert_eq!(n.payload, value, "{driver} {name}");
                assert_eq!(n.priority, Priority::Info);
                assert!(is_oslo_message_id(&n.metadata.message_id), "{n:?}");
                assert!(is_oslo_timestamp(&n.metadata.timestamp), "{n:?}");
                assert_eq!(n.context, sent_context(name), "{driver} {name}");
            }
            // ... has these keys: user_id travels as `user`, project_id as both `project` and
            // `project_id`, domain_id as `domain`. The redacted copy keeps identity keys only:
            // auth_token, resource_uuid and read_only are back to their defaults.
            let ctx = &get("payload.int").context;
            for (key, want) in [
                ("user", json!("u-1")),
                ("project_id", json!("p-1")),
                ("project", json!("p-1")),
                ("domain", json!("домен-☃")),
                ("request_id", json!("req-interop-1")),
                ("roles", json!(["admin", "member"])),
                ("is_admin", json!(true)),
                ("user_identity", json!("u-1 p-1 домен-☃ - -")),
                ("resource_uuid", Value::Null),
                ("read_only", json!(false)),
                ("auth_token", Value::Null),
                ("global_request_id", Value::Null),
            ] {
                assert_eq!(
                    ctx.get(key),
                    Some(&want),
                    "{driver}: context key {key}: {ctx:?}"
                );
            }
            assert!(!ctx.iter().any(|(_, v)| v == "gAAAA-not-a-real-token"));

            assert!(get("context.dict").context.is_empty(), "{driver}");
            assert!(get("context.none").context.is_empty(), "{driver}");
            for (event_type, priority) in [
                ("priority.warn", Priority::Warn),
                ("priority.warning", Priority::Warn),
                ("priority.error", Priority::Error),
                ("priority.sample", Priority::Sample),
            ] {
                let n = get(event_type);
                assert_eq!(n.priority, priority, "{driver} {event_type}");
                assert_eq!(n.payload["priority"], event_type["priority.".len()..]);
            }
            let n = get("ceilometer.sample");
            assert_eq!(n.priority, Priority::Sample);
            assert_eq!(n.payload[0]["resource_id"], "ресурс-1");
            assert_eq!(n.context, sent_context("ceilometer"));
        }
        for unhandled in ["audit", "debug", "critical"] {
            assert!(
                !by_key
                    .keys()
                    .any(|(_, e)| e == &format!("priority.{unhandled}")),
                "{unhandled} reached an endpoint"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pools_each_get_every_notification_and_share_within_a_pool() {
        let bus = Bus::amqp();
        let mut listeners = Vec::new();
        let mut seens = Vec::new();
        for pool in ["alpha", "alpha", "beta"] {
            let (endpoint, seen) = recorder(&[Priority::Info]);
            // Each listener on its own connection, as separate processes would be.
            let transport = bus.transport().await;
            let listener =
                NotificationListener::builder(&transport, vec![Target::topic(NOTIFICATIONS)])
                    .endpoint(endpoint)
                    .pool(pool)
                    .start()
                    .await
                    .unwrap();
            listeners.push(listener);
            seens.push(seen);
        }
        let ops: Vec<Value> = (0..12)
            .map(|i| {
                let driver = if i % 2 == 0 {
                    "messagingv2"
                } else {
                    "messaging"
                };
                op(
                    driver,
                    &i.to_string(),
                    "info",
                    &format!("pool.{i}"),
                    json!({ "i": i }),
                )
            })
            .collect();
        python_notifier(&bus, ops).await;
        let count = |i: usize| seens[i].lock().unwrap().len();
        assert!(
            eventually(Duration::from_secs(15), || count(0) + count(1) == 12
                && count(2) == 12)
            .await,
            "alpha {} + {}, beta {}",
            count(0),
            count(1),
            count(2)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        for listener in listeners {
            listener.stop(Duration::from_secs(5)).await;
        }
        let events = |i: usize| -> BTreeSet<String> {
            seen(&seens[i]).into_iter().map(|n| n.event_type).collect()
        };
        let all: BTreeSet<String> = (0..12).map(|i| format!("pool.{i}")).collect();
        assert_eq!(
            (count(0) + count(1), count(2)),
            (12, 12),
            "each once per pool"
        );
        assert_eq!(events(2), all, "pool beta gets every notification");
        let (alpha1, alpha2) = (events(0), events(1));
        assert!(alpha1.is_disjoint(&alpha2), "{alpha1:?} {alpha2:?}");
        assert_eq!(&alpha1 | &alpha2, all, "pool alpha shares them");
        assert!(
            !alpha1.is_empty() && !alpha2.is_empty(),
            "both alpha listeners get some: {alpha1:?} {alpha2:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A tidings Notifier publishing to oslo.messaging notification listeners

mod tidings_notifier_to_python_listener {
    use super::*;

    /// The `event: notification` lines by (publisher, event type), each once.
    fn by_key(lines: &[Value]) -> HashMap<(String, String), Value> {
        let mut by_key = HashMap::new();
        for line in lines {
            assert_eq!(line["event"], "notification", "{line}");
            let key = (
                line["publisher_id"].as_str().unwrap().to_owned(),
                line["event_type"].as_str().unwrap().to_owned(),
            );
            let earlier = by_key.insert(key, line.clone());
            assert!(earlier.is_none(), "delivered twice: {line}");
        }
        by_key
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fields_and_context_arrive_in_both_formats_on_both_exchanges() {
        let bus = Bus::amqp();
        let listener = python_listener(
            &bus,
            json!({"targets": [{"topic": NOTIFICATIONS},
                               {"topic": METERING, "exchange": CEILOMETER}],
                   "priorities": ["info", "warn", "sample"]}),
        )
        .await;
        let transport = bus.transport().await;
        let ctx = openstack_context();
        let formats = [
            ("v2", NotificationFormat::V2),
            ("v1", NotificationFormat::V1),
        ];
        for (name, format) in formats {
            let notifier = Notifier::new(&transport, format!("rs.{name}")).format(format);
            for (id, value) in every_json_type() {
                notifier
                    .info(&ctx, &format!("payload.{id}"), value)
                    .await
                    .unwrap();
            }
            notifier
                .warn(&ctx, "priority.warn", json!({"p": "warn"}))
                .await
                .unwrap();
            notifier
                .sample(&ctx, "priority.sample", json!({"p": "sample"}))
                .await
                .unwrap();
            // The Python endpoint has no error/debug method: it never subscribes to them.
            notifier
                .error(&ctx, "priority.error", json!({"p": "error"}))
                .await
                .unwrap();
            notifier
                .debug(&ctx, "priority.debug", json!({"p": "debug"}))
                .await
                .unwrap();
            notifier
                .info(&Context::new(), "context.empty", json!(null))
                .await
                .unwrap();
            notifier
                .prepare()
                .exchange(CEILOMETER)
                .topics([METERING])
                .sample(
                    &ctx,
                    "ceilometer.sample",
                    json!([{"counter_name": "cpu", "counter_volume": 1.5}]),
                )
                .await
                .unwrap();
        }
        // Per format: 15 payloads, warn, sample, empty context, ceilometer sample.
        let mut listener = listener;
        let mut lines = listener_lines(&mut listener, 2 * 19).await;
        lines.extend(stop_listener(listener).await);
        let by_key = by_key(&lines);
        assert_eq!(by_key.len(), 38, "nothing else arrives: {by_key:#?}");

        // Python sees the context exactly as sent (tidings does not redact auth_token, unlike
        // oslo's notifier), plus the `client_timeout` its AMQP driver adds.
        let mut want_ctx = ctx.clone().into_map();
        want_ctx.insert("client_timeout".into(), Value::Null);
        let want_ctx = Value::Object(want_ctx);
        let mut message_ids = BTreeSet::new();
        for (name, _) in formats {
            let publisher = format!("rs.{name}");
            let get = |event_type: &str| {
                by_key
                    .get(&(publisher.clone(), event_type.to_owned()))
                    .unwrap_or_else(|| panic!("{name}: no {event_type}"))
            };
            for (id, value) in every_json_type() {
                let line = get(&format!("payload.{id}"));
                assert_eq!(line["payload"], value, "{name} {id}");
                assert_eq!(line["priority"], "info");
                assert_eq!(line["ctxt"], want_ctx, "{name} {id}");
                message_ids.insert(check_metadata(&line["metadata"]));
            }
            for priority in ["warn", "sample"] {
                let line = get(&format!("priority.{priority}"));
                assert_eq!(line["priority"], priority);
                assert_eq!(line["payload"], json!({ "p": priority }));
                assert_eq!(line["ctxt"], want_ctx);
                message_ids.insert(check_metadata(&line["metadata"]));
            }
            let line = get("context.empty");
            assert_eq!(line["ctxt"], json!({"client_timeout": null}));
            assert_eq!(line["payload"], Value::Null);
            let line = get("ceilometer.sample");
            assert_eq!(line["priority"], "sample");
            assert_eq!(line["payload"][0]["counter_volume"], 1.5);
            assert_eq!(line["ctxt"], want_ctx);
            message_ids.insert(check_metadata(&line["metadata"]));
        }
        assert_eq!(message_ids.len(), 2 * 18, "message ids are unique");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_listener_groups_notifications_by_batch_and_priority() {
        const POOL: &str = "py-batch";
        let bus = Bus::amqp();
        let transport = bus.transport().await;
        // oslo's batch window starts when it polls, not at the first message: to make the
        // batches deterministic every notification waits in one queue before Python starts.
        // A tidings listener in the same pool declares that queue (as Python's would: same
        // name, flags and bindings) and leaves.
        let (endpoint, _) = recorder(&[Priority::Info, Priority::Warn]);
        NotificationListener::builder(&transport, vec![Target::topic(NOTIFICATIONS)])
            .endpoint(endpoint)
            .pool(POOL)
            .start()
            .await
            .unwrap()
            .stop(Duration::from_secs(5))
            .await;
        let priority_of = |i: usize| if i % 3 == 1 { "warn" } else { "info" };
        let notifier = Notifier::new(&transport, "rs.batch");
        let ctx = Context::new().with("request_id", "req-batch");
        for i in 0..12 {
            let priority = priority_of(i).parse().unwrap();
            notifier
                .notify(&ctx, priority, &format!("batch.{i}"), json!({ "i": i }))
                .await
                .unwrap();
        }

        // Batches of 5, 5, then 2 after the 2 s timeout; each split by priority, info first.
        let mut want: Vec<(String, Vec<usize>)> = Vec::new();
        for window in [0..5, 5..10, 10..12] {
            for priority in ["info", "warn"] {
                let members: Vec<usize> = window
                    .clone()
                    .filter(|i| priority_of(*i) == priority)
                    .collect();
                if !members.is_empty() {
                    want.push((priority.to_owned(), members));
                }
            }
        }
        let config = json!({"targets": [{"topic": NOTIFICATIONS}], "priorities": ["info", "warn"],
                            "pool": POOL, "batch": {"size": 5, "timeout": 2}});
        let mut listener = Python::spawn("notify_listen.py", &[bus.url(), &config.to_string()]);
        // The notifications wait in the queue before Python starts, so an executor thread may
        // print a batch before the main thread prints that the listener is ready: the ready
        // line may come anywhere among the batches.
        let mut lines = Vec::new();
        let mut ready = false;
        while !ready || lines.len() < want.len() {
            match listener.next_line().await {
                Some(line) if line["event"] == "ready" => ready = true,
                Some(line) => lines.push(line),
                None => {
                    listener.drain_stderr().await;
                    let why = format!("exited after {} of {} batches", lines.len(), want.len());
                    listener.fail(&why)
                }
            }
        }
        lines.extend(stop_listener(listener).await);

        let mut got = Vec::new();
        for line in &lines {
            assert_eq!(line["event"], "batch", "{line}");
            let mut members = Vec::new();
            for message in line["messages"].as_array().unwrap() {
                let keys: BTreeSet<&str> = message
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .collect();
                assert_eq!(
                    keys,
                    BTreeSet::from(["ctxt", "publisher_id", "event_type", "payload", "metadata"])
                );
                let i = message["payload"]["i"].as_u64().unwrap() as usize;
                assert_eq!(message["event_type"], format!("batch.{i}"));
                assert_eq!(message["publisher_id"], "rs.batch");
                assert_eq!(message["ctxt"]["request_id"], "req-batch");
                check_metadata(&message["metadata"]);
                members.push(i);
            }
            got.push((line["priority"].as_str().unwrap().to_owned(), members));
        }
        // Batches may be dispatched on different executor threads: compare regardless of order.
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requeued_notifications_come_back_and_are_handled() {
        let bus = Bus::amqp();
        let mut listener = python_listener(
            &bus,
            json!({"targets": [{"topic": NOTIFICATIONS}], "priorities": ["info"],
                   "pool": "py-requeue", "allow_requeue": true, "requeue_first": true}),
        )
        .await;
        let transport = bus.transport().await;
        let ctx = Context::new().with("request_id", "req-requeue");
        let notifier = Notifier::new(&transport, "rs.requeue");
        for (i, format) in [
            NotificationFormat::V2,
            NotificationFormat::V1,
            NotificationFormat::V2,
        ]
        .into_iter()
        .enumerate()
        {
            notifier
                .prepare()
                .format(format)
                .info(&ctx, &format!("requeue.{i}"), json!({ "i": i }))
                .await
                .unwrap();
        }
        let mut lines = listener_lines(&mut listener, 6).await;
        lines.extend(stop_listener(listener).await);

        // Per message: requeue, then (redelivered) handled; nothing more.
        let mut results: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for line in &lines {
            assert_eq!(line["event"], "notification", "{line}");
            assert_eq!(line["ctxt"]["request_id"], "req-requeue", "{line}");
            let id = check_metadata(&line["metadata"]);
            results.entry(id).or_default().push((
                line["event_type"].as_str().unwrap().to_owned(),
                line["result"].as_str().unwrap().to_owned(),
            ));
        }
        let mut handled: Vec<&str> = Vec::new();
        for outcomes in results.values() {
            let event_type = &outcomes[0].0;
            assert_eq!(
                outcomes,
                &vec![
                    (event_type.clone(), "requeue".to_owned()),
                    (event_type.clone(), "handled".to_owned()),
                ]
            );
            handled.push(event_type);
        }
        handled.sort_unstable();
        assert_eq!(handled, ["requeue.0", "requeue.1", "requeue.2"]);
    }
}

// ---------------------------------------------------------------------------------------------
// The oslo.messaging timing script of docs/benchmarks.md

/// `tests/interop/oslo_bench.py` runs its three scenarios against the local broker and writes
/// positive figures for each (no speed threshold: this only keeps the script working).
#[test]
fn oslo_bench_script_times_call_and_cast() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/oslo_bench.py");
    let json_path = std::env::temp_dir().join(format!(
        "tidings-oslo-bench-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let output = std::process::Command::new(python())
        .arg(&script)
        .args(["--duration", "0.3", "--json"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(&json_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let _ = std::fs::remove_file(&json_path);
    for scenario in ["call-1/json", "call-64/json", "cast/json"] {
        let figure = figures[scenario]["oslo"].as_f64().unwrap_or(0.0);
        assert!(figure.is_finite() && figure > 0.0, "{scenario}: {figures}");
        assert!(stdout.contains(scenario), "{stdout}");
    }
}
