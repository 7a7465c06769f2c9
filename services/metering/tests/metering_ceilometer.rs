//! Real Ceilometer as a peer: Ceilometer 27.0.0's `ceilometer-send-sample` (from the interop
//! venv), its pipeline sending through the `notifier://` publisher to the test's RabbitMQ
//! vhost, feeds the collector; the stored sample has the fields sent and its signature,
//! made with Ceilometer's default telemetry secret, verified. A Ceilometer configured with
//! another secret is refused and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ceilometer/python.rs"]
mod python;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tidings_metering::collector::{Collector, CollectorConfig, CollectorReport};
use tidings_metering::model::{CounterType, MeterInfo, StatisticsQuery};
use tidings_metering::sample::DEFAULT_TELEMETRY_SECRET;
use tidings_metering::store;
use tidings_suites::Bus;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);

/// A directory with Ceilometer's configuration for one run: a pipeline whose only sink
/// publishes with `notifier://`, and a config file pointing it at `transport_url`.
struct CeilometerConfig {
    dir: PathBuf,
}

impl CeilometerConfig {
    fn new(transport_url: &str, telemetry_secret: Option<&str>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tidings-ceilometer-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pipeline.yaml"),
            "---\nsources:\n  - name: meter_source\n    meters:\n      - \"*\"\n    sinks:\n      \
             - meter_sink\nsinks:\n  - name: meter_sink\n    publishers:\n      - notifier://\n",
        )
        .unwrap();
        let secret = telemetry_secret
            .map(|s| format!("\n[publisher]\ntelemetry_secret = {s}\n"))
            .unwrap_or_default();
        std::fs::write(
            dir.join("ceilometer.conf"),
            format!(
                "[DEFAULT]\ntransport_url = {transport_url}\npipeline_cfg_file = {}\n{secret}",
                dir.join("pipeline.yaml").display()
            ),
        )
        .unwrap();
        Self { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("ceilometer.conf")
    }
}

impl Drop for CeilometerConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `ceilometer-send-sample` (the venv's console script) to completion.
async fn send_sample(config: &Path, args: &[&str]) {
    let python = python::python();
    let tool = python
        .parent()
        .map(|bin| bin.join("ceilometer-send-sample"))
        .unwrap();
    let mut command = std::process::Command::new(&tool);
    command.arg("--config-file").arg(config).args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    assert!(
        output.status.success(),
        "ceilometer-send-sample failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn wait_for(
    counters: &mut watch::Receiver<CollectorReport>,
    done: impl FnMut(&CollectorReport) -> bool,
) -> CollectorReport {
    let waited = tokio::time::timeout(WAIT, counters.wait_for(done))
        .await
        .map(|seen| seen.map(|report| report.clone()));
    match waited {
        Ok(Ok(report)) => report,
        _ => panic!("timed out; collector saw {:?}", *counters.borrow()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceilometer_send_sample_is_stored_and_its_signature_verifies() {
    let bus = Bus::amqp();
    let transport = bus.transport().await;
    let store = store::open("sqlite::memory:").await.unwrap();
    let collector = Collector::start(
        &transport,
        store.clone(),
        CollectorConfig {
            telemetry_secret: Some(DEFAULT_TELEMETRY_SECRET.to_owned()),
            batch_timeout: Duration::from_millis(50),
            ..CollectorConfig::default()
        },
    )
    .await
    .unwrap();
    let mut counters = collector.subscribe();

    // Ceilometer left at its default secret.
    let ceilometer = CeilometerConfig::new(bus.url(), None);
    send_sample(
        &ceilometer.file(),
        &[
            "--sample-name",
            "cpu_util",
            "--sample-type",
            "gauge",
            "--sample-unit",
            "%",
            "--sample-volume",
            "42",
            "--sample-resource",
            "vm-1",
            "--sample-user",
            "u-1",
            "--sample-project",
            "p-1",
            "--sample-timestamp",
            "2026-11-22T19:53:05.297642",
            "--sample-metadata",
            "{'host': 'h-1', 'flavor': {'name': 'm1.tiny', 'vcpus': 1}, 'tags': ['a', 'é'], 'ratio': 0.5}",
        ],
    )
    .await;
    let report = wait_for(&mut counters, |r| r.received >= 1).await;
    assert_eq!(report.bad_signatures, 0, "{report:?}");
    assert_eq!(report.rejected_total(), 0, "{report:?}");
    assert_eq!(report.stored, 1, "{report:?}");

    let meters = store.meters(Some("vm-1")).await.unwrap();
    assert_eq!(
        meters,
        [MeterInfo {
            name: "cpu_util".into(),
            counter_type: CounterType::Gauge,
            unit: "%".into(),
            resource_id: "vm-1".into(),
            project_id: Some("p-1".into()),
            user_id: Some("u-1".into()),
            source: "openstack".into(),
        }]
    );
    let stats = store
        .statistics(&StatisticsQuery {
            meter: "cpu_util".into(),
            ..StatisticsQuery::default()
        })
        .await
        .unwrap();
    assert_eq!((stats[0].count, stats[0].sum), (1, 42.0));
    assert_eq!(
        stats[0].duration_start,
        Utc.with_ymd_and_hms(2026, 11, 22, 19, 53, 5).unwrap()
            + chrono::Duration::microseconds(297_642)
    );

    // The same tool with another secret: refused, counted, not stored.
    let forger = CeilometerConfig::new(bus.url(), Some("not the collector's secret"));
    send_sample(
        &forger.file(),
        &[
            "--sample-name",
            "cpu_util",
            "--sample-resource",
            "vm-9",
            "--sample-unit",
            "%",
        ],
    )
    .await;
    let report = wait_for(&mut counters, |r| r.received >= 2).await;
    assert_eq!(report.bad_signatures, 1, "{report:?}");
    assert_eq!(report.stored, 1, "{report:?}");
    assert!(store.meters(Some("vm-9")).await.unwrap().is_empty());
    collector.stop().await;
}
