//! The alarm evaluator: Aodh's threshold semantics as a table of plain unit cases, the hash
//! ring's properties, and the evaluator on the memory bus with Tokio's paused clock (state
//! transitions, history, the `alarm.update` hand-off, partitioning across three evaluators).
//! `metering_alarms_amqp.rs` runs the partitioning on RabbitMQ.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alarm_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tidings::notify::{IncomingNotification, NotificationEndpoint, NotificationListener, Priority};
use tidings::rpc::ServiceClient;
use tidings::{Context, Target, Transport};
use tidings_metering::evaluator::group::{EvaluatorGroupApi, HEARTBEAT, LEAVE};
use tidings_metering::evaluator::membership::{Heartbeat, Leave};
use tidings_metering::evaluator::threshold::{self, Decision};
use tidings_metering::evaluator::{
    self, Clock, Evaluator, EvaluatorConfig, HashRing, GROUP_EXCHANGE, GROUP_TOPIC,
};
use tidings_metering::model::{
    AlarmState, ComparisonOperator, StatisticKind, Statistics, TimeConstraint,
};
use tidings_metering::store::Store;
use tidings_suites::Bus;
use tokio::sync::mpsc;

use alarm_support::{alarm, buckets, coverage_problems, doubles, MemStore, Recording};

// ---------------------------------------------------------------------------------------------
// Semantics table

use AlarmState::{Alarm as A, InsufficientData as U, Ok as O};

/// Evaluates an alarm (gt 70 on avg over 3 periods unless changed) in `state` against buckets.
fn run(state: AlarmState, repeat: bool, values: &[f64]) -> Option<Decision> {
    let mut subject = alarm("a", "cpu", "r");
    subject.state = state;
    subject.repeat_actions = repeat;
    threshold::evaluate(&subject, &buckets(values))
}

fn expect(
    case: &str,
    got: Option<Decision>,
    state: AlarmState,
    changed: bool,
    reason: &str,
    reason_data: Value,
) {
    let got = got.unwrap_or_else(|| panic!("{case}: expected a decision, got none"));
    assert_eq!(got.state, state, "{case}");
    assert_eq!(got.changed, changed, "{case}");
    assert_eq!(got.reason, reason, "{case}");
    assert_eq!(got.reason_data, reason_data, "{case}");
}

fn data(disposition: &str, count: u64, most_recent: Value) -> Value {
    json!({"type": "threshold", "disposition": disposition, "count": count, "most_recent": most_recent})
}

#[test]
fn too_few_buckets_is_insufficient_data() {
    expect(
        "two of three buckets, from ok",
        run(O, false, &[80.0, 90.0]),
        U,
        true,
        "3 datapoints are unknown",
        data("unknown", 3, json!(90.0)),
    );
    expect(
        "no bucket at all, from alarm",
        run(A, false, &[]),
        U,
        true,
        "3 datapoints are unknown",
        data("unknown", 3, Value::Null),
    );
    assert_eq!(run(U, false, &[80.0]), None, "already unknown: nothing");
    expect(
        "already unknown, repeat_actions: Aodh's 'Remaining as' reason",
        run(U, true, &[80.0]),
        U,
        false,
        "Remaining as insufficient data due to 0 samples outside threshold, most recent: 80.0",
        data("outside", 0, json!(80.0)),
    );
}

#[test]
fn all_buckets_breaching_is_alarm() {
    let reason = "Transition to alarm due to 3 samples outside threshold, most recent: 75.0";
    for from in [O, U] {
        expect(
            &format!("from {from:?}"),
            run(from, false, &[80.0, 90.0, 75.0]),
            A,
            true,
            reason,
            data("outside", 3, json!(75.0)),
        );
    }
    assert_eq!(
        run(A, false, &[80.0, 90.0, 75.0]),
        None,
        "no change, no repeat"
    );
}

