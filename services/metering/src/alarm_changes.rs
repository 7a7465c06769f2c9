//! Aodh's alarm change notifications, the contract in one place: every change to an alarm —
//! `alarm.creation`, `alarm.rule_change`, `alarm.state_transition`, `alarm.deletion` — is
//! published at priority `info` to topic `notifications` on exchange `aodh`, as publisher
//! `aodh.api` (changes made through the API) or `aodh.evaluator` (transitions the evaluator
//! decides), with the history entry as payload: `event_id`, `alarm_id`, `type`, `detail`,
//! `user_id`, `project_id`, `on_behalf_of`, `timestamp`, `severity`. As in Aodh, the API's
//! `detail` is the JSON object and the evaluator's the JSON text.
//!
//! Publishing never holds up the change: the entry is stored first, the notification is sent
//! in the background and a failure is logged. Credentials in the detail are masked.

use serde_json::{json, Value};
use tidings::notify::Notifier;
use tidings::{Context, Transport};

use crate::model::AlarmChange;
use crate::secrets;

/// **Contract**: the exchange of change notifications (Aodh's control exchange).
pub const EXCHANGE: &str = "aodh";
/// **Contract**: their topic (oslo.messaging's default notification topic).
pub const TOPIC: &str = "notifications";
/// **Contract**: the publisher id of changes made through the API.
pub const API_PUBLISHER: &str = "aodh.api";
/// **Contract**: the publisher id of the evaluator's transitions.
pub const EVALUATOR_PUBLISHER: &str = "aodh.evaluator";

/// The event type of a change: `alarm.` and its type with underscores.
pub fn event_type(change_type: &str) -> String {
    format!("alarm.{}", change_type.replace(' ', "_"))
}

/// The payload of `change`; `detail_as_text` for the evaluator's form.
pub fn payload(change: &AlarmChange, detail_as_text: bool) -> Value {
    let detail = secrets::mask_json(&change.detail.clone().unwrap_or(Value::Null));
    json!({
        "event_id": change.event_id,
        "alarm_id": change.alarm_id,
        "type": change.change_type,
        "detail": if detail_as_text { Value::String(detail.to_string()) } else { detail },
        "user_id": change.user_id,
        "project_id": change.project_id,
        "on_behalf_of": change.on_behalf_of,
        "timestamp": change.timestamp,
        "severity": change.severity,
    })
}

/// Publishes change notifications as one publisher. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ChangeNotifier {
    notifier: Notifier,
    detail_as_text: bool,
}

impl ChangeNotifier {
    /// The API's notifier on `transport`.
    pub fn api(transport: &Transport) -> Self {
        Self::new(transport, API_PUBLISHER, false)
    }

    /// The evaluator's notifier on `transport`.
    pub fn evaluator(transport: &Transport) -> Self {
        Self::new(transport, EVALUATOR_PUBLISHER, true)
    }

    fn new(transport: &Transport, publisher: &str, detail_as_text: bool) -> Self {
        Self {
            notifier: Notifier::new(transport, publisher)
                .exchange(EXCHANGE)
                .topics([TOPIC]),
            detail_as_text,
        }
    }

    /// Sends `change` in the background; a failure is logged, never returned: the change is
    /// already stored.
    pub fn publish(&self, change: &AlarmChange) {
        let notifier = self.notifier.clone();
        let event_type = event_type(&change.change_type);
        let payload = payload(change, self.detail_as_text);
        let alarm_id = change.alarm_id.clone();
        tokio::spawn(async move {
            if let Err(error) = notifier.info(&Context::new(), &event_type, &payload).await {
                tracing::warn!(%error, %alarm_id, event_type, "alarm change notification not sent");
            }
        });
    }
}
