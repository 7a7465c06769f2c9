//! The seed corpus: the 79 bodies oslo.messaging 18.3.1 put on a live RabbitMQ
//! (`messaging/tests/data/captured-scenario.jsonl`), each kept both as its exact bytes and
//! opened into a [`Gv`] tree (envelope removed) so structured mutations can work on it.

use serde_json::Value;

use crate::generate::Kind;
use crate::value::Gv;

/// The captured scenario, built into the binary so that it runs from any directory.
const CAPTURED: &str = include_str!("../../../messaging/tests/data/captured-scenario.jsonl");

/// One real body.
#[derive(Clone, Debug)]
pub struct Seed {
    /// The body exactly as captured.
    pub body: Vec<u8>,
    /// The inner message (the envelope opened, when there was one).
    pub inner: Gv,
    /// Whether the body was enveloped.
    pub enveloped: bool,
    /// What the message is.
    pub kind: Kind,
}

/// Every seed of the captured scenario.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The seeds, in capture order.
    pub seeds: Vec<Seed>,
}

impl Corpus {
    /// The captured scenario; lines that do not parse are skipped (there are none today).
    pub fn captured() -> Corpus {
        let seeds = CAPTURED
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|record| record.get("body")?.as_str().map(seed_of))
            .collect();
        Corpus { seeds }
    }

    /// How many seeds there are.
    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty()
    }
}

fn seed_of(body: &str) -> Seed {
    let outer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let (inner, enveloped) = match outer.get("oslo.message").and_then(Value::as_str) {
        Some(text) => (
            serde_json::from_str::<Value>(text).unwrap_or(Value::Null),
            true,
        ),
        None => (outer.clone(), false),
    };
    let kind = if inner.get("method").is_some() {
        Kind::Request
    } else if inner.get("_msg_id").is_some() {
        Kind::Reply
    } else if inner.get("event_type").is_some() {
        Kind::Notification
    } else {
        Kind::Random
    };
    Seed {
        body: body.as_bytes().to_vec(),
        inner: Gv::from(&inner),
        enveloped,
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_captured_body_is_a_seed() {
        let corpus = Corpus::captured();
        assert_eq!(corpus.len(), 79);
        assert!(corpus.seeds.iter().any(|s| s.kind == Kind::Notification));
        assert!(corpus.seeds.iter().any(|s| s.kind == Kind::Reply));
    }
}
