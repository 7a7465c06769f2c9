//! What a job is asked to do ([`JobSpec`]): a method, its arguments, a topic and the servers to
//! run it on ([`Targets`]), with its timeouts ([`JobOptions`]). The options are recorded with
//! the job, so a caller that resumes it after a restart keeps the same limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tidings::{Context, Version};

use crate::error::JobError;

/// The most servers one job runs on.
pub const MAX_PARTS: usize = 4096;

/// Timeouts and bounds of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobOptions {
    /// How long a server has to accept its part (default 10 s); past it the part ends with
    /// `ServerUnreachable`.
    #[serde(with = "secs")]
    pub start_timeout: Duration,
    /// How long a server running a part may stay silent (default 30 s); past it the part ends
    /// with `ServerLost`. Servers answer every half of it while they work (oslo's call
    /// monitor), so a live server is never taken for dead however long its part runs.
    #[serde(with = "secs")]
    pub liveness_timeout: Duration,
    /// How long one part may run, from the moment it was asked (default: no limit for
    /// server-side jobs, one hour for plain calls).
    #[serde(with = "opt_secs", default)]
    pub part_timeout: Option<Duration>,
    /// How long the whole job may run (default: no limit).
    #[serde(with = "opt_secs", default)]
    pub job_timeout: Option<Duration>,
    /// How long discovery listens for servers announcing themselves (default 2 s).
    #[serde(with = "secs")]
    pub discovery_window: Duration,
    /// How long one `wait` request asks a server to hold it (default 20 s).
    #[serde(with = "secs")]
    pub poll_window: Duration,
    /// The largest result recorded per part, in bytes of JSON (default 1 MiB).
    pub max_result_bytes: usize,
}

/// The longest a plain call may run when no part timeout is given.
pub const DEFAULT_PLAIN_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            start_timeout: Duration::from_secs(10),
            liveness_timeout: Duration::from_secs(30),
            part_timeout: None,
            job_timeout: None,
            discovery_window: Duration::from_secs(2),
            poll_window: Duration::from_secs(20),
            max_result_bytes: 1024 * 1024,
        }
    }
}

/// Which servers a job runs on: names taken as given and globs matched against the servers
/// that announce themselves on the topic; empty for every server that announces itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    entries: Vec<String>,
}

impl Targets {
    /// Every server that announces itself on the topic.
    pub fn all() -> Self {
        Self::default()
    }

    /// A comma-separated list of names and globs (`*`, `?`); blanks around entries are
    /// ignored. An empty list means every server.
    ///
    /// ```
    /// use tidings_jobs::Targets;
    ///
    /// let targets = Targets::parse("web-1, compute-*,web-1");
    /// assert_eq!(targets.names(), ["web-1"]);
    /// assert_eq!(targets.globs(), ["compute-*"]);
    /// assert!(targets.needs_discovery());
    /// assert!(!Targets::parse("a,b").needs_discovery());
    /// ```
    pub fn parse(list: &str) -> Self {
        let mut entries: Vec<String> = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if !entries.iter().any(|e| e == entry) {
                entries.push(entry.to_owned());
            }
        }
        Self { entries }
    }

    /// The list as given, comma-separated.
    pub fn as_list(&self) -> String {
        self.entries.join(",")
    }

    /// The plain names, in the order given.
    pub fn names(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(String::as_str)
            .filter(|e| !is_glob(e))
            .collect()
    }

    /// The globs.
    pub fn globs(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(String::as_str)
            .filter(|e| is_glob(e))
            .collect()
    }

    /// Whether the servers on the topic must be discovered (a glob, or no list).
    pub fn needs_discovery(&self) -> bool {
        self.entries.is_empty() || self.entries.iter().any(|e| is_glob(e))
    }

    /// The servers to run on: the names as given, then the discovered servers that a glob
    /// matches (every discovered server when the list is empty), sorted, without repeats.
    pub fn resolve(&self, discovered: &[String]) -> Vec<String> {
        let mut servers: Vec<String> = self.names().into_iter().map(str::to_owned).collect();
        let globs = self.globs();
        let mut matched: Vec<&String> = discovered
            .iter()
            .filter(|server| self.entries.is_empty() || globs.iter().any(|g| glob_match(g, server)))
            .collect();
        matched.sort();
        for server in matched {
            if !servers.contains(server) {
                servers.push(server.clone());
            }
        }
        servers
    }
}

