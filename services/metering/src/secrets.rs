//! Secrets kept out of everything the service shows: API responses, alarm history, logs,
//! reports and banners.
//!
//! A secret is the password (or the lone user, which is often a token) in a URL's userinfo,
//! the value of a query or fragment parameter whose name looks secret (`password`, `token`,
//! `secret`, `key`, `sig`…), and the value of a JSON key whose name looks secret
//! (`auth_token`…). Names are judged by [`is_secret_key`], which starts from the messaging
//! library's rule for context keys ([`tidings::Context::is_secret_key`]) so that a context key
//! hidden from `Debug` is also hidden here; transport URLs have their own redaction in
//! `tidings::TransportUrl`'s `Display`, and this module covers every other URL (webhooks,
//! stores, Keystone).
//!
//! Masking is for showing only: the store keeps the real action URLs, since the notifier
//! needs their credentials to call them.

use serde_json::{Map, Value};

/// What a masked secret shows instead.
pub const MASK: &str = "***";

/// Last name segments (split on `_`, `-`, `.`) that make a parameter secret: `api_key`,
/// `X-Amz-Signature`, `sig`; but not `key_name` (Nova's SSH key pair name) or `session_id`.
const SECRET_SEGMENTS: &[&str] = &[
    "key",
    "apikey",
    "pass",
    "passwd",
    "pwd",
    "sig",
    "signature",
    "authorization",
    "cookie",
    "session",
    "sessionid",
    "private",
];

/// Whether a parameter or key named `name` holds a secret: anything the messaging library hides
/// in contexts (`token`, `password`, `secret`, `credential` anywhere in the name) and names
/// ending in a segment such as `key`, `pass`, `pwd`, `sig` (`api_key`, `X-Amz-Signature`).
pub fn is_secret_key(name: &str) -> bool {
    if tidings::Context::is_secret_key(name) {
        return true;
    }
    let lower = name.to_ascii_lowercase();
    lower.contains("passw")
        || lower
            .rsplit(['_', '-', '.', ' '])
            .next()
            .is_some_and(|last| SECRET_SEGMENTS.contains(&last))
}

/// `url` with its credentials masked: the userinfo's password (`user:***@`, or `***@` for a
/// lone user, often a token) and the values of secret query and fragment parameters
/// (`?password=***`). Text without `://` is returned unchanged. Works on any scheme and on URLs
/// that do not parse (libpq's multi-host URLs, half-typed webhooks), since what must not leak
/// is the text.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    out.push_str("://");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(MASK),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (tail, None),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&mask_parameters(query));
        }
        None => out.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(&mask_parameters(fragment));
    }
    out
}

/// `a=1&password=x;b=2` with the secret values masked; order and separators kept.
fn mask_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let (pair, after) = rest.split_at(end);
        match pair.split_once('=') {
            Some((key, value)) if !value.is_empty() && is_secret_key(&decoded(key)) => {
                out.push_str(key);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(pair),
        }
        match after.chars().next() {
            Some(separator) => {
                out.push(separator);
                rest = &after[separator.len_utf8()..];
            }
            None => return out,
        }
    }
}

fn decoded(key: &str) -> String {
    percent_encoding::percent_decode_str(&key.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Free text (an error message, a reason, a log line) with every URL in it masked by
/// [`mask_url`]. A URL runs from its scheme to the next space, quote or bracket.
pub fn mask_text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_owned();
    }
    let is_boundary =
        |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '(' | ')' | '`');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-` and `.` just before `://`.
        let scheme_start = rest[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(at, |(i, _)| i);
        let end = rest[at..].find(is_boundary).map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&mask_url(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A copy of `value` fit to show: the values of secret keys replaced by [`MASK`] (unless null),
/// and every string that holds a URL passed through [`mask_text`]. Used on API answers,
/// history, reports and `tidings listen` lines.
pub fn mask_json(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(mask_text(text)),
        Value::Array(items) => Value::Array(items.iter().map(mask_json).collect()),
        Value::Object(map) => Value::Object(mask_map(map)),
        other => other.clone(),
    }
}

fn mask_map(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .map(|(key, value)| {
            let shown = if is_secret_key(key) && !value.is_null() {
                Value::String(MASK.to_owned())
            } else {
                mask_json(value)
            };
            (key.clone(), shown)
        })
        .collect()
}

/// A secret setting (a service token, a password): its `Debug` shows [`MASK`], and the value
/// comes out only through [`expose`](Self::expose), where it is used.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn userinfo_passwords_and_lone_users_are_masked() {
        assert_eq!(
            mask_url("https://ops:hunter2@hooks.example/a?b=1"),
            "https://ops:***@hooks.example/a?b=1"
        );
        assert_eq!(
            mask_url("https://ghp_token@api.example/hook"),
            "https://***@api.example/hook"
        );
        assert_eq!(
            mask_url("postgres://app:pw@db1,db2:5433/m"),
            "postgres://app:***@db1,db2:5433/m"
        );
        assert_eq!(mask_url("log://"), "log://");
        assert_eq!(mask_url("not a url"), "not a url");
    }

    #[test]
    fn secret_query_and_fragment_parameters_are_masked() {
        assert_eq!(
            mask_url("postgres://db/m?user=app&password=s3cret&sslmode=disable"),
            "postgres://db/m?user=app&password=***&sslmode=disable"
        );
        assert_eq!(
            mask_url("https://h/x?api_key=1&X-Amz-Signature=2&token=3&sig=4&page=5#access_token=6"),
            "https://h/x?api_key=***&X-Amz-Signature=***&token=***&sig=***&page=5#access_token=***"
        );
        assert_eq!(
            mask_url("https://h/?pass%77ord=x"),
            "https://h/?pass%77ord=***"
        );
        assert_eq!(
            mask_url("https://h/?monkey=1&keystone=2&key_name=k&session_id=s"),
            "https://h/?monkey=1&keystone=2&key_name=k&session_id=s"
        );
    }

    #[test]
    fn urls_inside_text_are_masked() {
        assert_eq!(
            mask_text("error sending request for url (https://u:p@h/x?token=t): refused"),
            "error sending request for url (https://u:***@h/x?token=***): refused"
        );
        assert_eq!(mask_text("no url here"), "no url here");
    }

    #[test]
    fn json_masks_secret_keys_and_urls_at_any_depth() {
        let shown = mask_json(&json!({
            "auth_token": "abc",
            "user": "u",
            "actions": ["https://u:p@h/", "log://"],
            "nested": {"password": 5, "token": null},
        }));
        assert_eq!(
            shown,
            json!({
                "auth_token": "***",
                "user": "u",
                "actions": ["https://u:***@h/", "log://"],
                "nested": {"password": "***", "token": null},
            })
        );
    }
}
