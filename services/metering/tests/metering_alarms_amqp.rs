//! Alarm evaluator partitioning on the machine's RabbitMQ: three evaluators, each with its own
//! connection as separate processes would have, over one SQLite store; 30 alarms evaluated
//! every second. Steady state: every alarm exactly once per cycle. One evaluator stopped, then
//! one killed without a goodbye: the others cover every alarm again within three heartbeat
//! intervals (rounded up to the next cycle), and no alarm is ever evaluated twice in a cycle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alarm_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::Map;
use tidings::Transport;
use tidings_metering::evaluator::{self, Clock, Evaluator, EvaluatorConfig};
use tidings_metering::model::{AlarmState, CounterType, Sample};
use tidings_metering::store::{self, Store};
use tidings_suites::Bus;

use alarm_support::{alarm, coverage_problems, doubles, EvaluationLog, Recording};

const INTERVAL_MS: i64 = 1000;
const ALARMS: usize = 30;

fn sample(resource: &str, volume: f64) -> Sample {
    Sample {
        source: "openstack".into(),
        name: "cpu_util".into(),
        counter_type: CounterType::Gauge,
        unit: "%".into(),
        volume,
        user_id: None,
        project_id: None,
        resource_id: resource.into(),
        timestamp: Utc::now() - chrono::Duration::seconds(30),
        resource_metadata: Map::new(),
        message_id: uuid::Uuid::new_v4().to_string(),
    }
}

fn now_cycle() -> i64 {
    Clock::System.now_ms().div_euclid(INTERVAL_MS)
}

fn members(evaluator: &Option<Evaluator>) -> Vec<String> {
    evaluator
        .as_ref()
        .map(|e| e.status().report().members)
        .unwrap_or_default()
}

async fn settle(evaluators: &[Option<Evaluator>], want: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !evaluators
        .iter()
        .flatten()
        .all(|e| e.status().report().members.len() == want)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "members never settled at {want}: {:?}",
            evaluators.iter().map(members).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check(log: &EvaluationLog, resources: &[String], cycles: std::ops::RangeInclusive<i64>) {
    let log = log.lock().unwrap().clone();
    assert!(
        cycles.clone().count() >= 2,
        "too few cycles to check: {cycles:?}"
    );
    let problems = coverage_problems(&log, INTERVAL_MS, cycles.clone(), resources);
    assert!(problems.is_empty(), "cycles {cycles:?}: {problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_evaluators_on_rabbitmq_partition_the_alarms_and_rebalance() {
    let bus = Bus::amqp();
    let store = store::open("sqlite::memory:").await.unwrap();
    let mut resources = Vec::new();
    let mut samples = Vec::new();
    for i in 0..ALARMS {
        let resource = format!("res-{i:02}");
        let mut subject = alarm(&format!("alarm-{i:02}"), "cpu_util", &resource);
        subject.threshold_rule.evaluation_periods = 1;
        store.create_alarm(&subject).await.unwrap();
        // Half the resources run hot: their alarms go to `alarm`, the others to `ok`.
        samples.push(sample(&resource, if i % 2 == 0 { 95.0 } else { 5.0 }));
        resources.push(resource);
    }
    store.record(&samples).await.unwrap();

    let log: EvaluationLog = Arc::new(Mutex::new(Vec::new()));
    let mut evaluators: Vec<Option<Evaluator>> = Vec::new();
    let mut transports: Vec<Transport> = Vec::new();
    for name in ["amqp-e1", "amqp-e2", "amqp-e3"] {
        let transport = bus.transport().await;
        let recording: Arc<dyn Store> = Arc::new(Recording {
            inner: store.clone(),
            label: name.to_owned(),
            log: log.clone(),
        });
        let mut config = EvaluatorConfig::every(Duration::from_millis(1000));
        config.member_id = Some(name.to_owned());
        evaluators.push(Some(
            evaluator::start(&transport, recording, config)
                .await
                .unwrap(),
        ));
        transports.push(transport);
    }
    settle(&evaluators, 3).await;

    // Steady state.
    let from = now_cycle() + 1;
    tokio::time::sleep(Duration::from_secs(4)).await;
    check(&log, &resources, from..=now_cycle() - 1);
    let shares: Vec<usize> = evaluators
        .iter()
        .flatten()
        .map(|e| e.status().report().share)
        .collect();
    assert_eq!(shares.iter().sum::<usize>(), ALARMS, "{shares:?}");
    for (i, resource) in resources.iter().enumerate() {
        let state = store.alarm(&format!("alarm-{i:02}")).await.unwrap().state;
        let want = if i % 2 == 0 {
            AlarmState::Alarm
        } else {
            AlarmState::Ok
        };
        assert_eq!(state, want, "{resource}");
    }

    // A clean stop: the others cover its alarms from the next cycle on (or the one after, if
    // the goodbye raced a boundary).
    let stopped_in = now_cycle();
    evaluators[1].take().unwrap().stop().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    check(&log, &resources, stopped_in + 2..=now_cycle() - 1);
    assert_eq!(members(&evaluators[0]), ["amqp-e1", "amqp-e3"]);

    // A crash: covered again once three heartbeat intervals (750 ms) have passed, at the next
    // cycle.
    let died_at = Clock::System.now_ms();
    evaluators[2].take().unwrap().abort().await.unwrap();
    transports[2].close().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let taken_over = (died_at + 750).div_euclid(INTERVAL_MS) + 1;
    check(&log, &resources, taken_over..=now_cycle() - 1);
    assert_eq!(members(&evaluators[0]), ["amqp-e1"]);

    let log_now = log.lock().unwrap().clone();
    let doubles = doubles(&log_now, INTERVAL_MS);
    assert!(
        doubles.is_empty(),
        "evaluated twice in one cycle: {doubles:?}"
    );
    evaluators[0].take().unwrap().stop().await.unwrap();
}
