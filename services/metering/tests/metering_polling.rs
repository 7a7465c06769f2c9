//! The polling agent publishes this host's samples as Ceilometer's polling agent does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings::notify::{
    IncomingNotification, NotificationEndpoint, NotificationListener, Outcome, Priority,
};
use tidings::{Target, Transport};
use tidings_metering::polling::{self, config::Source, PollingConfig};
use tidings_metering::sample::{from_wire, verify_signature};
use tidings_runtime::Worker;
use tidings_suites::{eventually, Bus};

async fn run(bus: Bus) {
    let transport: Transport = bus.transport().await;
    let seen: Arc<Mutex<Vec<IncomingNotification>>> = Arc::default();
    let record = seen.clone();
    let listener = NotificationListener::builder(
        &transport,
        vec![Target::topic("notifications").with_exchange("ceilometer")],
    )
    .endpoint(
        NotificationEndpoint::new().on(Priority::Sample, move |n: IncomingNotification| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(n);
                Ok::<_, String>(Outcome::Handled)
            }
        }),
    )
    .start()
    .await
    .unwrap();
    let config = PollingConfig {
        sources: vec![
            Source {
                name: "host".into(),
                interval: 1,
                meters: vec!["cpu".into(), "memory.*".into()],
            },
            Source {
                name: "load".into(),
                interval: 2,
                meters: vec!["load.*".into()],
            },
        ],
        batch_size: 2,
        telemetry_secret: Some("s3cret".into()),
        host: "test-host".into(),
    };
    let agent = polling::start(&transport, config).unwrap();
    assert!(eventually(Duration::from_secs(10), || seen.lock().unwrap().len() >= 4).await);
    agent.kill();
    agent.wait().await.unwrap();
    listener.stop(Duration::from_secs(5)).await;

    let seen = seen.lock().unwrap().clone();
    let mut meters = Vec::new();
    for n in &seen {
        assert_eq!(n.event_type, "telemetry.polling");
        assert_eq!(n.publisher_id, "ceilometer.polling");
        let samples = n.payload["samples"]
            .as_array()
            .expect("payload {\"samples\": [...]}");
        assert!(samples.len() <= 2, "batches of batch_size");
        for wire in samples {
            let map = wire.as_object().unwrap();
            assert!(
                verify_signature(map, "s3cret"),
                "signed with the telemetry secret"
            );
            assert!(!verify_signature(map, "other"));
            let sample = from_wire(wire).unwrap();
            assert_eq!(sample.resource_id, "test-host");
            meters.push((sample.source, sample.name));
        }
    }
    for (source, meter) in [
        ("host", "cpu"),
        ("host", "memory.total"),
        ("host", "memory.usage"),
        ("load", "load.1"),
    ] {
        assert!(
            meters.contains(&(source.to_owned(), meter.to_owned())),
            "{source}/{meter} missing from {meters:?}"
        );
    }
    assert!(
        !meters
            .iter()
            .any(|(s, m)| s == "host" && m.starts_with("load")),
        "sources only poll their meters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_publishes_signed_samples_on_memory() {
    run(Bus::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_publishes_signed_samples_on_rabbitmq() {
    run(Bus::amqp()).await;
}