#[test]
fn no_bucket_breaching_is_ok() {
    expect(
        "from alarm",
        run(A, false, &[10.0, 20.0, 30.5]),
        O,
        true,
        "Transition to ok due to 3 samples inside threshold, most recent: 30.5",
        data("inside", 3, json!(30.5)),
    );
    assert_eq!(run(O, false, &[10.0, 20.0, 30.0]), None);
}

#[test]
fn only_the_last_evaluation_periods_buckets_count() {
    expect(
        "the oldest (ok) bucket falls out of the window",
        run(O, false, &[10.0, 80.0, 90.0, 95.0]),
        A,
        true,
        "Transition to alarm due to 3 samples outside threshold, most recent: 95.0",
        data("outside", 3, json!(95.0)),
    );
}

#[test]
fn mixed_buckets_keep_a_known_state() {
    assert_eq!(run(O, false, &[80.0, 20.0, 90.0]), None, "ok stays ok");
    assert_eq!(
        run(A, false, &[20.0, 80.0, 10.0]),
        None,
        "alarm stays alarm"
    );
}

#[test]
fn mixed_buckets_from_insufficient_data_follow_the_latest() {
    expect(
        "latest breaches",
        run(U, false, &[80.0, 20.0, 90.0]),
        A,
        true,
        "Transition to alarm due to 2 samples outside threshold, most recent: 90.0",
        data("outside", 2, json!(90.0)),
    );
    expect(
        "latest inside",
        run(U, false, &[80.0, 90.0, 20.0]),
        O,
        true,
        "Transition to ok due to 1 samples inside threshold, most recent: 20.0",
        data("inside", 1, json!(20.0)),
    );
}

#[test]
fn repeat_actions_re_notify_the_current_state() {
    expect(
        "unequivocal, same state",
        run(A, true, &[80.0, 90.0, 75.0]),
        A,
        false,
        "Remaining as alarm due to 3 samples outside threshold, most recent: 75.0",
        data("outside", 3, json!(75.0)),
    );
    expect(
        "mixed, known state kept and re-notified",
        run(O, true, &[80.0, 20.0, 90.0]),
        O,
        false,
        "Remaining as ok due to 1 samples inside threshold, most recent: 90.0",
        data("inside", 1, json!(90.0)),
    );
}

#[test]
fn each_comparison_operator() {
    use ComparisonOperator::{Eq, Ge, Gt, Le, Lt, Ne};
    // (operator, breaches at 70 against 70, breaches at 69 against 70)
    let table = [
        (Lt, false, true),
        (Le, true, true),
        (Eq, true, false),
        (Ne, false, true),
        (Ge, true, false),
        (Gt, false, false),
    ];
    for (op, at, below) in table {
        for (value, breach) in [(70.0, at), (69.0, below)] {
            let mut subject = alarm("a", "cpu", "r");
            subject.threshold_rule.comparison_operator = op;
            subject.threshold_rule.evaluation_periods = 1;
            let decision = threshold::evaluate(&subject, &buckets(&[value])).unwrap();
            let want = if breach { A } else { O };
            assert_eq!(decision.state, want, "{op:?} {value} vs 70");
        }
    }
}

#[test]
fn each_statistic() {
    let bucket = Statistics {
        avg: 50.0,
        count: 4,
        min: 10.0,
        max: 90.0,
        sum: 200.0,
        ..buckets(&[0.0])[0].clone()
    };
    // (statistic, threshold gt, state, most recent as printed, as JSON)
    let table = [
        (StatisticKind::Avg, 40.0, A, "50.0", json!(50.0)),
        (StatisticKind::Min, 40.0, O, "10.0", json!(10.0)),
        (StatisticKind::Max, 40.0, A, "90.0", json!(90.0)),
        (StatisticKind::Sum, 250.0, O, "200.0", json!(200.0)),
        (StatisticKind::Count, 3.0, A, "4", json!(4)),
    ];
    for (statistic, limit, state, shown, most_recent) in table {
        let mut subject = alarm("a", "cpu", "r");
        subject.threshold_rule.statistic = statistic;
        subject.threshold_rule.threshold = limit;
        subject.threshold_rule.evaluation_periods = 1;
        let decision = threshold::evaluate(&subject, std::slice::from_ref(&bucket)).unwrap();
        assert_eq!(decision.state, state, "{statistic:?}");
        assert!(
            decision.reason.ends_with(&format!("most recent: {shown}")),
            "{statistic:?}: {}",
            decision.reason
        );
        assert_eq!(decision.reason_data["most_recent"], most_recent);
    }
}

