//! Aodh's threshold evaluation (`aodh/evaluator/threshold.py`) as pure functions: which
//! statistics to ask for, how to read them, and what the alarm should do. No I/O here, so the
//! semantics are tested as plain unit tests; `cycle.rs` does the fetching, storing and sending.
//!
//! The steps, each a function:
//! 1. [`statistics_query`]: the window is `period × (evaluation_periods + 1)` (plus an optional
//!    ingestion lag) ending now, for the rule's meter, period and `resource_id`/`project_id`
//!    terms;
//! 2. [`sanitize`]: keep the last `evaluation_periods` buckets, each projected to the rule's
//!    statistic;
//! 3. [`judge`]: fewer values than `evaluation_periods` → insufficient data; all breach →
//!    `alarm`; none → `ok`; mixed → a trend given by the most recent value;
//! 4. [`decide`]: Aodh's `_transition_alarm`, with its reason strings and `reason_data`.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use serde_json::{json, Value};

use crate::model::{
    Alarm, AlarmState, ComparisonOperator, StatisticKind, Statistics, StatisticsQuery,
    ThresholdRule,
};

/// Extra buckets fetched before the evaluated ones (Aodh's `look_back`).
pub const LOOK_BACK: u32 = 1;

/// The statistics query for `rule` evaluated at `now`: the meter, the rule's period, the
/// `resource_id`/`project_id` terms of its query (operator `eq`; other terms are not
/// expressible in a statistics query and are ignored), over
/// `period × (evaluation_periods + 1) + ingestion_lag` seconds ending at `now`.
pub fn statistics_query(
    rule: &ThresholdRule,
    now: DateTime<Utc>,
    ingestion_lag: std::time::Duration,
) -> StatisticsQuery {
    let buckets = u64::from(rule.evaluation_periods) + u64::from(LOOK_BACK);
    let window_ms = rule
        .period
        .saturating_mul(buckets)
        .saturating_mul(1000)
        .saturating_add(u64::try_from(ingestion_lag.as_millis()).unwrap_or(u64::MAX));
    let window = TimeDelta::milliseconds(i64::try_from(window_ms).unwrap_or(i64::MAX));
    let start = now
        .checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let term = |field: &str| {
        rule.query
            .iter()
            .find(|t| t.field == field && t.op == "eq")
            .map(|t| t.value.clone())
    };
    StatisticsQuery {
        meter: rule.meter_name.clone(),
        period: rule.period,
        resource_id: term("resource_id"),
        project_id: term("project_id"),
        start: Some(start),
        end: Some(now),
    }
}

/// The values compared: the last `evaluation_periods` buckets (in the order given, which is
/// by period start), each projected to the rule's statistic.
pub fn sanitize(rule: &ThresholdRule, statistics: &[Statistics]) -> Vec<f64> {
    let keep = usize::try_from(rule.evaluation_periods).unwrap_or(usize::MAX);
    let skip = statistics.len().saturating_sub(keep);
    statistics[skip..]
        .iter()
        .map(|s| project(rule.statistic, s))
        .collect()
}

fn project(statistic: StatisticKind, s: &Statistics) -> f64 {
    match statistic {
        StatisticKind::Avg => s.avg,
        StatisticKind::Min => s.min,
        StatisticKind::Max => s.max,
        StatisticKind::Sum => s.sum,
        // Counts stay exact far beyond any realistic bucket.
        #[allow(clippy::cast_precision_loss)]
        StatisticKind::Count => s.count as f64,
    }
}

/// Whether `value` breaches `threshold` under `op` (Aodh's `COMPARATORS`).
pub fn breaches(op: ComparisonOperator, value: f64, threshold: f64) -> bool {
    match op {
        ComparisonOperator::Lt => value < threshold,
        ComparisonOperator::Le => value <= threshold,
        ComparisonOperator::Eq => value == threshold,
        ComparisonOperator::Ne => value != threshold,
        ComparisonOperator::Ge => value >= threshold,
        ComparisonOperator::Gt => value > threshold,
    }
}

/// What the values say, before the alarm's current state is considered.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Fewer values than `evaluation_periods`.
    Insufficient {
        /// The values there were.
        values: Vec<f64>,
    },
    /// Every value breached (`alarm`) or none did (`ok`).
    Unequivocal {
        /// `Alarm` or `Ok`.
        state: AlarmState,
        /// The values compared.
        values: Vec<f64>,
        /// How many breached.
        outside: usize,
    },
    /// Some breached, some did not; `trend` follows the most recent value.
    Mixed {
        /// `Alarm` when the most recent value breached, else `Ok`.
        trend: AlarmState,
        /// The values compared.
        values: Vec<f64>,
        /// How many breached.
        outside: usize,
    },
}

/// Compares the sanitized `values` with the rule (Aodh's `evaluate_rule`).
pub fn judge(rule: &ThresholdRule, values: Vec<f64>) -> Verdict {
    let wanted = usize::try_from(rule.evaluation_periods).unwrap_or(usize::MAX);
    if values.len() < wanted || values.is_empty() {
        return Verdict::Insufficient { values };
    }
    let compared: Vec<bool> = values
        .iter()
        .map(|v| breaches(rule.comparison_operator, *v, rule.threshold))
        .collect();
    let outside = compared.iter().filter(|c| **c).count();
    if outside == compared.len() || outside == 0 {
        let state = if outside == 0 {
            AlarmState::Ok
        } else {
            AlarmState::Alarm
        };
        return Verdict::Unequivocal {
            state,
            values,
            outside,
        };
    }
    let trend = if compared.last().copied().unwrap_or(false) {
        AlarmState::Alarm
    } else {
        AlarmState::Ok
    };
    Verdict::Mixed {
        trend,
        values,
        outside,
    }
}

