//! The notification suite, on every transport: notifier → listener, pools, filters, batches,
//! requeue and the dead-letter queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tidings::codec::{CodecError, NotificationFormat};
use tidings::notify::{
    Filter, IncomingNotification, NotificationEndpoint, NotificationListener, Notifier,
    NotifyError, Outcome, Priority,
};
use tidings::transport::{Destination, OutgoingMessage, Subscription};
use tidings::{Context, Target, Transport};
use tidings_suites::{eventually, Bus};

const WAIT: Duration = Duration::from_secs(10);

type Seen = Arc<Mutex<Vec<IncomingNotification>>>;

/// An endpoint recording every notification of `priorities`.
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

fn count(seen: &Seen) -> usize {
    seen.lock().unwrap().len()
}

async fn listen(transport: &Transport, endpoint: NotificationEndpoint) -> NotificationListener {
    NotificationListener::builder(transport, vec![Target::topic("notifications")])
        .endpoint(endpoint)
        .start()
        .await
        .unwrap()
}

pub async fn notifications_arrive_with_every_field(bus: Bus) {
    let transport = bus.transport().await;
    let (endpoint, seen) = recorder(&[Priority::Info, Priority::Sample]);
    let listener = listen(&transport, endpoint).await;
    let ctx = Context::new()
        .with("request_id", "req-9")
        .with("user", "u1");
    let notifier = Notifier::new(&transport, "compute.host-1");
    notifier
        .info(
            &ctx,
            "compute.instance.create.end",
            json!({"id": 7, "name": "vm-ü"}),
        )
        .await
        .unwrap();
    notifier
        .sample(&ctx, "telemetry.polling", json!({"samples": []}))
        .await
        .unwrap();
    // Debug is not handled: the listener does not consume it.
    notifier.debug(&ctx, "noise", json!({})).await.unwrap();
    assert!(eventually(WAIT, || count(&seen) == 2).await);
    let seen = seen.lock().unwrap().clone();
    let info = seen.iter().find(|n| n.priority == Priority::Info).unwrap();
    assert_eq!(info.publisher_id, "compute.host-1");
    assert_eq!(info.event_type, "compute.instance.create.end");
    assert_eq!(info.payload, json!({"id": 7, "name": "vm-ü"}));
    assert_eq!(info.context, ctx);
    assert_eq!(info.metadata.message_id.len(), 36, "a uuid with dashes");
    assert!(
        info.metadata.timestamp.starts_with("20"),
        "{}",
        info.metadata.timestamp
    );
    assert!(seen.iter().any(|n| n.priority == Priority::Sample));
    listener.stop(WAIT).await;
}

pub async fn v1_bare_bodies_are_received_too(bus: Bus) {
    let transport = bus.transport().await;
    let (endpoint, seen) = recorder(&[Priority::Warn]);
    let listener = listen(&transport, endpoint).await;
    Notifier::new(&transport, "old.driver")
        .format(NotificationFormat::V1)
        .warn(&Context::new(), "legacy.event", json!([1, 2]))
        .await
        .unwrap();
    assert!(eventually(WAIT, || count(&seen) == 1).await);
    assert_eq!(seen.lock().unwrap()[0].payload, json!([1, 2]));
    listener.stop(WAIT).await;
}

