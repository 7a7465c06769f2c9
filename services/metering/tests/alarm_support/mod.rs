//! Helpers shared by the alarm suites: alarms and statistics to feed the evaluator, an
//! in-memory store double with canned statistics (for paused-time tests: the SQLite store
//! answers from its own thread, and a paused clock would jump ahead while it works), and a
//! store wrapper that records which alarm each evaluator evaluated in which cycle.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use tidings_metering::model::{
    Alarm, AlarmChange, AlarmState, ComparisonOperator, MeterInfo, QueryTerm, Sample,
    StatisticKind, Statistics, StatisticsQuery, ThresholdRule,
};
use tidings_metering::store::{Store, StoreError};

/// A threshold alarm on `meter` of resource `resource`: avg > 70 over 3 periods of 60 s, every
/// action list set to `log://` actions naming the state.
pub fn alarm(id: &str, meter: &str, resource: &str) -> Alarm {
    let at = Utc.timestamp_opt(0, 0).single().unwrap_or_default();
    Alarm {
        alarm_id: id.to_owned(),
        name: format!("{id}-name"),
        description: String::new(),
        alarm_type: "threshold".to_owned(),
        threshold_rule: ThresholdRule {
            meter_name: meter.to_owned(),
            threshold: 70.0,
            comparison_operator: ComparisonOperator::Gt,
            statistic: StatisticKind::Avg,
            period: 60,
            evaluation_periods: 3,
            query: vec![QueryTerm {
                field: "resource_id".to_owned(),
                op: "eq".to_owned(),
                value: resource.to_owned(),
            }],
        },
        state: AlarmState::InsufficientData,
        state_reason: "Not evaluated yet".to_owned(),
        state_timestamp: at,
        alarm_actions: vec!["log://alarm".to_owned()],
        ok_actions: vec!["log://ok".to_owned()],
        insufficient_data_actions: vec!["log://insufficient".to_owned()],
        repeat_actions: false,
        severity: "low".to_owned(),
        enabled: true,
        timestamp: at,
        project_id: None,
        user_id: None,
        time_constraints: Vec::new(),
        evaluate_timestamp: None,
    }
}

/// One bucket whose every statistic is `value` (count 1, or `value` as the count when it is a
/// whole number, for count rules).
pub fn bucket(index: i64, value: f64) -> Statistics {
    let start = Utc
        .timestamp_opt(index * 60, 0)
        .single()
        .unwrap_or_default();
    let end = Utc
        .timestamp_opt(index * 60 + 60, 0)
        .single()
        .unwrap_or_default();
    Statistics {
        avg: value,
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        count: if value >= 0.0 && value.fract() == 0.0 {
            value as u64
        } else {
            1
        },
        duration: 0.0,
        duration_start: start,
        duration_end: start,
        max: value,
        min: value,
        period: 60,
        period_start: start,
        period_end: end,
        sum: value,
        unit: "%".to_owned(),
    }
}

/// Buckets with these values, oldest first.
pub fn buckets(values: &[f64]) -> Vec<Statistics> {
    (0_i64..).zip(values).map(|(i, v)| bucket(i, *v)).collect()
}

/// An in-memory store: alarms and history kept, statistics canned per (meter, resource)
/// whatever the window.
#[derive(Debug, Default)]
pub struct MemStore {
    alarms: Mutex<BTreeMap<String, Alarm>>,
    history: Mutex<Vec<AlarmChange>>,
    statistics: Mutex<HashMap<(String, String), Vec<Statistics>>>,
}

impl MemStore {
    /// Answers statistics queries for `meter` on `resource` with buckets of `values`.
    pub fn set_statistics(&self, meter: &str, resource: &str, values: &[f64]) {
        self.statistics
            .lock()
            .unwrap()
            .insert((meter.to_owned(), resource.to_owned()), buckets(values));
    }
}

#[async_trait]
impl Store for MemStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn record(&self, samples: &[Sample]) -> Result<usize, StoreError> {
        Ok(samples.len())
    }

    async fn statistics(&self, query: &StatisticsQuery) -> Result<Vec<Statistics>, StoreError> {
        let key = (
            query.meter.clone(),
            query.resource_id.clone().unwrap_or_default(),
        );
        Ok(self
            .statistics
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .unwrap_or_default())
    }

    async fn meters(&self, _resource_id: Option<&str>) -> Result<Vec<MeterInfo>, StoreError> {
        Ok(Vec::new())
    }

    async fn create_alarm(&self, alarm: &Alarm) -> Result<(), StoreError> {
        self.alarms
            .lock()
            .unwrap()
            .insert(alarm.alarm_id.clone(), alarm.clone());
        Ok(())
    }

    async fn alarms(&self) -> Result<Vec<Alarm>, StoreError> {
        Ok(self.alarms.lock().unwrap().values().cloned().collect())
    }

    async fn alarm(&self, alarm_id: &str) -> Result<Alarm, StoreError> {
        self.alarms
            .lock()
            .unwrap()
            .get(alarm_id)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchAlarm(alarm_id.to_owned()))
    }

    async fn delete_alarm(&self, alarm_id: &str) -> Result<(), StoreError> {
        self.alarms.lock().unwrap().remove(alarm_id);
        Ok(())
    }

    async fn set_state(&self, change: &AlarmChange) -> Result<(), StoreError> {
        let mut alarms = self.alarms.lock().unwrap();
        let alarm = alarms
            .get_mut(&change.alarm_id)
            .ok_or_else(|| StoreError::NoSuchAlarm(change.alarm_id.clone()))?;
        alarm.state = change.current;
        alarm.state_reason = change.reason.clone();
        alarm.state_timestamp = change.timestamp;
        self.history.lock().unwrap().push(change.clone());
        Ok(())
    }

    async fn history(&self, alarm_id: &str) -> Result<Vec<AlarmChange>, StoreError> {
        Ok(self
            .history
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.alarm_id == alarm_id)
            .cloned()
            .collect())
    }
}

