//! The request context: string keys to JSON values, flattened on the wire as `_context_<key>`.
//!
//! oslo.messaging sends a context with every request and notification (user, project, request id,
//! and often an `auth_token` in clear). This module owns the type and its redaction rules; it does
//! not know how the keys are laid out on the wire (that is the codec's job).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Key fragments whose values never appear in `Debug` or `Display` output.
const SECRET_KEY_FRAGMENTS: &[&str] = &["token", "password", "secret", "credential"];

/// A request context: what a caller knows about who is asking and why.
///
/// `Debug` and `Display` never print the values of keys that look secret (`auth_token`,
/// anything containing `password`, `secret`, `token` or `credential`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(Map<String, Value>);

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `key`, builder style.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces `key`, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.0.insert(key.into(), value.into())
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The value under `key` when it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the context has no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keys and values, in insertion order of the underlying map.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter()
    }

    /// The context as a JSON map (values unredacted: for serialisation, not for logs).
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Consumes the context into its JSON map.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    /// Whether the value of `key` must be hidden from logs.
    pub fn is_secret_key(key: &str) -> bool {
        let lower = key.to_ascii_lowercase();
        SECRET_KEY_FRAGMENTS.iter().any(|f| lower.contains(f))
    }
}

impl From<Map<String, Value>> for Context {
    fn from(map: Map<String, Value>) -> Self {
        Self(map)
    }
}

impl FromIterator<(String, Value)> for Context {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
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
            .entries(self.0.iter().map(|(k, v)| (k, Redacted(k, v))))
            .finish()
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
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
