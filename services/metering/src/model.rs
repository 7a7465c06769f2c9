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
}

/// One state transition in an alarm's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmChange {
    /// The alarm.
    pub alarm_id: String,
    /// `creation` or `state transition`.
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
}
