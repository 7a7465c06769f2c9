//! Configuration of the metering agents: one TOML file for every agent ([`MeterConfig`]),
//! command-line overrides on top ([`Overrides`]), resolved with the defaults into what an
//! agent's graph needs ([`AgentConfig`]).
//!
//! ```toml
//! url = "rabbit://guest:guest@127.0.0.1:5672/"
//! store = "sqlite:///var/lib/tidings/metering.db"
//! telemetry_secret = "change this for valid signing"
//!
//! [polling]
//! batch_size = 50
//! [[polling.sources]]
//! name = "host"
//! interval = 10
//! meters = ["*"]
//!
//! [evaluator]
//! evaluation_interval = 60
//!
//! [api]
//! listen = "127.0.0.1:8042"
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::url::Scheme;
use tidings::TransportUrl;

use crate::api::DEFAULT_LISTEN;
use crate::graph::Agent;
use crate::polling::config::Source;
use crate::polling::PollingConfig;
use crate::store;

/// The bus of an agent that is given none: within its own process only.
pub const IN_PROCESS_URL: &str = "memory://metering";

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Transport URL.
    pub url: Option<String>,
    /// Store URL (`sqlite://PATH`, `postgres://…`).
    pub store: Option<String>,
    /// Ceilometer's telemetry secret: samples are signed and checked with it when set.
    pub telemetry_secret: Option<String>,
    /// The polling agent.
    #[serde(default)]
    pub polling: PollingSection,
    /// The alarm evaluator.
    #[serde(default)]
    pub evaluator: EvaluatorSection,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiSection,
}

/// `[polling]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollingSection {
    /// Samples per notification.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Sources; default one source polling every meter every 10 s.
    #[serde(default)]
    pub sources: Vec<Source>,
}

impl Default for PollingSection {
    fn default() -> Self {
        Self {
            batch_size: default_batch(),
            sources: Vec::new(),
        }
    }
}

fn default_batch() -> usize {
    50
}

/// `[evaluator]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorSection {
    /// Seconds between evaluations of each alarm (default 60).
    pub evaluation_interval: Option<u64>,
}

/// `[api]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address to listen on (default 127.0.0.1:8042).
    pub listen: Option<SocketAddr>,
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path} is not a valid metering configuration: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What toml said (it names the line and the key).
        source: toml::de::Error,
    },
}

impl MeterConfig {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown,
            source,
        })
    }
}

/// Settings given on the command line; each wins over the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Transport URL.
    pub url: Option<String>,
    /// Store URL.
    pub store: Option<String>,
    /// Address of the HTTP API.
    pub listen: Option<SocketAddr>,
    /// Seconds between alarm evaluations.
    pub evaluation_interval: Option<u64>,
    /// Seconds between polls when the file names no source.
    pub polling_interval: Option<u64>,
}

/// Why the settings do not make a runnable agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// A split agent was given no transport URL.
    #[error("--url is required: the split agents talk over RabbitMQ (rabbit://…)")]
    MissingUrl,
    /// The transport URL does not parse.
    #[error("--url: {0}")]
    BadUrl(#[source] tidings::url::UrlError),
    /// A split agent was given a URL that cannot reach another process.
    #[error("{0} only reaches this process; the split agents need a rabbit:// URL (or run `tidings meter all-in-one`)")]
    InProcessUrl(TransportUrl),
}

/// Everything an agent's graph needs, resolved from file, overrides and defaults.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The bus.
    pub url: TransportUrl,
    /// The store's URL (may hold a password: show it through [`store::redact`]).
    pub store: String,
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Ceilometer's telemetry secret: samples are signed and checked with it when set.
    pub telemetry_secret: Option<String>,
    /// Time between alarm evaluations.
    pub evaluation_interval: Duration,
    /// What the polling agent polls.
    pub polling: PollingConfig,
}

impl MeterConfig {
    /// Resolves the settings of `agent`: overrides first, then the file, then the defaults.
    ///
    /// All-in-one runs on [`IN_PROCESS_URL`] and polls and evaluates every 5 s unless told
    /// otherwise; the split agents need a URL that reaches other processes, and poll every 10 s
    /// and evaluate every 60 s by default. The API never touches the bus, so it needs no URL.
    pub fn resolve(
        &self,
        agent: Agent,
        overrides: &Overrides,
    ) -> Result<AgentConfig, ResolveError> {
        let all_in_one = agent == Agent::AllInOne;
        let url = match overrides.url.clone().or(self.url.clone()) {
            Some(url) => url,
            None if all_in_one || agent == Agent::Api => IN_PROCESS_URL.to_owned(),
            None => return Err(ResolveError::MissingUrl),
        };
        let url: TransportUrl = url.parse().map_err(ResolveError::BadUrl)?;
        if !all_in_one && agent != Agent::Api && url.scheme() == Scheme::Memory {
            return Err(ResolveError::InProcessUrl(url));
        }
        let default_interval = if all_in_one { 5 } else { 10 };
        let mut sources = self.polling.sources.clone();
        if sources.is_empty() {
            sources.push(Source {
                name: "host".to_owned(),
                interval: overrides.polling_interval.unwrap_or(default_interval),
                meters: vec!["*".to_owned()],
            });
        }
        Ok(AgentConfig {
            url,
            store: overrides
                .store
                .clone()
                .or(self.store.clone())
                .unwrap_or_else(store::default_url),
            listen: overrides
                .listen
                .or(self.api.listen)
                .unwrap_or(DEFAULT_LISTEN),
            telemetry_secret: self.telemetry_secret.clone(),
            evaluation_interval: Duration::from_secs(
                overrides
                    .evaluation_interval
                    .or(self.evaluator.evaluation_interval)
                    .unwrap_or(if all_in_one { 5 } else { 60 })
                    .max(1),
            ),
            polling: PollingConfig {
                sources,
                batch_size: self.polling.batch_size,
                telemetry_secret: self.telemetry_secret.clone(),
                host: hostname(),
            },
        })
    }
}

/// This host's name (the resource id of host meters), `localhost` when unknown.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = "url = \"rabbit://h/\"\nstore = \"sqlite:///tmp/m.db\"\n[polling]\nbatch_size = 10\n[[polling.sources]]\nname = \"host\"\ninterval = 10\nmeters = [\"*\"]\n[evaluator]\nevaluation_interval = 5\n[api]\nlisten = \"127.0.0.1:9000\"\n";
        let config: MeterConfig = toml::from_str(text).unwrap();
        assert_eq!(config.polling.sources[0].interval, 10);
        assert_eq!(config.evaluator.evaluation_interval, Some(5));
        assert_eq!(config.api.listen.unwrap().port(), 9000);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = toml::from_str::<MeterConfig>("urll = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("urll"), "{error}");
    }
}
