//! The JSONPath dialect of Ceilometer's `meters.yaml`: `jsonpath_rw` 1.4 with the
//! `jsonpath_rw_ext` 1.2 extensions, parsed and evaluated as they do, on `serde_json` values.
//!
//! What it reads (see `docs/notification-agent.md` for the full list and the differences):
//! - paths from the root `$` (or without it: `payload.x` is `$.payload.x`), `@` / `` `this` ``,
//!   fields (`a`, `'quoted.name'`, `a,b`, `*`), `[0]`, `[-1]`, `[*]`, `[1:3]`, `.[*]` (on an
//!   object it yields the object itself), `..`, `where`, `|` (binding tighter than `.`, as in
//!   `jsonpath_rw`: `ctxt.user_id|ctxt.user` is `ctxt.(user_id|ctxt).user`);
//! - filters `[?key=value]`, `[?(@.name='x')]`, with `= == != < <= > >= ~` and `&`, an integer
//!   value coercing its target with Python's `int()`;
//! - arithmetic `+ - * /` between paths, numbers and strings with Python's semantics (`"a" +
//!   "b"`, `"ab" * 2`, int stays int, a type error gives no value), applied per match;
//! - the named operators `` `len` ``, `` `sorted` ``, `` `split(c, segment, max)` `` and
//!   `` `sub(/regex/, replacement)` `` (no value when nothing changed).
//!
//! Notifications are hostile input: evaluation never panics, never recurses deeper than the
//! expression and the value, caps the matches one evaluation may produce ([`MAX_MATCHES`]) and
//! the length of strings and lists arithmetic may build ([`MAX_BUILT_LEN`]). Where Python would
//! raise on a value (an index into `null`, `sub` of a number) the path yields nothing here.
//!
//! This module owns the dialect only; which fields of a definition are paths is
//! `definitions`' business.

mod eval;
mod lexer;
mod parser;
mod pyops;

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

pub use pyops::truthy;

/// The most matches one evaluation may produce, intermediate ones included.
pub const MAX_MATCHES: usize = 100_000;
/// The longest string or list arithmetic may build (`"ab" * 1e9` is refused).
pub const MAX_BUILT_LEN: usize = 1 << 20;
/// The longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// The deepest nesting of an expression accepted.
pub const MAX_NESTING: usize = 64;

/// A parsed expression.
#[derive(Clone)]
pub struct JsonPath {
    source: String,
    node: parser::Node,
}

impl fmt::Debug for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JsonPath").field(&self.source).finish()
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Why an expression does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at byte {position} of {expression:?})")]
pub struct ParseError {
    /// The expression.
    pub expression: String,
    /// Where it went wrong.
    pub position: usize,
    /// What went wrong.
    pub message: String,
}

/// Why an evaluation was cut short.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// More than [`MAX_MATCHES`] matches.
    #[error("more than {MAX_MATCHES} matches")]
    TooManyMatches,
}

impl JsonPath {
    /// Parses `expression`.
    ///
    /// ```
    /// use serde_json::json;
    /// use tidings_metering::notification::jsonpath::JsonPath;
    ///
    /// let path = JsonPath::parse("$.payload.metrics[?(@.name='cpu.percent')].value * 100").unwrap();
    /// let doc = json!({"payload": {"metrics": [{"name": "cpu.percent", "value": 0.25}]}});
    /// assert_eq!(path.first(&doc).unwrap(), Some(json!(25.0)));
    /// assert!(JsonPath::parse("$.payload[").is_err());
    /// ```
    pub fn parse(expression: &str) -> Result<Self, ParseError> {
        let node = parser::parse(expression)?;
        Ok(Self {
            source: expression.to_owned(),
            node,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Every match in `root`, `null`s included, in `jsonpath_rw`'s order.
    pub fn find<'a>(&self, root: &'a Value) -> Result<Vec<Cow<'a, Value>>, EvalError> {
        eval::find(&self.node, root)
    }

    /// The first match that is not `null` (what Ceilometer takes for a single value).
    pub fn first(&self, root: &Value) -> Result<Option<Value>, EvalError> {
        Ok(self
            .find(root)?
            .into_iter()
            .find(|v| !v.is_null())
            .map(Cow::into_owned))
    }
}

#[cfg(test)]
mod tests;
