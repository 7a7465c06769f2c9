//! How the alarm notifier runs.

use std::time::Duration;

use super::{ActionLimits, ActionPolicy, HttpConfig};

/// How the alarm notifier runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierConfig {
    /// Notifications handed over at once (Aodh's `[notifier] batch_size`; default 10).
    pub batch_size: usize,
    /// Longest wait for a batch to fill after its first notification (default 100 ms).
    pub batch_timeout: Duration,
    /// How `http(s)://` actions are sent.
    pub http: HttpConfig,
    /// Which actions may be called (default: metadata and link-local refused).
    pub policy: ActionPolicy,
    /// Caps on requests in flight.
    pub limits: ActionLimits,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            batch_size: 10,
            batch_timeout: Duration::from_millis(100),
            http: HttpConfig::default(),
            policy: ActionPolicy::default(),
            limits: ActionLimits::default(),
        }
    }
}
