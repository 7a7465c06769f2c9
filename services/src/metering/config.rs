//! Configuration of `tidings meter`: one TOML file for every agent, flags on top.
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

use serde::{Deserialize, Serialize};

use super::polling::config::Source;

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
