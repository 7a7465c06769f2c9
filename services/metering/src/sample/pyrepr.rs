//! Python's `str()` and `repr()` of JSON values, as Ceilometer's signature feeds them to the
//! HMAC. Only what `json.loads` can produce is covered: `None`, `True`/`False`, `int`, `float`,
//! `str`, `list` and `dict`, plus the `bytes` that `decode_unicode` turns strings into inside
//! lists.
//!
//! Known gap: an integer outside the 64-bit range reaches us as a float (serde_json without
//! `arbitrary_precision`), so its text differs from Python's `int`.

use serde_json::{Map, Number, Value};

/// `str(value)` for a value found directly under a key (not inside a list).
///
/// Strings are themselves; lists are `repr`ed after `decode_unicode` (their strings become
/// `bytes`); a dict (never reached by the signature, which flattens dicts) is `repr`ed with
/// `str` keys and values, as Python would.
pub(crate) fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(_) => {
            let mut out = String::new();
            repr_decoded(value, &mut out);
            out
        }
        Value::Object(map) => {
            let mut out = String::new();
            repr_str_dict(map, &mut out);
            out
        }
        scalar => {
            let mut out = String::new();
            repr_scalar(scalar, &mut out);
            out
        }
    }
}

/// `repr(float)`: the shortest digits that round-trip, in fixed notation when the decimal
/// exponent is in `-4..16` (always with a fractional part) and in exponent notation otherwise
/// (`1e-05`, `1.5e+16`).
pub(crate) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits, as `d.ddde[-]x`.
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exponent) {
        let (int_part, frac_part) = if exponent >= 0 {
            let point = usize::try_from(exponent).unwrap_or(0) + 1;
            if digits.len() <= point {
                (format!("{digits:0<point$}"), "0".to_owned())
            } else {
                (digits[..point].to_owned(), digits[point..].to_owned())
            }
        } else {
            let zeros = usize::try_from(-exponent - 1).unwrap_or(0);
            ("0".to_owned(), format!("{}{digits}", "0".repeat(zeros)))
        };
        format!("{sign}{int_part}.{frac_part}")
    } else {
        let mantissa = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.unsigned_abs())
    }
}

fn number_repr(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        float_repr(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn repr_scalar(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&number_repr(n)),
        Value::String(s) => repr_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_scalar(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => repr_str_dict(map, out),
    }
}

/// `repr` of a value after `decode_unicode`: strings are `bytes`, dict keys too, dicts are
/// rebuilt in sorted key order.
fn repr_decoded(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => repr_bytes(s.as_bytes(), out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_decoded(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in sorted(map).into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_bytes(key.as_bytes(), out);
                out.push_str(": ");
                repr_decoded(item, out);
            }
            out.push('}');
        }
        scalar => repr_scalar(scalar, out),
    }
}

/// `repr(dict)` of a dict with `str` keys, in the dict's own order (JSON object order is lost
/// by serde_json's map, so sorted: only reachable for values the signature never sees).
fn repr_str_dict(map: &Map<String, Value>, out: &mut String) {
    out.push('{');
    for (i, (key, item)) in sorted(map).into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        repr_str(key, out);
        out.push_str(": ");
        repr_scalar(item, out);
    }
    out.push('}');
}

/// The entries of `map` sorted by key, as Python's `sorted(d.items())` orders `str` keys (by
/// code point, which is UTF-8 byte order). Sorting here keeps the result right even if
/// serde_json's `preserve_order` feature gets enabled somewhere in the build.
pub(crate) fn sorted(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// `repr(bytes)`: `b'…'` (or `b"…"` when the bytes hold `'` but no `"`), with `\t`, `\n`, `\r`,
/// `\\`, the quote, and `\xhh` for everything outside printable ASCII.
fn repr_bytes(bytes: &[u8], out: &mut String) {
    let quote = if bytes.contains(&b'\'') && !bytes.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    out.push('b');
    out.push(char::from(quote));
    for &byte in bytes {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b if b == quote => {
                out.push('\\');
                out.push(char::from(b));
            }
            b if !(0x20..0x7f).contains(&b) => out.push_str(&format!("\\x{b:02x}")),
            b => out.push(char::from(b)),
        }
    }
    out.push(char::from(quote));
}

/// `repr(str)`: Python 3 keeps printable non-ASCII characters as they are and escapes the
/// rest. Only reached for dicts under dicts inside lists' `str` forms, which the signature
/// never produces; kept close enough for ASCII-printable text.
fn repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (42.0, "42.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e16, "1.5e+16"),
            (-2.5, "-2.5"),
            (123.456, "123.456"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (0.000123, "0.000123"),
            (1.0 / 3.0, "0.3333333333333333"),
            (-0.0, "-0.0"),
        ];
        for (value, expected) in cases {
            assert_eq!(float_repr(value), expected, "{value:e}");
        }
    }

    #[test]
    fn lists_are_decoded_to_bytes_before_repr() {
        let value = json!(["x", 1, 2.5, null, true, {"b": "é", "a": ["it's"]}]);
        assert_eq!(
            str_of(&value),
            r#"[b'x', 1, 2.5, None, True, {b'a': [b"it's"], b'b': b'\xc3\xa9'}]"#
        );
    }

    #[test]
    fn scalars_under_a_key_are_plain_str() {
        assert_eq!(str_of(&json!(null)), "None");
        assert_eq!(str_of(&json!(false)), "False");
        assert_eq!(str_of(&json!(7)), "7");
        assert_eq!(str_of(&json!("héllo")), "héllo");
    }
}
