//! `tidings call`, `tidings cast` and `tidings demo-server` against the machine's RabbitMQ, as an
//! operator runs them: separate processes, one bus.

#![allow(clippy::unwrap_used)] // test helpers: a failure to run the binary fails the test

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tidings_suites::Bus;

fn tidings(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .env("TIDINGS_TRANSPORT_URL", url)
        .output()
        .unwrap()
}

/// A demo server process, stopped with SIGTERM on drop.
struct DemoServer(Child);

impl DemoServer {
    fn start(url: &str, topic: &str, server: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args([
                "demo-server",
                "--url",
                url,
                "--topic",
                topic,
                "--server",
                server,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// Calls `echo` until the freshly started server answers (its queues exist once it does).
fn wait_until_served(url: &str, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = tidings(
            url,
            &[
                "call",
                "--topic",
                topic,
                "--timeout",
                "2",
                "echo",
                r#"{"x": 0}"#,
            ],
        );
        if out.status.success() {
            return;
        }
    }
    panic!("demo server on {topic} never answered");
}

#[test]
fn call_prints_results_and_maps_failures_to_exit_codes() {
    let bus = Bus::amqp();
    let url = bus.url();
    let _server = DemoServer::start(url, "cli", "cli-1");
    wait_until_served(url, "cli");

    let out = tidings(
        url,
        &[
            "call",
            "--topic",
            "cli",
            "--version",
            "1.3",
            "--context",
            r#"{"user": "u1"}"#,
            "add",
            r#"{"a": 2, "b": 40}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "42");

    let out = tidings(
        url,
        &[
            "call",
            "--topic",
            "cli",
            "--server",
            "cli-1",
            "echo",
            r#"{"x": {"nested": ["ü", 1.5, null]}}"#,
        ],
    );
    assert_eq!(stdout(&out), r#"{"nested":["ü",1.5,null]}"#);

    let out = tidings(
        url,
        &["call", "--topic", "cli", "fail", r#"{"message": "boom"}"#],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("class=DemoError")
            && err.contains("module=tidings.demo")
            && err.contains("boom"),
        "{err}"
    );

    let out = tidings(
        url,
        &[
            "call",
            "--topic",
            "cli",
            "--version",
            "2.0",
            "echo",
            r#"{"x": 1}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("class=UnsupportedVersion"),
        "{}",
        stderr(&out)
    );

    let out = tidings(
        url,
        &[
            "call",
            "--topic",
            "nobody-here",
            "--timeout",
            "1",
            "echo",
            r#"{"x": 1}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let out = tidings(url, &["call", "--topic", "cli", "echo", "[1, 2]"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("JSON object"), "{}", stderr(&out));

    let out = tidings(url, &["cast", "--topic", "cli", "echo", r#"{"x": "cast"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tidings(
        url,
        &[
            "cast",
            "--topic",
            "cli",
            "--fanout",
            "echo",
            r#"{"x": "all"}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_usage_is_not_mistaken_for_a_timeout() {
    let out = tidings("memory://unused", &["call", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn an_unreachable_broker_fails_clearly() {
    let out = tidings(
        "rabbit://guest:hunter2@127.0.0.1:1/?connection_timeout=2",
        &["call", "--topic", "t", "echo", "{}"],
    );
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("cannot open the transport"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}

#[test]
fn notify_and_listen_speak_json_lines() {
    let bus = Bus::amqp();
    let url = bus.url();
    // Sent before anyone listens: the notifier declares notifications.info, so nothing is lost.
    let out = tidings(
        url,
        &[
            "notify",
            "--topic",
            "notifications",
            "--priority",
            "info",
            "--event-type",
            "compute.start",
            "--publisher-id",
            "compute.h1",
            "--context",
            r#"{"user": "u1"}"#,
            r#"{"id": 1}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tidings(
        url,
        &[
            "notify",
            "--topic",
            "notifications",
            "--priority",
            "warn",
            "--event-type",
            "legacy",
            "--publisher-id",
            "old",
            "--v1",
            "[1, 2]",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = tidings(url, &["listen", "--topic", "notifications", "--count", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let info = lines.iter().find(|l| l["priority"] == "info").unwrap();
    assert_eq!(info["publisher_id"], "compute.h1");
    assert_eq!(info["event_type"], "compute.start");
    assert_eq!(info["payload"], serde_json::json!({"id": 1}));
    assert_eq!(info["context"], serde_json::json!({"user": "u1"}));
    assert!(
        info["metadata"]["message_id"].is_string() && info["metadata"]["timestamp"].is_string()
    );
    let warn = lines.iter().find(|l| l["priority"] == "warn").unwrap();
    assert_eq!(warn["payload"], serde_json::json!([1, 2]));

    let out = tidings(
        url,
        &[
            "notify",
            "--topic",
            "t",
            "--priority",
            "loud",
            "--event-type",
            "e",
            "--publisher-id",
            "p",
            "{}",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(64),
        "an unknown priority is a usage error"
    );
}

/// An agent that stops at once (a store it cannot use) while its transport is still connecting
/// says why and nothing else: no thread of the AMQP client panics on the way out.
#[test]
fn an_agent_that_fails_at_start_exits_cleanly() {
    let bus = Bus::amqp();
    for _ in 0..10 {
        let out = tidings(
            bus.url(),
            &[
                "meter",
                "collector",
                "--store",
                "not-a-store-url",
                "--admin-listen",
                "127.0.0.1:0",
            ],
        );
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("unsupported store URL"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
