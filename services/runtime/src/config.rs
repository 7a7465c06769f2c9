//! [`EngineConfig`]: the engine's restart delays, backoff, fatal predicate and error ordering,
//! with the defaults long-running agents use and the checks that refuse nonsense.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::backoff::Backoff;
use super::worker::WorkerError;

/// Decides whether an error stops the whole engine.
pub type IsFatalFn = Arc<dyn Fn(&WorkerError) -> bool + Send + Sync>;

/// Orders errors by importance: `Greater` means the first is worse. The engine's result is the
/// worst fatal error it saw; among equals, the first one.
pub type WorstErrorFn = Arc<dyn Fn(&WorkerError, &WorkerError) -> Ordering + Send + Sync>;

/// Maps the engine's final error before [`Engine::wait`](super::Engine::wait) returns it.
pub type EngineFilterFn = Arc<dyn Fn(WorkerError) -> WorkerError + Send + Sync>;

/// How an engine restarts workers and when it gives up.
///
/// Build it from the default and change what you need:
///
/// ```
/// use std::time::Duration;
/// use tidings_runtime::EngineConfig;
///
/// let config = EngineConfig {
///     error_delay: Duration::from_secs(1),
///     backoff_factor: 2.0,
///     max_delay: Some(Duration::from_secs(3)),
///     ..EngineConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
pub struct EngineConfig {
    /// Wait before restarting a worker that failed (default 3 s).
    pub error_delay: Duration,
    /// Wait before restarting a worker that asked to be bounced or that the engine stopped
    /// because an input changed (default 10 ms).
    pub bounce_delay: Duration,
    /// Growth of the delay per recent failure; must be finite and at least 1 (default 1.2; 1
    /// keeps the delay constant).
    pub backoff_factor: f64,
    /// A worker that ran at least this long before failing starts its failure count afresh
    /// (default 1 min).
    pub backoff_reset: Duration,
    /// Cap on the grown delay, before jitter; `None` for no cap (default 2 min).
    pub max_delay: Option<Duration>,
    /// Fraction of each restart delay added or removed at random, in `[0, 1)` (default 0.1,
    /// that is ±10%): workers that failed together do not all come back at once.
    pub jitter: f64,
    /// Which errors stop the engine (default: [`WorkerError::Fatal`]). Called outside the
    /// engine's lock, but it must be quick and must not block.
    pub is_fatal: IsFatalFn,
    /// Which of two fatal errors the engine reports (default: all fatal errors rank equal, so
    /// the first one wins). Called under the engine's lock: it must not call into the engine.
    pub worst_error: WorstErrorFn,
    /// Applied to the engine's final error, if any (default: none).
    pub filter: Option<EngineFilterFn>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            error_delay: Duration::from_secs(3),
            bounce_delay: Duration::from_millis(10),
            backoff_factor: 1.2,
            backoff_reset: Duration::from_secs(60),
            max_delay: Some(Duration::from_secs(120)),
            jitter: 0.1,
            is_fatal: Arc::new(|error| matches!(error, WorkerError::Fatal(_))),
            worst_error: Arc::new(|_, _| Ordering::Equal),
            filter: None,
        }
    }
}

/// Why an [`EngineConfig`] was refused, or the engine could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The backoff factor is below 1, infinite or not a number.
    #[error("backoff factor must be a finite number >= 1, got {0}")]
    BackoffFactor(f64),
    /// The jitter fraction is outside `[0, 1)`.
    #[error("jitter must be a fraction in [0, 1), got {0}")]
    Jitter(f64),
    /// A cap of zero would make every restart immediate; use `None` for "no cap".
    #[error("max delay must be greater than zero (use None for no cap)")]
    ZeroMaxDelay,
    /// [`Engine::new`](super::Engine::new) was called outside a Tokio runtime.
    #[error("an engine must be created inside a Tokio runtime")]
    NoRuntime,
}

impl EngineConfig {
    /// Checks the values a type cannot rule out.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.backoff_factor.is_finite() || self.backoff_factor < 1.0 {
            return Err(ConfigError::BackoffFactor(self.backoff_factor));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(ConfigError::Jitter(self.jitter));
        }
        if self.max_delay == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroMaxDelay);
        }
        Ok(())
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            factor: self.backoff_factor,
            max_delay: self.max_delay,
            jitter: self.jitter,
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("error_delay", &self.error_delay)
            .field("bounce_delay", &self.bounce_delay)
            .field("backoff_factor", &self.backoff_factor)
            .field("backoff_reset", &self.backoff_reset)
            .field("max_delay", &self.max_delay)
            .field("jitter", &self.jitter)
            .field("filter", &self.filter.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_long_running_agent_values_and_valid() {
        let config = EngineConfig::default();
        assert_eq!(config.error_delay, Duration::from_secs(3));
        assert_eq!(config.bounce_delay, Duration::from_millis(10));
        assert_eq!(config.backoff_factor, 1.2);
        assert_eq!(config.backoff_reset, Duration::from_secs(60));
        assert_eq!(config.max_delay, Some(Duration::from_secs(120)));
        assert_eq!(config.jitter, 0.1);
        assert_eq!(config.validate(), Ok(()));
        assert!((config.is_fatal)(&WorkerError::fatal("stop")));
        assert!(!(config.is_fatal)(&WorkerError::failed("again")));
    }

    #[test]
    fn validation_refuses_bad_factors_jitter_and_a_zero_cap() {
        for factor in [0.0, 0.5, f64::NAN, f64::INFINITY] {
            let config = EngineConfig {
                backoff_factor: factor,
                ..EngineConfig::default()
            };
            assert!(matches!(
                config.validate(),
                Err(ConfigError::BackoffFactor(_))
            ));
        }
        for jitter in [-0.1, 1.0, f64::NAN] {
            let config = EngineConfig {
                jitter,
                ..EngineConfig::default()
            };
            assert!(matches!(config.validate(), Err(ConfigError::Jitter(_))));
        }
        let config = EngineConfig {
            max_delay: Some(Duration::ZERO),
            ..EngineConfig::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::ZeroMaxDelay));
        let config = EngineConfig {
            backoff_factor: 1.0,
            jitter: 0.0,
            max_delay: None,
            ..EngineConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }
}
