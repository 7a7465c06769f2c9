//! One field of a meter definition, as Ceilometer's `declarative.Definition` reads it:
//! - a string is a JSONPath, always (even `gauge` or `B`: when the path finds something in the
//!   notification, that wins);
//! - an integer (or boolean) is a constant;
//! - `{fields: path | [paths], plugin: name | {name, parameters}}` applies a plugin to the
//!   matches (several paths are joined as `(a)|(b)`); the plugins are `timedelta` and `split`;
//! - a list of paths is joined as above.
//!
//! One extension: for `name`, `type` and `unit` a string that is not a JSONPath (`'%'`) is taken
//! as the constant it plainly is; Ceilometer rejects the whole definition.

use std::borrow::Cow;

use serde_json::Value;

use crate::notification::jsonpath::{EvalError, JsonPath};
use crate::notification::timestamp::{parse_isotime, seconds_between};

/// Values already found in one notification, by expression.
pub(crate) type Memo<'d> = std::collections::HashMap<&'d str, Value>;

/// A plugin over a field's matches.
#[derive(Clone, Debug)]
pub(crate) enum Plugin {
    /// `abs(parse_isotime(b) - parse_isotime(a))` in seconds, from exactly two matches.
    Timedelta,
    /// `str(value).split(separator, max_split)[segment]` per match (deprecated in Ceilometer).
    Split {
        separator: String,
        segment: i64,
        max_split: Option<i64>,
    },
}

impl Plugin {
    /// Whether it can give one value per match (the `lookup` form needs that).
    pub(crate) fn supports_all_values(&self) -> bool {
        matches!(self, Plugin::Split { .. })
    }

    fn apply(&self, values: &[Cow<'_, Value>]) -> Vec<Value> {
        match self {
            Plugin::Timedelta => {
                let [start, end] = values else {
                    return Vec::new();
                };
                let parse = |v: &Value| v.as_str().and_then(parse_isotime);
                match (parse(start), parse(end)) {
                    (Some(start), Some(end)) => {
                        serde_json::Number::from_f64(seconds_between(&start, &end))
                            .map(Value::Number)
                            .into_iter()
                            .collect()
                    }
                    _ => Vec::new(),
                }
            }
            Plugin::Split {
                separator,
                segment,
                max_split,
            } => values
                .iter()
                .filter_map(|v| {
                    let text = match v.as_ref() {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(true) => "True".to_owned(),
                        Value::Bool(false) => "False".to_owned(),
                        Value::Null => "None".to_owned(),
                        _ => return None,
                    };
                    let parts: Vec<&str> = match max_split {
                        Some(n) if *n >= 0 => text
                            .splitn(
                                usize::try_from(*n).unwrap_or(usize::MAX).saturating_add(1),
                                separator.as_str(),
                            )
                            .collect(),
                        _ => text.split(separator.as_str()).collect(),
                    };
                    let len = i64::try_from(parts.len()).ok()?;
                    let index = if *segment < 0 {
                        len + segment
                    } else {
                        *segment
                    };
                    let index = usize::try_from(index).ok()?;
                    parts.get(index).map(|p| Value::String((*p).to_owned()))
                })
                .collect(),
        }
    }
}

/// How a field gets its value.
#[derive(Clone, Debug)]
pub(crate) enum Getter {
    /// An integer or boolean in the definition.
    Constant(Value),
    /// A string that is not a JSONPath, for `name`, `type` and `unit` (see the module docs).
    Literal(Value),
    /// A JSONPath, and maybe a plugin over its matches.
    Path {
        path: JsonPath,
        plugin: Option<Plugin>,
    },
}

/// Whether a field may fall back to a literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Literals {
    Allowed,
    Refused,
}

