//! Notification priorities, as oslo.messaging names them.

use std::fmt;
use std::str::FromStr;

/// The priority of a notification. On the wire the body carries it in upper case (`INFO`) and
/// the routing key in lower case (`notifications.info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Audit trail.
    Audit,
    /// Debugging detail.
    Debug,
    /// Normal events.
    Info,
    /// Warnings (`WARN`; `warning` is accepted as a name).
    Warn,
    /// Errors.
    Error,
    /// Critical failures.
    Critical,
    /// Metering samples.
    Sample,
}

impl Priority {
    /// Every priority, in oslo's order.
    pub const ALL: [Priority; 7] = [
        Priority::Audit,
        Priority::Debug,
        Priority::Info,
        Priority::Warn,
        Priority::Error,
        Priority::Critical,
        Priority::Sample,
    ];

    /// The routing-key form: `info`, `warn`, …
    pub fn as_key(self) -> &'static str {
        match self {
            Priority::Audit => "audit",
            Priority::Debug => "debug",
            Priority::Info => "info",
            Priority::Warn => "warn",
            Priority::Error => "error",
            Priority::Critical => "critical",
            Priority::Sample => "sample",
        }
    }

    /// The body form: `INFO`, `WARN`, …
    pub fn as_wire(self) -> &'static str {
        match self {
            Priority::Audit => "AUDIT",
            Priority::Debug => "DEBUG",
            Priority::Info => "INFO",
            Priority::Warn => "WARN",
            Priority::Error => "ERROR",
            Priority::Critical => "CRITICAL",
            Priority::Sample => "SAMPLE",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_key())
    }
}

/// A priority name that oslo does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown notification priority {0:?}: expected audit, debug, info, warn, error, critical or sample")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    /// Case-insensitive; `warning` is `warn`, as oslo's notifier has both.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "audit" => Ok(Priority::Audit),
            "debug" => Ok(Priority::Debug),
            "info" => Ok(Priority::Info),
            "warn" | "warning" => Ok(Priority::Warn),
            "error" => Ok(Priority::Error),
            "critical" => Ok(Priority::Critical),
            "sample" => Ok(Priority::Sample),
            _ => Err(UnknownPriority(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_both_cases() {
        for p in Priority::ALL {
            assert_eq!(p.as_key().parse::<Priority>(), Ok(p));
            assert_eq!(p.as_wire().parse::<Priority>(), Ok(p));
        }
        assert_eq!("WARNING".parse::<Priority>(), Ok(Priority::Warn));
        assert!("loud".parse::<Priority>().is_err());
    }
}
