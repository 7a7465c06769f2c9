//! Ceilometer's message signature (`ceilometer/publisher/utils.py`, `compute_signature` and
//! `verify_signature`): HMAC-SHA256 keyed with the telemetry secret over the message's
//! key/value pairs, sorted by key, nested dicts flattened to `outer:inner` names, each name and
//! value fed as Python's `str()` of it (lists after `decode_unicode`, so `[b'x', 1]`). The
//! `message_signature` pair itself is skipped. An empty secret means "not signed": the
//! signature is `""` and every message verifies.

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::pyrepr;

/// Ceilometer's default `[publisher] telemetry_secret`.
pub const DEFAULT_TELEMETRY_SECRET: &str = "change this for valid signing";

/// The hex HMAC-SHA256 of `message` under `secret`, as Ceilometer computes it; `""` when the
/// secret is empty.
///
/// ```
/// use serde_json::json;
/// use tidings_metering::sample::compute_signature;
///
/// let message = json!({"counter_name": "cpu", "counter_volume": 1.5, "resource_metadata": {}});
/// let signature = compute_signature(message.as_object().unwrap(), "secret");
/// assert_eq!(signature.len(), 64);
/// assert_eq!(compute_signature(message.as_object().unwrap(), ""), "");
/// ```
pub fn compute_signature(message: &Map<String, Value>, secret: &str) -> String {
    if secret.is_empty() {
        return String::new();
    }
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    let mut pairs = Vec::new();
    keypairs(message, None, &mut pairs);
    for (name, value) in pairs {
        if name == "message_signature" {
            continue;
        }
        mac.update(name.as_bytes());
        mac.update(pyrepr::str_of(value).as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `message["message_signature"]` is the signature of the rest of `message` under
/// `secret`. Always true with an empty secret; false when the signature is missing or not a
/// string. Compared in constant time.
pub fn verify_signature(message: &Map<String, Value>, secret: &str) -> bool {
    if secret.is_empty() {
        return true;
    }
    let claimed = match message.get("message_signature") {
        Some(Value::String(s)) => s.as_bytes(),
        _ => return false,
    };
    let expected = compute_signature(message, secret);
    constant_time_eq(expected.as_bytes(), claimed)
}

/// Ceilometer's `recursive_keypairs`: sorted pairs, nested dicts flattened with `:`; lists
/// and scalars are leaves (an empty nested dict yields nothing).
fn keypairs<'a>(
    map: &'a Map<String, Value>,
    prefix: Option<&str>,
    out: &mut Vec<(String, &'a Value)>,
) {
    for (key, value) in pyrepr::sorted(map) {
        let name = match prefix {
            Some(prefix) => format!("{prefix}:{key}"),
            None => key.clone(),
        };
        match value {
            Value::Object(inner) => keypairs(inner, Some(&name), out),
            leaf => out.push((name, leaf)),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_signature_pair_is_not_signed() {
        let unsigned = json!({"a": 1, "b": {"c": [1, "x"]}});
        let mut signed = unsigned.as_object().cloned().unwrap_or_default();
        let signature = compute_signature(&signed, "k");
        signed.insert("message_signature".into(), json!(signature));
        assert!(verify_signature(&signed, "k"));
        assert!(!verify_signature(&signed, "other"));
        signed.insert("a".into(), json!(2));
        assert!(!verify_signature(&signed, "k"));
    }

    #[test]
    fn nested_dicts_flatten_and_empty_ones_vanish() {
        let nested = json!({"m": {"x": {"y": 1}}, "e": {}});
        let flat = json!({"m:x:y": 1});
        assert_eq!(
            compute_signature(nested.as_object().unwrap_or(&Map::new()), "k"),
            compute_signature(flat.as_object().unwrap_or(&Map::new()), "k")
        );
    }

    #[test]
    fn empty_secret_means_unsigned() {
        let message = Map::new();
        assert_eq!(compute_signature(&message, ""), "");
        assert!(verify_signature(&message, ""));
        assert!(!verify_signature(&message, "k"), "missing signature fails");
    }
}