/// One statistics query, as an evaluation of the alarm on `resource`.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Which evaluator (the wrapper's label).
    pub evaluator: String,
    /// The alarm's resource (one per alarm in these suites).
    pub resource: String,
    /// The end of the window: when the evaluation ran.
    pub at: DateTime<Utc>,
}

impl Evaluation {
    /// The cycle the evaluation belongs to, for cycles of `interval_ms`.
    pub fn cycle(&self, interval_ms: i64) -> i64 {
        self.at.timestamp_millis().div_euclid(interval_ms)
    }
}

/// Shared log of evaluations.
pub type EvaluationLog = Arc<Mutex<Vec<Evaluation>>>;

/// A store that logs every statistics query under `label`, then asks `inner`.
#[derive(Debug)]
pub struct Recording {
    pub inner: Arc<dyn Store>,
    pub label: String,
    pub log: EvaluationLog,
}

#[async_trait]
impl Store for Recording {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn record(&self, samples: &[Sample]) -> Result<usize, StoreError> {
        self.inner.record(samples).await
    }

    async fn statistics(&self, query: &StatisticsQuery) -> Result<Vec<Statistics>, StoreError> {
        self.log.lock().unwrap().push(Evaluation {
            evaluator: self.label.clone(),
            resource: query.resource_id.clone().unwrap_or_default(),
            at: query.end.unwrap_or_else(Utc::now),
        });
        self.inner.statistics(query).await
    }

    async fn meters(&self, resource_id: Option<&str>) -> Result<Vec<MeterInfo>, StoreError> {
        self.inner.meters(resource_id).await
    }

    async fn create_alarm(&self, alarm: &Alarm) -> Result<(), StoreError> {
        self.inner.create_alarm(alarm).await
    }

    async fn alarms(&self) -> Result<Vec<Alarm>, StoreError> {
        self.inner.alarms().await
    }

    async fn alarm(&self, alarm_id: &str) -> Result<Alarm, StoreError> {
        self.inner.alarm(alarm_id).await
    }

    async fn delete_alarm(&self, alarm_id: &str) -> Result<(), StoreError> {
        self.inner.delete_alarm(alarm_id).await
    }

    async fn set_state(&self, change: &AlarmChange) -> Result<(), StoreError> {
        self.inner.set_state(change).await
    }

    async fn history(&self, alarm_id: &str) -> Result<Vec<AlarmChange>, StoreError> {
        self.inner.history(alarm_id).await
    }
}

/// For each cycle in `cycles`: how many times each of `resources` was evaluated, and by whom.
/// Returns the problems found: (cycle, resource, evaluators) where the count is not one.
pub fn coverage_problems(
    log: &[Evaluation],
    interval_ms: i64,
    cycles: std::ops::RangeInclusive<i64>,
    resources: &[String],
) -> Vec<(i64, String, Vec<String>)> {
    let mut by: HashMap<(i64, &str), Vec<String>> = HashMap::new();
    for evaluation in log {
        by.entry((evaluation.cycle(interval_ms), evaluation.resource.as_str()))
            .or_default()
            .push(evaluation.evaluator.clone());
    }
    let mut problems = Vec::new();
    for cycle in cycles {
        for resource in resources {
            let who = by
                .get(&(cycle, resource.as_str()))
                .cloned()
                .unwrap_or_default();
            if who.len() != 1 {
                problems.push((cycle, resource.clone(), who));
            }
        }
    }
    problems
}

/// Cycles in which some alarm was evaluated more than once (over the whole log).
pub fn doubles(log: &[Evaluation], interval_ms: i64) -> Vec<(i64, String, Vec<String>)> {
    let mut by: BTreeMap<(i64, String), Vec<String>> = BTreeMap::new();
    for evaluation in log {
        by.entry((evaluation.cycle(interval_ms), evaluation.resource.clone()))
            .or_default()
            .push(evaluation.evaluator.clone());
    }
    by.into_iter()
        .filter(|(_, who)| who.len() > 1)
        .map(|((cycle, resource), who)| (cycle, resource, who))
        .collect()
}
