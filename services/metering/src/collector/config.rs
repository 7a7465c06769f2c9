//! How the collector runs.

use std::time::Duration;

use crate::retry::Backoff;

/// Waits between attempts on a store that is down: from 200 ms, doubled per failure, at most
/// 5 s (jittered). A store back from an outage is found within 5 s.
pub const DEFAULT_STORE_RETRY: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Batches handed to the store at once, by default.
pub const DEFAULT_MAX_BATCHES_IN_FLIGHT: usize = 4;

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
    /// Batches handed to the store at once (default 4, at least 1).
    ///
    /// While the store is down the collector holds what it took, unacknowledged, and takes no
    /// more once the listener's prefetch is used up: at most the larger of `2 × batch_size`
    /// notifications and this many batches.
    pub max_batches_in_flight: usize,
    /// Waits between attempts while the store is unavailable (default
    /// [`DEFAULT_STORE_RETRY`]).
    pub store_retry: Backoff,
    /// Listener pool: collectors in one pool share the work; each pool gets every sample.
    /// `None` (default) consumes Ceilometer's own queues (`notifications.sample`,
    /// `metering.sample`).
    pub pool: Option<String>,
    /// This server's name on the RPC topic (`metering.<server>`); a fresh one when `None`.
    pub server: Option<String>,
    /// How long [`Collector::stop`](super::Collector::stop) waits for batches and calls in flight.
    /// Batches still held for a store that is down are left unacknowledged then: the broker
    /// delivers them again.
    pub stop_deadline: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            telemetry_secret: None,
            batch_size: 50,
            batch_timeout: Duration::from_secs(1),
            max_batches_in_flight: DEFAULT_MAX_BATCHES_IN_FLIGHT,
            store_retry: DEFAULT_STORE_RETRY,
            pool: None,
            server: None,
            stop_deadline: Duration::from_secs(5),
        }
    }
}
