//! What the SQL stores share: the sample row, the raw statistics query (built once, with each
//! backend's placeholder style), and the conversions between rows and the model.
//!
//! Times are stored as integer microseconds since the Unix epoch (`ts`), so that bucketing is
//! plain integer arithmetic that SQLite and PostgreSQL compute alike:
//! `bucket = (ts - origin) / period_us`, grouped by bucket and unit.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::StoreError;
use crate::model::{
    Alarm, AlarmChange, CounterType, MeterInfo, Sample, Statistics, StatisticsQuery,
};

/// Columns of `samples`, in the order [`SampleRow`] holds them.
pub(super) const SAMPLE_COLUMNS: &str = "message_id, meter, counter_type, unit, volume, source, \
     user_id, project_id, resource_id, ts, resource_metadata";

/// A sample as its row.
pub(super) struct SampleRow {
    pub message_id: String,
    pub meter: String,
    pub counter_type: &'static str,
    pub unit: String,
    pub volume: f64,
    pub source: String,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub resource_id: String,
    pub ts: i64,
    pub resource_metadata: String,
}

impl SampleRow {
    pub fn new(sample: &Sample) -> Self {
        Self {
            message_id: sample.message_id.clone(),
            meter: sample.name.clone(),
            counter_type: sample.counter_type.as_str(),
            unit: sample.unit.clone(),
            volume: sample.volume,
            source: sample.source.clone(),
            user_id: sample.user_id.clone(),
            project_id: sample.project_id.clone(),
            resource_id: sample.resource_id.clone(),
            ts: micros(&sample.timestamp),
            resource_metadata: Value::Object(sample.resource_metadata.clone()).to_string(),
        }
    }
}

/// A bound parameter of a dynamically built query.
#[derive(Clone, Debug)]
pub(super) enum Param {
    Text(String),
    Int(i64),
    OptInt(Option<i64>),
}

/// The `WHERE` clause of a statistics query and its parameters.
#[derive(Debug)]
pub(super) struct SampleFilter {
    pub sql: String,
    pub params: Vec<Param>,
}

/// Builds the filter for `query` with `placeholder(n)` giving the n-th (1-based) parameter.
/// `chunk_us`: the length of the time chunks a backend files samples under (a `chunk`
/// column, `ts` divided by it); time bounds then bound the chunks too, so that only the
/// chunks in range are read.
pub(super) fn sample_filter(
    query: &StatisticsQuery,
    chunk_us: Option<i64>,
    placeholder: fn(usize) -> String,
) -> SampleFilter {
    let mut sql = String::new();
    let mut params = Vec::new();
    let mut push = |clause: &str, param: Param| {
        params.push(param);
        if !sql.is_empty() {
            sql.push_str(" AND ");
        }
        sql.push_str(clause);
        sql.push_str(&placeholder(params.len()));
    };
    push("meter = ", Param::Text(query.meter.clone()));
    if let Some(resource) = &query.resource_id {
        push("resource_id = ", Param::Text(resource.clone()));
    }
    if let Some(project) = &query.project_id {
        push("project_id = ", Param::Text(project.clone()));
    }
    if let Some(start) = &query.start {
        push("ts >= ", Param::Int(micros(start)));
        if let Some(length) = chunk_us {
            push("chunk >= ", Param::Int(chunk_of(micros(start), length)));
        }
    }
    if let Some(end) = &query.end {
        push("ts <= ", Param::Int(micros(end)));
        if let Some(length) = chunk_us {
            push("chunk <= ", Param::Int(chunk_of(micros(end), length)));
        }
    }
    SampleFilter { sql, params }
}

/// The chunk of `length` µs holding the time `ts` (µs).
pub(super) fn chunk_of(ts: i64, length: i64) -> i64 {
    ts.div_euclid(length.max(1))
}

/// The parameters that follow the filter's in a periodic [`statistics_sql`].
pub(super) fn bucket_params(query: &StatisticsQuery) -> [Param; 2] {
    [
        Param::OptInt(query.start.as_ref().map(micros)),
        Param::Int(period_micros(query.period)),
    ]
}