fn is_glob(entry: &str) -> bool {
    entry.contains(['*', '?'])
}

/// Shell-style matching of `name` against `pattern`: `*` any run of characters, `?` one.
///
/// ```
/// use tidings_jobs::spec::glob_match;
///
/// assert!(glob_match("web-*", "web-12"));
/// assert!(glob_match("*-?", "db-1"));
/// assert!(!glob_match("web-?", "web-12"));
/// ```
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point: linear in practice, never exponential.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// A job to start: `method` with `args` on `servers` of `topic`.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// The topic of the servers.
    pub topic: String,
    /// The exchange (default: the transport's control exchange).
    pub exchange: Option<String>,
    /// Which servers.
    pub servers: Targets,
    /// The method to run.
    pub method: String,
    /// Its keyword arguments.
    pub args: Map<String, Value>,
    /// The namespace of the method.
    pub namespace: Option<String>,
    /// The version requested.
    pub version: Option<Version>,
    /// The request context sent with every part. Its secret keys (`auth_token`, …) are never
    /// written to the store; a job resumed by another process starts its remaining parts
    /// without them.
    pub context: Context,
    /// Timeouts and bounds.
    pub options: JobOptions,
}

impl JobSpec {
    /// `method` without arguments on every server of `topic`, default options.
    pub fn new(topic: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            exchange: None,
            servers: Targets::all(),
            method: method.into(),
            args: Map::new(),
            namespace: None,
            version: None,
            context: Context::new(),
            options: JobOptions::default(),
        }
    }

    /// The keyword arguments, a JSON object (or null for none).
    pub fn args(mut self, args: Value) -> Result<Self, JobError> {
        self.args = match args {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                return Err(JobError::InvalidSpec(format!(
                    "the arguments must be a JSON object of keyword arguments, got {other}"
                )))
            }
        };
        Ok(self)
    }

    /// Runs on `servers`.
    #[must_use]
    pub fn servers(mut self, servers: Targets) -> Self {
        self.servers = servers;
        self
    }

    /// On `exchange`.
    #[must_use]
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// The method's namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The version requested.
    #[must_use]
    pub fn version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }

    /// The context sent with every part.
    #[must_use]
    pub fn context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    /// Timeouts and bounds.
    #[must_use]
    pub fn options(mut self, options: JobOptions) -> Self {
        self.options = options;
        self
    }

    pub(crate) fn check(&self) -> Result<(), JobError> {
        if self.topic.is_empty() {
            return Err(JobError::InvalidSpec("the topic is empty".to_owned()));
        }
        if self.method.is_empty() || self.method.starts_with('_') {
            return Err(JobError::InvalidSpec(format!(
                "{:?} is not a method that can be called",
                self.method
            )));
        }
        if self.servers.entries.len() > MAX_PARTS {
            return Err(JobError::InvalidSpec(format!(
                "{} servers named; a job runs on {MAX_PARTS} at most",
                self.servers.entries.len()
            )));
        }
        Ok(())
    }
}

/// Durations as seconds (a JSON number).
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(value.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// Optional durations as seconds or null.
mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => s.serialize_some(&value.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            Some(secs) => Duration::try_from_secs_f64(secs)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_first_then_matches_sorted_without_repeats() {
        let targets = Targets::parse("zeta,web-*");
        let discovered = ["web-2", "db-1", "web-1", "zeta"].map(str::to_owned);
        assert_eq!(targets.resolve(&discovered), ["zeta", "web-1", "web-2"]);
    }

    #[test]
    fn no_list_means_every_discovered_server() {
        let discovered = ["b", "a"].map(str::to_owned);
        assert_eq!(Targets::all().resolve(&discovered), ["a", "b"]);
    }

    #[test]
    fn a_glob_that_matches_nothing_adds_nothing() {
        let discovered = ["a".to_owned()];
        assert!(Targets::parse("x*").resolve(&discovered).is_empty());
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("??", "ab"));
        assert!(!glob_match("??", "abc"));
    }

    #[test]
    fn options_round_trip_through_json() {
        let options = JobOptions {
            part_timeout: Some(Duration::from_millis(1500)),
            ..JobOptions::default()
        };
        let text = serde_json::to_string(&options).unwrap();
        assert_eq!(serde_json::from_str::<JobOptions>(&text).unwrap(), options);
    }
}
