//! The collector's pipeline from raw wire samples to the store: verify the signature (when a
//! secret is set), validate, store the good ones in one call, and count everything.
//!
//! Two kinds of store failure, two answers:
//! - **the store is unavailable** ([`StoreError::Unavailable`]: connection refused or lost,
//!   restarting, read-only, locked): a batch from the bus is *held*. It stays unacknowledged,
//!   and the collector takes no more than the listener's prefetch; one held batch probes the
//!   store with jittered, capped backoff ([`StoreOutage`]) while the others wait their turn, and
//!   all are stored once it answers. Nothing is requeued, nothing dead-lettered for it.
//! - **a sample is refused on its own merits** (any other error): the batch is stored one
//!   sample at a time to find the bad ones; the rest are stored and each refused sample goes,
//!   alone and with the store's reason, to the dead-letter queue (see [`dead_letter`]).
//!
//! An RPC caller (`record_metering_data`) is never held: an unavailable store is its error, and
//! refused samples are counted in its tally.
//!
//! Counts reach the shared [`CollectorReport`] only once a batch is settled, so a batch that
//! comes back from the broker (the collector stopped while holding it) is not counted twice.
//!
//! [`dead_letter`]: super::dead_letter

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings::notify::{IncomingNotification, Outcome};
use tokio::sync::watch;

use super::dead_letter::{noted_queue, DeadLetters, Origin};
use super::outage::{Failure, StoreOutage};
use crate::model::Sample;
use crate::retry::Backoff;
use crate::sample::{from_wire, verify_signature};
use crate::store::{Store, StoreError};

/// The kind under which an RPC caller's tally counts samples the store refused.
pub const REFUSED_BY_STORE: &str = "refused_by_store";

/// What the collector has seen since it started; shown in the worker's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorReport {
    /// Samples received (notifications and `record_metering_data`).
    pub received: u64,
    /// Samples stored.
    pub stored: u64,
    /// Valid samples whose `message_id` was already stored.
    pub duplicates: u64,
    /// Invalid samples dropped, by [`Rejection::kind`](crate::sample::Rejection::kind) (and
    /// [`REFUSED_BY_STORE`] for samples an RPC caller sent that the store refused).
    pub rejected: BTreeMap<String, u64>,
    /// Samples dropped because their signature did not verify.
    pub bad_signatures: u64,
    /// Notifications whose payload held no sample list (acknowledged and dropped).
    pub unrecognised_payloads: u64,
    /// Attempts on the store that failed because it was unavailable (each retry counts).
    pub storage_failures: u64,
    /// Outages of the store seen: each a run of failed attempts, ended by an answer.
    pub store_outages: u64,
    /// Whether the store answered the last attempt (false during an outage).
    pub store_available: bool,
    /// Batches held, unacknowledged, waiting for the store to come back (now).
    pub batches_held: u64,
    /// Samples the store refused on their own merits, moved to a dead-letter queue with the
    /// reason.
    pub dead_lettered: u64,
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

/// Valid samples ready for the store, with the wire form each came in (what a dead letter
/// carries) and the notification it came from.
#[derive(Default)]
struct Checked {
    samples: Vec<Sample>,
    wire: Vec<Value>,
    origin: Vec<usize>,
    tally: Tally,
}

/// What became of samples handed to the store.
#[derive(Debug, Default)]
struct Stored {
    new: usize,
    /// Index of each refused sample, and why.
    refused: Vec<(usize, String)>,
}

/// Whether a caller waits through an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Hold the samples and retry until the store answers (samples from the bus).
    Hold,
    /// Fail with the store's error (an RPC caller, who has a timeout of its own).
    FailFast,
}

/// The pipeline, shared by the listener and the RPC endpoint.
#[derive(Debug)]
pub(crate) struct Ingest {
    store: Arc<dyn Store>,
    secret: Option<String>,
    report: watch::Sender<CollectorReport>,
    outage: StoreOutage,
    dead_letters: Option<DeadLetters>,
}

/// Counts a batch as held while it lives (also when its task is cut off at a stop).
struct HeldBatch<'a>(&'a watch::Sender<CollectorReport>);

impl<'a> HeldBatch<'a> {
    fn new(report: &'a watch::Sender<CollectorReport>) -> Self {
        report.send_modify(|r| r.batches_held += 1);
        Self(report)
    }
}

impl Drop for HeldBatch<'_> {
    fn drop(&mut self) {
        self.0
            .send_modify(|r| r.batches_held = r.batches_held.saturating_sub(1));
    }
}