#[test]
fn the_statistics_query_covers_one_more_period_than_evaluated() {
    let subject = alarm("a", "cpu", "res-1");
    let now = chrono::Utc::now();
    let query = threshold::statistics_query(&subject.threshold_rule, now, Duration::ZERO);
    assert_eq!(query.meter, "cpu");
    assert_eq!(query.period, 60);
    assert_eq!(query.resource_id.as_deref(), Some("res-1"));
    assert_eq!(query.project_id, None);
    assert_eq!(query.end, Some(now));
    assert_eq!(query.start, Some(now - chrono::Duration::seconds(240)));
    let lagged = threshold::statistics_query(&subject.threshold_rule, now, Duration::from_secs(5));
    assert_eq!(lagged.start, Some(now - chrono::Duration::seconds(245)));
}

// ---------------------------------------------------------------------------------------------
// Hash ring

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("alarm-{i:04}")).collect()
}

#[test]
fn the_ring_is_deterministic_whatever_the_member_order() {
    let one = HashRing::new(["c", "a", "b"]);
    let two = HashRing::new(["b", "c", "a", "a"]);
    for id in ids(500) {
        assert_eq!(one.node(&id), two.node(&id), "{id}");
    }
}

#[test]
fn the_ring_is_roughly_balanced() {
    let members = ["evaluator-1", "evaluator-2", "evaluator-3"];
    let ring = HashRing::new(members);
    let all = ids(3000);
    for member in members {
        let share = all.iter().filter(|id| ring.belongs_to(member, id)).count();
        assert!(
            (700..=1300).contains(&share),
            "{member} owns {share} of 3000"
        );
    }
}

#[test]
fn only_the_leavers_ids_move_when_a_member_leaves() {
    let before = HashRing::new(["e1", "e2", "e3"]);
    let after = HashRing::new(["e1", "e3"]);
    let mut moved = 0;
    for id in ids(2000) {
        let (was, is) = (before.node(&id).unwrap(), after.node(&id).unwrap());
        if was == "e2" {
            moved += 1;
        } else {
            assert_eq!(was, is, "{id} moved from a member that stayed");
        }
    }
    assert!(moved > 0);
    // And the way back: a joiner only takes ids, never shuffles the others.
    for id in ids(2000) {
        let (was, is) = (after.node(&id).unwrap(), before.node(&id).unwrap());
        assert!(was == is || is == "e2", "{id}");
    }
}

// ---------------------------------------------------------------------------------------------
// The evaluator on the memory bus, paused clock

fn fast_config(member: &str) -> EvaluatorConfig {
    let mut config = EvaluatorConfig::every(Duration::from_secs(1));
    config.member_id = Some(member.to_owned());
    config.clock = Clock::tokio();
    config
}

/// Listens for `alarm.update` notifications like the notifier does.
async fn alarm_updates(
    transport: &Transport,
) -> (
    NotificationListener,
    mpsc::UnboundedReceiver<IncomingNotification>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let endpoint = NotificationEndpoint::new().on(Priority::Sample, move |n| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(n);
            Ok::<_, std::convert::Infallible>(tidings::notify::Outcome::Handled)
        }
    });
    let listener = NotificationListener::builder(
        transport,
        vec![Target::topic("alarming").with_exchange("aodh")],
    )
    .endpoint(endpoint)
    .start()
    .await
    .unwrap();
    (listener, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<IncomingNotification>) -> IncomingNotification {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no alarm.update within 30 s")
        .expect("listener gone")
}

