//! Aodh's alarm change notifications: every change made through the API (creation, rule
//! change, state transition, deletion) is announced on exchange `aodh`, topic `notifications`,
//! priority `info`, publisher `aodh.api`, with the history entry as payload — the same
//! `event_id` history shows — and credentials masked. The evaluator announces the transitions
//! it decides as publisher `aodh.evaluator`, its detail as JSON text, as Aodh's does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alarm_support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tidings::notify::{
    IncomingNotification, NotificationEndpoint, NotificationListener, Outcome, Priority,
};
use tidings::Target;
use tidings_metering::alarm_changes::{ChangeNotifier, EXCHANGE, TOPIC};
use tidings_metering::api::{self, ApiConfig, StatusFn};
use tidings_metering::evaluator::{self, Clock, EvaluatorConfig};
use tidings_metering::store::{self, Store};
use tidings_runtime::Worker;
use tidings_suites::Bus;
use tokio::sync::mpsc;

/// Listens for change notifications as an Aodh consumer would.
async fn listen(
    transport: &tidings::Transport,
) -> (
    NotificationListener,
    mpsc::UnboundedReceiver<IncomingNotification>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let endpoint = NotificationEndpoint::new().on(Priority::Info, move |n| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(n);
            Ok::<_, std::convert::Infallible>(Outcome::Handled)
        }
    });
    let listener = NotificationListener::builder(
        transport,
        vec![Target::topic(TOPIC).with_exchange(EXCHANGE)],
    )
    .endpoint(endpoint)
    .start()
    .await
    .unwrap();
    (listener, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<IncomingNotification>) -> IncomingNotification {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no change notification within 10 s")
        .expect("listener gone")
}

#[tokio::test]
async fn every_change_made_through_the_api_is_announced_as_aodh_announces_it() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let (_listener, mut changes) = listen(&transport).await;

    let store = store::open("sqlite::memory:").await.unwrap();
    let status: StatusFn = Arc::new(|| json!({}));
    let config = ApiConfig::new("127.0.0.1:0".parse().unwrap(), status)
        .with_changes(ChangeNotifier::api(&transport));
    let (worker, bound) = api::start(&config, store).await.unwrap();
    let base = format!("http://{bound}/v2/alarms");
    let http = reqwest::Client::new();
    let as_user = |request: reqwest::RequestBuilder| {
        request
            .header("X-User-Id", "alice")
            .header("X-Project-Id", "proj-a")
            .header("X-Roles", "member")
    };

    let created: Value = as_user(http.post(&base))
        .json(&json!({
            "name": "cpu", "type": "threshold",
            "threshold_rule": {"meter_name": "cpu", "threshold": 50.0},
            "alarm_actions": ["http://user:s3cret@127.0.0.1:9/hook"]
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["alarm_id"].as_str().unwrap().to_owned();
    let creation = next(&mut changes).await;
    assert_eq!(creation.event_type, "alarm.creation");
    assert_eq!(creation.publisher_id, "aodh.api");
    assert_eq!(creation.priority, Priority::Info);
    let payload: Value = creation.payload_as().unwrap();
    assert_eq!(payload["alarm_id"], id.as_str());
    assert_eq!(payload["type"], "creation");
    assert_eq!(payload["user_id"], "alice");
    assert_eq!(payload["project_id"], "proj-a");
    assert_eq!(payload["on_behalf_of"], "proj-a");
    assert_eq!(payload["severity"], "low");
    assert_eq!(payload["detail"]["name"], "cpu", "the detail is the alarm");
    assert!(!payload.to_string().contains("s3cret"), "{payload}");
    let history: Value = as_user(http.get(format!("{base}/{id}/history")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history[0]["event_id"], payload["event_id"]);

    let mut changed = created.clone();
    changed["threshold_rule"]["threshold"] = json!(75.0);
    let status = as_user(http.put(format!("{base}/{id}")))
        .json(&changed)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let rule_change: Value = next(&mut changes).await.payload_as().unwrap();
    assert_eq!(rule_change["type"], "rule change");
    assert_eq!(rule_change["detail"]["threshold_rule"]["threshold"], 75.0);

    let status = as_user(http.put(format!("{base}/{id}/state")))
        .json(&json!("alarm"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let transition = next(&mut changes).await;
    assert_eq!(transition.event_type, "alarm.state_transition");
    let transition: Value = transition.payload_as().unwrap();
    assert_eq!(transition["detail"]["state"], "alarm");
    assert_eq!(transition["detail"]["state_reason"], "Manually set via API");

    let status = as_user(http.delete(format!("{base}/{id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let deletion = next(&mut changes).await;
    assert_eq!(deletion.event_type, "alarm.deletion");
    let deletion: Value = deletion.payload_as().unwrap();
    assert_eq!(deletion["detail"], json!({"state": "alarm"}));
    assert_eq!(deletion["alarm_id"], id.as_str());

    worker.kill();
    worker.wait().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_evaluator_announces_its_transitions_as_aodh_s_evaluator() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let (_listener, mut changes) = listen(&transport).await;
    let store = Arc::new(alarm_support::MemStore::default());
    store
        .create_alarm(&alarm_support::alarm("a-1", "cpu", "r-1"))
        .await
        .unwrap();
    store.set_statistics("cpu", "r-1", &[80.0, 90.0, 95.0]);
    let mut config = EvaluatorConfig::every(Duration::from_secs(1));
    config.member_id = Some("solo".to_owned());
    config.clock = Clock::tokio();
    let evaluator = evaluator::start(&transport, store.clone(), config)
        .await
        .unwrap();
    let transition = next(&mut changes).await;
    assert_eq!(transition.event_type, "alarm.state_transition");
    assert_eq!(transition.publisher_id, "aodh.evaluator");
    let payload: Value = transition.payload_as().unwrap();
    assert_eq!(payload["alarm_id"], "a-1");
    let detail: Value = serde_json::from_str(payload["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["state"], "alarm");
    assert!(detail["transition_reason"]
        .as_str()
        .unwrap()
        .starts_with("Transition to alarm"));
    let history = store.history("a-1").await.unwrap();
    assert_eq!(history[0].event_id, payload["event_id"].as_str().unwrap());
    evaluator.stop().await.unwrap();
}
