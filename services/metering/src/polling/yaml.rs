//! Ceilometer's `polling.yaml`, read as it is: a list of `sources:`, each with a `name`, an
//! `interval` in seconds and `meters` (names, `*` wildcards, `!name` exclusions). Ceilometer's
//! `resources` and `discovery` keys are accepted and ignored (this agent polls its own host's
//! meters); other keys are refused, naming the key, as a typo would otherwise pass unseen.
//!
//! The sources are checked by Ceilometer's rules ([`validate_sources`]).

use std::path::Path;

use serde::Deserialize;

use super::config::{validate_sources, Source, SourceError};

/// The longest `polling.yaml` read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a `polling.yaml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PollingFileError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a polling definition.
    #[error("{path} is not a valid polling.yaml: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the key or line.
        reason: String,
    },
    /// A source breaks Ceilometer's rules.
    #[error("{path}: {source}")]
    Source {
        /// The file.
        path: String,
        /// The rule broken.
        source: SourceError,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PollingFile {
    sources: Vec<YamlSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlSource {
    name: String,
    interval: u64,
    #[serde(default)]
    meters: Vec<String>,
    #[serde(default, rename = "resources")]
    _resources: Option<yaml_serde::Value>,
    #[serde(default, rename = "discovery")]
    _discovery: Option<yaml_serde::Value>,
}

/// The sources of the `polling.yaml` at `path`.
pub fn load_sources(path: &Path) -> Result<Vec<Source>, PollingFileError> {
    let shown = path.display().to_string();
    let read = |source| PollingFileError::Read {
        path: shown.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > MAX_FILE_BYTES {
        return Err(PollingFileError::Invalid {
            path: shown,
            reason: format!("{size} bytes, more than the {MAX_FILE_BYTES} allowed"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse_sources(&shown, &text)
}

/// The sources of a `polling.yaml`'s text (`path` names it in errors).
pub fn parse_sources(path: &str, text: &str) -> Result<Vec<Source>, PollingFileError> {
    let file: PollingFile =
        yaml_serde::from_str(text).map_err(|error| PollingFileError::Invalid {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    let sources: Vec<Source> = file
        .sources
        .into_iter()
        .map(|source| Source {
            name: source.name,
            interval: source.interval,
            meters: source.meters,
        })
        .collect();
    validate_sources(&sources).map_err(|source| PollingFileError::Source {
        path: path.to_owned(),
        source,
    })?;
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilometers_own_file_reads_as_it_is() {
        let text = "---\nsources:\n    - name: some_pollsters\n      interval: 300\n      meters:\n        - cpu\n        - memory.usage\n    - name: others\n      interval: 60\n      meters:\n        - \"!disk.*\"\n      resources:\n        - snmp://host\n";
        let sources = parse_sources("polling.yaml", text).unwrap();
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].interval, 300);
        assert_eq!(sources[0].meters, ["cpu", "memory.usage"]);
        assert!(sources[1].wants("cpu") && !sources[1].wants("disk.read.bytes"));
    }

    #[test]
    fn broken_rules_and_unknown_keys_are_named() {
        let mixed = "sources:\n  - name: s\n    interval: 10\n    meters: [cpu, \"!disk\"]\n";
        let error = parse_sources("p.yaml", mixed).unwrap_err().to_string();
        assert!(error.contains("cannot be mixed"), "{error}");
        let typo = "sources:\n  - name: s\n    intervall: 10\n    meters: [cpu]\n";
        let error = parse_sources("p.yaml", typo).unwrap_err().to_string();
        assert!(error.contains("intervall"), "{error}");
    }
}
