//! The engine's report: its own state and, per manifold, state, inputs, start count, last
//! start, last error and the worker's own report. Plain data that serialises to JSON for
//! operators (a status endpoint, a CLI) and nests: an engine running inside another shows up
//! under its manifold's `"report"`.
//!
//! JSON shape (keys absent when there is nothing to say):
//!
//! ```text
//! {"state": "started" | "stopping" | "stopped",
//!  "error": "…",                              // the engine's fatal error, once stopping
//!  "manifolds": {"name": {"state": "starting" | "started" | "stopping" | "stopped",
//!                         "inputs": ["…"],
//!                         "start-count": 3,
//!                         "last-start": "2024-05-01T12:00:00.123Z",
//!                         "error": "…",
//!                         "report": {…}}}}
//! ```

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

/// The engine as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineState {
    /// Running manifolds and accepting installs.
    Started,
    /// Killed (or hit a fatal error); waiting for its workers to stop.
    Stopping,
    /// Every worker has stopped; [`Engine::wait`](super::Engine::wait) has returned or will
    /// return at once.
    Stopped,
}

/// One manifold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifoldState {
    /// A start is pending (waiting out a delay, or running).
    Starting,
    /// A worker is running.
    Started,
    /// The engine asked the worker to stop and waits for it.
    Stopping,
    /// Nothing runs and nothing is pending.
    Stopped,
}

/// A snapshot of an engine, taken by [`Engine::report`](super::Engine::report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineReport {
    /// The engine's state.
    pub state: EngineState,
    /// The fatal error that is stopping or stopped the engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every installed manifold, by name.
    pub manifolds: BTreeMap<String, ManifoldReport>,
}

/// A snapshot of one manifold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManifoldReport {
    /// What the manifold is doing.
    pub state: ManifoldState,
    /// Its declared inputs.
    pub inputs: Vec<String>,
    /// How many workers it has started.
    #[serde(rename = "start-count", skip_serializing_if = "is_zero")]
    pub start_count: u64,
    /// When its last worker started, RFC 3339 in UTC.
    #[serde(rename = "last-start", skip_serializing_if = "Option::is_none")]
    pub last_start: Option<String>,
    /// How its last worker or start ended, after the manifold's filter; cleared when a worker
    /// starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What keeps the running worker from its job, by its own account (see
    /// [`Worker::health`](super::Worker::health)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The running worker's own report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
}

impl ManifoldReport {
    /// Whether the manifold does its job: its worker is running and reports no problem.
    pub fn is_healthy(&self) -> bool {
        self.state == ManifoldState::Started && self.problem.is_none()
    }

    /// Why the manifold is not healthy, in a few words, or `None` when it is.
    pub fn unhealthy_because(&self) -> Option<String> {
        if let Some(problem) = &self.problem {
            return Some(problem.clone());
        }
        if self.state == ManifoldState::Started {
            return None;
        }
        let state = match self.state {
            ManifoldState::Starting => "starting",
            ManifoldState::Stopping => "stopping",
            _ => "not running",
        };
        Some(match &self.error {
            Some(error) => format!("{state}: {error}"),
            None => state.to_owned(),
        })
    }
}

impl EngineReport {
    /// `Ok` when the engine runs and every manifold is healthy; otherwise each unhealthy
    /// manifold as `"name: why"`.
    pub fn health(&self) -> Result<(), Vec<String>> {
        let mut unhealthy: Vec<String> = self
            .manifolds
            .iter()
            .filter_map(|(name, manifold)| {
                manifold
                    .unhealthy_because()
                    .map(|why| format!("{name}: {why}"))
            })
            .collect();
        if self.state != EngineState::Started {
            unhealthy.insert(
                0,
                format!("engine: {}", self.error.as_deref().unwrap_or("stopping")),
            );
        }
        if unhealthy.is_empty() {
            Ok(())
        } else {
            Err(unhealthy)
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Formats a wall-clock time as RFC 3339 in UTC with milliseconds
/// (`2024-05-01T12:00:00.123Z`); times before 1970 print as the epoch.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, secs_of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm, for
/// non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(951_782_400_123 + 3_723_000);
        assert_eq!(rfc3339(leap_day), "2000-02-29T01:02:03.123Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(rfc3339(later), "2024-05-01T12:00:00.000Z");
    }

    #[test]
    fn empty_fields_are_left_out_of_the_json() {
        let report = ManifoldReport {
            state: ManifoldState::Stopped,
            inputs: vec![],
            start_count: 0,
            last_start: None,
            error: None,
            problem: None,
            report: None,
        };
        assert_eq!(
            serde_json::to_value(report).unwrap(),
            serde_json::json!({"state": "stopped", "inputs": []})
        );
    }
}
