//! Mutators: structured ones that change a message tree (wrong types for every key oslo knows,
//! extreme numbers, very long strings, deep nesting, invalid UTF-8, typed values, odd
//! envelopes) and byte-level ones on the encoded body (bit and byte flips, truncation,
//! splicing, duplicated ranges). [`input`] chains them: one message per `(seed, index)`.

use crate::corpus::Corpus;
use crate::generate::{self, Aim, Kind};
use crate::value::Gv;
use tidings::codec::{JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE};

/// Every key oslo.messaging gives a meaning to, plus the notification fields.
pub const KNOWN_KEYS: &[&str] = &[
    "_timeout",
    "_reply_q",
    "_msg_id",
    "_unique_id",
    "version",
    "namespace",
    "method",
    "args",
    "_context_user",
    "_context_request_id",
    "_context_traceparent",
    "_context_auth_token",
    "priority",
    "payload",
    "failure",
    "ending",
    "result",
    "message_id",
    "publisher_id",
    "event_type",
    "timestamp",
];

/// Keys whose value is a string the library routes or indexes by.
const STRING_KEYS: &[&str] = &[
    "_reply_q",
    "method",
    "_msg_id",
    "_unique_id",
    "namespace",
    "version",
    "event_type",
    "priority",
    "publisher_id",
    "message_id",
    "timestamp",
    "_context_request_id",
    "_context_traceparent",
];

/// Numbers at and beyond the edges of every integer and float type.
pub fn extreme_number(rng: &mut fastrand::Rng) -> Gv {
    match rng.u8(..18) {
        0 => Gv::Float(1e20),
        1 => Gv::Int(-1),
        2 => Gv::Float(f64::NAN),
        3 => Gv::Raw("18446744073709551616".into()),
        4 => Gv::Raw("1e400".into()),
        5 => Gv::Raw("-1e400".into()),
        6 => Gv::UInt(u64::MAX),
        7 => Gv::Int(i64::MIN),
        8 => Gv::Float(f64::MAX),
        9 => Gv::Float(f64::INFINITY),
        10 => Gv::Float(f64::NEG_INFINITY),
        11 => Gv::Float(-0.0),
        12 => Gv::Raw("123456789012345678901234567890".into()),
        13 => Gv::Float(1.8e19),
        14 => Gv::Float(4_294_967_296.5),
        15 => Gv::Float(f64::MIN_POSITIVE),
        16 => Gv::Raw("1e-400".into()),
        _ => Gv::Float(-1e20),
    }
}

/// A value of a random type, for a key that expects some other one.
pub fn wrong_type(rng: &mut fastrand::Rng) -> Gv {
    match rng.u8(..11) {
        0 => Gv::Null,
        1 => Gv::Bool(rng.bool()),
        2 => Gv::Int(7),
        3 => Gv::Float(1.5),
        4 => Gv::str("x"),
        5 => Gv::Arr(vec![Gv::str("a"), Gv::Int(1)]),
        6 => Gv::object([("a", Gv::Int(1))]),
        7 => Gv::Arr(Vec::new()),
        8 => Gv::Map(Vec::new()),
        9 => Gv::str(""),
        _ => extreme_number(rng),
    }
}

/// Bytes that are not UTF-8 (lone continuation, truncated sequences, surrogates, overlongs).
fn invalid_utf8(rng: &mut fastrand::Rng) -> Vec<u8> {
    const BAD: &[&[u8]] = &[
        &[0xff],
        &[0x80],
        &[0xc3],
        &[0xe2, 0x82],
        &[0xed, 0xa0, 0x80],
        &[0xc0, 0xaf],
        &[0xf4, 0x90, 0x80, 0x80],
        &[0xfe, 0xfe],
    ];
    let mut bytes = b"abc".to_vec();
    bytes.extend_from_slice(BAD[rng.usize(..BAD.len())]);
    bytes.extend_from_slice(b"def");
    bytes
}

/// A string of `len` bytes.
fn long_string(rng: &mut fastrand::Rng) -> Gv {
    let len = match rng.u8(..5) {
        0 => 300,
        1 => 256,
        2 => 4096,
        3 => 65_536,
        _ => 1 + rng.usize(..2048),
    };
    let unit = ["a", "é", "\\", "\"", "reply_"][rng.usize(..5)];
    Gv::Str(unit.repeat(len / unit.len().max(1) + 1))
}

/// `value` inside `levels` arrays or maps.
fn nested(rng: &mut fastrand::Rng, value: Gv, levels: usize) -> Gv {
    let in_maps = rng.bool();
    (0..levels).fold(value, |inner, _| {
        if in_maps {
            Gv::object([("k", inner)])
        } else {
            Gv::Arr(vec![inner])
        }
    })
}

