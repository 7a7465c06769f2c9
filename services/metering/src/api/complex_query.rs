//! Aodh's complex queries (`POST /v2/query/alarms`, `POST /v2/query/alarms/history`): a body
//! `{"filter": "<json>", "orderby": "<json>", "limit": N}` whose filter is a JSON expression
//! such as `{"and": [{"=": {"name": "cpu"}}, {"in": {"state": ["ok", "alarm"]}}]}`.
//!
//! Operators: `=`, `!=`, `<`, `<=` (`=<`), `>`, `>=` (`=>`), `=~` (a regular expression), `in`,
//! `and`, `or` (two operands or more), `not`; names are case-insensitive, as in Aodh. A field
//! must be one the queried kind has (`user` and `project` stand for `user_id` and `project_id`).
//! Expressions are matched against items as the API shows them (JSON), so the store needs no
//! query language of its own. Bounded: at most [`MAX_DEPTH`] levels and [`MAX_NODES`] terms;
//! regular expressions of bounded size.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::ApiError;

/// Deepest nesting of `and`/`or`/`not`.
pub const MAX_DEPTH: usize = 16;

/// Most terms and operators in one filter.
pub const MAX_NODES: usize = 256;

/// Largest compiled regular expression of `=~`, in bytes.
const MAX_REGEX_SIZE: usize = 64 * 1024;

/// A checked complex query.
#[derive(Debug)]
pub(super) struct ComplexQuery {
    filter: Option<Expr>,
    orderby: Vec<(String, bool)>,
    /// At most this many results.
    pub limit: Option<usize>,
}

#[derive(Debug)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare(Comparison, String, Value),
    Matches(String, regex::Regex),
    In(String, Vec<Value>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl ComplexQuery {
    /// Parses a request body; `fields` are the names an expression may use.
    pub(super) fn parse(body: &[u8], fields: &[&str]) -> Result<Self, ApiError> {
        let body: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice(body) {
                Ok(Value::Object(object)) => object,
                _ => return Err(ApiError::bad_request("body must be a JSON object")),
            }
        };
        if let Some(key) = body
            .keys()
            .find(|k| !["filter", "orderby", "limit"].contains(&k.as_str()))
        {
            return Err(ApiError::bad_request(format!(
                "{}: Unknown attribute for argument data",
                key.chars().take(64).collect::<String>()
            )));
        }
        let filter = match body.get("filter") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => {
                let expression: Value = serde_json::from_str(text).map_err(|e| {
                    ApiError::bad_request(format!("Filter expression not valid: {e}"))
                })?;
                let mut nodes = 0;
                Some(
                    Expr::parse(&expression, fields, 0, &mut nodes).map_err(|e| {
                        ApiError::bad_request(format!("Filter expression not valid: {e}"))
                    })?,
                )
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "filter: must be a JSON expression encoded as a string",
                ))
            }
        };
        let orderby = match body.get("orderby") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(text)) => orderby(text, fields).map_err(|e| {
                ApiError::bad_request(format!("Order-by expression not valid: {e}"))
            })?,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "orderby: must be a JSON list encoded as a string",
                ))
            }
        };
        let limit = match body.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| *n >= 1)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| ApiError::bad_request("Limit should be positive"))?,
            ),
        };
        Ok(Self {
            filter,
            orderby,
            limit,
        })
    }

    /// A query that only sorts, by `(field, descending)` keys already checked.
    pub(super) fn ordered_by(orderby: Vec<(String, bool)>) -> Self {
        Self {
            filter: None,
            orderby,
            limit: None,
        }
    }

    /// Whether `item` passes the filter.
    pub(super) fn matches(&self, item: &Value) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(item))
    }

    /// `items` sorted as `orderby` says (each compared as `show` shows it); stable, so ties
    /// keep the order they came in.
    pub(super) fn sort<T>(&self, items: Vec<T>, show: impl Fn(&T) -> Value) -> Vec<T> {
        if self.orderby.is_empty() {
            return items;
        }
        let mut keyed: Vec<(Value, T)> = items.into_iter().map(|i| (show(&i), i)).collect();
        keyed.sort_by(|(a, _), (b, _)| {
            for (field, descending) in &self.orderby {
                let order = compare(&a[field.as_str()], &b[field.as_str()]);
                let order = if *descending { order.reverse() } else { order };
                if order != Ordering::Equal {
                    return order;
                }
            }
            Ordering::Equal
        });
        keyed.into_iter().map(|(_, item)| item).collect()
    }
}

