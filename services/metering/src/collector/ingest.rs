//! The collector's pipeline from raw wire samples to the store: verify the signature (when a
//! secret is set), validate, store the good ones in one call, and count everything.
//!
//! Counts reach the shared [`CollectorReport`] only once a batch is settled, so a batch that
//! is requeued after a storage failure is not counted twice when it comes back.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::sample::{from_wire, verify_signature};
use crate::store::{Store, StoreError};

/// What the collector has seen since it started; shown in the worker's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorReport {
    /// Samples received (notifications and `record_metering_data`).
    pub received: u64,
    /// Samples stored.
    pub stored: u64,
    /// Valid samples whose `message_id` was already stored.
    pub duplicates: u64,
    /// Invalid samples dropped, by [`Rejection::kind`](crate::sample::Rejection::kind).
    pub rejected: BTreeMap<String, u64>,
    /// Samples dropped because their signature did not verify.
    pub bad_signatures: u64,
    /// Notifications whose payload held no sample list (acknowledged and dropped).
    pub unrecognised_payloads: u64,
    /// Batches that could not be stored (requeued, or failed back to an RPC caller).
    pub storage_failures: u64,
}

impl CollectorReport {
    /// Every rejected sample, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn add(&mut self, tally: &Tally) {
        self.received += tally.received;
        self.stored += tally.stored;
        self.duplicates += tally.duplicates;
        self.bad_signatures += tally.bad_signatures;
        for (kind, n) in &tally.rejected {
            *self.rejected.entry(kind.to_string()).or_default() += n;
        }
    }
}

/// The outcome of one batch: what `record_metering_data` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Samples received.
    pub received: u64,
    /// Samples stored.
    pub stored: u64,
    /// Samples already stored (same message id).
    pub duplicates: u64,
    /// Samples whose signature did not verify.
    pub bad_signatures: u64,
    /// Samples refused, by reason.
    pub rejected: BTreeMap<Cow<'static, str>, u64>,
}

/// The pipeline, shared by the listener and the RPC endpoint.
#[derive(Debug)]
pub(crate) struct Ingest {
    store: Arc<dyn Store>,
    secret: Option<String>,
    report: watch::Sender<CollectorReport>,
}

impl Ingest {
    pub fn new(store: Arc<dyn Store>, secret: Option<String>) -> Self {
        Self {
            store,
            secret: secret.filter(|s| !s.is_empty()),
            report: watch::Sender::new(CollectorReport::default()),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn subscribe(&self) -> watch::Receiver<CollectorReport> {
        self.report.subscribe()
    }

    pub fn report(&self) -> CollectorReport {
        self.report.borrow().clone()
    }

    /// Notifications whose payload was not a sample list.
    pub fn count_unrecognised(&self, n: u64) {
        if n > 0 {
            self.report.send_modify(|r| r.unrecognised_payloads += n);
        }
    }

    /// Verifies, validates and stores `raw`. A storage failure counts only as such and is
    /// returned, so the caller can requeue the batch.
    pub async fn ingest(&self, raw: &[Value]) -> Result<Tally, StoreError> {
        let mut tally = Tally {
            received: raw.len() as u64,
            ..Tally::default()
        };
        let mut good = Vec::with_capacity(raw.len());
        for value in raw {
            let message_id = value
                .get("message_id")
                .and_then(Value::as_str)
                .unwrap_or("?");
            if let (Some(secret), Some(map)) = (&self.secret, value.as_object()) {
                if !verify_signature(map, secret) {
                    tracing::warn!(message_id, "sample signature invalid; dropped");
                    tally.bad_signatures += 1;
                    continue;
                }
            }
            match from_wire(value) {
                Ok(sample) => good.push(sample),
                Err(rejection) => {
                    tracing::warn!(message_id, %rejection, "invalid sample dropped");
                    *tally
                        .rejected
                        .entry(Cow::Borrowed(rejection.kind()))
                        .or_default() += 1;
                }
            }
        }
        match self.store.record(&good).await {
            Ok(new) => {
                tally.stored = new as u64;
                tally.duplicates = (good.len() - new.min(good.len())) as u64;
                self.report.send_modify(|r| r.add(&tally));
                Ok(tally)
            }
            Err(error) => {
                self.report.send_modify(|r| r.storage_failures += 1);
                Err(error)
            }
        }
    }
}

/// The samples a notification carries: a list payload (the `notifier://` publisher's
/// `metering` event) or `{"samples": [...]}` (the polling agent's `telemetry.polling`). Taken
/// out of the payload, which the batch owns, rather than copied.
pub(crate) fn into_samples(payload: Value) -> Option<Vec<Value>> {
    match payload {
        Value::Array(samples) => Some(samples),
        Value::Object(mut map) => match map.remove("samples") {
            Some(Value::Array(samples)) => Some(samples),
            _ => None,
        },
        _ => None,
    }
}
