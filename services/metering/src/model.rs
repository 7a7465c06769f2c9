//! The metering data model shared by every agent: samples, statistics, meters, alarms and their
//! history. Field names follow Ceilometer and Aodh, because Python peers and operators use them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Ceilometer's three sample types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CounterType {
    /// An absolute value, not a counter.
    Gauge,
    /// Reset to 0 each time it is sent.
    Delta,
    /// Incremented, never reset.
    Cumulative,
}

impl CounterType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CounterType::Gauge => "gauge",
            CounterType::Delta => "delta",
            CounterType::Cumulative => "cumulative",
        }
    }

    /// The type of a wire name, `None` for any other text.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "gauge" => Some(CounterType::Gauge),
            "delta" => Some(CounterType::Delta),
            "cumulative" => Some(CounterType::Cumulative),
            _ => None,
        }
    }
}

/// A validated sample, as stored. On the wire it is Ceilometer's meter message
/// (`counter_name`, `counter_volume`, …); see `sample.rs` for parsing, validation and signing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Where the sample comes from (`openstack` by default in Ceilometer).
    pub source: String,
    /// Meter name (`counter_name`), e.g. `cpu_util`.
    pub name: String,
    /// `counter_type`.
    pub counter_type: CounterType,
    /// `counter_unit`, e.g. `%`, `B`, `ns`.
    pub unit: String,
    /// `counter_volume`.
    pub volume: f64,
    /// `user_id` (may be null).
    pub user_id: Option<String>,
    /// `project_id` (may be null).
    pub project_id: Option<String>,
    /// `resource_id`.
    pub resource_id: String,
    /// When it was measured (UTC).
    pub timestamp: DateTime<Utc>,
    /// `resource_metadata`.
    pub resource_metadata: Map<String, Value>,
    /// `message_id`: unique per sample; storing the same id twice stores it once.
    pub message_id: String,
}

/// Which samples a statistics query covers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatisticsQuery {
    /// Meter name.
    pub meter: String,
    /// Bucket length in seconds; 0 means one bucket over everything that matches.
    pub period: u64,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// Only this project.
    pub project_id: Option<String>,
    /// Samples at or after this time.
    pub start: Option<DateTime<Utc>>,
    /// Samples at or before this time.
    pub end: Option<DateTime<Utc>>,
}

/// One statistics bucket, with Ceilometer's fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    /// Average volume.
    pub avg: f64,
    /// Number of samples.
    pub count: u64,
    /// Seconds between the first and last sample in the bucket.
    pub duration: f64,
    /// Time of the first sample.
    pub duration_start: DateTime<Utc>,
    /// Time of the last sample.
    pub duration_end: DateTime<Utc>,
    /// Largest volume.
    pub max: f64,
    /// Smallest volume.
    pub min: f64,
    /// Bucket length in seconds (0 for a single bucket).
    pub period: u64,
    /// Start of the bucket.
    pub period_start: DateTime<Utc>,
    /// End of the bucket.
    pub period_end: DateTime<Utc>,
    /// Sum of volumes.
    pub sum: f64,
    /// Unit of the meter.
    pub unit: String,
}

/// A meter seen for a resource: what `list_meters` returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterInfo {
    /// Meter name.
    pub name: String,
    /// `gauge`, `delta` or `cumulative`.
    #[serde(rename = "type")]
    pub counter_type: CounterType,
    /// Unit.
    pub unit: String,
    /// Resource measured.
    pub resource_id: String,
    /// Project of the resource.
    pub project_id: Option<String>,
    /// User of the resource.
    pub user_id: Option<String>,
    /// Source of the samples.
    pub source: String,
}

/// Aodh's alarm states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlarmState {
    /// The rule evaluated false.
    #[serde(rename = "ok")]
    Ok,
    /// The rule evaluated true.
    #[serde(rename = "alarm")]
    Alarm,
    /// Not enough data points.
    #[serde(rename = "insufficient data")]
    InsufficientData,
}

impl AlarmState {
    /// The wire name (`ok`, `alarm`, `insufficient data`).
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Ok => "ok",
            AlarmState::Alarm => "alarm",
            AlarmState::InsufficientData => "insufficient data",
        }
    }
}

/// Threshold comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComparisonOperator {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>=`
    Ge,
    /// `>`
    Gt,
}

/// Which statistic a threshold rule compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatisticKind {
    /// Average.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Sum.
    Sum,
    /// Count.
    Count,
}

/// A query term of a threshold rule (`{field, op, value}`); only `eq` on `resource_id` and
/// `project_id` is evaluated against statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryTerm {
    /// Field name, e.g. `resource_id`.
    pub field: String,
    /// Operator, e.g. `eq`.
    #[serde(default = "default_op")]
    pub op: String,
    /// Value to compare with.
    pub value: String,
}

fn default_op() -> String {
    "eq".to_owned()
}