/// The number of nodes in a tree.
fn count(v: &Gv) -> usize {
    1 + match v {
        Gv::Arr(items) => items.iter().map(count).sum(),
        Gv::Map(entries) => entries.iter().map(|(_, v)| count(v)).sum(),
        _ => 0,
    }
}

/// The `n`th node in pre-order.
fn nth_mut<'a>(v: &'a mut Gv, n: &mut usize) -> Option<&'a mut Gv> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    match v {
        Gv::Arr(items) => items.iter_mut().find_map(|item| nth_mut(item, n)),
        Gv::Map(entries) => entries.iter_mut().find_map(|(_, value)| nth_mut(value, n)),
        _ => None,
    }
}

/// A random node of the tree (the root included).
fn random_node<'a>(rng: &mut fastrand::Rng, v: &'a mut Gv) -> Option<&'a mut Gv> {
    let mut n = rng.usize(..count(v));
    nth_mut(v, &mut n)
}

fn pick_key(rng: &mut fastrand::Rng, inner: &Gv, from: &[&str]) -> String {
    let present = inner.keys();
    if !present.is_empty() && rng.bool() {
        present[rng.usize(..present.len())].clone()
    } else {
        from[rng.usize(..from.len())].to_owned()
    }
}

/// Applies one structured mutation to an inner message.
pub fn mutate_tree(rng: &mut fastrand::Rng, inner: &mut Gv) {
    if !matches!(inner, Gv::Map(_)) {
        if let Some(node) = random_node(rng, inner) {
            *node = generate::random_value(rng, 2);
        }
        return;
    }
    match rng.u8(..16) {
        0 | 1 => {
            let key = pick_key(rng, inner, KNOWN_KEYS);
            inner.set(&key, wrong_type(rng));
        }
        2 | 3 => {
            // `_timeout` first among equals: it drives timers on the server.
            let key = if rng.bool() {
                "_timeout".to_owned()
            } else {
                pick_key(rng, inner, KNOWN_KEYS)
            };
            inner.set(&key, extreme_number(rng));
        }
        4 => {
            let key = pick_key(rng, inner, STRING_KEYS);
            inner.set(&key, long_string(rng));
        }
        5 => {
            let key = pick_key(rng, inner, &["args", "payload", "result", "failure"]);
            let levels = [64, 126, 127, 128, 129, 200, 1000][rng.usize(..7)];
            let leaf = generate::random_value(rng, 1);
            inner.set(&key, nested(rng, leaf, levels));
        }
        6 => {
            let key = pick_key(rng, inner, KNOWN_KEYS);
            inner.remove(&key);
        }
        7 => {
            // A repeated key: JSON and Python keep the last one.
            let key = pick_key(rng, inner, KNOWN_KEYS);
            if let Gv::Map(entries) = inner {
                entries.push((Gv::Str(key), wrong_type(rng)));
            }
        }
        8 => {
            let key = pick_key(rng, inner, STRING_KEYS);
            inner.set(&key, Gv::Bytes(invalid_utf8(rng)));
        }
        9 => {
            let typed = Gv::object([
                ("__type__", Gv::str("datetime")),
                ("__value__", Gv::str("2026-01-01T00:00:00")),
            ]);
            let key = pick_key(rng, inner, &["args", "payload", "result"]);
            inner.set(&key, typed);
        }
        10 => {
            if let Gv::Map(entries) = inner {
                let key = match rng.u8(..4) {
                    0 => Gv::Int(1),
                    1 => Gv::Bytes(invalid_utf8(rng)),
                    2 => Gv::Null,
                    _ => Gv::Bin(b"key".to_vec()),
                };
                entries.push((key, Gv::Int(1)));
            }
        }
        11 => {
            // Binary and extension values (MessagePack only; JSON writes them plainly).
            if let Some(node) = random_node(rng, inner) {
                *node = if rng.bool() {
                    Gv::Bin(invalid_utf8(rng))
                } else {
                    Gv::Ext(rng.i8(..), vec![0; [1, 2, 3, 8][rng.usize(..4)]])
                };
            }
        }
        12 => {
            let contexts = rng.usize(1..2000);
            if let Gv::Map(entries) = inner {
                for i in 0..contexts {
                    entries.push((Gv::str(format!("_context_k{i}")), Gv::Int(1)));
                }
                entries.push((Gv::str("_context_"), Gv::str("empty key")));
            }
        }
        13 => {
            if let Some(node) = random_node(rng, inner) {
                *node = extreme_number(rng);
            }
        }
        14 => {
            if let Some(node) = random_node(rng, inner) {
                *node = generate::random_value(rng, 3);
            }
        }
        _ => {
            let key = generate::random_word(rng, 10);
            inner.set(&key, wrong_type(rng));
        }
    }
}

