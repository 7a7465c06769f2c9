//! How the collector runs.

use std::time::Duration;

/// How the collector runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorConfig {
    /// Ceilometer's `[publisher] telemetry_secret`: when set (non-empty), samples whose
    /// `message_signature` does not verify are dropped. `None` (the default) accepts unsigned
    /// samples. Ceilometer's own default is
    /// [`DEFAULT_TELEMETRY_SECRET`](crate::sample::DEFAULT_TELEMETRY_SECRET).
    pub telemetry_secret: Option<String>,
    /// Samples notifications per batch (default 50, Ceilometer's `batch_size`).
    pub batch_size: usize,
    /// Longest wait for a batch to fill after its first message (default 1 s).
    pub batch_timeout: Duration,
    /// Listener pool: collectors in one pool share the work; each pool gets every sample.
    /// `None` (default) consumes Ceilometer's own queues (`notifications.sample`,
    /// `metering.sample`).
    pub pool: Option<String>,
    /// This server's name on the RPC topic (`metering.<server>`); a fresh one when `None`.
    pub server: Option<String>,
    /// How long [`Collector::stop`](super::Collector::stop) waits for batches and calls in flight.
    pub stop_deadline: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            telemetry_secret: None,
            batch_size: 50,
            batch_timeout: Duration::from_secs(1),
            pool: None,
            server: None,
            stop_deadline: Duration::from_secs(5),
        }
    }
}
