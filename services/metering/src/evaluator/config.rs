//! What an evaluator is told: its intervals, its member id, its limits ([`EvaluatorConfig`]),
//! and the clock it reads ([`Clock`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

/// Aodh's default `evaluation_interval`.
pub const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest evaluation interval accepted.
pub const MIN_EVALUATION_INTERVAL: Duration = Duration::from_secs(1);
/// Aodh's default `[coordination] heartbeat_interval`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Missed heartbeats after which a member is taken for dead.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Alarms evaluated at once (Aodh's evaluator thread pool).
pub const DEFAULT_MAX_CONCURRENCY: usize = 10;

/// The wall clock an evaluator reads: cycle boundaries and heartbeat stamps are wall-clock
/// instants shared by every evaluator, so their clocks must agree (NTP) to well within half a
/// heartbeat interval.
#[derive(Clone, Copy, Debug, Default)]
pub enum Clock {
    /// The system clock (the default).
    #[default]
    System,
    /// The system time when made, advanced by Tokio's clock: with Tokio's paused time in tests,
    /// timers and timestamps move together.
    Tokio {
        /// System time when made, ms since the Unix epoch.
        base_ms: i64,
        /// Tokio's instant when made.
        base: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows Tokio's time (for tests with paused time).
    pub fn tokio() -> Self {
        Self::Tokio {
            base_ms: system_ms(),
            base: tokio::time::Instant::now(),
        }
    }

    /// Now, in ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Self::System => system_ms(),
            Self::Tokio { base_ms, base } => base_ms
                .saturating_add(i64::try_from(base.elapsed().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// Now, as a timestamp.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(self.now_ms()).unwrap_or_else(Utc::now)
    }
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An evaluator configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The evaluation interval is below one second.
    #[error("evaluation_interval must be at least 1 s, got {0:?}")]
    IntervalTooShort(Duration),
    /// The heartbeat interval is zero or longer than the evaluation interval.
    #[error("heartbeat_interval must be above zero and at most evaluation_interval, got {0:?}")]
    BadHeartbeat(Duration),
    /// The member timeout leaves no room for a heartbeat in each cycle's window.
    #[error(
        "member_timeout must be at least twice heartbeat_interval ({heartbeat:?}), got {timeout:?}"
    )]
    TimeoutTooShort {
        /// The member timeout asked for.
        timeout: Duration,
        /// The heartbeat interval.
        heartbeat: Duration,
    },
    /// No alarm could ever be evaluated.
    #[error("max_concurrency must be at least 1")]
    NoConcurrency,
}

/// How an alarm evaluator runs.
#[derive(Clone, Debug)]
pub struct EvaluatorConfig {
    /// How often each alarm is evaluated (default 60 s, at least 1 s). Every evaluator of a
    /// group must use the same value: cycles are aligned on multiples of it.
    pub evaluation_interval: Duration,
    /// How often this evaluator announces itself; `None`: `min(1 s, evaluation_interval / 4)`.
    pub heartbeat_interval: Option<Duration>,
    /// How long a silent member still counts; `None`: three heartbeat intervals.
    pub member_timeout: Option<Duration>,
    /// This evaluator's member id; `None`: `evaluator-<uuid>`, fresh at each start.
    pub member_id: Option<String>,
    /// Added to every statistics window, for samples that arrive late (Aodh's
    /// `additional_ingestion_lag`, default 0).
    pub ingestion_lag: Duration,
    /// Alarms evaluated at once (default 10).
    pub max_concurrency: usize,
    /// The clock (default: the system clock).
    pub clock: Clock,
}

impl Default for EvaluatorConfig {
    fn default() -> Self {
        Self::every(DEFAULT_EVALUATION_INTERVAL)
    }
}

impl EvaluatorConfig {
    /// Defaults with another evaluation interval.
    pub fn every(evaluation_interval: Duration) -> Self {
        Self {
            evaluation_interval,
            heartbeat_interval: None,
            member_timeout: None,
            member_id: None,
            ingestion_lag: Duration::ZERO,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            clock: Clock::System,
        }
    }

    /// The heartbeat interval in force.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat_interval
            .unwrap_or_else(|| DEFAULT_HEARTBEAT_INTERVAL.min(self.evaluation_interval / 4))
    }

    /// The member timeout in force.
    pub fn timeout(&self) -> Duration {
        self.member_timeout
            .unwrap_or_else(|| self.heartbeat() * MISSED_HEARTBEATS)
    }

    /// Checks that the intervals can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.evaluation_interval < MIN_EVALUATION_INTERVAL {
            return Err(ConfigError::IntervalTooShort(self.evaluation_interval));
        }
        let heartbeat = self.heartbeat();
        if heartbeat.is_zero() || heartbeat > self.evaluation_interval {
            return Err(ConfigError::BadHeartbeat(heartbeat));
        }
        let timeout = self.timeout();
        if timeout < heartbeat * 2 {
            return Err(ConfigError::TimeoutTooShort { timeout, heartbeat });
        }
        if self.max_concurrency == 0 {
            return Err(ConfigError::NoConcurrency);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_defaults_to_aodhs_rule() {
        assert_eq!(
            EvaluatorConfig::default().heartbeat(),
            Duration::from_secs(1)
        );
        let fast = EvaluatorConfig::every(Duration::from_secs(1));
        assert_eq!(fast.heartbeat(), Duration::from_millis(250));
        assert_eq!(fast.timeout(), Duration::from_millis(750));
        assert_eq!(fast.validate(), Ok(()));
    }

    #[test]
    fn impossible_intervals_are_refused() {
        let short = EvaluatorConfig::every(Duration::from_millis(500));
        assert!(matches!(
            short.validate(),
            Err(ConfigError::IntervalTooShort(_))
        ));
        let tight = EvaluatorConfig {
            member_timeout: Some(Duration::from_millis(1500)),
            ..EvaluatorConfig::default()
        };
        assert!(matches!(
            tight.validate(),
            Err(ConfigError::TimeoutTooShort { .. })
        ));
    }
}
