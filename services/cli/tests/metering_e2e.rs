//! The metering service end to end, as an operator runs it: the agents as separate processes on
//! RabbitMQ (and again as `all-in-one`), an alarm created over HTTP, samples flowing from the
//! polling agent, the alarm changing state, and its webhook received by a test HTTP server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tidings_suites::Bus;

/// An agent process, stopped with SIGTERM (then reaped) on drop.
struct Agent(Child);

impl Agent {
    fn start(args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .arg("meter")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tidings runs");
        Self(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

type Hooks = Arc<Mutex<Vec<Value>>>;

/// A webhook receiver on 127.0.0.1; returns its URL and what it received.
async fn webhook() -> (String, Hooks) {
    let hooks: Hooks = Arc::default();
    let record = hooks.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hooks)
}

async fn until<T>(limit: Duration, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates an alarm over HTTP that breaches at once (load ≥ 0) and checks the whole path.
async fn alarm_round_trip(api: SocketAddr) {
    let http = reqwest::Client::new();
    let base = format!("http://{api}");
    until(Duration::from_secs(60), "the API", async || {
        http.get(format!("{base}/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    let (hook, hooks) = webhook().await;

    let bad = http
        .post(format!("{base}/v2/alarms"))
        .json(&json!({"name": "x", "threshold_rule": {"meter_name": "load.1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad
        .text()
        .await
        .unwrap()
        .contains("threshold_rule.threshold"));

    let created: Value = http
        .post(format!("{base}/v2/alarms"))
        .json(&json!({
            "name": "load-seen",
            "type": "threshold",
            "threshold_rule": {
                "meter_name": "load.1", "threshold": 0.0, "comparison_operator": "ge",
                "statistic": "max", "period": 2, "evaluation_periods": 1
            },
            "alarm_actions": [hook, "log://"],
            "severity": "moderate"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["state"], "insufficient data");
    let id = created["alarm_id"].as_str().unwrap().to_owned();

    let meters: Value = until(Duration::from_secs(60), "samples stored", async || {
        let meters: Value = http
            .get(format!("{base}/v2/meters"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        meters
            .as_array()?
            .iter()
            .any(|m| m["name"] == "load.1")
            .then_some(meters)
    })
    .await;
    assert!(meters
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "memory.usage"));

    let hook_body = until(Duration::from_secs(60), "the alarm webhook", async || {
        hooks.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(hook_body["alarm_id"], id.as_str());
    assert_eq!(hook_body["alarm_name"], "load-seen");
    assert_eq!(hook_body["current"], "alarm");
    assert_eq!(hook_body["previous"], "insufficient data");
    assert_eq!(hook_body["severity"], "moderate");
    assert!(hook_body["reason"]
        .as_str()
        .unwrap()
        .contains("Transition to alarm"));

    let alarm: Value = http
        .get(format!("{base}/v2/alarms/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(alarm["state"], "alarm");
    let history: Value = http
        .get(format!("{base}/v2/alarms/{id}/history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["current"] == "alarm"),
        "{history}"
    );
    let stats: Value = http
        .get(format!("{base}/v2/meters/load.1/statistics?period=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats[0]["count"].as_u64().unwrap() >= 1, "{stats}");
    let status: Value = http
        .get(format!("{base}/v2/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(status.is_object(), "{status}");
    let deleted = http
        .delete(format!("{base}/v2/alarms/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        http.get(format!("{base}/v2/alarms/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_agents_on_rabbitmq_take_an_alarm_from_creation_to_webhook() {
    let bus = Bus::amqp();
    let dir = std::env::temp_dir().join(format!("tidings-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite://{}", dir.join("metering.sqlite").display());
    let api = free_port();
    let url = bus.url();
    let listen = api.to_string();
    let _agents = [
        Agent::start(&["collector", "--url", url, "--store", &store]),
        Agent::start(&[
            "evaluator",
            "--url",
            url,
            "--store",
            &store,
            "--evaluation-interval",
            "1",
        ]),
        Agent::start(&["notifier", "--url", url]),
        Agent::start(&["api", "--store", &store, "--listen", &listen]),
        Agent::start(&["polling", "--url", url, "--polling-interval", "1"]),
    ];
    alarm_round_trip(api).await;
    drop(_agents);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_takes_an_alarm_from_creation_to_webhook() {
    let dir = std::env::temp_dir().join(format!("tidings-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite://{}", dir.join("metering.sqlite").display());
    let api = free_port();
    let listen = api.to_string();
    let agent = Agent::start(&[
        "all-in-one",
        "--store",
        &store,
        "--listen",
        &listen,
        "--evaluation-interval",
        "1",
        "--polling-interval",
        "1",
    ]);
    alarm_round_trip(api).await;
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn split_agents_refuse_memory_urls_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["meter", "collector", "--url", "memory://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rabbit://"), "{err}");
}
