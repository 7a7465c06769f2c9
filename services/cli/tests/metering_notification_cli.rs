//! `tidings meter notification` and `tidings meter check-definitions` as operators run them:
//! the agent as a process on RabbitMQ, its meter definitions re-read on SIGHUP (a broken file
//! keeps the ones in use), and the check command's lines and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings::notify::{NotificationEndpoint, NotificationListener, Notifier, Outcome, Priority};
use tidings::{Context, Target};
use tidings_suites::Bus;

fn scratch(what: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tidings-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn definition(name: &str) -> String {
    format!(
        "metric:\n  - name: {name}\n    event_type: test.thing.created\n    type: gauge\n    unit: thing\n    volume: $.payload.size\n    resource_id: $.payload.id\n"
    )
}

/// The agent process; SIGTERM on drop.
struct Agent(Child);

impl Agent {
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.signal("TERM");
        let _ = self.0.wait();
    }
}

/// Publishes `test.thing.created` until a sample whose name `accept`s arrives; its name.
async fn sample_name(
    notifier: &Notifier,
    received: &Arc<Mutex<Vec<Value>>>,
    accept: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no sample accepted in time: {:?}",
            received.lock().unwrap()
        );
        n += 1;
        notifier
            .info(
                &Context::new(),
                "test.thing.created",
                json!({"id": format!("t-{n}"), "size": 3}),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let found = received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| s["counter_name"].as_str().map(str::to_owned))
            .find(|name| accept(name));
        if let Some(name) = found {
            return name;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_meter_definitions_and_a_broken_file_keeps_them() {
    let bus = Bus::amqp();
    let dir = scratch("meters");
    let file = dir.join("meters.yaml");
    std::fs::write(&file, definition("first.meter")).unwrap();
    let log = dir.join("agent.log");
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["-vv", "meter", "notification", "--url", bus.url()])
            .args(["--control-exchange", "testsvc", "--meter-definitions"])
            .arg(&dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tidings runs"),
    );
    let transport = bus.transport().await;
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let endpoint = NotificationEndpoint::new().on(Priority::Sample, move |n| {
        let sink = sink.clone();
        async move {
            sink.lock()
                .unwrap()
                .extend(n.payload.as_array().cloned().unwrap_or_default());
            Ok::<_, std::convert::Infallible>(Outcome::Handled)
        }
    });
    let _listener = NotificationListener::builder(
        &transport,
        vec![Target::topic("metering").with_exchange("ceilometer")],
    )
    .endpoint(endpoint)
    .start()
    .await
    .unwrap();
    let notifier = Notifier::new(&transport, "thing.host-1").exchange("testsvc");
    assert_eq!(
        sample_name(&notifier, &received, |_| true).await,
        "first.meter"
    );

    std::fs::write(&file, definition("second.meter")).unwrap();
    agent.signal("HUP");
    assert_eq!(
        sample_name(&notifier, &received, |n| n != "first.meter").await,
        "second.meter"
    );

    std::fs::write(&file, "metric: [").unwrap();
    agent.signal("HUP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    received.lock().unwrap().clear();
    assert_eq!(
        sample_name(&notifier, &received, |_| true).await,
        "second.meter",
        "a broken file keeps the definitions in use"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("meter definitions not reloaded"), "{text}");
    drop(agent);
    transport.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

fn check(args: &[&str], notifications: &Path) -> (Option<i32>, Vec<Value>) {
    let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["meter", "check-definitions"])
        .arg(notifications)
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (output.status.code(), lines)
}

#[test]
fn check_definitions_shows_samples_drops_and_reasons() {
    let dir = scratch("check");
    let notifications = dir.join("notifications.json");
    std::fs::write(
        &notifications,
        json!([
            {"event_type": "image.upload", "publisher_id": "image.host", "timestamp": "2026-11-20 09:15:44",
             "payload": {"id": "img", "size": 42, "owner": "p"}, "_context_user": "u"},
            {"event_type": "image.upload", "timestamp": "2026-11-20 09:15:44", "payload": {"id": "img", "owner": "p"}},
            {"event_type": "image.upload", "timestamp": "2026-11-20 09:15:44", "payload": {"id": "img", "size": [1]}},
        ])
        .to_string(),
    )
    .unwrap();
    let (code, lines) = check(&[], &notifications);
    assert_eq!(code, Some(0), "{lines:?}");
    assert!(lines[0]["definitions"]["loaded"].as_u64().unwrap() >= 40);
    assert_eq!(lines[1]["verdict"], json!("published"));
    let sample = &lines[1]["definitions"][0]["samples"][0];
    assert_eq!(sample["counter_name"], json!("image.size"));
    assert_eq!(sample["timestamp"], json!("2026-11-20T09:15:44+00:00"));
    assert_eq!(lines[2]["verdict"], json!("nothing"));
    assert_eq!(
        lines[2]["definitions"][0]["dropped"][0]["kind"],
        json!("no_volume")
    );
    assert_eq!(lines[3]["verdict"], json!("dead_letter"));

    // A definition that cannot work is named with its reason, and the exit code says so.
    let definitions = dir.join("mine.yaml");
    std::fs::write(
        &definitions,
        "metric:\n  - {name: good, event_type: image.upload, type: gauge, unit: B, volume: $.payload.size, resource_id: $.payload.id}\n  - {name: broken, event_type: image.upload, type: rate, unit: B, volume: 1, resource_id: $.payload.id}\n",
    )
    .unwrap();
    let (code, lines) = check(
        &["--meter-definitions", definitions.to_str().unwrap()],
        &notifications,
    );
    assert_eq!(code, Some(1));
    let problem = &lines[0]["definitions"]["problems"][0];
    assert_eq!(problem["definition"], json!("broken"));
    assert!(
        problem["reason"].as_str().unwrap().contains("invalid type"),
        "{problem}"
    );
    assert_eq!(
        lines[1]["definitions"][0]["samples"][0]["counter_name"],
        json!("good")
    );

    std::fs::write(&definitions, "metric: [").unwrap();
    let (code, _) = check(
        &["--meter-definitions", definitions.to_str().unwrap()],
        &notifications,
    );
    assert_eq!(code, Some(3));
    std::fs::remove_dir_all(&dir).unwrap();
}