impl Ingest {
    pub fn new(
        store: Arc<dyn Store>,
        secret: Option<String>,
        retry: Backoff,
        dead_letters: Option<DeadLetters>,
    ) -> Self {
        Self {
            store,
            secret: secret.filter(|s| !s.is_empty()),
            report: watch::Sender::new(CollectorReport {
                store_available: true,
                ..CollectorReport::default()
            }),
            outage: StoreOutage::new(retry),
            dead_letters,
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

    /// Verifies and validates `raw`, keeping the good samples; the rest are counted in the
    /// tally and logged.
    fn check(&self, raw: Vec<Value>, origin: usize, checked: &mut Checked) {
        checked.tally.received += raw.len() as u64;
        for value in raw {
            let message_id = value
                .get("message_id")
                .and_then(Value::as_str)
                .unwrap_or("?");
            if let (Some(secret), Some(map)) = (&self.secret, value.as_object()) {
                if !verify_signature(map, secret) {
                    tracing::warn!(message_id, "sample signature invalid; dropped");
                    checked.tally.bad_signatures += 1;
                    continue;
                }
            }
            match from_wire(&value) {
                Ok(sample) => {
                    checked.samples.push(sample);
                    checked.wire.push(value);
                    checked.origin.push(origin);
                }
                Err(rejection) => {
                    tracing::warn!(message_id, %rejection, "invalid sample dropped");
                    *checked
                        .tally
                        .rejected
                        .entry(Cow::Borrowed(rejection.kind()))
                        .or_default() += 1;
                }
            }
        }
    }

    /// Stores samples from an RPC caller: an unavailable store is the caller's error; samples
    /// refused on their merits are counted under [`REFUSED_BY_STORE`].
    pub async fn ingest(&self, raw: Vec<Value>) -> Result<Tally, StoreError> {
        let mut checked = Checked::default();
        self.check(raw, 0, &mut checked);
        let stored = self.store_checked(&checked.samples, Wait::FailFast).await?;
        let mut tally = checked.tally;
        for (index, reason) in &stored.refused {
            let message_id = &checked.samples[*index].message_id;
            tracing::warn!(message_id, reason, "sample refused by the store; dropped");
        }
        if !stored.refused.is_empty() {
            *tally
                .rejected
                .entry(Cow::Borrowed(REFUSED_BY_STORE))
                .or_default() += stored.refused.len() as u64;
        }
        tally.stored = stored.new as u64;
        tally.duplicates =
            (checked.samples.len() - stored.refused.len()).saturating_sub(stored.new) as u64;
        crate::metrics::record_tally(&tally);
        self.report.send_modify(|r| r.add(&tally));
        Ok(tally)
    }

    /// Stores a batch of sample notifications from the listener, holding it through store
    /// outages and dead-lettering the samples the store refuses. `Requeue` only when a refused
    /// sample could not be dead-lettered (the broker is failing too): the batch comes back,
    /// and what was stored is skipped as a duplicate then.
    pub async fn ingest_notifications(&self, batch: Vec<IncomingNotification>) -> Outcome {
        let mut checked = Checked::default();
        let mut origins = Vec::with_capacity(batch.len());
        let mut unrecognised = 0;
        for (index, notification) in batch.into_iter().enumerate() {
            let noted_queue = noted_queue(&notification.payload);
            // The batch is ours: its samples are moved out, not copied.
            match into_samples(notification.payload) {
                Some(samples) => self.check(samples, index, &mut checked),
                None => {
                    tracing::warn!(
                        event_type = %notification.event_type,
                        publisher_id = %notification.publisher_id,
                        "sample notification without a sample list; dropped"
                    );
                    unrecognised += 1;
                }
            }
            origins.push(Origin {
                context: notification.context,
                publisher_id: notification.publisher_id,
                event_type: notification.event_type,
                message_id: notification.metadata.message_id,
                noted_queue,
            });
        }
        let stored = match self.store_checked(&checked.samples, Wait::Hold).await {
            Ok(stored) => stored,
            // Holding never gives up on an unavailable store; should it, the broker keeps
            // the batch.
            Err(error) => {
                tracing::error!(%error, "samples not stored; batch requeued");
                return Outcome::Requeue;
            }
        };
        for (index, reason) in &stored.refused {
            let sample = &checked.samples[*index];
            let sent = match &self.dead_letters {
                Some(dead_letters) => {
                    let origin = &origins[checked.origin[*index]];
                    dead_letters
                        .send(origin, &checked.wire[*index], reason)
                        .await
                }
                None => Err(tidings::transport::TransportError::Closed),
            };
            match sent {
                Ok(queue) => {
                    tracing::warn!(message_id = %sample.message_id, %reason, %queue, "sample refused by the store; moved to the dead-letter queue");
                }
                Err(error) => {
                    tracing::warn!(message_id = %sample.message_id, %reason, %error, "sample refused by the store and not dead-lettered; batch requeued");
                    return Outcome::Requeue;
                }
            }
        }
        let mut tally = checked.tally;
        tally.stored = stored.new as u64;
        tally.duplicates =
            (checked.samples.len() - stored.refused.len()).saturating_sub(stored.new) as u64;
        let dead_lettered = stored.refused.len() as u64;
        crate::metrics::record_tally(&tally);
        self.report.send_modify(|r| {
            r.add(&tally);
            r.dead_lettered += dead_lettered;
            r.unrecognised_payloads += unrecognised;
        });
        Outcome::Handled
    }

    /// Stores `samples` in one call; when some sample is refused, one at a time, to store the
    /// others and name the refused ones.
    async fn store_checked(&self, samples: &[Sample], wait: Wait) -> Result<Stored, StoreError> {
        let error = match self.record(samples, wait).await {
            Ok(new) => {
                return Ok(Stored {
                    new,
                    refused: Vec::new(),
                })
            }
            Err(error) if error.is_unavailable() => return Err(error),
            Err(error) => error,
        };
        if let [_] = samples {
            return Ok(Stored {
                new: 0,
                refused: vec![(0, error.to_string())],
            });
        }
        tracing::info!(%error, samples = samples.len(), "the store refused a batch; storing its samples one at a time to find the refused ones");
        let mut stored = Stored::default();
        for (index, sample) in samples.iter().enumerate() {
            match self.record(std::slice::from_ref(sample), wait).await {
                Ok(new) => stored.new += new,
                Err(error) if error.is_unavailable() => return Err(error),
                Err(error) => stored.refused.push((index, error.to_string())),
            }
        }
        Ok(stored)
    }

    /// One call to the store, repeated through an outage when `wait` is [`Wait::Hold`]: then
    /// the only errors are refusals.
    async fn record(&self, samples: &[Sample], wait: Wait) -> Result<usize, StoreError> {
        loop {
            if wait == Wait::Hold && self.outage.is_down() {
                let _held = HeldBatch::new(&self.report);
                let _probe = self.outage.probe().await;
                if self.outage.is_down() {
                    return self.probe_until_back(samples).await;
                }
            }
            match self.store.record(samples).await {
                Ok(new) => {
                    self.answered();
                    return Ok(new);
                }
                Err(error) if error.is_unavailable() => {
                    self.failed(&error);
                    if wait == Wait::FailFast {
                        return Err(error);
                    }
                }
                Err(error) => {
                    self.answered();
                    return Err(error);
                }
            }
        }
    }

    /// Retries `samples` with backoff until the store answers (the caller holds the probe).
    async fn probe_until_back(&self, samples: &[Sample]) -> Result<usize, StoreError> {
        loop {
            let wait = self.outage.next_delay();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // Another batch got through (one that was already in flight).
                () = self.outage.back() => {}
            }
            match self.store.record(samples).await {
                Ok(new) => {
                    self.answered();
                    return Ok(new);
                }
                Err(error) if error.is_unavailable() => self.failed(&error),
                Err(error) => {
                    self.answered();
                    return Err(error);
                }
            }
        }
    }

    fn failed(&self, error: &StoreError) {
        let held = self.report.borrow().batches_held;
        let began = self.outage.failed(error, held) == Failure::Began;
        self.report.send_modify(|r| {
            r.storage_failures += 1;
            r.store_available = false;
            if began {
                r.store_outages += 1;
            }
        });
    }

    fn answered(&self) {
        if self.outage.is_down() {
            self.outage.answered();
            self.report.send_modify(|r| r.store_available = true);
        }
    }
}

/// The samples a notification carries: a list payload (the `notifier://` publisher's
/// `metering` event) or `{"samples": [...]}` (the polling agent's `telemetry.polling`, and a
/// dead-lettered sample, whose note beside the list is ignored). Taken out of the payload,
/// which the batch owns, rather than copied.
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
