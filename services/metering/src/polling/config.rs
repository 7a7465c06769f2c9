//! What the polling agent needs ([`PollingConfig`]), and its sources, as Ceilometer's
//! `polling.yaml` has them: a name, an interval, and a list of meters that may use `*`
//! wildcards and `!name` exclusions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the polling agent needs.
#[derive(Clone, Debug, PartialEq)]
pub struct PollingConfig {
    /// Sources: name, interval, meters.
    pub sources: Vec<Source>,
    /// Samples per notification (Ceilometer's default 50; 0 means one per sample).
    pub batch_size: usize,
    /// Signs samples when set (Ceilometer's `telemetry_secret`).
    pub telemetry_secret: Option<String>,
    /// Name of this host, the resource id of host meters.
    pub host: String,
}

impl PollingConfig {
    /// One source polling every meter every `interval` seconds.
    pub fn every_meter(interval: u64, host: impl Into<String>) -> Self {
        Self {
            sources: vec![Source {
                name: "all_pollsters".to_owned(),
                interval,
                meters: vec!["*".to_owned()],
            }],
            batch_size: 50,
            telemetry_secret: None,
            host: host.into(),
        }
    }
}

/// One polling source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Unique name.
    pub name: String,
    /// Seconds between polls (> 0).
    pub interval: u64,
    /// Meter patterns: `*`, names with `*`/`?` wildcards, or `!name` exclusions.
    pub meters: Vec<String>,
}

/// Why a source was refused (Ceilometer's rules).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Two sources share a name.
    #[error("polling source {0:?} is defined twice")]
    DuplicateName(String),
    /// The interval is zero.
    #[error("polling source {0:?}: interval must be greater than zero")]
    ZeroInterval(String),
    /// No meters listed.
    #[error("polling source {0:?}: the meters list is empty")]
    NoMeters(String),
    /// Included and excluded meters mixed.
    #[error("polling source {0:?}: included and excluded meters cannot be mixed")]
    MixedMeters(String),
    /// `*` together with named meters.
    #[error("polling source {0:?}: '*' cannot be combined with named meters")]
    WildcardWithNames(String),
}

impl Source {
    /// The interval as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval)
    }

    /// Checks Ceilometer's rules for the meter list.
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.interval == 0 {
            return Err(SourceError::ZeroInterval(self.name.clone()));
        }
        if self.meters.is_empty() {
            return Err(SourceError::NoMeters(self.name.clone()));
        }
        let excluded = self.meters.iter().filter(|m| m.starts_with('!')).count();
        if excluded > 0 && excluded < self.meters.len() {
            return Err(SourceError::MixedMeters(self.name.clone()));
        }
        if self.meters.iter().any(|m| m == "*") && self.meters.len() > 1 {
            return Err(SourceError::WildcardWithNames(self.name.clone()));
        }
        Ok(())
    }

    /// Whether this source polls `meter`: exclusions first; only exclusions means everything
    /// else is in.
    pub fn wants(&self, meter: &str) -> bool {
        let mut only_exclusions = true;
        for pattern in &self.meters {
            if let Some(excluded) = pattern.strip_prefix('!') {
                if wildcard_match(excluded, meter) {
                    return false;
                }
            } else {
                only_exclusions = false;
            }
        }
        only_exclusions || self.meters.iter().any(|p| wildcard_match(p, meter))
    }
}

/// Checks a list of sources together.
pub fn validate_sources(sources: &[Source]) -> Result<(), SourceError> {
    for (i, source) in sources.iter().enumerate() {
        source.validate()?;
        if sources[..i].iter().any(|s| s.name == source.name) {
            return Err(SourceError::DuplicateName(source.name.clone()));
        }
    }
    Ok(())
}

/// fnmatch-style matching: `*` any run, `?` one character.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(meters: &[&str]) -> Source {
        Source {
            name: "s".into(),
            interval: 10,
            meters: meters.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn meter_filters_follow_ceilometer() {
        assert!(source(&["*"]).wants("cpu"));
        assert!(source(&["cpu", "memory.*"]).wants("memory.usage"));
        assert!(!source(&["cpu", "memory.*"]).wants("disk.device.read.bytes"));
        let excluding = source(&["!disk.*", "!load.1"]);
        assert!(excluding.wants("cpu"));
        assert!(!excluding.wants("disk.device.read.bytes"));
        assert!(!excluding.wants("load.1"));
        assert!(source(&["net?ork.*"]).wants("network.incoming.bytes"));
    }

    #[test]
    fn invalid_sources_are_refused() {
        assert_eq!(
            source(&[]).validate(),
            Err(SourceError::NoMeters("s".into()))
        );
        assert_eq!(
            source(&["cpu", "!disk"]).validate(),
            Err(SourceError::MixedMeters("s".into()))
        );
        assert_eq!(
            source(&["*", "cpu"]).validate(),
            Err(SourceError::WildcardWithNames("s".into()))
        );
        let mut zero = source(&["*"]);
        zero.interval = 0;
        assert!(zero.validate().is_err());
        assert!(
            validate_sources(&[source(&["*"]), source(&["cpu"])]).is_err(),
            "duplicate names"
        );
    }
}
