//! A message's keys as a decoder reads them: oslo.messaging's own keys in fixed slots, the
//! `_context_<key>` entries already stripped of their prefix, every other key skipped.
//!
//! Decoding into a JSON map first and then taking the keys out of it cost a string and a tree
//! node per key, twice over for the envelope; reading the keys straight into their slots keeps
//! only what a message is made of. A repeated key keeps its last value, as a map (and Python)
//! would.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The prefix of the flattened context keys.
pub(crate) const CONTEXT_PREFIX: &str = "_context_";

/// Every key some message kind reads by name; a key not here and not a context key is skipped.
const NAMES: [&str; 19] = [
    // The envelope.
    "oslo.version",
    "oslo.message",
    // Requests.
    "method",
    "args",
    "namespace",
    "version",
    "_msg_id",
    "_reply_q",
    "_timeout",
    "_unique_id",
    // Replies.
    "result",
    "failure",
    "ending",
    // Notifications.
    "message_id",
    "publisher_id",
    "event_type",
    "priority",
    "payload",
    "timestamp",
];

fn slot(name: &str) -> Option<usize> {
    NAMES.iter().position(|known| *known == name)
}

/// The keys of one message (or of an envelope, whose other keys are the bare message's).
#[derive(Debug, Default)]
pub(crate) struct Fields {
    named: [Option<Value>; NAMES.len()],
    context: Map<String, Value>,
}

impl Fields {
    /// Whether the message has `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        slot(name).is_some_and(|i| self.named[i].is_some())
    }

    /// Borrows the value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        slot(name).and_then(|i| self.named[i].as_ref())
    }

    /// Takes the value of `name` out.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Value> {
        slot(name).and_then(|i| self.named[i].take())
    }

    /// The context entries, keyed without their prefix.
    pub(crate) fn into_context(self) -> Map<String, Value> {
        self.context
    }

    /// Files one key and its value.
    fn insert(&mut self, key: Key, value: Value) {
        match key {
            Key::Named(i) => self.named[i] = Some(value),
            Key::Context(key) => {
                self.context.insert(key, value);
            }
            Key::Other => {}
        }
    }

    /// The fields of a decoded map (the MessagePack decoder builds values first).
    pub(crate) fn from_map(map: Map<String, Value>) -> Self {
        let mut fields = Fields::default();
        for (key, value) in map {
            fields.insert(Key::of(key), value);
        }
        fields
    }
}

/// What a key is to a message.
enum Key {
    Named(usize),
    Context(String),
    Other,
}

impl Key {
    fn of(mut key: String) -> Key {
        if let Some(i) = slot(&key) {
            Key::Named(i)
        } else if key.starts_with(CONTEXT_PREFIX) {
            key.replace_range(..CONTEXT_PREFIX.len(), "");
            Key::Context(key)
        } else {
            Key::Other
        }
    }

    fn of_str(key: &str) -> Key {
        if let Some(i) = slot(key) {
            Key::Named(i)
        } else if let Some(context_key) = key.strip_prefix(CONTEXT_PREFIX) {
            Key::Context(context_key.to_owned())
        } else {
            Key::Other
        }
    }
}

/// Reads a key without keeping it unless it is a context key.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
        Ok(Key::of_str(key))
    }
}

/// Reads one JSON value as a message: `Some` fields for an object, `None` for any other value
/// (read through, so that a syntax error later in it is still reported as one).
pub(crate) struct MessageSeed;

impl<'de> DeserializeSeed<'de> for MessageSeed {
    type Value = Option<Fields>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed {
    type Value = Option<Fields>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = access.next_key_seed(KeySeed)? {
            if let Key::Other = key {
                access.next_value::<IgnoredAny>()?;
            } else {
                let value = access.next_value::<Value>()?;
                fields.insert(key, value);
            }
        }
        Ok(Some(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn read(text: &str) -> Option<Fields> {
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = MessageSeed.deserialize(&mut de).unwrap();
        de.end().unwrap();
        fields
    }

    #[test]
    fn keys_go_to_their_slots_and_the_context_loses_its_prefix() {
        let mut fields = read(
            r#"{"method": "m", "x": [1, {"y": 2}], "_context_user": "u", "_context_": 1,
                "method": "last"}"#,
        )
        .unwrap();
        assert!(fields.contains("method"));
        assert_eq!(fields.remove("method"), Some(json!("last")));
        assert!(!fields.contains("method"));
        assert_eq!(fields.get("x"), None);
        assert_eq!(
            Value::Object(fields.into_context()),
            json!({"user": "u", "": 1})
        );
    }

    #[test]
    fn other_values_are_not_messages() {
        for text in ["[1, [2]]", "\"s\"", "1", "-1", "1.5", "true", "null"] {
            assert!(read(text).is_none(), "{text}");
        }
    }

    #[test]
    fn a_map_files_its_keys_the_same_way() {
        let map = json!({"_msg_id": "a", "_context_k": true, "other": 1});
        let Value::Object(map) = map else {
            unreachable!()
        };
        let mut fields = Fields::from_map(map);
        assert_eq!(fields.remove("_msg_id"), Some(json!("a")));
        assert_eq!(Value::Object(fields.into_context()), json!({"k": true}));
    }
}