/// Body encodings the fuzzer writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// oslo JSON text.
    Json,
    /// MessagePack.
    MessagePack,
}

/// The `oslo.version` to put in an envelope: mostly `2.0`, sometimes anything else.
fn envelope_version(rng: &mut fastrand::Rng) -> Option<Gv> {
    if rng.u8(..8) != 0 {
        return Some(Gv::str("2.0"));
    }
    Some(match rng.u8(..11) {
        0 => Gv::str("3.0"),
        1 => Gv::str("2.999"),
        2 => Gv::str("2"),
        3 => Gv::str("1.0"),
        4 => Gv::str(""),
        5 => Gv::Float(2.0),
        6 => Gv::Null,
        7 => Gv::str("2.0.1"),
        8 => Gv::str("2.x"),
        9 => Gv::Bytes(invalid_utf8(rng)),
        _ => return None,
    })
}

/// Encodes `inner`, enveloped or bare.
pub fn encode(rng: &mut fastrand::Rng, inner: &Gv, encoding: Encoding, enveloped: bool) -> Vec<u8> {
    if !enveloped {
        return match encoding {
            Encoding::Json => inner.to_json(),
            Encoding::MessagePack => inner.to_msgpack(),
        };
    }
    let message = match (encoding, rng.u8(..12)) {
        (_, 0) => wrong_type(rng),
        (Encoding::Json, 1) => inner.clone(),
        (Encoding::Json, 2) => {
            // The inner text itself damaged, then escaped into the envelope.
            let mut text = inner.to_json();
            mutate_bytes(rng, &mut text, None);
            Gv::Bytes(escape_json_bytes(&text))
        }
        (Encoding::Json, _) => match String::from_utf8(inner.to_json()) {
            Ok(text) => Gv::Str(text),
            Err(e) => Gv::Bytes(escape_json_bytes(e.as_bytes())),
        },
        (Encoding::MessagePack, 1) => Gv::Str(String::from_utf8_lossy(&inner.to_json()).into()),
        (Encoding::MessagePack, _) => inner.clone(),
    };
    let mut envelope = Vec::new();
    if let Some(version) = envelope_version(rng) {
        envelope.push((Gv::str("oslo.version"), version));
    }
    envelope.push((Gv::str("oslo.message"), message));
    if rng.u8(..10) == 0 {
        envelope.reverse();
    }
    let envelope = Gv::Map(envelope);
    match encoding {
        Encoding::Json => envelope.to_json(),
        Encoding::MessagePack => envelope.to_msgpack(),
    }
}

