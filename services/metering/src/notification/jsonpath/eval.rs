//! Evaluation: what `jsonpath_rw`'s `find` returns, borrowed from the document where it can be
//! (built values, such as arithmetic results, are owned).
//!
//! `$` is the document's root, except inside a filter, where it is the list element being
//! tested (`jsonpath_rw_ext` evaluates conditions on the bare element).

use std::borrow::Cow;

use serde_json::Value;

use super::parser::{Node, Operand};
use super::pyops;
use super::{EvalError, MAX_MATCHES};

type Matches<'a> = Vec<Cow<'a, Value>>;

/// Every match of `node` in `root`.
pub(super) fn find<'a>(node: &Node, root: &'a Value) -> Result<Matches<'a>, EvalError> {
    let mut budget = MAX_MATCHES;
    let mut out = Vec::new();
    eval(node, root, root, &mut out, &mut budget)?;
    Ok(out)
}

fn push<'a>(
    out: &mut Matches<'a>,
    value: Cow<'a, Value>,
    budget: &mut usize,
) -> Result<(), EvalError> {
    *budget = budget.checked_sub(1).ok_or(EvalError::TooManyMatches)?;
    out.push(value);
    Ok(())
}

/// Applies `node` to each of `inputs`, in order.
fn each<'a>(
    node: &Node,
    inputs: Matches<'a>,
    root: &'a Value,
    out: &mut Matches<'a>,
    budget: &mut usize,
) -> Result<(), EvalError> {
    for input in inputs {
        match input {
            Cow::Borrowed(value) => eval(node, value, root, out, budget)?,
            Cow::Owned(value) => {
                // A built value: what comes out of it cannot borrow from it.
                let mut inner = Vec::new();
                eval(node, &value, root, &mut inner, budget)?;
                out.extend(inner.into_iter().map(|v| Cow::Owned(v.into_owned())));
            }
        }
    }
    Ok(())
}

fn eval<'a>(
    node: &Node,
    datum: &'a Value,
    root: &'a Value,
    out: &mut Matches<'a>,
    budget: &mut usize,
) -> Result<(), EvalError> {
    match node {
        Node::Root => push(out, Cow::Borrowed(root), budget),
        Node::This => push(out, Cow::Borrowed(datum), budget),
        Node::Fields(fields) => {
            let Value::Object(map) = datum else {
                return Ok(());
            };
            if fields.iter().any(|f| f == "*") {
                for value in map.values() {
                    push(out, Cow::Borrowed(value), budget)?;
                }
            } else {
                for field in fields {
                    if let Some(value) = map.get(field) {
                        push(out, Cow::Borrowed(value), budget)?;
                    }
                }
            }
            Ok(())
        }
        Node::Index(index) => {
            match datum {
                Value::Array(items) => {
                    if let Some(value) = python_index(items.len(), *index).map(|i| &items[i]) {
                        push(out, Cow::Borrowed(value), budget)?;
                    }
                }
                Value::String(text) => {
                    let count = text.chars().count();
                    if let Some(i) = python_index(count, *index) {
                        let c = text.chars().nth(i).map(String::from).unwrap_or_default();
                        push(out, Cow::Owned(Value::String(c)), budget)?;
                    }
                }
                _ => {}
            }
            Ok(())
        }
        Node::Slice(start, end) => match datum {
            Value::Array(items) => {
                for i in python_slice(items.len(), *start, *end) {
                    push(out, Cow::Borrowed(&items[i]), budget)?;
                }
                Ok(())
            }
            // A single value is a list of itself (`.[*]` on an object yields the object).
            Value::Null => Ok(()),
            other => {
                if !python_slice(1, *start, *end).is_empty() {
                    push(out, Cow::Borrowed(other), budget)?;
                }
                Ok(())
            }
        },
        Node::Child(left, right) => {
            let mut lefts = Vec::new();
            eval(left, datum, root, &mut lefts, budget)?;
            each(right, lefts, root, out, budget)
        }
        Node::Descendants(left, right) => {
            let mut lefts = Vec::new();
            eval(left, datum, root, &mut lefts, budget)?;
            for left in lefts {
                match left {
                    Cow::Borrowed(value) => descend(right, value, root, out, budget)?,
                    Cow::Owned(value) => {
                        let mut inner = Vec::new();
                        descend(right, &value, root, &mut inner, budget)?;
                        out.extend(inner.into_iter().map(|v| Cow::Owned(v.into_owned())));
                    }
                }
            }
            Ok(())
        }
        Node::Where(left, right) => {
            let mut lefts = Vec::new();
            eval(left, datum, root, &mut lefts, budget)?;
            for left in lefts {
                let mut probe = Vec::new();
                eval(right, left.as_ref(), root, &mut probe, budget)?;
                if !probe.is_empty() {
                    push(out, left, budget)?;
                }
            }
            Ok(())
        }
        Node::Union(left, right) => {
            eval(left, datum, root, out, budget)?;
            eval(right, datum, root, out, budget)
        }
        Node::Filter(conditions) => {
            let Value::Array(items) = datum else {
                return Ok(());
            };
            for item in items {
                let mut passes = true;
                for condition in conditions {
                    // The element is its own root inside a filter.
                    let mut found = Vec::new();
                    eval(&condition.target, item, item, &mut found, budget)?;
                    let ok = match &condition.test {
                        None => !found.is_empty(),
                        Some((op, value, regex)) => found.iter().any(|target| {
                            !target.is_null() && pyops::compare(target, *op, value, regex.as_ref())
                        }),
                    };
                    if !ok {
                        passes = false;
                        break;
                    }
                }
                if passes {
                    push(out, Cow::Borrowed(item), budget)?;
                }
            }
            Ok(())
        }
        Node::Operation(left, op, right) => {
            for value in operation(left, *op, right, datum, root, budget)? {
                push(out, Cow::Owned(value), budget)?;
            }
            Ok(())
        }
        Node::Len => {
            let len = match datum {
                Value::Array(items) => items.len(),
                Value::Object(map) => map.len(),
                Value::String(text) => text.chars().count(),
                _ => return Ok(()),
            };
            push(out, Cow::Owned(Value::from(len)), budget)
        }
        Node::Sorted => {
            let sorted = match datum {
                Value::Object(map) => Some(Value::Array(
                    map.keys().map(|k| Value::String(k.clone())).collect(),
                )),
                Value::Array(items) => pyops::sorted(items).map(Value::Array),
                // jsonpath_rw_ext returns the bare datum here, which its callers cannot iterate.
                _ => None,
            };
            match sorted {
                Some(value) => push(out, Cow::Owned(value), budget),
                None => Ok(()),
            }
        }
        Node::Split {
            separator,
            segment,
            max_split,
        } => {
            let Value::String(text) = datum else {
                return Ok(());
            };
            let part = if *max_split < 0 {
                text.split(*separator).nth(*segment)
            } else {
                let parts = usize::try_from(*max_split)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1);
                text.splitn(parts, *separator).nth(*segment)
            };
            match part {
                Some(part) => push(out, Cow::Owned(Value::String(part.to_owned())), budget),
                None => Ok(()),
            }
        }
        Node::Sub { regex, replacement } => {
            let Value::String(text) = datum else {
                return Ok(());
            };
            let replaced = regex.replace_all(text, replacement.as_str());
            if replaced.as_ref() == text.as_str() || replaced.len() > super::MAX_BUILT_LEN {
                return Ok(());
            }
            push(
                out,
                Cow::Owned(Value::String(replaced.into_owned())),
                budget,
            )
        }
        // Refused by the parser outside arithmetic.
        Node::Number(_) => Ok(()),
    }
}

