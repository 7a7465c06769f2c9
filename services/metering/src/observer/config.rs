//! How often the observer prints.

use std::time::Duration;

/// Settings of the observer manifold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverConfig {
    /// Time between two prints (default 5 s).
    pub interval: Duration,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
        }
    }
}
