//! One meter definition (an entry of `metric:` in `meters.yaml`), checked at load as
//! Ceilometer's `MeterDefinition` checks it, and evaluated against a notification as its
//! `to_samples` does: the single form (one sample) and the `lookup` form (one sample per value
//! of `name`, every listed attribute giving one value per sample).

use std::collections::HashMap;

use fancy_regex::Regex;
use serde_json::{Map, Value};

use super::getter::{Getter, Literals, Memo};
use super::sample::Draft;
use crate::notification::jsonpath::{truthy, EvalError, JsonPath};

/// `SAMPLE_ATTRIBUTES`, in Ceilometer's order.
pub(crate) const ATTRIBUTES: [&str; 8] = [
    "name",
    "type",
    "volume",
    "unit",
    "timestamp",
    "user_id",
    "project_id",
    "resource_id",
];

/// Fields a definition must have, each with a value that is not empty, zero or false.
const REQUIRED: [&str; 6] = [
    "name",
    "type",
    "event_type",
    "unit",
    "volume",
    "resource_id",
];

/// Ceilometer's sample types.
pub(crate) const TYPES: [&str; 3] = ["gauge", "delta", "cumulative"];

/// The event type patterns of one load, each compiled once: meters share them (a YAML anchor,
/// one event carrying several meters), a compiled one costs 6-25 KiB and a copy 170 bytes.
#[derive(Debug, Default)]
pub(crate) struct EventTypePatterns {
    compiled: HashMap<String, Regex>,
}

impl EventTypePatterns {
    fn compile(&mut self, pattern: &str) -> Result<Regex, String> {
        if let Some(regex) = self.compiled.get(pattern) {
            return Ok(regex.clone());
        }
        // Python's `re.match`: anchored at the start only.
        let regex = Regex::new(&format!("^(?:{pattern})"))
            .map_err(|e| format!("bad event_type regex {pattern:?}: {e}"))?;
        self.compiled.insert(pattern.to_owned(), regex.clone());
        Ok(regex)
    }
}

/// A loaded definition.
#[derive(Debug)]
pub(crate) struct MeterDefinition {
    /// The `name` as written (a JSONPath for the `lookup` form).
    pub(crate) name: String,
    event_types: Vec<Regex>,
    /// `name`, `type` and `unit` as written: the values when their paths find nothing.
    defaults: [Value; 3],
    attributes: Vec<(&'static str, Getter)>,
    metadata: Vec<(String, Getter)>,
    user_metadata: Option<Getter>,
    lookup: Option<Vec<String>>,
}

/// The intended context fallback for user and project: Ceilometer writes
/// `ctxt.user_id|ctxt.user`, which its precedence makes a path that never matches.
#[derive(Debug)]
pub(crate) struct Fallback {
    user: Option<JsonPath>,
    project: Option<JsonPath>,
}

impl Fallback {
    pub(crate) fn new() -> Self {
        // Constant expressions that the tests parse.
        Self {
            user: JsonPath::parse("(ctxt.user_id)|(ctxt.user)").ok(),
            project: JsonPath::parse("(ctxt.project_id)|(ctxt.tenant_id)").ok(),
        }
    }

    fn first(path: Option<&JsonPath>, root: &Value) -> Result<Value, EvalError> {
        Ok(match path {
            Some(path) => path.first(root)?.unwrap_or(Value::Null),
            None => Value::Null,
        })
    }
}

/// Python's `str()`-like name of a YAML value, for reports.
pub(crate) fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "(none)".to_owned(),
        other => other.to_string(),
    }
}