/// The statistics query: one statement, so that the origin and the buckets see the same
/// samples. With a period, two more parameters follow the filter's: the origin (the query's
/// start, or null for the first matching sample) and the period, both in microseconds.
/// Columns: bucket, unit, count, sum, avg, min, max, min(ts), max(ts), origin — see
/// [`StatsRow`]. Ceilometer's SQL driver groups by unit too, so a meter sent with two units
/// gives a bucket per unit.
pub(super) fn statistics_sql(
    filter: &SampleFilter,
    periodic: bool,
    placeholder: fn(usize) -> String,
) -> String {
    let aggregates = "COUNT(*), SUM(m.volume), AVG(m.volume), MIN(m.volume), MAX(m.volume), \
                      MIN(m.ts), MAX(m.ts)";
    if periodic {
        let origin = placeholder(filter.params.len() + 1);
        let period = placeholder(filter.params.len() + 2);
        // The origin as a scalar subquery, computed once: joined instead, PostgreSQL may
        // recompute it for every sample when it has no statistics yet (a new partition).
        format!(
            "WITH m AS (SELECT ts, unit, volume FROM samples WHERE {}), \
             o AS (SELECT COALESCE(CAST({origin} AS BIGINT), MIN(ts)) AS origin FROM m) \
             SELECT (m.ts - (SELECT origin FROM o)) / CAST({period} AS BIGINT) AS bucket, \
             m.unit, {aggregates}, (SELECT origin FROM o) FROM m \
             GROUP BY bucket, m.unit ORDER BY bucket, m.unit",
            filter.sql
        )
    } else {
        format!(
            "SELECT CAST(0 AS BIGINT) AS bucket, m.unit, {aggregates}, CAST(0 AS BIGINT) \
             FROM samples m WHERE {} GROUP BY m.unit ORDER BY m.unit",
            filter.sql
        )
    }
}

/// One row of [`statistics_sql`].
#[derive(Debug)]
pub(super) struct StatsRow {
    pub bucket: i64,
    pub unit: String,
    pub count: i64,
    pub sum: f64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub first: i64,
    pub last: i64,
    pub origin: i64,
}

/// The bucket length in microseconds (saturating: a huge period is one bucket).
pub(super) fn period_micros(period: u64) -> i64 {
    i64::try_from(period)
        .ok()
        .and_then(|p| p.checked_mul(1_000_000))
        .unwrap_or(i64::MAX)
}

/// A row as Ceilometer's statistics: with a period, the bucket `[origin + k·period,
/// origin + (k+1)·period)`; without one, `period_start`/`period_end` are the first and last
/// sample's times, as Ceilometer's SQL driver reports them.
pub(super) fn to_statistics(row: StatsRow, period: u64) -> Result<Statistics, StoreError> {
    let duration_start = from_micros(row.first)?;
    let duration_end = from_micros(row.last)?;
    let (period_start, period_end) = if period == 0 {
        (duration_start, duration_end)
    } else {
        let length = period_micros(period);
        let start = row.origin.saturating_add(row.bucket.saturating_mul(length));
        (
            from_micros(start)?,
            from_micros(start.saturating_add(length))?,
        )
    };
    Ok(Statistics {
        avg: row.avg,
        count: u64::try_from(row.count).unwrap_or(0),
        // Microseconds to seconds; exact for any realistic span.
        duration: (row.last - row.first) as f64 / 1e6,
        duration_start,
        duration_end,
        max: row.max,
        min: row.min,
        period,
        period_start,
        period_end,
        sum: row.sum,
        unit: row.unit,
    })
}