/// JSON-escapes text that may not be UTF-8: quotes, backslashes and control bytes escaped,
/// every other byte kept as is.
fn escape_json_bytes(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 4);
    for &b in text {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

/// Bytes that matter to one of the two grammars.
const INTERESTING: &[u8] = &[
    b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'-', b'e', b'N', 0, 0x7f, 0x80, 0xff,
    0xc0, 0xc1, 0xc4, 0xd9, 0xdc, 0xde, 0xdf, 0xcb, 0x90, 0x80,
];

/// Applies one byte-level mutation; `other` is a second body to splice from.
pub fn mutate_bytes(rng: &mut fastrand::Rng, body: &mut Vec<u8>, other: Option<&[u8]>) {
    if body.is_empty() {
        body.push(INTERESTING[rng.usize(..INTERESTING.len())]);
        return;
    }
    let len = body.len();
    match rng.u8(..10) {
        0 => {
            let i = rng.usize(..len);
            body[i] ^= 1 << rng.u8(..8);
        }
        1 => {
            let i = rng.usize(..len);
            body[i] = INTERESTING[rng.usize(..INTERESTING.len())];
        }
        2 => {
            let i = rng.usize(..len);
            body[i] = rng.u8(..);
        }
        3 => body.truncate(rng.usize(..len)),
        4 => {
            let start = rng.usize(..len);
            let end = rng.usize(start..=len.min(start + 64));
            body.drain(start..end);
        }
        5 => {
            // Duplicate a range in place.
            let start = rng.usize(..len);
            let end = rng.usize(start..=len.min(start + 256));
            let copy = body[start..end].to_vec();
            let at = rng.usize(..=body.len());
            body.splice(at..at, copy);
        }
        6 => {
            let at = rng.usize(..=len);
            let n = rng.usize(1..16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            body.splice(at..at, bytes);
        }
        7 => {
            // Replace a run of digits by an extreme number's text.
            if let Some(start) = body.iter().position(u8::is_ascii_digit) {
                let end = body[start..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(body.len(), |n| start + n);
                let text = [
                    "1e400",
                    "NaN",
                    "18446744073709551616",
                    "-1",
                    "1e20",
                    "Infinity",
                ][rng.usize(..6)];
                body.splice(start..end, text.bytes());
            }
        }
        _ => {
            if let Some(other) = other.filter(|o| !o.is_empty()) {
                let cut = rng.usize(..=len);
                let from = rng.usize(..other.len());
                body.truncate(cut);
                body.extend_from_slice(&other[from..]);
            } else {
                body.reverse();
            }
        }
    }
}

/// One fuzz input: a body and the content type it is published with.
#[derive(Clone, Debug)]
pub struct FuzzInput {
    /// The message's index in the run.
    pub index: u64,
    /// What it started as.
    pub kind: Kind,
    /// The body.
    pub body: Vec<u8>,
    /// The AMQP content type it carries.
    pub content_type: &'static str,
}

/// Content types a peer might send.
const ODD_CONTENT_TYPES: &[&str] = &[
    "application/json; charset=utf-8",
    "",
    "text/plain",
    "APPLICATION/JSON",
    "application/x-msgpack",
];

/// The per-message random generator: a mix of the run's seed and the message's index, so that
/// message `i` of seed `s` is the same whatever ran before it.
pub fn message_rng(seed: u64, index: u64) -> fastrand::Rng {
    let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    fastrand::Rng::with_seed(z ^ (z >> 31))
}

/// Message `index` of the run seeded with `seed`.
pub fn input(seed: u64, index: u64, corpus: &Corpus, aim: &Aim) -> FuzzInput {
    let mut rng = message_rng(seed, index);
    let rng = &mut rng;
    let seed_pick =
        (!corpus.is_empty() && rng.u8(..10) < 3).then(|| &corpus.seeds[rng.usize(..corpus.len())]);
    // A captured body, untouched but for byte mutations, now and then.
    if let Some(seed) = seed_pick.filter(|_| rng.u8(..4) == 0) {
        let mut body = seed.body.clone();
        for _ in 0..rng.usize(1..4) {
            let other = &corpus.seeds[rng.usize(..corpus.len())].body;
            mutate_bytes(rng, &mut body, Some(other));
        }
        return FuzzInput {
            index,
            kind: seed.kind,
            body,
            content_type: JSON_CONTENT_TYPE,
        };
    }
    let (kind, mut inner, mut enveloped) = match seed_pick {
        Some(seed) => (seed.kind, seed.inner.clone(), seed.enveloped),
        None => {
            let kind = [
                Kind::Request,
                Kind::Request,
                Kind::Reply,
                Kind::Notification,
                Kind::Sample,
                Kind::Sample,
                Kind::Random,
            ][rng.usize(..7)];
            let inner = generate::message(rng, kind, aim);
            // oslo envelopes requests and replies; v1 notifications are bare.
            let enveloped = !matches!(kind, Kind::Notification | Kind::Sample) || rng.bool();
            (kind, inner, enveloped)
        }
    };
    if rng.u8(..10) == 0 {
        enveloped = !enveloped;
    }
    let mutations = [0, 0, 1, 1, 1, 2, 3][rng.usize(..7)];
    for _ in 0..mutations {
        mutate_tree(rng, &mut inner);
    }
    let encoding = if rng.bool() {
        Encoding::Json
    } else {
        Encoding::MessagePack
    };
    let mut body = encode(rng, &inner, encoding, enveloped);
    if rng.u8(..4) == 0 {
        let other = (!corpus.is_empty()).then(|| &corpus.seeds[rng.usize(..corpus.len())].body);
        for _ in 0..rng.usize(1..4) {
            mutate_bytes(rng, &mut body, other.map(Vec::as_slice));
        }
    }
    let content_type = match (rng.u8(..20), encoding) {
        (0, _) => ODD_CONTENT_TYPES[rng.usize(..ODD_CONTENT_TYPES.len())],
        (1, Encoding::Json) => MSGPACK_CONTENT_TYPE,
        (1, Encoding::MessagePack) => JSON_CONTENT_TYPE,
        (_, Encoding::Json) => JSON_CONTENT_TYPE,
        (_, Encoding::MessagePack) => MSGPACK_CONTENT_TYPE,
    };
    FuzzInput {
        index,
        kind,
        body,
        content_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_is_a_function_of_seed_and_index() {
        let corpus = Corpus::captured();
        let aim = Aim::default();
        for index in 0..200 {
            let a = input(7, index, &corpus, &aim);
            let b = input(7, index, &corpus, &aim);
            assert_eq!(a.body, b.body);
            assert_eq!(a.content_type, b.content_type);
        }
    }
}
