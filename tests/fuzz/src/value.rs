//! Values the generator can write but `serde_json::Value` cannot hold: bare `NaN`, integers
//! beyond 64 bits, invalid UTF-8 inside strings, binary and extension types, non-string and
//! repeated map keys. This module owns the tree ([`Gv`]) and its two writers (JSON text and
//! MessagePack bytes); it knows nothing of oslo's keys.

use serde_json::Value;

/// A generated value, written as JSON text or MessagePack.
#[derive(Clone, Debug, PartialEq)]
pub enum Gv {
    /// `null` / nil.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer (MessagePack int; JSON number).
    Int(i64),
    /// An unsigned integer (MessagePack uint; JSON number).
    UInt(u64),
    /// A float; NaN and infinities are written as Python writes them in JSON (`NaN`,
    /// `Infinity`) and as IEEE floats in MessagePack.
    Float(f64),
    /// Text written verbatim in JSON (e.g. `18446744073709551616`, `1e400`); in MessagePack it
    /// becomes a string.
    Raw(String),
    /// A string.
    Str(String),
    /// String bytes that need not be UTF-8: written between quotes unescaped in JSON, as a
    /// MessagePack `str`.
    Bytes(Vec<u8>),
    /// MessagePack `bin` (a JSON string of its bytes, lossily decoded, elsewhere).
    Bin(Vec<u8>),
    /// MessagePack extension type (a JSON `null` elsewhere).
    Ext(i8, Vec<u8>),
    /// An array.
    Arr(Vec<Gv>),
    /// A map, in order; keys may repeat and need not be strings.
    Map(Vec<(Gv, Gv)>),
}

impl Gv {
    /// A string value.
    pub fn str(text: impl Into<String>) -> Gv {
        Gv::Str(text.into())
    }

    /// A map with string keys.
    pub fn object<K: Into<String>>(entries: impl IntoIterator<Item = (K, Gv)>) -> Gv {
        Gv::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Gv::Str(k.into()), v))
                .collect(),
        )
    }

    /// The value under string key `key`, when this is a map that has it.
    pub fn get(&self, key: &str) -> Option<&Gv> {
        match self {
            Gv::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Gv::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets string key `key` (replacing the first entry with that key, else appending).
    pub fn set(&mut self, key: &str, value: Gv) {
        if let Gv::Map(entries) = self {
            match entries
                .iter_mut()
                .find(|(k, _)| matches!(k, Gv::Str(s) if s == key))
            {
                Some(entry) => entry.1 = value,
                None => entries.push((Gv::str(key), value)),
            }
        }
    }

    /// Removes every entry under string key `key`.
    pub fn remove(&mut self, key: &str) {
        if let Gv::Map(entries) = self {
            entries.retain(|(k, _)| !matches!(k, Gv::Str(s) if s == key));
        }
    }

    /// The string keys of a map (empty for anything else).
    pub fn keys(&self) -> Vec<String> {
        match self {
            Gv::Map(entries) => entries
                .iter()
                .filter_map(|(k, _)| match k {
                    Gv::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Writes this value as JSON text (Python's dialect: bare `NaN` and `Infinity` allowed).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Gv::Null | Gv::Ext(..) => out.extend_from_slice(b"null"),
            Gv::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Gv::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Gv::UInt(u) => out.extend_from_slice(u.to_string().as_bytes()),
            Gv::Float(f) => {
                let text = if f.is_nan() {
                    "NaN".to_owned()
                } else if f.is_infinite() {
                    if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
                } else {
                    // `{:?}` keeps a fraction or exponent, so a float stays a float.
                    format!("{f:?}")
                };
                out.extend_from_slice(text.as_bytes());
            }
            Gv::Raw(text) => out.extend_from_slice(text.as_bytes()),
            Gv::Str(s) => write_json_string(s, out),
            Gv::Bin(bytes) => write_json_string(&String::from_utf8_lossy(bytes), out),
            Gv::Bytes(bytes) => {
                out.push(b'"');
                out.extend_from_slice(bytes);
                out.push(b'"');
            }
            Gv::Arr(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    item.write_json(out);
                }
                out.push(b']');
            }
            Gv::Map(entries) => {
                out.push(b'{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    match key {
                        Gv::Str(_) | Gv::Bytes(_) => key.write_json(out),
                        // JSON keys are strings; a non-string key is written as its text.
                        other => write_json_string(&String::from_utf8_lossy(&other.to_json()), out),
                    }
                    out.extend_from_slice(b": ");
                    value.write_json(out);
                }
                out.push(b'}');
            }
        }
    }

    /// Writes this value as MessagePack.
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_msgpack(&mut out);
        out
    }

    fn write_msgpack(&self, out: &mut Vec<u8>) {
        match self {
            Gv::Null => out.push(0xc0),
            Gv::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Gv::Int(i) => write_msgpack_int(*i, out),
            Gv::UInt(u) => write_msgpack_uint(*u, out),
            Gv::Float(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Gv::Raw(text) => write_msgpack_str(text.as_bytes(), out),
            Gv::Str(s) => write_msgpack_str(s.as_bytes(), out),
            Gv::Bytes(bytes) => write_msgpack_str(bytes, out),
            Gv::Bin(bytes) => {
                write_len(bytes.len(), None, [0xc4, 0xc5, 0xc6], out);
                out.extend_from_slice(bytes);
            }
            Gv::Ext(kind, data) => {
                match data.len() {
                    1 => out.push(0xd4),
                    2 => out.push(0xd5),
                    4 => out.push(0xd6),
                    8 => out.push(0xd7),
                    16 => out.push(0xd8),
                    n => write_len(n, None, [0xc7, 0xc8, 0xc9], out),
                }
                out.extend_from_slice(&kind.to_be_bytes());
                out.extend_from_slice(data);
            }
            Gv::Arr(items) => {
                write_len(items.len(), Some((0x90, 15)), [0xdc, 0xdc, 0xdd], out);
                for item in items {
                    item.write_msgpack(out);
                }
            }
            Gv::Map(entries) => {
                write_len(entries.len(), Some((0x80, 15)), [0xde, 0xde, 0xdf], out);
                for (key, value) in entries {
                    key.write_msgpack(out);
                    value.write_msgpack(out);
                }
            }
        }
    }
}

impl From<&Value> for Gv {
    fn from(value: &Value) -> Gv {
        match value {
            Value::Null => Gv::Null,
            Value::Bool(b) => Gv::Bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Gv::UInt(u)
                } else if let Some(i) = n.as_i64() {
                    Gv::Int(i)
                } else {
                    Gv::Float(n.as_f64().unwrap_or(0.0))
                }
            }
            Value::String(s) => Gv::Str(s.clone()),
            Value::Array(items) => Gv::Arr(items.iter().map(Gv::from).collect()),
            Value::Object(map) => Gv::Map(
                map.iter()
                    .map(|(k, v)| (Gv::Str(k.clone()), Gv::from(v)))
                    .collect(),
            ),
        }
    }
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json escapes exactly as JSON requires; a string always serialises.
    match serde_json::to_vec(s) {
        Ok(text) => out.extend_from_slice(&text),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

fn write_msgpack_int(i: i64, out: &mut Vec<u8>) {
    if i >= 0 {
        write_msgpack_uint(i.unsigned_abs(), out);
    } else if i >= -32 {
        out.extend_from_slice(&(i as i8).to_be_bytes());
    } else if i >= i64::from(i8::MIN) {
        out.push(0xd0);
        out.extend_from_slice(&(i as i8).to_be_bytes());
    } else if i >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn write_msgpack_uint(u: u64, out: &mut Vec<u8>) {
    if u < 0x80 {
        out.push(u as u8);
    } else if u <= u64::from(u8::MAX) {
        out.push(0xcc);
        out.push(u as u8);
    } else if u <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(u as u16).to_be_bytes());
    } else if u <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(u as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&u.to_be_bytes());
    }
}