/// What to do with an alarm after an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The state after the evaluation.
    pub state: AlarmState,
    /// True for a transition (recorded in history, then notified); false for a repeat of
    /// the current state (`repeat_actions`: notified only).
    pub changed: bool,
    /// Aodh's reason string.
    pub reason: String,
    /// Aodh's reason data (`type`, `disposition`, `count`, `most_recent`).
    pub reason_data: Value,
}

/// Aodh's `_transition_alarm`: given the alarm's `current` state, its `repeat_actions` flag
/// and the verdict, what to record and notify; `None` when nothing happens.
///
/// - insufficient data while in another state → transition to `insufficient data`;
/// - mixed while in `insufficient data` → transition to the trend;
/// - mixed while in a known state → keep it (with `repeat_actions`: re-notify it);
/// - unequivocal and different → transition; the same → re-notify with `repeat_actions`.
pub fn decide(
    current: AlarmState,
    repeat_actions: bool,
    rule: &ThresholdRule,
    verdict: Verdict,
) -> Option<Decision> {
    let unknown = current == AlarmState::InsufficientData;
    match verdict {
        Verdict::Mixed {
            trend,
            values,
            outside,
        } => {
            if !(unknown || repeat_actions) {
                return None;
            }
            let state = if unknown { trend } else { current };
            Some(reasoned(current, state, rule.statistic, &values, outside))
        }
        Verdict::Insufficient { values } if !unknown => Some(Decision {
            state: AlarmState::InsufficientData,
            changed: true,
            reason: format!("{} datapoints are unknown", rule.evaluation_periods),
            reason_data: reason_data(
                "unknown",
                u64::from(rule.evaluation_periods),
                most_recent(rule.statistic, &values),
            ),
        }),
        // Already unknown: Aodh only re-notifies, with its ordinary "Remaining as" reason.
        Verdict::Insufficient { values } => repeat_actions.then(|| {
            reasoned(
                current,
                AlarmState::InsufficientData,
                rule.statistic,
                &values,
                0,
            )
        }),
        Verdict::Unequivocal {
            state,
            values,
            outside,
        } => (state != current || repeat_actions)
            .then(|| reasoned(current, state, rule.statistic, &values, outside)),
    }
}

/// Runs the whole pure evaluation for `alarm` on the statistics fetched for it.
pub fn evaluate(alarm: &Alarm, statistics: &[Statistics]) -> Option<Decision> {
    let rule = &alarm.threshold_rule;
    let verdict = judge(rule, sanitize(rule, statistics));
    decide(alarm.state, alarm.repeat_actions, rule, verdict)
}

/// Aodh's `_reason`: "Transition to …" or "Remaining as …", counting the values outside the
/// threshold, or inside it for `ok`.
fn reasoned(
    current: AlarmState,
    state: AlarmState,
    statistic: StatisticKind,
    values: &[f64],
    outside: usize,
) -> Decision {
    let (disposition, count) = if state == AlarmState::Ok {
        ("inside", values.len().saturating_sub(outside))
    } else {
        ("outside", outside)
    };
    let last = most_recent(statistic, values);
    let changed = current != state;
    let verb = if changed {
        "Transition to"
    } else {
        "Remaining as"
    };
    let reason = format!(
        "{verb} {state} due to {count} samples {disposition} threshold, most recent: {last}",
        state = state.as_str(),
        last = python_str(&last),
    );
    Decision {
        state,
        changed,
        reason,
        reason_data: reason_data(disposition, u64::try_from(count).unwrap_or(u64::MAX), last),
    }
}

fn reason_data(disposition: &str, count: u64, most_recent: Value) -> Value {
    json!({
        "type": "threshold",
        "disposition": disposition,
        "count": count,
        "most_recent": most_recent,
    })
}

/// The last value as JSON: an integer for `count` (as Ceilometer returns it), a float
/// otherwise, `null` when there is none.
fn most_recent(statistic: StatisticKind, values: &[f64]) -> Value {
    match values.last() {
        None => Value::Null,
        Some(v) if statistic == StatisticKind::Count && v.fract() == 0.0 && *v >= 0.0 => {
            // A count converted from u64 above; the cast back is exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let count = *v as u64;
            json!(count)
        }
        Some(v) => json!(v),
    }
}

/// How Python's `%s` prints the value: `None`, `3`, `75.0`, `1e+16`.
fn python_str(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Number(n) if n.is_f64() => n.as_f64().map_or_else(String::new, python_float),
        other => other.to_string(),
    }
}

/// Python's `repr(float)`: Rust's shortest round-trip digits (which Python uses too), with
/// Python's spelling of exponents (`1e+16`, `1.5e-05`) and of non-finite values.
pub fn python_float(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    let text = format!("{value:?}");
    match text.split_once('e') {
        None => text,
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(digits) => ('-', digits),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_spelling() {
        assert_eq!(python_float(75.0), "75.0");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(1e16), "1e+16");
        assert_eq!(python_float(1.5e-5), "1.5e-05");
        assert_eq!(python_float(1e100), "1e+100");
        assert_eq!(python_float(f64::NAN), "nan");
    }
}
