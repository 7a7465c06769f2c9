//! Alarm actions cannot be turned against the service's own network: the notifier refuses what
//! the action policy refuses (metadata, link-local, and with a strict policy loopback — also
//! when a host *name* resolves there), follows no redirect, caps requests per alarm and
//! overall, and, given the alarms' store, runs the stored alarm's actions rather than the ones
//! a message on the bus carries.
//!
//! The webhooks are local axum servers on 127.0.0.1; tests that must reach them allow
//! 127.0.0.1/32 explicitly, as an operator would.
//!
//! Run: `cargo test -p tidings-metering --test alarm_forgery`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alarm_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use axum::Router;
use serde_json::json;
use tidings::Transport;
use tidings_metering::alarm_notifier::{
    self, ActionLimits, ActionPolicy, AlarmNotifier, HttpConfig, NotifierConfig, NotifierReport,
};
use tidings_metering::evaluator::{AlarmUpdate, Handoff};
use tidings_metering::store::{self, Store};
use tidings_suites::Bus;

use alarm_support::alarm;

/// What a test server saw: requests per path, and the most handled at once.
#[derive(Default)]
struct Seen {
    hook: AtomicUsize,
    target: AtomicUsize,
    in_flight: AtomicUsize,
    most_at_once: AtomicUsize,
}

