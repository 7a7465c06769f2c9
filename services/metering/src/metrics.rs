//! What the metering agents count, for Prometheus, through the `metrics` facade (the process
//! installs the recorder: see `tidings_runtime::admin`). Each agent also keeps its own counters
//! in its worker's report (`/v2/status`); these are the ones an operator alerts on.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tidings_metering_samples_stored_total` | counter | |
//! | `tidings_metering_samples_rejected_total` | counter | `reason` |
//! | `tidings_metering_alarms_evaluated_total` | counter | |
//! | `tidings_metering_alarm_transitions_total` | counter | |
//! | `tidings_metering_actions_total` | counter | `outcome` |
//!
//! Every label value is one of a fixed set: `reason` is a
//! [`Rejection::kind`](crate::sample::Rejection::kind), `bad_signature` or
//! `refused_by_store`; `outcome` one of [`action_outcome`]'s constants.

use crate::collector::Tally;

/// Samples written to the store (duplicates of stored ones not counted).
pub const SAMPLES_STORED: &str = "tidings_metering_samples_stored_total";
/// Samples refused, by reason.
pub const SAMPLES_REJECTED: &str = "tidings_metering_samples_rejected_total";
/// Evaluations of an alarm.
pub const ALARMS_EVALUATED: &str = "tidings_metering_alarms_evaluated_total";
/// Alarm state transitions recorded.
pub const ALARM_TRANSITIONS: &str = "tidings_metering_alarm_transitions_total";
/// Alarm actions, by outcome.
pub const ACTIONS: &str = "tidings_metering_actions_total";

/// The `reason` of samples whose signature did not verify.
pub const BAD_SIGNATURE: &str = "bad_signature";

/// The `outcome` values of [`ACTIONS`].
pub mod action_outcome {
    /// The action ran (a log line written, a webhook answered 2xx).
    pub const OK: &str = "ok";
    /// It failed after its retries (the endpoint did not answer, or answered an error).
    pub const FAILED: &str = "failed";
    /// The action policy refused its destination.
    pub const REFUSED: &str = "refused";
    /// Not run: an unknown scheme, or not a URL.
    pub const SKIPPED: &str = "skipped";
}

/// Gives each metric above its help text (see `tidings::metrics::describe`).
pub fn describe() {
    use metrics::describe_counter;
    describe_counter!(SAMPLES_STORED, "Samples written to the store");
    describe_counter!(SAMPLES_REJECTED, "Samples refused, by reason");
    describe_counter!(ALARMS_EVALUATED, "Alarm evaluations");
    describe_counter!(ALARM_TRANSITIONS, "Alarm state transitions recorded");
    describe_counter!(ACTIONS, "Alarm actions, by outcome");
}

/// Counts what one batch of samples came to.
pub(crate) fn record_tally(tally: &Tally) {
    metrics::counter!(SAMPLES_STORED).increment(tally.stored);
    if tally.bad_signatures > 0 {
        metrics::counter!(SAMPLES_REJECTED, "reason" => BAD_SIGNATURE)
            .increment(tally.bad_signatures);
    }
    for (reason, count) in &tally.rejected {
        metrics::counter!(SAMPLES_REJECTED, "reason" => reason.to_string()).increment(*count);
    }
}

/// Counts one alarm evaluation.
pub(crate) fn alarm_evaluated() {
    metrics::counter!(ALARMS_EVALUATED).increment(1);
}

/// Counts one recorded alarm transition.
pub(crate) fn alarm_transition() {
    metrics::counter!(ALARM_TRANSITIONS).increment(1);
}

/// Counts one alarm action ending with `outcome` (an [`action_outcome`] constant).
pub(crate) fn action(outcome: &'static str) {
    metrics::counter!(ACTIONS, "outcome" => outcome).increment(1);
}