impl Getter {
    /// Reads a field's configuration; `Err` is the reason the definition is rejected.
    pub(crate) fn new(config: &Value, literals: Literals) -> Result<Self, String> {
        let (fields, plugin) = match config {
            Value::Object(map) => {
                let fields = map
                    .get("fields")
                    .ok_or_else(|| "the field 'fields' is required".to_owned())?;
                let plugin = match map.get("plugin") {
                    None => None,
                    Some(plugin) => Some(plugin_of(plugin)?),
                };
                (fields, plugin)
            }
            other => (other, None),
        };
        let expression: Cow<'_, str> = match fields {
            Value::Array(paths) if paths.len() == 1 => {
                return Getter::new(&with_plugin(&paths[0], config), literals)
            }
            Value::Array(paths) => Cow::Owned(
                paths
                    .iter()
                    .map(|p| format!("({})", python_str(p)))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            Value::Bool(_) => return Ok(Getter::Constant(fields.clone())),
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                return Ok(Getter::Constant(fields.clone()))
            }
            Value::String(s) => Cow::Borrowed(s.as_str()),
            other => return Err(format!("cannot read {other} as a JSONPath")),
        };
        match JsonPath::parse(&expression) {
            Ok(path) => Ok(Getter::Path { path, plugin }),
            Err(_) if literals == Literals::Allowed && plugin.is_none() => {
                Ok(Getter::Literal(Value::String(expression.into_owned())))
            }
            Err(error) => Err(format!(
                "parse error in JSONPath {expression:?}: {}",
                error.message
            )),
        }
    }

    /// The plugin, if any.
    pub(crate) fn plugin(&self) -> Option<&Plugin> {
        match self {
            Getter::Path { plugin, .. } => plugin.as_ref(),
            _ => None,
        }
    }

    /// The single value Ceilometer takes: the first match that is not null (or the plugin's
    /// first value); `Null` for none.
    pub(crate) fn first(&self, root: &Value) -> Result<Value, EvalError> {
        match self {
            Getter::Constant(v) | Getter::Literal(v) => Ok(v.clone()),
            Getter::Path { path, plugin: None } => Ok(path.first(root)?.unwrap_or(Value::Null)),
            Getter::Path {
                path,
                plugin: Some(plugin),
            } => {
                let matches: Vec<_> = path
                    .find(root)?
                    .into_iter()
                    .filter(|v| !v.is_null())
                    .collect();
                Ok(plugin
                    .apply(&matches)
                    .into_iter()
                    .next()
                    .unwrap_or(Value::Null))
            }
        }
    }

    /// [`first`](Self::first), remembered in `memo` by expression for one notification:
    /// definitions of the same resource share most of their paths (nova's four flavour meters
    /// share nine metadata paths).
    pub(crate) fn first_memo<'d>(
        &'d self,
        root: &Value,
        memo: &mut Memo<'d>,
    ) -> Result<Value, EvalError> {
        let Getter::Path { path, plugin: None } = self else {
            return self.first(root);
        };
        if let Some(value) = memo.get(path.as_str()) {
            return Ok(value.clone());
        }
        let value = path.first(root)?.unwrap_or(Value::Null);
        memo.insert(path.as_str(), value.clone());
        Ok(value)
    }

    /// Every value, nulls included (the `lookup` form). A constant is one value.
    pub(crate) fn all(&self, root: &Value) -> Result<Vec<Value>, EvalError> {
        match self {
            Getter::Constant(v) | Getter::Literal(v) => Ok(vec![v.clone()]),
            Getter::Path { path, plugin: None } => {
                Ok(path.find(root)?.into_iter().map(Cow::into_owned).collect())
            }
            Getter::Path {
                path,
                plugin: Some(plugin),
            } => Ok(plugin.apply(&path.find(root)?)),
        }
    }
}

/// A one-element `fields` list keeps the plugin around it.
fn with_plugin(path: &Value, config: &Value) -> Value {
    match config {
        Value::Object(map) => {
            let mut map = map.clone();
            map.insert("fields".to_owned(), path.clone());
            Value::Object(map)
        }
        _ => path.clone(),
    }
}

fn plugin_of(config: &Value) -> Result<Plugin, String> {
    let (name, parameters) = match config {
        Value::String(name) => (name.as_str(), serde_json::Map::new()),
        Value::Object(map) => {
            let name = map
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| "plugin specified, but no plugin name supplied".to_owned())?;
            let parameters = match map.get("parameters") {
                None | Some(Value::Null) => serde_json::Map::new(),
                Some(Value::Object(p)) => p.clone(),
                Some(other) => return Err(format!("plugin parameters {other} are not a mapping")),
            };
            (name, parameters)
        }
        other => return Err(format!("plugin {other} is neither a name nor a mapping")),
    };
    match name {
        "timedelta" => Ok(Plugin::Timedelta),
        "split" => {
            let separator = match parameters.get("separator") {
                None => ".".to_owned(),
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(other) => return Err(format!("split separator {other} is not a string")),
            };
            let int = |key: &str, default: Option<i64>| match parameters.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| format!("split {key} {v} is not an integer")),
            };
            Ok(Plugin::Split {
                separator,
                segment: int("segment", Some(0))?.unwrap_or(0),
                max_split: int("max_split", None)?,
            })
        }
        "map" | "bitfield" => Err(format!("plugin {name} is not supported by tidings")),
        other => Err(format!("no plugin named {other} available")),
    }
}

/// Python's `str()` of a decoded value, as `'(%s)' % path` writes it.
fn python_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        other => other.to_string(),
    }
}