/// A payload goes out as the caller's serializer writes it only when a peer cannot misread it:
/// a typed value (`__type__`/`__value__`, which kombu would decode) is refused before anything
/// is sent, a payload that does not serialise is a payload error, and a mere `"__type__"` string
/// goes through.
pub async fn payloads_are_checked_before_they_are_sent(bus: Bus) {
    let transport = bus.transport().await;
    let (endpoint, seen) = recorder(&[Priority::Info]);
    let listener = listen(&transport, endpoint).await;
    let notifier = Notifier::new(&transport, "checker");
    let context = Context::new();
    let typed = json!({"at": [{"__type__": "datetime", "__value__": "2026-01-01"}]});
    match notifier.info(&context, "typed", typed).await {
        Err(NotifyError::Codec(CodecError::ForbiddenTypedValue { field })) => {
            assert_eq!(field, "payload")
        }
        other => panic!("a typed value in the payload was not refused: {other:?}"),
    }
    let unwritable = std::collections::BTreeMap::from([((1, 2), 3)]);
    match notifier.info(&context, "unwritable", unwritable).await {
        Err(NotifyError::Payload { event_type, .. }) => assert_eq!(event_type, "unwritable"),
        other => panic!("a payload without string keys was not refused: {other:?}"),
    }
    notifier
        .info(&context, "plain", json!({"x": "__type__"}))
        .await
        .unwrap();
    assert!(eventually(WAIT, || count(&seen) == 1).await);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].event_type, "plain");
    assert_eq!(seen[0].payload, json!({"x": "__type__"}));
    listener.stop(WAIT).await;
}

pub async fn messages_sent_before_a_listener_exists_are_kept(bus: Bus) {
    let transport = bus.transport().await;
    // The notifier declares notifications.info, as oslo's does.
    Notifier::new(&transport, "early")
        .info(&Context::new(), "early.bird", json!({}))
        .await
        .unwrap();
    let (endpoint, seen) = recorder(&[Priority::Info]);
    let listener = listen(&transport, endpoint).await;
    assert!(eventually(WAIT, || count(&seen) == 1).await);
    listener.stop(WAIT).await;
}

pub async fn each_pool_gets_a_copy_and_pool_members_compete(bus: Bus) {
    let transport = bus.transport().await;
    let mut pools = Vec::new();
    for pool in ["alpha", "alpha", "beta"] {
        let (endpoint, seen) = recorder(&[Priority::Info]);
        let listener =
            NotificationListener::builder(&transport, vec![Target::topic("notifications")])
                .endpoint(endpoint)
                .pool(pool)
                .start()
                .await
                .unwrap();
        pools.push((pool, listener, seen));
    }
    let notifier = Notifier::new(&transport, "p");
    for i in 0..10 {
        notifier
            .info(&Context::new(), "tick", json!({ "i": i }))
            .await
            .unwrap();
    }
    let total = |name: &str| {
        pools
            .iter()
            .filter(|(p, _, _)| *p == name)
            .map(|(_, _, s)| count(s))
            .sum::<usize>()
    };
    assert!(eventually(WAIT, || total("alpha") == 10 && total("beta") == 10).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        (total("alpha"), total("beta")),
        (10, 10),
        "no copy twice within a pool"
    );
    for (_, listener, _) in pools {
        listener.stop(WAIT).await;
    }
}

pub async fn filters_choose_what_an_endpoint_sees(bus: Bus) {
    let transport = bus.transport().await;
    let (compute, compute_seen) = recorder(&[Priority::Info]);
    let compute = compute.filter(
        Filter::new()
            .event_type(r"compute\.")
            .unwrap()
            .context("project_id", "p-1")
            .unwrap(),
    );
    let (all, all_seen) = recorder(&[Priority::Info]);
    let listener = NotificationListener::builder(&transport, vec![Target::topic("notifications")])
        .endpoint(compute)
        .endpoint(all)
        .start()
        .await
        .unwrap();
    let notifier = Notifier::new(&transport, "f");
    let p1 = Context::new().with("project_id", "p-1");
    notifier
        .info(&p1, "compute.instance.create.end", json!({}))
        .await
        .unwrap();
    notifier
        .info(&p1, "network.port.create.end", json!({}))
        .await
        .unwrap();
    notifier
        .info(
            &Context::new().with("project_id", "p-2"),
            "compute.instance.delete.end",
            json!({}),
        )
        .await
        .unwrap();
    assert!(eventually(WAIT, || count(&all_seen) == 3).await);
    let compute_events: Vec<String> = compute_seen
        .lock()
        .unwrap()
        .iter()
        .map(|n| n.event_type.clone())
        .collect();
    assert_eq!(compute_events, ["compute.instance.create.end"]);
    listener.stop(WAIT).await;
}

