//! Query strings as the API reads them: `key=value` pairs, Ceilometer's repeated
//! `q.field`/`q.op`/`q.value` triples, timestamps, and the paging parameters `limit` and
//! `marker`.

use chrono::{DateTime, Utc};

use super::ApiError;
use crate::model::QueryTerm;

/// What a path segment or query value escapes: all but RFC 3986's unreserved characters.
pub(super) const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Items in a page when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// The largest `limit` accepted.
pub const MAX_PAGE: usize = 1000;

/// Most `q.*` terms in one query.
pub const MAX_TERMS: usize = 16;

/// The decoded `key=value` pairs of a raw query string, in order.
pub(super) fn pairs(raw: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
}

/// The last value of `key`, if given.
pub(super) fn param(raw: Option<&str>, key: &str) -> Option<String> {
    pairs(raw).filter(|(k, _)| k == key).map(|(_, v)| v).last()
}

fn decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// `q.field`/`q.op`/`q.value` triples, in order.
pub(super) fn query_terms(raw: Option<&str>) -> Result<Vec<QueryTerm>, ApiError> {
    let (mut fields, mut ops, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in pairs(raw) {
        match key.as_str() {
            "q.field" => fields.push(value),
            "q.op" => ops.push(value),
            "q.value" => values.push(value),
            _ => {}
        }
    }
    if fields.len() != values.len() || (!ops.is_empty() && ops.len() != fields.len()) {
        return Err(ApiError::bad_request(
            "q.field, q.op and q.value must come in matching numbers",
        ));
    }
    if fields.len() > MAX_TERMS {
        return Err(ApiError::bad_request(format!(
            "q.field: at most {MAX_TERMS} query terms"
        )));
    }
    Ok(fields
        .into_iter()
        .zip(values)
        .enumerate()
        .map(|(i, (field, value))| QueryTerm {
            field,
            op: ops.get(i).cloned().unwrap_or_else(|| "eq".to_owned()),
            value,
        })
        .collect())
}

/// `limit`: [`DEFAULT_PAGE`] when absent, else an integer from 1 to [`MAX_PAGE`].
pub(super) fn limit(raw: Option<&str>) -> Result<usize, ApiError> {
    match param(raw, "limit") {
        None => Ok(DEFAULT_PAGE),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit: must be an integer from 1 to {MAX_PAGE}, got {text:?}"
                ))
            }),
    }
}

/// An ISO 8601 timestamp, with or without a zone (UTC when none).
pub(super) fn timestamp(text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        .map_err(|_| {
            ApiError::bad_request(format!("q.value {text:?} is not an ISO 8601 timestamp"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_repeated_terms() {
        let error = query_terms(Some(
            "period=60&q.field=resource_id&q.op=eq&q.value=vm%2D1&q.field=project_id&q.value=p+1",
        ))
        .unwrap_err();
        assert!(
            error.1.contains("matching"),
            "ops and fields must match when ops are given"
        );
        let terms = query_terms(Some("q.field=resource_id&q.op=eq&q.value=vm%2D1"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(terms[0].value, "vm-1");
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None).ok(), Some(DEFAULT_PAGE));
        assert_eq!(limit(Some("limit=5")).ok(), Some(5));
        for bad in ["limit=0", "limit=1001", "limit=x", "limit=-1"] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