/// `right` on `value` and on everything below it, depth first.
fn descend<'a>(
    right: &Node,
    value: &'a Value,
    root: &'a Value,
    out: &mut Matches<'a>,
    budget: &mut usize,
) -> Result<(), EvalError> {
    eval(right, value, root, out, budget)?;
    match value {
        Value::Array(items) => {
            for item in items {
                descend(right, item, root, out, budget)?;
            }
        }
        Value::Object(map) => {
            for item in map.values() {
                descend(right, item, root, out, budget)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `jsonpath_rw_ext`'s `Operation.find`: per match; two paths need equal, non-zero match
/// counts; any type error gives nothing at all.
fn operation(
    left: &Operand,
    op: super::parser::ArithOp,
    right: &Operand,
    datum: &Value,
    root: &Value,
    budget: &mut usize,
) -> Result<Vec<Value>, EvalError> {
    let matches = |node: &Node, budget: &mut usize| {
        let mut found = Vec::new();
        eval(node, datum, root, &mut found, budget).map(|()| found)
    };
    let results: Option<Vec<Value>> = match (left, right) {
        (Operand::Path(l), Operand::Path(r)) => {
            let (ls, rs) = (matches(l, budget)?, matches(r, budget)?);
            if ls.is_empty() || ls.len() != rs.len() {
                return Ok(Vec::new());
            }
            ls.iter()
                .zip(&rs)
                .map(|(l, r)| pyops::arith(l, op, r))
                .collect()
        }
        (Operand::Path(l), Operand::Const(r)) => matches(l, budget)?
            .iter()
            .map(|l| pyops::arith(l, op, r))
            .collect(),
        (Operand::Const(l), Operand::Path(r)) => matches(r, budget)?
            .iter()
            .map(|r| pyops::arith(l, op, r))
            .collect(),
        (Operand::Const(l), Operand::Const(r)) => pyops::arith(l, op, r).map(|v| vec![v]),
    };
    Ok(results.unwrap_or_default())
}

/// Python's `items[index]` for a list of `len`, when it does not raise.
fn python_index(len: usize, index: i64) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let i = if index < 0 { len + index } else { index };
    (0..len)
        .contains(&i)
        .then(|| usize::try_from(i).ok())
        .flatten()
}

/// The indices of Python's `range(len)[start:end]`.
fn python_slice(len: usize, start: Option<i64>, end: Option<i64>) -> Vec<usize> {
    let n = i64::try_from(len).unwrap_or(i64::MAX);
    let clamp = |i: i64| if i < 0 { (n + i).max(0) } else { i.min(n) };
    let from = start.map_or(0, clamp);
    let to = end.map_or(n, clamp);
    (from..to.max(from))
        .filter_map(|i| usize::try_from(i).ok())
        .collect()
}