pub async fn batches_fill_to_size_or_flush_on_timeout(bus: Bus) {
    let transport = bus.transport().await;
    let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
    let sizes = batches.clone();
    let endpoint = NotificationEndpoint::new().on_batch(
        Priority::Info,
        move |batch: Vec<IncomingNotification>| {
            let sizes = sizes.clone();
            async move {
                sizes.lock().unwrap().push(batch.len());
                Ok::<_, String>(Outcome::Handled)
            }
        },
    );
    let notifier = Notifier::new(&transport, "b");
    // Queued before the listener starts, so the first batches fill at once.
    notifier
        .info(&Context::new(), "warmup", json!({}))
        .await
        .unwrap();
    for i in 0..9 {
        notifier
            .info(&Context::new(), "batched", json!({ "i": i }))
            .await
            .unwrap();
    }
    let listener = NotificationListener::builder(&transport, vec![Target::topic("notifications")])
        .endpoint(endpoint)
        .batch(4, Duration::from_millis(300))
        .max_concurrency(1)
        .start()
        .await
        .unwrap();
    assert!(eventually(WAIT, || batches.lock().unwrap().iter().sum::<usize>() == 10).await);
    let sizes = batches.lock().unwrap().clone();
    assert!(sizes.iter().all(|s| *s <= 4), "{sizes:?}");
    assert!(sizes.contains(&4), "full batches were formed: {sizes:?}");
    // Later partial batches flush on their own timeout too, one after the other.
    for (i, total) in [(10, 11), (11, 12)] {
        notifier
            .info(&Context::new(), "late", json!({ "i": i }))
            .await
            .unwrap();
        assert!(
            eventually(WAIT, || batches.lock().unwrap().iter().sum::<usize>()
                == total)
            .await,
            "a partial batch did not flush: {:?}",
            batches.lock().unwrap()
        );
    }
    listener.stop(WAIT).await;
}

/// An endpoint that asks for a requeue the first `failures` times it sees a message.
fn flaky(failures: usize) -> (NotificationEndpoint, Arc<AtomicUsize>) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let endpoint =
        NotificationEndpoint::new().on(Priority::Info, move |_n: IncomingNotification| {
            let attempt = seen.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Ok::<_, String>(if attempt <= failures {
                    Outcome::Requeue
                } else {
                    Outcome::Handled
                })
            }
        });
    (endpoint, attempts)
}

pub async fn requeue_redelivers_when_the_listener_allows_it(bus: Bus) {
    let transport = bus.transport().await;
    let (endpoint, attempts) = flaky(2);
    let listener = NotificationListener::builder(&transport, vec![Target::topic("notifications")])
        .endpoint(endpoint)
        .allow_requeue(true)
        .start()
        .await
        .unwrap();
    Notifier::new(&transport, "r")
        .info(&Context::new(), "retry.me", json!({}))
        .await
        .unwrap();
    assert!(eventually(WAIT, || attempts.load(Ordering::SeqCst) == 3).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "handled on the third attempt, then acknowledged"
    );
    listener.stop(WAIT).await;
}

