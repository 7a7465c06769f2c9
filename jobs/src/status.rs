//! The statuses of a job and of its parts, and the one rule that derives a job's status from its
//! parts. Their upper-case names are a contract: the CLI prints them and scripts compare them.
//!
//! A part (one server's share of a job) is `STARTING` until its server accepted it, `RUNNING`
//! until it ended, then `FINISHED` with a result or an error. A job is `RUNNING` until every
//! server has accepted its part (or its part has ended), `PARTIAL` while parts still run,
//! `FINISHED` once every part has ended.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job stands as a whole (Func's `JOB_ID_RUNNING`, `JOB_ID_ASYNC_PARTIAL`,
/// `JOB_ID_ASYNC_FINISHED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobStatus {
    /// Its servers are not all known yet, or some have not accepted their parts yet.
    Running,
    /// Every part was accepted (or has ended); some still run.
    Partial,
    /// Every part has ended, with a result or an error each.
    Finished,
}

impl JobStatus {
    /// The contract name: `RUNNING`, `PARTIAL` or `FINISHED`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Running => "RUNNING",
            JobStatus::Partial => "PARTIAL",
            JobStatus::Finished => "FINISHED",
        }
    }

    /// The status of a job whose servers are `resolved` (known and recorded) and whose parts
    /// stand at `parts`. A resolved job without parts (no server matched) is finished.
    ///
    /// ```
    /// use tidings_jobs::{JobStatus, PartStatus};
    ///
    /// let of = |parts: &[PartStatus]| JobStatus::of(true, parts.iter().copied());
    /// assert_eq!(of(&[PartStatus::Starting, PartStatus::Finished]), JobStatus::Running);
    /// assert_eq!(of(&[PartStatus::Running, PartStatus::Finished]), JobStatus::Partial);
    /// assert_eq!(of(&[PartStatus::Finished, PartStatus::Finished]), JobStatus::Finished);
    /// assert_eq!(JobStatus::of(false, std::iter::empty()), JobStatus::Running);
    /// ```
    pub fn of(resolved: bool, parts: impl IntoIterator<Item = PartStatus>) -> JobStatus {
        if !resolved {
            return JobStatus::Running;
        }
        let mut all_finished = true;
        for part in parts {
            match part {
                PartStatus::Starting => return JobStatus::Running,
                PartStatus::Running => all_finished = false,
                PartStatus::Finished => {}
            }
        }
        if all_finished {
            JobStatus::Finished
        } else {
            JobStatus::Partial
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of the contract's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "RUNNING" => Ok(JobStatus::Running),
            "PARTIAL" => Ok(JobStatus::Partial),
            "FINISHED" => Ok(JobStatus::Finished),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

/// Where one server's part stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PartStatus {
    /// The part was asked of its server, which has not accepted it yet (caller side only).
    Starting,
    /// The server accepted the part and runs it.
    Running,
    /// The part ended with a result or an error.
    Finished,
}

impl PartStatus {
    /// The contract name: `STARTING`, `RUNNING` or `FINISHED`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            PartStatus::Starting => "STARTING",
            PartStatus::Running => "RUNNING",
            PartStatus::Finished => "FINISHED",
        }
    }
}

impl fmt::Display for PartStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PartStatus {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "STARTING" => Ok(PartStatus::Starting),
            "RUNNING" => Ok(PartStatus::Running),
            "FINISHED" => Ok(PartStatus::Finished),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for status in [JobStatus::Running, JobStatus::Partial, JobStatus::Finished] {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(serde_json::Value::from(status.as_str()))
            );
        }
        for status in [
            PartStatus::Starting,
            PartStatus::Running,
            PartStatus::Finished,
        ] {
            assert_eq!(status.as_str().parse::<PartStatus>(), Ok(status));
        }
    }

    #[test]
    fn a_resolved_job_without_parts_is_finished() {
        assert_eq!(JobStatus::of(true, []), JobStatus::Finished);
    }

    #[test]
    fn one_starting_part_keeps_the_job_running() {
        let parts = [
            PartStatus::Finished,
            PartStatus::Running,
            PartStatus::Starting,
        ];
        assert_eq!(JobStatus::of(true, parts), JobStatus::Running);
    }
}