/// Serves `/hook` (200 after `delay`, tracking concurrency), `/redirect` (307 to `/target`)
/// and `/target` (any method) on 127.0.0.1; returns the base URL.
async fn server(seen: Arc<Seen>, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let target = format!("{base}/target");
    let (on_hook, on_target) = (seen.clone(), seen);
    let app = Router::new()
        .route(
            "/hook",
            post(move || {
                let seen = on_hook.clone();
                async move {
                    seen.hook.fetch_add(1, Ordering::SeqCst);
                    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.most_at_once.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/redirect",
            post(move || {
                let target = target.clone();
                // 307 keeps the method and body: a client that followed would POST the alarm on.
                async move {
                    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
                }
            }),
        )
        .route(
            "/target",
            any(move || {
                let seen = on_target.clone();
                async move {
                    seen.target.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn loopback_allowed() -> ActionPolicy {
    ActionPolicy {
        allow: vec!["127.0.0.1/32".parse().unwrap()],
        strict: true,
        ..ActionPolicy::default()
    }
}

fn config(policy: ActionPolicy, limits: ActionLimits) -> NotifierConfig {
    NotifierConfig {
        batch_size: 5,
        batch_timeout: Duration::from_millis(20),
        http: HttpConfig {
            timeout: Duration::from_secs(2),
            max_retries: 2,
            retry_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
        },
        policy,
        limits,
    }
}

fn update(id: &str, actions: &[String]) -> AlarmUpdate {
    AlarmUpdate {
        actions: actions.to_vec(),
        alarm_id: id.into(),
        alarm_name: "forged-name".into(),
        severity: "critical".into(),
        previous: "ok".into(),
        current: "alarm".into(),
        reason: "Transition to alarm".into(),
        reason_data: json!({"type": "threshold"}),
    }
}

async fn report_where(
    notifier: &AlarmNotifier,
    done: impl Fn(&NotifierReport) -> bool,
) -> NotifierReport {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
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

async fn bus() -> (Bus, Transport) {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    (bus, transport)
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let seen = Arc::new(Seen::default());
    let base = server(seen.clone(), Duration::ZERO).await;
    let (_bus, transport) = bus().await;
    let notifier = alarm_notifier::start(
        &transport,
        config(loopback_allowed(), ActionLimits::default()),
    )
    .await
    .unwrap();
    Handoff::new(&transport)
        .send(&update("a-1", &[format!("{base}/redirect")]))
        .await
        .unwrap();
    let report = report_where(&notifier, |r| r.actions_failed == 1).await;
    assert_eq!(report.http_retries, 0, "a redirect is final, not retried");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        seen.target.load(Ordering::SeqCst),
        0,
        "the redirect target was reached"
    );
    notifier.stop().await.unwrap();
}

#[tokio::test]
async fn refused_addresses_get_no_request_even_behind_a_name() {
    let seen = Arc::new(Seen::default());
    let base = server(seen.clone(), Duration::ZERO).await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    let (_bus, transport) = bus().await;
    let strict = ActionPolicy {
        strict: true,
        ..ActionPolicy::default()
    };
    let notifier = alarm_notifier::start(&transport, config(strict, ActionLimits::default()))
        .await
        .unwrap();
    let actions = [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://127.0.0.1:{port}/hook"),
        // A name that resolves to loopback: refused by the resolver, before any connection.
        format!("http://localhost:{port}/hook"),
        "gopher://127.0.0.1/".to_owned(),
    ];
    Handoff::new(&transport)
        .send(&update("a-1", &actions))
        .await
        .unwrap();
    let report = report_where(&notifier, |r| {
        r.actions_refused == 3 && r.actions_skipped == 1
    })
    .await;
    assert_eq!(
        (
            report.actions_run,
            report.actions_failed,
            report.http_retries
        ),
        (0, 0, 0)
    );
    assert_eq!(seen.hook.load(Ordering::SeqCst), 0);
    notifier.stop().await.unwrap();

    // Without authentication (not strict) loopback is the operator's own: allowed.
    let notifier = alarm_notifier::start(
        &transport,
        config(ActionPolicy::default(), ActionLimits::default()),
    )
    .await
    .unwrap();
    Handoff::new(&transport)
        .send(&update("a-1", &actions))
        .await
        .unwrap();
    let report = report_where(&notifier, |r| r.actions_run == 2).await;
    assert_eq!(
        report.actions_refused, 1,
        "metadata stays refused: {report:?}"
    );
    notifier.stop().await.unwrap();
}

#[tokio::test]
async fn actions_come_from_the_store_not_from_the_message() {
    let seen = Arc::new(Seen::default());
    let base = server(seen.clone(), Duration::ZERO).await;
    let evil = Arc::new(Seen::default());
    let evil_base = server(evil.clone(), Duration::ZERO).await;
    let store: Arc<dyn Store> = store::open("sqlite::memory:").await.unwrap();
    let mut stored = alarm("a-1", "cpu", "vm-1");
    stored.alarm_actions = vec![format!("{base}/hook")];
    store.create_alarm(&stored).await.unwrap();

    let (_bus, transport) = bus().await;
    let notifier = alarm_notifier::start_with_store(
        &transport,
        store,
        config(loopback_allowed(), ActionLimits::default()),
    )
    .await
    .unwrap();
    let handoff = Handoff::new(&transport);
    // A message that names a stored alarm but carries other actions.
    handoff
        .send(&update("a-1", &[format!("{evil_base}/hook")]))
        .await
        .unwrap();
    // A message for an alarm the store does not have.
    handoff
        .send(&update("made-up", &[format!("{evil_base}/hook")]))
        .await
        .unwrap();
    let report = report_where(&notifier, |r| r.actions_run == 1 && r.not_in_store == 1).await;
    assert_eq!(report.notifications, 2);
    assert_eq!(seen.hook.load(Ordering::SeqCst), 1, "the stored action ran");
    assert_eq!(
        evil.hook.load(Ordering::SeqCst),
        0,
        "the message's actions did not"
    );
    notifier.stop().await.unwrap();
}

#[tokio::test]
async fn requests_are_capped_per_alarm_and_overall() {
    let seen = Arc::new(Seen::default());
    let base = server(seen.clone(), Duration::from_millis(200)).await;
    let (_bus, transport) = bus().await;
    let actions: Vec<String> = (0..6).map(|i| format!("{base}/hook?i={i}")).collect();

    let per_alarm = ActionLimits {
        max_concurrent: 100,
        max_concurrent_per_alarm: 2,
    };
    let notifier = alarm_notifier::start(&transport, config(loopback_allowed(), per_alarm))
        .await
        .unwrap();
    Handoff::new(&transport)
        .send(&update("a-1", &actions))
        .await
        .unwrap();
    report_where(&notifier, |r| r.actions_run == 6).await;
    assert_eq!(seen.most_at_once.load(Ordering::SeqCst), 2);
    notifier.stop().await.unwrap();

    seen.most_at_once.store(0, Ordering::SeqCst);
    let overall = ActionLimits {
        max_concurrent: 3,
        max_concurrent_per_alarm: 100,
    };
    let notifier = alarm_notifier::start(&transport, config(loopback_allowed(), overall))
        .await
        .unwrap();
    Handoff::new(&transport)
        .send(&update("a-2", &actions))
        .await
        .unwrap();
    report_where(&notifier, |r| r.actions_run == 6).await;
    assert_eq!(seen.most_at_once.load(Ordering::SeqCst), 3);
    notifier.stop().await.unwrap();
}
