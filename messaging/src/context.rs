//! The request context: string keys to JSON values, flattened on the wire as `_context_<key>`.
//!
//! oslo.messaging sends a context with every request and notification (user, project, request id,
//! and often an `auth_token` in clear). This module owns the type and its redaction rules; it does
//! not know how the keys are laid out on the wire (that is the codec's job).
//!
//! Besides its keys, a context received by an RPC server carries the caller's deadline (from the
//! call's timeout), which never goes on the wire as a key: a handler reads the time it has left
//! with [`Context::time_left`], and a call made with the same context waits no longer than that.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::trace::{TraceParent, TRACEPARENT_KEY};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Key fragments whose values never appear in `Debug` or `Display` output.
const SECRET_KEY_FRAGMENTS: &[&str] = &["token", "password", "secret", "credential"];

/// A request context: what a caller knows about who is asking and why.
///
/// `Debug` and `Display` never print the values of keys that look secret (`auth_token`,
/// anything containing `password`, `secret`, `token` or `credential`).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context {
    values: Map<String, Value>,
    /// When the caller stops waiting; not a key, never on the wire as one.
    #[serde(skip)]
    deadline: Option<Instant>,
}

/// Two contexts are equal when their keys and values are; the deadline is not compared.
impl PartialEq for Context {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

/// oslo.context's key of the request id of this service's request.
pub const REQUEST_ID_KEY: &str = "request_id";
/// oslo.context's key of the request id that started the chain of calls across services.
pub const GLOBAL_REQUEST_ID_KEY: &str = "global_request_id";

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// The instant the caller stops waiting for this request, when it is known: set by the RPC
    /// server from the call's timeout, or by [`with_deadline`](Self::with_deadline).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the caller's deadline (zero once it has passed); `None` without one.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the caller's deadline has passed.
    pub fn is_expired(&self) -> bool {
        self.deadline.is_some_and(|at| at <= Instant::now())
    }

    /// The same context with a deadline: calls made with it wait no longer than that.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets or clears the deadline.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The W3C trace parent carried in the `traceparent` key, when it holds a valid one.
    pub fn trace_parent(&self) -> Option<TraceParent> {
        self.get_str(TRACEPARENT_KEY).and_then(TraceParent::parse)
    }

    /// oslo's `request_id`, when the caller sent one.
    pub fn request_id(&self) -> Option<&str> {
        self.get_str(REQUEST_ID_KEY)
    }

    /// oslo's `global_request_id`, when the caller sent one.
    pub fn global_request_id(&self) -> Option<&str> {
        self.get_str(GLOBAL_REQUEST_ID_KEY)
    }

    /// Adds or replaces `key`, builder style.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces `key`, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.values.insert(key.into(), value.into())
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// The value under `key` when it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_str)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.values.remove(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the context has no keys.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Keys and values, in insertion order of the underlying map.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.values.iter()
    }

    /// The context as a JSON map (values unredacted: for serialisation, not for logs).
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.values
    }

    /// Consumes the context into its JSON map.
    pub fn into_map(self) -> Map<String, Value> {
        self.values
    }

    /// Whether the value of `key` must be hidden from logs.
    pub fn is_secret_key(key: &str) -> bool {
        let lower = key.to_ascii_lowercase();
        SECRET_KEY_FRAGMENTS.iter().any(|f| lower.contains(f))
    }
}

impl From<Map<String, Value>> for Context {
    fn from(map: Map<String, Value>) -> Self {
        Self {
            values: map,
            deadline: None,
        }
    }
}

impl FromIterator<(String, Value)> for Context {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<Map<String, Value>>())
    }
}

/// Shows a value, or `"***"` for a secret key.
struct Redacted<'a>(&'a str, &'a Value);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if Context::is_secret_key(self.0) {
            f.write_str("\"***\"")
        } else {
            write!(f, "{}", self.1)
        }
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values.iter().map(|(k, v)| (k, Redacted(k, v))))
            .finish()
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.values.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={:?}", Redacted(k, v))?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_debug_or_display() {
        let ctx = Context::new()
            .with("auth_token", "gAAAAAB-sekrit")
            .with("admin_password", "hunter2")
            .with("user", "alice");
        for shown in [format!("{ctx:?}"), format!("{ctx}")] {
            assert!(!shown.contains("sekrit"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("alice"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn serialises_as_a_plain_map() {
        let ctx = Context::new().with("auth_token", "t").with("n", 1);
        let json = serde_json::to_value(&ctx).unwrap();
        assert_eq!(json, serde_json::json!({"auth_token": "t", "n": 1}));
    }
}