impl MeterDefinition {
    /// Checks and compiles one entry of `metric:`; `Err` says why it cannot work. Event type
    /// patterns come from `patterns`, compiled once for all the definitions that share them.
    pub(crate) fn new(config: &Value, patterns: &mut EventTypePatterns) -> Result<Self, String> {
        let Value::Object(cfg) = config else {
            return Err("a definition must be a mapping".to_owned());
        };
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|f| !cfg.get(*f).is_some_and(truthy))
            .collect();
        if !missing.is_empty() {
            return Err(format!("required fields {missing:?} not specified"));
        }
        let event_types = match &cfg["event_type"] {
            Value::String(one) => vec![one.clone()],
            Value::Array(many) => many
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("event_type {e} is not a string"))
                })
                .collect::<Result<_, _>>()?,
            other => return Err(format!("event_type {other} is neither a string nor a list")),
        };
        let event_types = event_types
            .iter()
            .map(|p| patterns.compile(p))
            .collect::<Result<Vec<_>, _>>()?;
        let lookup = match cfg.get("lookup") {
            None | Some(Value::Null) => None,
            Some(Value::String(one)) => Some(vec![one.clone()]),
            Some(Value::Array(many)) => Some(
                many.iter()
                    .map(|e| {
                        e.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| format!("lookup entry {e} is not a string"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(other) => return Err(format!("lookup {other} is neither a string nor a list")),
        };
        let type_looked_up = lookup
            .as_ref()
            .is_some_and(|l| l.iter().any(|a| a == "type"));
        if !type_looked_up && !cfg["type"].as_str().is_some_and(|t| TYPES.contains(&t)) {
            return Err(format!("invalid type {} specified", cfg["type"]));
        }
        let mut attributes = Vec::new();
        for attribute in ATTRIBUTES {
            let Some(field) = cfg.get(attribute).filter(|v| truthy(v)) else {
                continue;
            };
            let literals = if matches!(attribute, "name" | "type" | "unit") {
                Literals::Allowed
            } else {
                Literals::Refused
            };
            let getter = Getter::new(field, literals).map_err(|e| format!("{attribute}: {e}"))?;
            if lookup.is_some() && getter.plugin().is_some_and(|p| !p.supports_all_values()) {
                return Err(format!(
                    "{attribute}: its plugin gives one value, but a lookup definition needs one per meter"
                ));
            }
            attributes.push((attribute, getter));
        }
        let metadata = match cfg.get("metadata") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    Getter::new(v, Literals::Refused)
                        .map(|g| (k.clone(), g))
                        .map_err(|e| format!("metadata {k}: {e}"))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(format!("metadata {other} is not a mapping")),
        };
        let user_metadata = match cfg.get("user_metadata").filter(|v| truthy(v)) {
            None => None,
            Some(v) => {
                Some(Getter::new(v, Literals::Refused).map_err(|e| format!("user_metadata: {e}"))?)
            }
        };
        Ok(Self {
            name: shown(&cfg["name"]),
            event_types,
            defaults: [
                cfg["name"].clone(),
                cfg["type"].clone(),
                cfg["unit"].clone(),
            ],
            attributes,
            metadata,
            user_metadata,
            lookup,
        })
    }

    /// Whether `event_type` is one of this definition's (`re.match` of any of its regexes).
    pub(crate) fn matches(&self, event_type: &str) -> bool {
        self.event_types
            .iter()
            .any(|r| r.is_match(event_type).unwrap_or(false))
    }

    /// The samples' values for the notification `root`, before the timestamp, metadata and
    /// volume rules of [`Draft`]; `Ok(Err(reason))` when a `lookup` definition finds values of
    /// unequal counts (no sample at all, as in Ceilometer).
    pub(crate) fn drafts<'d>(
        &'d self,
        root: &Value,
        fallback: &Fallback,
        user_metadata: &super::UserMetadataRules,
        memo: &mut Memo<'d>,
    ) -> Result<Result<Vec<Draft>, String>, EvalError> {
        let mut metadata = Map::new();
        for (key, getter) in &self.metadata {
            let value = getter.first_memo(root, memo)?;
            if truthy(&value) {
                metadata.insert(key.clone(), value);
            }
        }
        if let Some(getter) = &self.user_metadata {
            if let Value::Object(source) = getter.first_memo(root, memo)? {
                user_metadata.add(&source, &mut metadata);
            }
        }
        let user = Fallback::first(fallback.user.as_ref(), root)?;
        let project = Fallback::first(fallback.project.as_ref(), root)?;
        let mut draft = Draft {
            name: self.defaults[0].clone(),
            counter_type: self.defaults[1].clone(),
            unit: self.defaults[2].clone(),
            volume: Value::Null,
            timestamp: Value::Null,
            user_id: user,
            project_id: project,
            resource_id: Value::Null,
            metadata,
        };
        let Some(lookup) = &self.lookup else {
            for (attribute, getter) in &self.attributes {
                let value = getter.first_memo(root, memo)?;
                if !value.is_null() {
                    *draft.field(attribute) = value;
                }
            }
            return Ok(Ok(vec![draft]));
        };
        // The lookup form: every attribute a list; `name` and the looked-up ones always take
        // what their paths found, the others only a non-empty list.
        let mut lists: Vec<(&'static str, Vec<Value>)> = Vec::new();
        for (attribute, getter) in &self.attributes {
            let values = getter.all(root)?;
            if *attribute == "name" || lookup.iter().any(|l| l == attribute) || !values.is_empty() {
                lists.push((attribute, values));
            }
        }
        let count = lists
            .iter()
            .find(|(a, _)| *a == "name")
            .map_or(1, |(_, v)| v.len());
        if count == 0 {
            return Ok(Ok(Vec::new()));
        }
        for attribute in ATTRIBUTES.iter().chain(&["message", "metadata"]) {
            let len = lists
                .iter()
                .find(|(a, _)| a == attribute)
                .map_or(1, |(_, v)| v.len());
            let broadcast = len == 1 && !lookup.iter().any(|l| l == attribute);
            if len != count && !broadcast {
                let found = match lists.iter().find(|(a, _)| a == attribute) {
                    Some((_, v)) if !(v.len() == 1 && v[0].is_null()) => v.len(),
                    _ => 0,
                };
                return Ok(Err(format!(
                    "only {found} fetched meters contain \"{attribute}\" field instead of {count}"
                )));
            }
        }
        let mut drafts = vec![draft; count];
        for (attribute, values) in lists {
            if values.len() == count {
                for (draft, value) in drafts.iter_mut().zip(values) {
                    *draft.field(attribute) = value;
                }
            } else if let Some(value) = values.into_iter().next() {
                for draft in &mut drafts {
                    *draft.field(attribute) = value.clone();
                }
            }
        }
        Ok(Ok(drafts))
    }
}