/// The field a name stands for.
fn field_name(name: &str, fields: &[&str]) -> Result<String, String> {
    let name = match name {
        "user" => "user_id",
        "project" => "project_id",
        other => other,
    };
    if fields.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{:?} is not a field one can query; valid: {}",
            name.chars().take(64).collect::<String>(),
            fields.join(", ")
        ))
    }
}

/// The single `{key: value}` of an expression object.
fn single(value: &Value) -> Result<(&str, &Value), String> {
    match value.as_object() {
        Some(object) if object.len() == 1 => object
            .iter()
            .next()
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| "empty expression".to_owned()),
        _ => Err(format!(
            "{} must be an object with exactly one key",
            shorten(value)
        )),
    }
}

fn shorten(value: &Value) -> String {
    value.to_string().chars().take(80).collect()
}

impl Expr {
    fn parse(
        value: &Value,
        fields: &[&str],
        depth: usize,
        nodes: &mut usize,
    ) -> Result<Self, String> {
        *nodes += 1;
        if depth > MAX_DEPTH || *nodes > MAX_NODES {
            return Err(format!("at most {MAX_DEPTH} levels and {MAX_NODES} terms"));
        }
        let (op, operand) = single(value)?;
        let op = op.to_ascii_lowercase();
        match op.as_str() {
            "and" | "or" => {
                let items = operand
                    .as_array()
                    .filter(|items| items.len() >= 2)
                    .ok_or_else(|| format!("{op} takes a list of two expressions or more"))?;
                let parsed = items
                    .iter()
                    .map(|item| Self::parse(item, fields, depth + 1, nodes))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if op == "and" {
                    Self::And(parsed)
                } else {
                    Self::Or(parsed)
                })
            }
            "not" => Ok(Self::Not(Box::new(Self::parse(
                operand,
                fields,
                depth + 1,
                nodes,
            )?))),
            "in" => {
                let (field, values) = single(operand)?;
                let values = values
                    .as_array()
                    .filter(|v| !v.is_empty() && v.iter().all(|x| x.is_string() || x.is_number()))
                    .ok_or_else(|| "in takes a non-empty list of strings or numbers".to_owned())?;
                Ok(Self::In(field_name(field, fields)?, values.clone()))
            }
            _ => {
                let (field, value) = single(operand)?;
                let field = field_name(field, fields)?;
                if !(value.is_string() || value.is_number() || value.is_boolean()) {
                    return Err(format!("{field}: compare with a string, number or boolean"));
                }
                let comparison = match op.as_str() {
                    "=" => Comparison::Eq,
                    "!=" => Comparison::Ne,
                    "<" => Comparison::Lt,
                    "<=" | "=<" => Comparison::Le,
                    ">" => Comparison::Gt,
                    ">=" | "=>" => Comparison::Ge,
                    "=~" => {
                        let pattern = value
                            .as_str()
                            .ok_or_else(|| "=~ takes a regular expression".to_owned())?;
                        let regex = regex::RegexBuilder::new(pattern)
                            .size_limit(MAX_REGEX_SIZE)
                            .build()
                            .map_err(|e| format!("=~: {e}"))?;
                        return Ok(Self::Matches(field, regex));
                    }
                    other => {
                        return Err(format!(
                            "{:?} is not an operator (=, !=, <, <=, >, >=, =~, in, and, or, not)",
                            other.chars().take(16).collect::<String>()
                        ))
                    }
                };
                Ok(Self::Compare(comparison, field, value.clone()))
            }
        }
    }

    fn matches(&self, item: &Value) -> bool {
        match self {
            Self::And(all) => all.iter().all(|e| e.matches(item)),
            Self::Or(any) => any.iter().any(|e| e.matches(item)),
            Self::Not(inner) => !inner.matches(item),
            Self::In(field, values) => values.iter().any(|v| {
                compare(&item[field.as_str()], v) == Ordering::Equal
                    && !item[field.as_str()].is_null()
            }),
            Self::Matches(field, regex) => item[field.as_str()]
                .as_str()
                .is_some_and(|text| regex.is_match(text)),
            Self::Compare(comparison, field, value) => {
                let actual = &item[field.as_str()];
                if actual.is_null() {
                    // SQL's rule: null compares with nothing, not even `!=`.
                    return false;
                }
                let order = compare(actual, value);
                match comparison {
                    Comparison::Eq => order == Ordering::Equal,
                    Comparison::Ne => order != Ordering::Equal,
                    Comparison::Lt => order == Ordering::Less,
                    Comparison::Le => order != Ordering::Greater,
                    Comparison::Gt => order == Ordering::Greater,
                    Comparison::Ge => order != Ordering::Less,
                }
            }
        }
    }
}