pub async fn requeue_requests_are_acknowledged_when_not_allowed(bus: Bus) {
    let transport = bus.transport().await;
    let (endpoint, attempts) = flaky(usize::MAX);
    let listener = listen(&transport, endpoint).await;
    Notifier::new(&transport, "r")
        .info(&Context::new(), "once", json!({}))
        .await
        .unwrap();
    assert!(eventually(WAIT, || attempts.load(Ordering::SeqCst) == 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    listener.stop(WAIT).await;
}

async fn dead_letters(
    transport: &Transport,
    queue: &str,
    expect: usize,
) -> Vec<tidings::transport::Delivery> {
    let mut inbox = transport
        .driver()
        .subscribe(
            &Subscription::Queue {
                name: tidings::transport::dead_letter_queue(queue),
            },
            Default::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < expect {
        match tokio::time::timeout(WAIT, inbox.recv()).await {
            Ok(Some(delivery)) => got.push(delivery),
            _ => break,
        }
    }
    got
}

pub async fn a_message_requeued_too_often_goes_to_the_dead_letter_queue(bus: Bus) {
    let transport = bus.transport().await;
    let (endpoint, attempts) = flaky(usize::MAX);
    let listener = NotificationListener::builder(&transport, vec![Target::topic("notifications")])
        .endpoint(endpoint)
        .allow_requeue(true)
        .max_requeues(2)
        .start()
        .await
        .unwrap();
    Notifier::new(&transport, "poison")
        .info(&Context::new(), "always.fails", json!({"x": 1}))
        .await
        .unwrap();
    assert!(eventually(WAIT, || attempts.load(Ordering::SeqCst) == 3).await);
    let dead = dead_letters(&transport, "notifications.info", 1).await;
    assert_eq!(dead.len(), 1);
    let body: Value = serde_json::from_slice(&dead[0].body).unwrap();
    assert!(body["oslo.message"]
        .as_str()
        .unwrap()
        .contains("always.fails"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "no more attempts once dead-lettered"
    );
    listener.stop(WAIT).await;
}

pub async fn undecodable_messages_are_dead_lettered_not_lost(bus: Bus) {
    let transport = bus.transport().await;
    let (endpoint, seen) = recorder(&[Priority::Info]);
    let listener = listen(&transport, endpoint).await;
    let destination = Destination::Notification {
        exchange: "openstack".into(),
        topic: "notifications".into(),
        priority: "info".into(),
    };
    transport
        .driver()
        .publish(
            &destination,
            OutgoingMessage::new(b"{not json".to_vec(), "application/json"),
        )
        .await
        .unwrap();
    Notifier::new(&transport, "ok")
        .info(&Context::new(), "fine", json!({}))
        .await
        .unwrap();
    assert!(
        eventually(WAIT, || count(&seen) == 1).await,
        "the listener keeps going"
    );
    let dead = dead_letters(&transport, "notifications.info", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].body[..], b"{not json");
    listener.stop(WAIT).await;
}

pub async fn handler_errors_and_panics_count_as_requeue(bus: Bus) {
    let transport = bus.transport().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let endpoint =
        NotificationEndpoint::new().on(Priority::Error, move |_n: IncomingNotification| {
            let attempt = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                match attempt {
                    0 => Err("database down".to_owned()),
                    1 => panic!("handler bug"),
                    _ => Ok(Outcome::Handled),
                }
            }
        });
    let listener = NotificationListener::builder(&transport, vec![Target::topic("notifications")])
        .endpoint(endpoint)
        .allow_requeue(true)
        .start()
        .await
        .unwrap();
    Notifier::new(&transport, "e")
        .error(&Context::new(), "boom", json!({}))
        .await
        .unwrap();
    assert!(eventually(WAIT, || attempts.load(Ordering::SeqCst) == 3).await);
    listener.stop(WAIT).await;
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

macro_rules! notify_suite {
    ($bus:expr) => {
        suite!($bus;
            notifications_arrive_with_every_field,
            v1_bare_bodies_are_received_too,
            payloads_are_checked_before_they_are_sent,
            messages_sent_before_a_listener_exists_are_kept,
            each_pool_gets_a_copy_and_pool_members_compete,
            filters_choose_what_an_endpoint_sees,
            batches_fill_to_size_or_flush_on_timeout,
            requeue_redelivers_when_the_listener_allows_it,
            requeue_requests_are_acknowledged_when_not_allowed,
            a_message_requeued_too_often_goes_to_the_dead_letter_queue,
            undecodable_messages_are_dead_lettered_not_lost,
            handler_errors_and_panics_count_as_requeue,
        );
    };
}

mod memory {
    notify_suite!(tidings_suites::Bus::memory());
}

mod amqp {
    notify_suite!(tidings_suites::Bus::amqp());
}