/// Aodh's legacy threshold rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdRule {
    /// Meter whose statistics are compared.
    pub meter_name: String,
    /// Threshold value.
    pub threshold: f64,
    /// Comparison.
    pub comparison_operator: ComparisonOperator,
    /// Statistic compared.
    pub statistic: StatisticKind,
    /// Seconds per bucket.
    pub period: u64,
    /// Buckets that must all breach.
    pub evaluation_periods: u32,
    /// Restricts the statistics (resource_id / project_id).
    #[serde(default)]
    pub query: Vec<QueryTerm>,
}

/// An alarm, as stored and as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// Identifier (uuid).
    pub alarm_id: String,
    /// Name.
    pub name: String,
    /// Free text; Aodh's default describes the rule (see `api::body`).
    #[serde(default)]
    pub description: String,
    /// Always `threshold` for now.
    #[serde(rename = "type")]
    pub alarm_type: String,
    /// The rule.
    pub threshold_rule: ThresholdRule,
    /// Current state.
    pub state: AlarmState,
    /// Why it is in that state.
    pub state_reason: String,
    /// When the state last changed.
    pub state_timestamp: DateTime<Utc>,
    /// Actions when entering `alarm`.
    pub alarm_actions: Vec<String>,
    /// Actions when entering `ok`.
    pub ok_actions: Vec<String>,
    /// Actions when entering `insufficient data`.
    pub insufficient_data_actions: Vec<String>,
    /// Re-run actions on every evaluation that keeps the state.
    pub repeat_actions: bool,
    /// `low`, `moderate` or `critical`.
    pub severity: String,
    /// Disabled alarms are not evaluated.
    pub enabled: bool,
    /// When it was created.
    pub timestamp: DateTime<Utc>,
    /// The project that owns it: only that project's users (and admins) see and change it.
    /// `None` for alarms made before alarms had owners, or without authentication; those only
    /// admins see once authentication is on.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The user who created it.
    #[serde(default)]
    pub user_id: Option<String>,
    /// When the alarm is evaluated at all: none means always, else only while one of them is
    /// open (see `evaluator::constraints`).
    #[serde(default)]
    pub time_constraints: Vec<TimeConstraint>,
    /// When its state was last decided. Evaluations that keep the state are not written back,
    /// so this is the last transition (by the evaluator or the API), or null before the first.
    #[serde(default)]
    pub evaluate_timestamp: Option<DateTime<Utc>>,
}

/// Aodh's time constraint: the alarm is evaluated only in windows that open at each time the
/// cron expression `start` names (in `timezone`, UTC when empty) and last `duration` seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeConstraint {
    /// Its name, unique within the alarm.
    pub name: String,
    /// Free text; Aodh's default says when it starts and how long it lasts.
    #[serde(default)]
    pub description: String,
    /// A five-field cron expression (minute hour day-of-month month day-of-week).
    pub start: String,
    /// How long each window lasts, in seconds.
    pub duration: u64,
    /// An IANA time zone name, or empty for UTC.
    #[serde(default)]
    pub timezone: String,
}

/// One change in an alarm's history. Aodh's fields (`event_id`, `detail`, who made it) sit
/// beside tidings' own (`previous`, `current`, `reason`, `reason_data`); entries stored before
/// the former existed read back with them empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmChange {
    /// Identifies the entry (uuid).
    #[serde(default)]
    pub event_id: String,
    /// The alarm.
    pub alarm_id: String,
    /// `creation`, `rule change` or `state transition`.
    #[serde(rename = "type")]
    pub change_type: String,
    /// State before.
    pub previous: Option<AlarmState>,
    /// State after.
    pub current: AlarmState,
    /// Why.
    pub reason: String,
    /// Facts behind the reason.
    pub reason_data: Value,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// Aodh's `detail`: what changed (the alarm as created, the changed fields, or the new
    /// state and why). `None` for entries stored before it existed; the API derives it then.
    #[serde(default)]
    pub detail: Option<Value>,
    /// The user who made the change; `None` for the evaluator's transitions.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The project of the user who made the change.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The project that owns the alarm: whose users may read the entry.
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    /// The alarm's severity at the time.
    #[serde(default)]
    pub severity: Option<String>,
}

impl AlarmChange {
    /// A new entry of `change_type` for `alarm`, moving it from its current state to `current`
    /// for `reason`; made by the alarm's owner (callers acting for someone else say so).
    pub fn new(alarm: &Alarm, change_type: &str, current: AlarmState, reason: &str) -> Self {
        Self {
            event_id: uuid::Uuid::new_v4().to_string(),
            alarm_id: alarm.alarm_id.clone(),
            change_type: change_type.to_owned(),
            previous: Some(alarm.state),
            current,
            reason: reason.to_owned(),
            reason_data: Value::Null,
            timestamp: Utc::now(),
            detail: None,
            user_id: alarm.user_id.clone(),
            project_id: alarm.project_id.clone(),
            on_behalf_of: alarm.project_id.clone(),
            severity: Some(alarm.severity.clone()),
        }
    }
}