/// A catalogue row as a [`MeterInfo`].
pub(super) fn meter_info(
    name: String,
    counter_type: &str,
    unit: String,
    resource_id: String,
    project_id: Option<String>,
    user_id: Option<String>,
    source: String,
) -> Result<MeterInfo, StoreError> {
    let counter_type = CounterType::from_name(counter_type).ok_or_else(|| {
        StoreError::Backend(format!(
            "stored counter_type {counter_type:?} is not gauge, delta or cumulative"
        ))
    })?;
    Ok(MeterInfo {
        name,
        counter_type,
        unit,
        resource_id,
        project_id,
        user_id,
        source,
    })
}

/// The history entry written with a new alarm: Aodh's `creation` change, its detail (the
/// alarm as created, credentials in its action URLs masked) under `reason_data` and `detail`.
pub(super) fn creation_change(alarm: &Alarm) -> AlarmChange {
    let mut change = AlarmChange::new(alarm, "creation", alarm.state, "alarm created");
    change.previous = None;
    change.reason_data = shown(alarm);
    change.detail = Some(change.reason_data.clone());
    change.timestamp = alarm.timestamp;
    change
}

/// The alarm as history keeps it: the store holds the real action URLs (the notifier calls
/// them), history only what may be shown.
fn shown(alarm: &Alarm) -> Value {
    serde_json::to_value(alarm)
        .map(|value| crate::secrets::mask_json(&value))
        .unwrap_or_else(|_| json!({}))
}

/// The index of alarm listings by owner; created once the owner columns exist (a store made
/// before alarms had owners gains them first, and its alarms keep no owner).
pub(super) const ALARM_OWNER_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS alarms_project ON alarms (project_id, created, alarm_id)";

/// The page query over `alarms`: parameters project (or null), marker id (or null), limit.
pub(super) fn alarm_page_sql(placeholder: fn(usize) -> String) -> String {
    // Casts, so that PostgreSQL knows the parameters' types where they are first compared
    // with null.
    let project = format!("CAST({} AS TEXT)", placeholder(1));
    let marker = format!("CAST({} AS TEXT)", placeholder(2));
    let limit = format!("CAST({} AS BIGINT)", placeholder(3));
    format!(
        "SELECT body FROM alarms WHERE ({project} IS NULL OR project_id = {project}) \
         AND ({marker} IS NULL OR (created, alarm_id) > \
         (SELECT created, alarm_id FROM alarms WHERE alarm_id = {marker})) \
         ORDER BY created, alarm_id LIMIT {limit}"
    )
}

/// The alarm after `change`.
pub(super) fn apply_change(mut alarm: Alarm, change: &AlarmChange) -> Alarm {
    alarm.state = change.current;
    alarm.state_reason.clone_from(&change.reason);
    alarm.state_timestamp = change.timestamp;
    alarm.evaluate_timestamp = Some(change.timestamp);
    alarm
}

/// JSON text of a stored document.
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("cannot encode: {e}")))
}

/// A stored document from its JSON text.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("corrupt stored row: {e}")))
}

/// Microseconds since the epoch.
pub(super) fn micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The time `us` microseconds after the epoch.
pub(super) fn from_micros(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Backend(format!("stored time {us} µs is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dollar(n: usize) -> String {
        format!("${n}")
    }

    #[test]
    fn filter_and_bucket_parameters_are_numbered_in_order() {
        let query = StatisticsQuery {
            meter: "cpu".into(),
            period: 60,
            resource_id: Some("r".into()),
            start: DateTime::from_timestamp(0, 0),
            ..StatisticsQuery::default()
        };
        let filter = sample_filter(&query, None, dollar);
        assert_eq!(filter.sql, "meter = $1 AND resource_id = $2 AND ts >= $3");
        let sql = statistics_sql(&filter, true, dollar);
        assert!(sql.contains("CAST($4 AS BIGINT)"), "{sql}");
        assert!(
            sql.contains("(m.ts - (SELECT origin FROM o)) / CAST($5 AS BIGINT)"),
            "{sql}"
        );
    }

    #[test]
    fn huge_periods_saturate() {
        assert_eq!(period_micros(60), 60_000_000);
        assert_eq!(period_micros(u64::MAX), i64::MAX);
    }
}