#[tokio::test(start_paused = true)]
async fn alarms_outside_all_their_time_constraints_are_not_evaluated() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let store = Arc::new(MemStore::default());
    let window = |start: &str, duration: u64| TimeConstraint {
        name: "w".into(),
        description: String::new(),
        start: start.into(),
        duration,
        timezone: "Asia/Tokyo".into(),
    };
    // Opens every minute for a minute: always open. Opens at midnight on 1 January (Tokyo)
    // for a minute: closed but for one minute a year.
    let mut open = alarm("open", "cpu", "r-1");
    open.time_constraints = vec![window("* * * * *", 60)];
    let mut closed = alarm("closed", "cpu", "r-1");
    closed.time_constraints = vec![window("0 0 1 1 *", 60)];
    store.create_alarm(&open).await.unwrap();
    store.create_alarm(&closed).await.unwrap();
    store.set_statistics("cpu", "r-1", &[80.0, 90.0, 95.0]);
    let (_listener, mut updates) = alarm_updates(&transport).await;
    let evaluator = evaluator::start(&transport, store.clone(), fast_config("solo"))
        .await
        .unwrap();
    let update = next(&mut updates).await;
    assert_eq!(update.payload["alarm_id"], "open");
    // Let a few more cycles pass: the closed one never moves.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.alarm("open").await.unwrap().state, A);
    assert_eq!(store.alarm("closed").await.unwrap().state, U);
    assert!(store.history("closed").await.unwrap().is_empty());
    evaluator.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn transitions_are_recorded_and_handed_off_with_aodhs_contract() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let store = Arc::new(MemStore::default());
    store
        .create_alarm(&alarm("a-1", "cpu", "r-1"))
        .await
        .unwrap();
    store.set_statistics("cpu", "r-1", &[80.0, 90.0, 95.0]);
    let (_listener, mut updates) = alarm_updates(&transport).await;
    let evaluator = evaluator::start(&transport, store.clone(), fast_config("solo"))
        .await
        .unwrap();

    let update = next(&mut updates).await;
    assert_eq!(update.event_type, "alarm.update");
    assert_eq!(update.priority, Priority::Sample);
    assert_eq!(update.publisher_id, "alarming.evaluator");
    let reason = "Transition to alarm due to 3 samples outside threshold, most recent: 95.0";
    assert_eq!(
        update.payload,
        json!({
            "actions": ["log://alarm"],
            "alarm_id": "a-1",
            "alarm_name": "a-1-name",
            "severity": "low",
            "previous": "insufficient data",
            "current": "alarm",
            "reason": reason,
            "reason_data": {"type": "threshold", "disposition": "outside", "count": 3, "most_recent": 95.0},
        })
    );
    let history = store.history("a-1").await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].change_type, "state transition");
    assert_eq!(history[0].previous, Some(U));
    assert_eq!(history[0].current, A);
    assert_eq!(history[0].reason, reason);
    assert_eq!(store.alarm("a-1").await.unwrap().state, A);

    store.set_statistics("cpu", "r-1", &[10.0, 20.0, 30.0]);
    let update = next(&mut updates).await;
    assert_eq!(update.payload["previous"], "alarm");
    assert_eq!(update.payload["current"], "ok");
    assert_eq!(update.payload["actions"], json!(["log://ok"]));
    assert_eq!(store.history("a-1").await.unwrap().len(), 2);

    let report = evaluator.status().report();
    assert_eq!(report.transitions, 2);
    assert_eq!(report.notifications_sent, 2);
    assert_eq!(report.members, ["solo"]);
    assert_eq!(report.share, 1);
    evaluator.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn nothing_is_sent_when_the_new_state_has_no_actions() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let store = Arc::new(MemStore::default());
    let mut quiet = alarm("quiet", "cpu", "r-1");
    quiet.alarm_actions.clear();
    store.create_alarm(&quiet).await.unwrap();
    store.set_statistics("cpu", "r-1", &[80.0, 90.0, 95.0]);
    let (_listener, mut updates) = alarm_updates(&transport).await;
    let evaluator = evaluator::start(&transport, store.clone(), fast_config("solo"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.alarm("quiet").await.unwrap().state, A);
    assert!(updates.try_recv().is_err(), "no alarm.update expected");
    let report = evaluator.status().report();
    assert_eq!((report.transitions, report.notifications_sent), (1, 0));
    evaluator.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn repeat_actions_re_notify_every_cycle_without_new_history() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let store = Arc::new(MemStore::default());
    let mut noisy = alarm("noisy", "cpu", "r-1");
    noisy.repeat_actions = true;
    store.create_alarm(&noisy).await.unwrap();
    store.set_statistics("cpu", "r-1", &[80.0, 90.0, 95.0]);
    let (_listener, mut updates) = alarm_updates(&transport).await;
    let evaluator = evaluator::start(&transport, store.clone(), fast_config("solo"))
        .await
        .unwrap();
    let first = next(&mut updates).await;
    assert!(first.payload["reason"]
        .as_str()
        .unwrap()
        .starts_with("Transition to alarm"));
    for _ in 0..3 {
        let again = next(&mut updates).await;
        assert_eq!(again.payload["previous"], "alarm");
        assert_eq!(again.payload["current"], "alarm");
        assert!(again.payload["reason"]
            .as_str()
            .unwrap()
            .starts_with("Remaining as alarm"));
    }
    assert_eq!(store.history("noisy").await.unwrap().len(), 1);
    evaluator.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn disabled_alarms_are_not_evaluated() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let store = Arc::new(MemStore::default());
    let mut off = alarm("off", "cpu", "r-1");
    off.enabled = false;
    store.create_alarm(&off).await.unwrap();
    store.set_statistics("cpu", "r-1", &[80.0, 90.0, 95.0]);
    let evaluator = evaluator::start(&transport, store.clone(), fast_config("solo"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = evaluator.status().report();
    assert!(report.cycles >= 3, "{report:?}");
    assert_eq!(report.evaluated, 0);
    evaluator.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Partitioning on the memory bus, paused clock

const INTERVAL_MS: i64 = 1000;

struct Group {
    evaluators: Vec<Option<Evaluator>>,
    log: alarm_support::EvaluationLog,
    resources: Vec<String>,
    clock: Clock,
    _transports: Vec<Transport>,
}

impl Group {
    /// Three evaluators, each on its own transport, over one store with `alarms` alarms.
    async fn start(bus: &Bus, alarms: usize, clock: Clock, store: Arc<dyn Store>) -> Self {
        let mut resources = Vec::new();
        for i in 0..alarms {
            let resource = format!("res-{i:02}");
            store
                .create_alarm(&alarm(&format!("alarm-{i:02}"), "cpu", &resource))
                .await
                .unwrap();
            resources.push(resource);
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut evaluators = Vec::new();
        let mut transports = Vec::new();
        for name in ["e1", "e2", "e3"] {
            let transport = bus.transport().await;
            let recording = Arc::new(Recording {
                inner: store.clone(),
                label: name.to_owned(),
                log: log.clone(),
            });
            let mut config = fast_config(name);
            config.clock = clock;
            evaluators.push(Some(
                evaluator::start(&transport, recording, config)
                    .await
                    .unwrap(),
            ));
            transports.push(transport);
        }
        Self {
            evaluators,
            log,
            resources,
            clock,
            _transports: transports,
        }
    }

    fn cycle_now(&self) -> i64 {
        self.clock.now_ms().div_euclid(INTERVAL_MS)
    }

    fn members(&self, index: usize) -> Vec<String> {
        self.evaluators[index]
            .as_ref()
            .map(|e| e.status().report().members)
            .unwrap_or_default()
    }

    /// Waits (by heartbeats, up to 20 s) until every running evaluator's last cycle had
    /// `want` members.
    async fn settle(&self, want: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let running: Vec<usize> = (0..3).filter(|i| self.evaluators[*i].is_some()).collect();
            if running.iter().all(|i| self.members(*i).len() == want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "members never settled at {want}: {:?}",
                running.iter().map(|i| self.members(*i)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn check_cycles(&self, cycles: std::ops::RangeInclusive<i64>) {
        let log = self.log.lock().unwrap().clone();
        assert!(
            cycles.clone().count() >= 2,
            "too few cycles to check: {cycles:?}"
        );
        let problems = coverage_problems(&log, INTERVAL_MS, cycles.clone(), &self.resources);
        assert!(problems.is_empty(), "cycles {cycles:?}: {problems:?}");
    }

    fn check_no_doubles(&self) {
        let log = self.log.lock().unwrap().clone();
        let doubles = doubles(&log, INTERVAL_MS);
        assert!(
            doubles.is_empty(),
            "evaluated twice in one cycle: {doubles:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn three_evaluators_share_the_alarms_and_take_over_from_one_that_stops_or_dies() {
    let bus = Bus::memory();
    let clock = Clock::tokio();
    let group = Group::start(&bus, 30, clock, Arc::new(MemStore::default())).await;
    let mut group = group;
    group.settle(3).await;

    // Steady state: every alarm exactly once per cycle, split between the three.
    let from = group.cycle_now() + 1;
    tokio::time::sleep(Duration::from_secs(5)).await;
    group.check_cycles(from..=group.cycle_now() - 1);
    let shares: Vec<usize> = group
        .evaluators
        .iter()
        .map(|e| e.as_ref().unwrap().status().report().share)
        .collect();
    assert_eq!(shares.iter().sum::<usize>(), 30, "{shares:?}");
    assert!(shares.iter().all(|s| *s > 0), "{shares:?}");

    // A clean stop mid-cycle: the others take its alarms from the next cycle on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_in = group.cycle_now();
    group.evaluators[1].take().unwrap().stop().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    group.check_cycles(stopped_in + 1..=group.cycle_now() - 1);
    assert_eq!(group.members(0), ["e1", "e3"]);

    // A crash (no goodbye): its alarms are taken within three heartbeat intervals, rounded up
    // to the next cycle.
    let died_at = clock.now_ms();
    group.evaluators[2].take().unwrap().abort().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let taken_over = (died_at + 750).div_euclid(INTERVAL_MS) + 1;
    group.check_cycles(taken_over..=group.cycle_now() - 1);
    assert_eq!(group.members(0), ["e1"]);
    assert_eq!(
        group.evaluators[0]
            .as_ref()
            .unwrap()
            .status()
            .report()
            .share,
        30
    );

    group.check_no_doubles();
    group.evaluators[0].take().unwrap().stop().await.unwrap();
}

/// Anyone on the bus can cast to the group. A `leave` in a member's name stamped far ahead and
/// a heartbeat of an invented member stamped a year ahead cost at most a cycle or two: the
/// member that keeps beating is back, the invented one is pruned, and every alarm is again
/// evaluated exactly once per cycle.
#[tokio::test(start_paused = true)]
async fn a_forged_leave_or_a_heartbeat_from_the_future_does_not_outlast_the_truth() {
    let bus = Bus::memory();
    let clock = Clock::tokio();
    let mut group = Group::start(&bus, 30, clock, Arc::new(MemStore::default())).await;
    group.settle(3).await;

    let forger = bus.transport().await;
    let cast = ServiceClient::<EvaluatorGroupApi>::new(
        &forger,
        Target::topic(GROUP_TOPIC).with_exchange(GROUP_EXCHANGE),
    );
    cast.fanout(
        &Context::new(),
        LEAVE,
        Leave {
            member_id: "e2".into(),
            last_cycle: 0,
            sent_at_ms: i64::MAX,
        },
    )
    .await
    .unwrap();
    cast.fanout(
        &Context::new(),
        HEARTBEAT,
        Heartbeat {
            member_id: "ghost".into(),
            joined_at_ms: 0,
            sent_at_ms: clock.now_ms() + 365 * 86_400_000,
            evaluation_interval_ms: INTERVAL_MS,
        },
    )
    .await
    .unwrap();

    // Within the skew allowance (the 750 ms timeout) and a heartbeat, e2 is back; the ghost
    // counts for no cycle once its clamped beat is older than the timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    group.settle(3).await;
    for i in 0..3 {
        assert_eq!(group.members(i), ["e1", "e2", "e3"]);
        let live = group.evaluators[i]
            .as_ref()
            .unwrap()
            .status()
            .report()
            .live_members;
        assert_eq!(live, ["e1", "e2", "e3"]);
    }
    let from = group.cycle_now() + 1;
    tokio::time::sleep(Duration::from_secs(4)).await;
    group.check_cycles(from..=group.cycle_now() - 1);
    group.check_no_doubles();
    for evaluator in &mut group.evaluators {
        evaluator.take().unwrap().stop().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Under the engine

#[tokio::test(start_paused = true)]
async fn evaluator_and_notifier_run_as_manifolds_and_report() {
    use tidings_metering::alarm_notifier::{self, NotifierConfig, NotifierInputs};
    use tidings_metering::evaluator::EvaluatorInputs;
    use tidings_metering::graph;
    use tidings_runtime::{Engine, EngineConfig, Manifold, TaskWorker};

    let bus = Bus::memory();
    let transport = bus.transport().await;
    let store = Arc::new(MemStore::default());
    store
        .create_alarm(&alarm("a-1", "cpu", "r-1"))
        .await
        .unwrap();
    store.set_statistics("cpu", "r-1", &[80.0, 90.0, 95.0]);
    let store: Arc<dyn Store> = store;

    let engine = Engine::new(EngineConfig::default()).unwrap();
    let t = transport.clone();
    engine
        .install(
            graph::TRANSPORT,
            Manifold::new(move |_ctx, _getter| {
                let t = t.clone();
                async move {
                    Ok(TaskWorker::spawn(|stop| async move {
                        stop.cancelled().await;
                        Ok(())
                    })
                    .with_resource(t))
                }
            })
            .with_output(|w: &TaskWorker<Transport>| w.resource().clone()),
        )
        .unwrap();
    let s = store.clone();
    engine
        .install(
            graph::STORE,
            Manifold::new(move |_ctx, _getter| {
                let s = s.clone();
                async move {
                    Ok(TaskWorker::spawn(|stop| async move {
                        stop.cancelled().await;
                        Ok(())
                    })
                    .with_resource(s))
                }
            })
            .with_output(|w: &TaskWorker<Arc<dyn Store>>| w.resource().clone()),
        )
        .unwrap();
    engine
        .install(
            graph::EVALUATOR,
            evaluator::manifold(EvaluatorInputs::default(), fast_config("solo")),
        )
        .unwrap();
    engine
        .install(
            graph::NOTIFIER,
            alarm_notifier::manifold(NotifierInputs::default(), NotifierConfig::default()),
        )
        .unwrap();

    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = engine.report();
    let evaluator = report.manifolds[graph::EVALUATOR].report.clone().unwrap();
    assert_eq!(evaluator["member_id"], "solo");
    assert_eq!(evaluator["members"], json!(["solo"]));
    assert_eq!(evaluator["share"], 1);
    assert_eq!(evaluator["transitions"], 1);
    assert_eq!(evaluator["notifications_sent"], 1);
    assert!(evaluator["evaluated"].as_u64().unwrap() >= 2, "{evaluator}");
    let notifier = report.manifolds[graph::NOTIFIER].report.clone().unwrap();
    assert_eq!(notifier["notifications"], 1, "{notifier}");
    assert_eq!(notifier["actions_run"], 1, "{notifier}");
    engine.kill();
    engine.wait().await.unwrap();
}
