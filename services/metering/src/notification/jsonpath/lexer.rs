//! Tokens of the dialect, as `jsonpath_rw_ext`'s lexer cuts them: identifiers may hold `-` and
//! `@` (`a-b` is one field), `-?\d+` is a number (so `a -1` does not parse, `a - 1` does),
//! quoted strings (`'…'`, `"…"`) are field names with `\x` standing for `x`, and
//! `` `…` `` is a named operator.
//!
//! Two differences, both accepting what Ceilometer's parser refuses by accident: `/` is
//! division (its lexer takes `/` for a sort direction, so no expression with `/` parses), and
//! `true`/`false` are booleans only as a filter's value (its lexer cuts `true_size` into
//! `true` and `_size`).

use super::ParseError;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Dollar,
    At,
    Dot,
    DoubleDot,
    Star,
    LBracket,
    RBracket,
    LParen,
    RParen,
    Comma,
    Colon,
    Pipe,
    Amp,
    Question,
    Plus,
    Minus,
    Slash,
    /// An unquoted identifier.
    Id(String),
    /// A quoted string.
    Quoted(String),
    Number(i64),
    Float(f64),
    /// A backquoted operator's text.
    Named(String),
    /// `= == != < <= > >= ~`.
    FilterOp(String),
    Where,
}

/// `(token, byte offset)` pairs.
pub(super) fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let error = |position: usize, message: String| ParseError {
        expression: text.to_owned(),
        position,
        message,
    };
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        let tok = match c {
            b' ' | b'\t' | b'\n' => {
                i += 1;
                continue;
            }
            b'.' if next == Some(b'.') => {
                i += 2;
                Tok::DoubleDot
            }
            b'@' if next.is_some_and(|n| n.is_ascii_alphabetic() || n == b'_') => {
                i += 1;
                Tok::Id(format!("@{}", take_id(bytes, &mut i)))
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let id = take_id(bytes, &mut i);
                if id == "where" {
                    Tok::Where
                } else {
                    Tok::Id(id)
                }
            }
            b'-' | b'0'..=b'9'
                if c.is_ascii_digit() || next.is_some_and(|n| n.is_ascii_digit()) =>
            {
                take_number(text, &mut i).map_err(|m| error(start, m))?
            }
            b'\'' | b'"' | b'`' => {
                let content = take_quoted(text, &mut i, c)
                    .ok_or_else(|| error(start, "unterminated quoted text".to_owned()))?;
                if c == b'`' {
                    Tok::Named(content)
                } else {
                    Tok::Quoted(content)
                }
            }
            b'=' | b'!' | b'<' | b'>' | b'~' => {
                let two = matches!((c, next), (b'=' | b'!' | b'<' | b'>', Some(b'=')));
                if c == b'!' && !two {
                    return Err(error(start, "unexpected character '!'".to_owned()));
                }
                i += if two { 2 } else { 1 };
                Tok::FilterOp(text[start..i].to_owned())
            }
            _ => {
                i += 1;
                match c {
                    b'$' => Tok::Dollar,
                    b'@' => Tok::At,
                    b'.' => Tok::Dot,
                    b'*' => Tok::Star,
                    b'[' => Tok::LBracket,
                    b']' => Tok::RBracket,
                    b'(' => Tok::LParen,
                    b')' => Tok::RParen,
                    b',' => Tok::Comma,
                    b':' => Tok::Colon,
                    b'|' => Tok::Pipe,
                    b'&' => Tok::Amp,
                    b'?' => Tok::Question,
                    b'+' => Tok::Plus,
                    b'-' => Tok::Minus,
                    b'/' => Tok::Slash,
                    _ => {
                        let shown = text[start..].chars().next().unwrap_or('?');
                        return Err(error(start, format!("unexpected character {shown:?}")));
                    }
                }
            }
        };
        out.push((tok, start));
    }
    Ok(out)
}

/// `[a-zA-Z0-9_@-]*` from `i`.
fn take_id(bytes: &[u8], i: &mut usize) -> String {
    let start = *i;
    while *i < bytes.len()
        && (bytes[*i].is_ascii_alphanumeric() || matches!(bytes[*i], b'_' | b'@' | b'-'))
    {
        *i += 1;
    }
    String::from_utf8_lossy(&bytes[start..*i]).into_owned()
}

/// `-?\d+\.\d+` (a float) or `-?\d+` (an integer).
fn take_number(text: &str, i: &mut usize) -> Result<Tok, String> {
    let bytes = text.as_bytes();
    let start = *i;
    if bytes[*i] == b'-' {
        *i += 1;
    }
    while *i < bytes.len() && bytes[*i].is_ascii_digit() {
        *i += 1;
    }
    let fraction =
        bytes.get(*i) == Some(&b'.') && bytes.get(*i + 1).is_some_and(u8::is_ascii_digit);
    if fraction {
        *i += 1;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        let digits = &text[start..*i];
        return digits
            .parse::<f64>()
            .map(Tok::Float)
            .map_err(|e| format!("bad number {digits}: {e}"));
    }
    let digits = &text[start..*i];
    digits
        .parse::<i64>()
        .map(Tok::Number)
        .map_err(|e| format!("bad number {digits}: {e}"))
}

/// The text between `quote` and the next unescaped `quote`, `\x` read as `x`.
fn take_quoted(text: &str, i: &mut usize, quote: u8) -> Option<String> {
    let mut out = String::new();
    let mut chars = text[*i + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        if c == '\\' {
            let (_, escaped) = chars.next()?;
            out.push(escaped);
        } else if c == char::from(quote) {
            *i += 1 + offset + 1;
            return Some(out);
        } else {
            out.push(c);
        }
    }
    None
}
