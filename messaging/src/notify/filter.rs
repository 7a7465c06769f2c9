//! Which notifications an endpoint wants, by regular expressions on event type, publisher id,
//! context, metadata and payload fields — oslo.messaging's `NotificationFilter`.
//!
//! As in oslo (Python's `re.match`), a pattern must match at the start of the value; a field
//! named by a filter must exist and be a string, or the notification does not match.

use regex::Regex;
use serde_json::{Map, Value};

use super::IncomingNotification;

/// A filter on notifications; an empty filter matches everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    event_type: Option<Regex>,
    publisher_id: Option<Regex>,
    context: Vec<(String, Regex)>,
    metadata: Vec<(String, Regex)>,
    payload: Vec<(String, Regex)>,
}

/// Compiles `pattern` to match at the start of a value, like Python's `re.match`.
fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})"))
}

impl Filter {
    /// A filter that matches everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only event types matching `pattern`.
    pub fn event_type(mut self, pattern: &str) -> Result<Self, regex::Error> {
        self.event_type = Some(anchored(pattern)?);
        Ok(self)
    }

    /// Only publisher ids matching `pattern`.
    pub fn publisher_id(mut self, pattern: &str) -> Result<Self, regex::Error> {
        self.publisher_id = Some(anchored(pattern)?);
        Ok(self)
    }

    /// Only notifications whose context key `key` is a string matching `pattern`.
    pub fn context(mut self, key: &str, pattern: &str) -> Result<Self, regex::Error> {
        self.context.push((key.to_owned(), anchored(pattern)?));
        Ok(self)
    }

    /// Only notifications whose metadata key (`message_id`, `timestamp`) matches `pattern`.
    pub fn metadata(mut self, key: &str, pattern: &str) -> Result<Self, regex::Error> {
        self.metadata.push((key.to_owned(), anchored(pattern)?));
        Ok(self)
    }

    /// Only notifications whose payload key `key` is a string matching `pattern`.
    pub fn payload(mut self, key: &str, pattern: &str) -> Result<Self, regex::Error> {
        self.payload.push((key.to_owned(), anchored(pattern)?));
        Ok(self)
    }

    /// Whether `notification` passes.
    pub fn matches(&self, notification: &IncomingNotification) -> bool {
        let single =
            |regex: &Option<Regex>, value: &str| regex.as_ref().is_none_or(|r| r.is_match(value));
        single(&self.event_type, &notification.event_type)
            && single(&self.publisher_id, &notification.publisher_id)
            && fields_match(&self.context, Some(notification.context.as_map()))
            && fields_match(&self.payload, notification.payload.as_object())
            && self.metadata.iter().all(|(key, regex)| {
                let value = match key.as_str() {
                    "message_id" => Some(notification.metadata.message_id.as_str()),
                    "timestamp" => Some(notification.metadata.timestamp.as_str()),
                    _ => None,
                };
                value.is_some_and(|v| regex.is_match(v))
            })
    }
}

fn fields_match(filters: &[(String, Regex)], data: Option<&Map<String, Value>>) -> bool {
    if filters.is_empty() {
        return true;
    }
    let Some(data) = data else { return false };
    filters.iter().all(|(key, regex)| {
        data.get(key)
            .and_then(Value::as_str)
            .is_some_and(|value| regex.is_match(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Metadata, Priority};
    use crate::Context;
    use serde_json::json;

    fn incoming() -> IncomingNotification {
        IncomingNotification {
            context: Context::new().with("project_id", "p-1").with("n", 3),
            priority: Priority::Info,
            publisher_id: "compute.host-1".into(),
            event_type: "compute.instance.create.end".into(),
            payload: json!({"state": "active", "size": 2}),
            metadata: Metadata {
                message_id: "6c6c2bd3-0a8f-4b0e-9a5b-2f0d4f3f0a11".into(),
                timestamp: "2026-11-24 10:00:00.123456".into(),
            },
        }
    }

    #[test]
    fn patterns_match_at_the_start_like_python() {
        let n = incoming();
        assert!(Filter::new().matches(&n));
        assert!(Filter::new()
            .event_type(r"compute\.instance")
            .unwrap()
            .matches(&n));
        assert!(
            !Filter::new().event_type(r"instance").unwrap().matches(&n),
            "re.match anchors at the start"
        );
        assert!(Filter::new().event_type(r".*create").unwrap().matches(&n));
        assert!(Filter::new()
            .publisher_id(r"compute\.")
            .unwrap()
            .matches(&n));
        assert!(!Filter::new().publisher_id(r"network").unwrap().matches(&n));
    }

    #[test]
    fn dict_filters_need_the_key_and_a_string() {
        let n = incoming();
        assert!(Filter::new()
            .context("project_id", "p-")
            .unwrap()
            .matches(&n));
        assert!(!Filter::new().context("missing", ".*").unwrap().matches(&n));
        assert!(
            !Filter::new().context("n", ".*").unwrap().matches(&n),
            "non-string values never match"
        );
        assert!(Filter::new().payload("state", "act").unwrap().matches(&n));
        assert!(!Filter::new()
            .payload("state", "deleted")
            .unwrap()
            .matches(&n));
        assert!(Filter::new()
            .metadata("timestamp", "2026-11")
            .unwrap()
            .matches(&n));
    }
}
