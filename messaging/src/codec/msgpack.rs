//! The MessagePack codec (`application/msgpack`), for Rust-to-Rust traffic.
//!
//! It carries the same fields as oslo JSON, without the double encoding: the body is a map
//! `{"oslo.version": "2.0", "oslo.message": <inner map>}` and a reply's failure is a nested map.
//! Maps always have string keys (`rmp_serde::to_vec_named`). Decoding builds JSON values and so
//! refuses what JSON cannot hold: binary strings, extension types, non-string map keys, and NaN
//! or infinite floats (which `serde_json::Value` would otherwise silently turn into `null`).

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Number, Value};

use super::error::CodecError;
use super::fields::Fields;
use super::limits;
use super::wire::{self, EnvelopeView};

/// Nesting limit when decoding, the same as serde_json's.
const MAX_DEPTH: usize = 128;
/// Upper bound on capacity reserved from a length prefix (which the sender controls).
const MAX_PREALLOC: usize = 1024;

fn encode_error(e: rmp_serde::encode::Error) -> CodecError {
    CodecError::Encode(e.to_string())
}

/// Serialises `inner` as a map inside the 2.0 envelope map.
pub(crate) fn encode_enveloped<T: Serialize>(inner: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(&EnvelopeView(inner)).map_err(encode_error)
}

/// Serialises `message` as a bare map (v1 notifications).
pub(crate) fn encode_bare<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(message).map_err(encode_error)
}

/// Decodes a body to one JSON value, refusing trailing bytes.
fn parse(body: &[u8]) -> Result<Value, CodecError> {
    let non_finite = Cell::new(false);
    let budget = limits::item_budget(body.len());
    let items_left = Cell::new(budget);
    let mut de = rmp_serde::Deserializer::new(body);
    de.set_max_depth(MAX_DEPTH);
    let value = StrictValue {
        non_finite: &non_finite,
        items_left: &items_left,
    }
    .deserialize(&mut de)
    .map_err(|e| {
        if items_left.get() == 0 {
            limits::too_many_items(budget)
        } else if non_finite.get() {
            CodecError::NonFiniteNumber(format!("MessagePack float: {e}"))
        } else {
            CodecError::InvalidBody(format!("not MessagePack: {e}"))
        }
    })?;
    let trailing = de.get_ref().len();
    if trailing != 0 {
        return Err(CodecError::InvalidBody(format!(
            "not MessagePack: {trailing} trailing bytes after the message"
        )));
    }
    Ok(value)
}

/// Decodes a body to its inner message map: the envelope is opened when the body has one,
/// otherwise the body itself is the message (v1 notifications).
pub(crate) fn decode_message(body: &[u8]) -> Result<Fields, CodecError> {
    let Value::Object(outer) = parse(body)? else {
        return Err(CodecError::WrongType {
            field: "body",
            expected: "a map",
        });
    };
    let mut outer = Fields::from_map(outer);
    if !wire::is_envelope(&outer) {
        return Ok(outer);
    }
    match wire::open_envelope(&mut outer)? {
        Value::Object(inner) => Ok(Fields::from_map(inner)),
        _ => Err(CodecError::WrongType {
            field: wire::MESSAGE_KEY,
            expected: "a map",
        }),
    }
}

/// Builds a `serde_json::Value` from MessagePack, failing (and raising the flag) on a float
/// JSON cannot hold instead of mapping it to `null`.
///
/// Every value taken costs one item of the budget; once it is spent, decoding stops, so a body
/// of tiny values (an array of a million nils is a megabyte) cannot become gigabytes of
/// `Value`s.
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    non_finite: &'a Cell<bool>,
    items_left: &'a Cell<usize>,
}

impl StrictValue<'_> {
    fn take_item<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.items_left.get().checked_sub(1) {
            Some(left) if left > 0 => {
                self.items_left.set(left);
                Ok(())
            }
            _ => {
                self.items_left.set(0);
                Err(E::custom("more values than the body's size allows"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.take_item::<D::Error>()?;
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible value (nil, bool, number, string, array, string-keyed map)")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        match Number::from_f64(v) {
            Some(n) => Ok(Value::Number(n)),
            None => {
                self.non_finite.set(true);
                Err(E::custom(format_args!(
                    "{v} (NaN or Infinity) has no JSON form"
                )))
            }
        }
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOC));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            self.take_item::<A::Error>()?;
            let value = access.next_value_seed(self)?;
            // A repeated key keeps its last value, as in JSON and Python.
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}
