//! The alarm notifier against a local HTTP server (axum on 127.0.0.1:0): the webhook gets
//! Aodh's JSON and headers, `log://` logs Aodh's line, unknown schemes are skipped, failing
//! endpoints are retried within bounds and never stop the listener; and the whole hand-off,
//! evaluator → notifier → webhook, on the memory bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alarm_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tidings::Transport;
use tidings_metering::alarm_notifier::{
    self, actions, AlarmNotifier, HttpConfig, NotifierConfig, NotifierReport,
};
use tidings_metering::evaluator::{self, AlarmUpdate, EvaluatorConfig, Handoff};
use tidings_metering::store::Store;
use tidings_suites::Bus;
use tokio::sync::mpsc;

use alarm_support::{alarm, MemStore};

/// A request the test server received.
#[derive(Debug)]
struct Received {
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone)]
struct Hook {
    tx: mpsc::UnboundedSender<Received>,
    /// Requests answered 503 before the first 200 (`usize::MAX`: always).
    failures: Arc<AtomicUsize>,
    /// How long to wait before answering.
    delay: Duration,
}

async fn hook(State(hook): State<Hook>, headers: HeaderMap, body: String) -> StatusCode {
    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
    let _ = hook.tx.send(Received { headers, body });
    tokio::time::sleep(hook.delay).await;
    let failing = hook
        .failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            0 => None,
            usize::MAX => Some(usize::MAX),
            n => Some(n - 1),
        })
        .is_ok();
    if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// Serves `/hook` on 127.0.0.1; returns its URL and the requests it receives.
async fn webhook(failures: usize, delay: Duration) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Hook {
        tx,
        failures: Arc::new(AtomicUsize::new(failures)),
        delay,
    };
    let app = Router::new().route("/hook", post(hook)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hook"), rx)
}

async fn received(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no request within 10 s")
        .expect("server gone")
}

fn update(actions: &[&str]) -> AlarmUpdate {
    AlarmUpdate {
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        alarm_id: "a-1".into(),
        alarm_name: "cpu-high".into(),
        severity: "critical".into(),
        previous: "ok".into(),
        current: "alarm".into(),
        reason: "Transition to alarm due to 1 samples outside threshold, most recent: 95.0".into(),
        reason_data: json!({"type": "threshold", "disposition": "outside", "count": 1, "most_recent": 95.0}),
    }
}

fn quick(max_retries: u32) -> NotifierConfig {
    NotifierConfig {
        batch_size: 5,
        batch_timeout: Duration::from_millis(20),
        http: HttpConfig {
            timeout: Duration::from_millis(500),
            max_retries,
            retry_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        },
        ..NotifierConfig::default()
    }
}

async fn started(config: NotifierConfig) -> (Bus, Transport, AlarmNotifier) {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let notifier = alarm_notifier::start(&transport, config).await.unwrap();
    (bus, transport, notifier)
}

/// Waits (up to 10 s) until the notifier's report satisfies `done`.
async fn report_where(
    notifier: &AlarmNotifier,
    done: impl Fn(&NotifierReport) -> bool,
) -> NotifierReport {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = notifier.report();
        if done(&report) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "report never got there: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn http_actions_post_aodhs_json_with_a_request_id() {
    let (url, mut requests) = webhook(0, Duration::ZERO).await;
    let (_bus, transport, notifier) = started(quick(0)).await;
    Handoff::new(&transport)
        .send(&update(&[&url, "log://ops", "trust+zaqar://q"]))
        .await
        .unwrap();

    let request = received(&mut requests).await;
    assert_eq!(
        request.body,
        json!({
            "alarm_name": "cpu-high",
            "alarm_id": "a-1",
            "severity": "critical",
            "previous": "ok",
            "current": "alarm",
            "reason": "Transition to alarm due to 1 samples outside threshold, most recent: 95.0",
            "reason_data": {"type": "threshold", "disposition": "outside", "count": 1, "most_recent": 95.0},
        })
    );
    assert_eq!(request.headers["content-type"], "application/json");
    let request_id = request.headers["x-openstack-request-id"].to_str().unwrap();
    let uuid = request_id.strip_prefix("req-").expect(request_id);
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{request_id}");

    let report = report_where(&notifier, |r| r.actions_run == 2 && r.actions_skipped == 1).await;
    assert_eq!((report.notifications, report.actions_failed), (1, 0));
    notifier.stop().await.unwrap();
}

