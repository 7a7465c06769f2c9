//! The evaluator → notifier hand-off, Aodh's contract (`aodh/queue.py`): a notification with
//! event type `alarm.update`, priority `sample`, publisher id `alarming.evaluator`, on exchange
//! `aodh`, topic `alarming`, whose payload is an [`AlarmUpdate`]. Python's `aodh-notifier` and
//! this crate's `alarm_notifier` both consume it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings::notify::{Notifier, NotifyError};
use tidings::{Context, Transport};

use super::threshold::Decision;
use crate::model::{Alarm, AlarmState};

/// **Contract**: the exchange of alarm notifications.
pub const EXCHANGE: &str = "aodh";
/// **Contract**: the topic of alarm notifications (Aodh's `notifier_topic`).
pub const TOPIC: &str = "alarming";
/// **Contract**: the event type of alarm notifications.
pub const EVENT_TYPE: &str = "alarm.update";
/// **Contract**: the publisher id of the evaluator.
pub const PUBLISHER_ID: &str = "alarming.evaluator";

/// The payload of an `alarm.update` notification. States are their wire names (`ok`, `alarm`,
/// `insufficient data`); every field defaults when absent, so a notifier stays lenient with
/// what other evaluators send.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlarmUpdate {
    /// The action URLs for the new state.
    #[serde(default)]
    pub actions: Vec<String>,
    /// The alarm.
    #[serde(default)]
    pub alarm_id: String,
    /// Its name.
    #[serde(default)]
    pub alarm_name: String,
    /// Its severity.
    #[serde(default)]
    pub severity: String,
    /// The state before the evaluation.
    #[serde(default)]
    pub previous: String,
    /// The state after it.
    #[serde(default)]
    pub current: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// The facts behind the reason.
    #[serde(default)]
    pub reason_data: Value,
}

impl AlarmUpdate {
    /// The update for `alarm` (as it was before the evaluation) after `decision`; `None` when
    /// the alarm has no actions for the new state, in which case Aodh sends nothing.
    pub fn new(alarm: &Alarm, decision: &Decision) -> Option<Self> {
        let actions = match decision.state {
            AlarmState::Ok => &alarm.ok_actions,
            AlarmState::Alarm => &alarm.alarm_actions,
            AlarmState::InsufficientData => &alarm.insufficient_data_actions,
        };
        if actions.is_empty() {
            return None;
        }
        Some(Self {
            actions: actions.clone(),
            alarm_id: alarm.alarm_id.clone(),
            alarm_name: alarm.name.clone(),
            severity: alarm.severity.clone(),
            previous: alarm.state.as_str().to_owned(),
            current: decision.state.as_str().to_owned(),
            reason: decision.reason.clone(),
            reason_data: decision.reason_data.clone(),
        })
    }
}

/// Sends [`AlarmUpdate`]s as the contract says.
#[derive(Clone, Debug)]
pub struct Handoff {
    notifier: Notifier,
}

impl Handoff {
    /// A hand-off publishing on `transport`.
    pub fn new(transport: &Transport) -> Self {
        Self {
            notifier: Notifier::new(transport, PUBLISHER_ID)
                .exchange(EXCHANGE)
                .topics([TOPIC]),
        }
    }

    /// Publishes one update (confirmed by the broker). The context is empty, as Aodh's.
    pub async fn send(&self, update: &AlarmUpdate) -> Result<(), NotifyError> {
        self.notifier
            .sample(&Context::new(), EVENT_TYPE, update)
            .await
    }
}