fn write_msgpack_str(bytes: &[u8], out: &mut Vec<u8>) {
    write_len(bytes.len(), Some((0xa0, 31)), [0xd9, 0xda, 0xdb], out);
    out.extend_from_slice(bytes);
}

/// Writes a length header: the fix form `(base, max)` when it fits, else the 8-, 16- or 32-bit
/// form with the given markers.
fn write_len(len: usize, fix: Option<(u8, usize)>, markers: [u8; 3], out: &mut Vec<u8>) {
    if let Some((base, max)) = fix {
        if len <= max {
            out.push(base | len as u8);
            return;
        }
    }
    if len <= usize::from(u8::MAX) && markers[0] != markers[1] {
        out.push(markers[0]);
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(markers[1]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(markers[2]);
        out.extend_from_slice(&(u32::try_from(len).unwrap_or(u32::MAX)).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn json_writer_speaks_python_dialect() {
        let v = Gv::object([
            ("a", Gv::Float(f64::NAN)),
            ("b", Gv::Raw("18446744073709551616".into())),
            ("c", Gv::Arr(vec![Gv::Int(-1), Gv::Float(1.0)])),
        ]);
        assert_eq!(
            String::from_utf8(v.to_json()).unwrap(),
            r#"{"a": NaN, "b": 18446744073709551616, "c": [-1, 1.0]}"#
        );
    }

    #[test]
    fn msgpack_writer_round_trips_through_the_library() {
        let v = serde_json::json!({"m": "x", "n": [1, -200, 70000, 1.5, null, true], "s": "y".repeat(300)});
        let bytes = Gv::from(&v).to_msgpack();
        let codec = tidings::codec::Codec::MessagePack;
        let with_envelope = Gv::object([
            ("oslo.version", Gv::str("2.0")),
            (
                "oslo.message",
                Gv::object([
                    ("method", Gv::str("echo")),
                    ("args", Gv::from(&v)),
                    ("_unique_id", Gv::str("u")),
                ]),
            ),
        ]);
        assert!(!bytes.is_empty());
        let request = codec.decode_request(&with_envelope.to_msgpack()).unwrap();
        assert_eq!(serde_json::Value::Object(request.args), v);
    }
}