#[tokio::test]
async fn log_actions_log_aodhs_line() {
    // The wording is checked on the formatter; capturing `tracing` output with a thread-local
    // subscriber is unreliable while other tests of this binary log from other threads.
    let expected =
        "Notifying alarm cpu-high a-1 of critical priority from ok to alarm with action \
                    log://ops because Transition to alarm due to 1 samples outside threshold, most \
                    recent: 95.0.";
    assert_eq!(
        actions::log_line(&update(&["log://ops"]), "log://ops"),
        expected
    );
    let (_bus, transport, notifier) = started(quick(0)).await;
    Handoff::new(&transport)
        .send(&update(&["log://ops"]))
        .await
        .unwrap();
    report_where(&notifier, |r| r.actions_run == 1).await;
    notifier.stop().await.unwrap();
}

#[tokio::test]
async fn failing_endpoints_are_retried_with_backoff_then_given_up() {
    // Two 503s then a 200: three attempts, one request id, one success.
    let (flaky, mut flaky_requests) = webhook(2, Duration::ZERO).await;
    let (_bus, transport, notifier) = started(quick(2)).await;
    let handoff = Handoff::new(&transport);
    handoff.send(&update(&[&flaky])).await.unwrap();
    let ids: Vec<String> = [
        received(&mut flaky_requests).await,
        received(&mut flaky_requests).await,
        received(&mut flaky_requests).await,
    ]
    .iter()
    .map(|r| {
        r.headers["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    })
    .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let report = report_where(&notifier, |r| r.actions_run == 1).await;
    assert_eq!((report.http_retries, report.actions_failed), (2, 0));

    // Always 503, and one that answers too late: bounded attempts, then counted as failed.
    let (broken, mut broken_requests) = webhook(usize::MAX, Duration::ZERO).await;
    let (slow, mut slow_requests) = webhook(0, Duration::from_secs(5)).await;
    handoff.send(&update(&[&broken, &slow])).await.unwrap();
    report_where(&notifier, |r| r.actions_failed == 2).await;
    for requests in [&mut broken_requests, &mut slow_requests] {
        let mut attempts = 0;
        while requests.try_recv().is_ok() {
            attempts += 1;
        }
        assert_eq!(attempts, 3, "first try and two retries");
    }

    // The listener goes on.
    handoff.send(&update(&["log://after"])).await.unwrap();
    report_where(&notifier, |r| r.notifications == 3 && r.actions_run == 2).await;
    notifier.stop().await.unwrap();
}

#[tokio::test]
async fn an_evaluated_alarm_reaches_the_webhook_through_the_notifier() {
    let (url, mut requests) = webhook(0, Duration::ZERO).await;
    let (_bus, transport, notifier) = started(quick(0)).await;
    let store = Arc::new(MemStore::default());
    let mut subject = alarm("hot-1", "cpu", "host-1");
    subject.alarm_actions = vec![url];
    store.create_alarm(&subject).await.unwrap();
    store.set_statistics("cpu", "host-1", &[91.0, 92.0, 93.0]);
    let evaluator = evaluator::start(
        &transport,
        store.clone(),
        EvaluatorConfig::every(Duration::from_secs(1)),
    )
    .await
    .unwrap();

    let request = received(&mut requests).await;
    assert_eq!(request.body["alarm_id"], "hot-1");
    assert_eq!(request.body["previous"], "insufficient data");
    assert_eq!(request.body["current"], "alarm");
    assert_eq!(
        request.body["reason"],
        "Transition to alarm due to 3 samples outside threshold, most recent: 93.0"
    );
    assert_eq!(store.history("hot-1").await.unwrap().len(), 1);
    evaluator.stop().await.unwrap();
    notifier.stop().await.unwrap();
}
