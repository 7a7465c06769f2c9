//! Python's value semantics where the dialect borrows them: arithmetic (`operator.add` and
//! friends on decoded JSON), filter comparisons (`int()` coercion for an integer value, `==`
//! across types, `re.match`), truthiness and `sorted`. A Python `TypeError` is `None` here.

use std::cmp::Ordering;

use fancy_regex::Regex;
use serde_json::{Number, Value};

use super::parser::{ArithOp, CmpOp, FilterValue};
use super::MAX_BUILT_LEN;

/// Python's truthiness of a decoded JSON value: `null`, `false`, `0`, `0.0`, `""`, `[]` and `{}`
/// are false.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// A Python number: `bool` and `int` are integers.
#[derive(Clone, Copy, Debug)]
enum Num {
    Int(i128),
    Float(f64),
}

fn number(value: &Value) -> Option<Num> {
    match value {
        Value::Bool(b) => Some(Num::Int(i128::from(*b))),
        Value::Number(n) => Some(number_of(n)),
        _ => None,
    }
}

fn number_of(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn int_value(i: i128) -> Option<Value> {
    if let Ok(i) = i64::try_from(i) {
        Some(Value::from(i))
    } else {
        u64::try_from(i).ok().map(Value::from)
    }
}

fn float_value(f: f64) -> Option<Value> {
    Number::from_f64(f).map(Value::Number)
}

fn as_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

/// The repetition count of a sequence multiplied by `value`, when `value` is an integer.
fn repeat_count(value: &Value) -> Option<usize> {
    match number(value)? {
        Num::Int(i) => Some(usize::try_from(i.max(0)).unwrap_or(usize::MAX)),
        Num::Float(_) => None,
    }
}

/// `left <op> right` as Python computes it on decoded JSON; `None` where Python raises (a type
/// error, a division by zero, an integer beyond 64 bits, an infinite result) or the result
/// would be longer than [`MAX_BUILT_LEN`].
pub(super) fn arith(left: &Value, op: ArithOp, right: &Value) -> Option<Value> {
    if let (Some(l), Some(r)) = (number(left), number(right)) {
        return match (l, r, op) {
            (Num::Int(a), Num::Int(b), ArithOp::Add) => int_value(a.checked_add(b)?),
            (Num::Int(a), Num::Int(b), ArithOp::Sub) => int_value(a.checked_sub(b)?),
            (Num::Int(a), Num::Int(b), ArithOp::Mul) => int_value(a.checked_mul(b)?),
            (a, b, op) => {
                let (a, b) = (as_f64(a), as_f64(b));
                let result = match op {
                    ArithOp::Add => a + b,
                    ArithOp::Sub => a - b,
                    ArithOp::Mul => a * b,
                    ArithOp::Div if b == 0.0 => return None,
                    ArithOp::Div => a / b,
                };
                if result.is_finite() {
                    float_value(result)
                } else {
                    None
                }
            }
        };
    }
    match (left, op, right) {
        (Value::String(a), ArithOp::Add, Value::String(b)) => {
            (a.len() + b.len() <= MAX_BUILT_LEN).then(|| Value::String(format!("{a}{b}")))
        }
        (Value::Array(a), ArithOp::Add, Value::Array(b)) => (a.len() + b.len() <= MAX_BUILT_LEN)
            .then(|| Value::Array(a.iter().chain(b).cloned().collect())),
        (Value::String(s), ArithOp::Mul, n) | (n, ArithOp::Mul, Value::String(s)) => {
            let count = repeat_count(n)?;
            (s.len().saturating_mul(count) <= MAX_BUILT_LEN).then(|| Value::String(s.repeat(count)))
        }
        (Value::Array(items), ArithOp::Mul, n) | (n, ArithOp::Mul, Value::Array(items)) => {
            let count = repeat_count(n)?;
            (items.len().saturating_mul(count) <= MAX_BUILT_LEN).then(|| {
                Value::Array(
                    std::iter::repeat_n(items, count)
                        .flatten()
                        .cloned()
                        .collect(),
                )
            })
        }
        _ => None,
    }
}

/// Python's `int(value)`, or `None` where it raises.
fn python_int(value: &Value) -> Option<i128> {
    match value {
        Value::Bool(b) => Some(i128::from(*b)),
        Value::Number(n) => match number_of(n) {
            Num::Int(i) => Some(i),
            // `int()` truncates toward zero; NaN and infinities raise.
            Num::Float(f) if f.is_finite() && f.abs() < 1e38 => Some(f.trunc() as i128),
            Num::Float(_) => None,
        },
        Value::String(s) => {
            let digits: String = s.trim().chars().filter(|&c| c != '_').collect();
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(&digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        }
        _ => None,
    }
}

fn ordered(ordering: Option<Ordering>, op: CmpOp) -> bool {
    match (ordering, op) {
        (Some(o), CmpOp::Eq) => o == Ordering::Equal,
        (Some(o), CmpOp::Ne) => o != Ordering::Equal,
        (None, CmpOp::Ne) => true,
        (Some(o), CmpOp::Lt) => o == Ordering::Less,
        (Some(o), CmpOp::Le) => o != Ordering::Greater,
        (Some(o), CmpOp::Gt) => o == Ordering::Greater,
        (Some(o), CmpOp::Ge) => o != Ordering::Less,
        _ => false,
    }
}

/// Whether a filter's target passes `target <op> value`, as `jsonpath_rw_ext` decides (the
/// target is not null). Where Python raises (ordering a string against a number, `~` on a
/// number), the target does not pass.
pub(super) fn compare(
    target: &Value,
    op: CmpOp,
    value: &FilterValue,
    regex: Option<&Regex>,
) -> bool {
    match value {
        // `isinstance(value, int)` holds for booleans too: both coerce the target with int().
        FilterValue::Int(_) | FilterValue::Bool(_) => {
            if op == CmpOp::Matches {
                return false;
            }
            let Some(target) = python_int(target) else {
                return false;
            };
            let expected = match value {
                FilterValue::Int(n) => i128::from(*n),
                FilterValue::Bool(b) => i128::from(*b),
                _ => return false,
            };
            ordered(Some(target.cmp(&expected)), op)
        }
        FilterValue::Float(expected) => {
            if op == CmpOp::Matches {
                return false;
            }
            match number(target) {
                Some(n) => ordered(as_f64(n).partial_cmp(expected), op),
                // Equality across types is false; ordering raises.
                None => matches!(op, CmpOp::Ne),
            }
        }
        FilterValue::Str(expected) => match target {
            Value::String(s) => match op {
                CmpOp::Matches => regex.is_some_and(|r| r.is_match(s).unwrap_or(false)),
                op => ordered(Some(s.as_str().cmp(expected.as_str())), op),
            },
            _ => matches!(op, CmpOp::Ne),
        },
    }
}

/// Python's `sorted(items)` where it does not raise: all numbers, or all strings.
pub(super) fn sorted(items: &[Value]) -> Option<Vec<Value>> {
    if items.iter().all(|v| number(v).is_some()) {
        let mut out = items.to_vec();
        out.sort_by(|a, b| {
            let (a, b) = (number(a).map_or(0.0, as_f64), number(b).map_or(0.0, as_f64));
            a.partial_cmp(&b).unwrap_or(Ordering::Equal)
        });
        return Some(out);
    }
    if items.iter().all(Value::is_string) {
        let mut out = items.to_vec();
        out.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        return Some(out);
    }
    None
}