/// How two shown values compare: timestamps as times, numbers as numbers, booleans (also
/// against "true"/"false"), else as text; null before everything.
fn compare(a: &Value, b: &Value) -> Ordering {
    let time = |v: &Value| {
        v.as_str().and_then(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .ok()
                .or_else(|| {
                    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                        .ok()
                        .map(|t| t.and_utc())
                })
        })
    };
    let boolean = |v: &Value| match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    };
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(_), _) | (_, Value::Bool(_)) => match (boolean(a), boolean(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => a.to_string().cmp(&b.to_string()),
        },
        _ => match (time(a), time(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => text(a).cmp(&text(b)),
        },
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `[{"field": "asc"|"desc"}, …]`.
fn orderby(text: &str, fields: &[&str]) -> Result<Vec<(String, bool)>, String> {
    let list: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let items = list
        .as_array()
        .filter(|items| items.len() <= 8)
        .ok_or_else(|| "a list of at most 8 {field: direction}".to_owned())?;
    items
        .iter()
        .map(|item| {
            let (field, direction) = single(item)?;
            let descending = match direction.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("asc") => false,
                Some("desc") => true,
                _ => return Err(format!("{field}: the direction is asc or desc")),
            };
            Ok((field_name(field, fields)?, descending))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELDS: &[&str] = &[
        "name",
        "state",
        "severity",
        "timestamp",
        "enabled",
        "project_id",
    ];

    fn query(filter: Value) -> Result<ComplexQuery, ApiError> {
        let body = json!({"filter": filter.to_string()});
        ComplexQuery::parse(body.to_string().as_bytes(), FIELDS)
    }

    #[test]
    fn filters_combine_as_aodh_s() {
        let alarm = json!({"name": "cpu", "state": "alarm", "severity": "low", "enabled": true,
                           "timestamp": "2026-03-01T10:00:00.5", "project_id": "p"});
        let yes = [
            json!({"=": {"name": "cpu"}}),
            json!({"and": [{"=": {"state": "alarm"}}, {"!=": {"severity": "critical"}}]}),
            json!({"or": [{"=": {"name": "x"}}, {"in": {"state": ["ok", "alarm"]}}]}),
            json!({"not": {"=": {"name": "x"}}}),
            json!({">": {"timestamp": "2026-03-01T09:00:00"}}),
            json!({"=~": {"name": "^c.u$"}}),
            json!({"=": {"enabled": "True"}}),
            json!({"=": {"project": "p"}}),
        ];
        for filter in yes {
            assert!(
                query(filter.clone())
                    .map(|q| q.matches(&alarm))
                    .unwrap_or(false),
                "{filter}"
            );
        }
        assert!(!query(json!({"<": {"timestamp": "2026-03-01T09:00:00"}}))
            .unwrap()
            .matches(&alarm));
    }

    #[test]
    fn bad_filters_are_400_saying_why() {
        for (filter, says) in [
            (json!({"=": {"colour": "red"}}), "colour"),
            (json!({"~": {"name": "x"}}), "operator"),
            (json!({"and": [{"=": {"name": "x"}}]}), "two"),
            (json!({"=": {"name": "x"}, "!=": {"name": "y"}}), "one key"),
            (json!({"=~": {"name": "("}}), "=~"),
        ] {
            let error = query(filter.clone()).unwrap_err();
            assert!(
                error.message().contains(says),
                "{filter}: {}",
                error.message()
            );
        }
        let mut deep = json!({"=": {"name": "x"}});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"not": deep});
        }
        assert!(query(deep).is_err(), "nesting is bounded");
        let body = json!({"limit": 0});
        assert!(ComplexQuery::parse(body.to_string().as_bytes(), FIELDS).is_err());
    }

    #[test]
    fn orderby_sorts_by_each_key_in_turn() {
        let body = json!({"orderby": r#"[{"severity": "DESC"}, {"name": "asc"}]"#});
        let q = ComplexQuery::parse(body.to_string().as_bytes(), FIELDS).unwrap();
        let items = vec![
            json!({"name": "b", "severity": "low"}),
            json!({"name": "a", "severity": "low"}),
            json!({"name": "c", "severity": "moderate"}),
        ];
        let items = q.sort(items, Clone::clone);
        let names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["c", "a", "b"]);
    }
}
