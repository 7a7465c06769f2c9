//! Configuration files as OpenStack operators write them (`ceilometer.conf`, `aodh.conf`): the
//! INI dialect of oslo.config, read into the same [`MeterConfig`] as the TOML file, so that
//! `--config-file` files and `--config` overlay one another.
//!
//! The dialect, as oslo.config's parser reads it: `[section]` headers; `key = value` or
//! `key: value`; lines starting with `#` or `;` are comments; an indented line continues the
//! value above it; a key given twice keeps both values (oslo's multi-valued options), and list
//! options also split on commas.
//!
//! What is read, by oslo's and Ceilometer's or Aodh's names (see [`OsloFile::apply`]):
//!
//! | section | keys |
//! |---|---|
//! | `[DEFAULT]` | `transport_url`, `debug`, `log_level`, `evaluation_interval`, `rest_notifier_max_retries`, `sample_source` |
//! | `[oslo_messaging_rabbit]` | the options the transport knows (`heartbeat_timeout_threshold` as `heartbeat`) |
//! | `[database]` | `connection` (SQLAlchemy URLs: `sqlite:////abs/path`, `postgresql+psycopg2://…`), `metering_time_to_live` (seconds) |
//! | `[publisher]` | `telemetry_secret` |
//! | `[api]` | `host`, `port`, `auth_tokens_file`, `keystone_url`, `insecure_no_auth` |
//! | `[evaluator]` | `evaluation_interval` |
//! | `[notifier]` | `batch_size`, `batch_timeout`, `allow_networks`, `deny_networks`, `deny_private` |
//! | `[polling]` | `cfg_file` (Ceilometer's `polling.yaml`), `batch_size` |
//! | `[meter]` | `meter_definitions_dirs` |
//! | `[notification]` | `notification_control_exchanges`, `batch_size` |
//! | `[admin]` | `listen`, `public` |
//!
//! Everything else is left alone, as oslo.config leaves options no code registered: a real
//! `ceilometer.conf` holds sections for other services (`[keystone_authtoken]`,
//! `[service_credentials]`…). Keys this module does not know in the sections above are
//! reported by [`OsloFile::ignored`], so a typo is seen in the log.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{ConfigError, MeterConfig};
use crate::secrets::Secret;

/// The longest configuration file read, a bound on what a mistaken path (a log, a device) can
/// cost.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The sections this module reads.
const KNOWN_SECTIONS: &[&str] = &[
    "DEFAULT",
    "oslo_messaging_rabbit",
    "database",
    "publisher",
    "api",
    "evaluator",
    "notifier",
    "polling",
    "meter",
    "notification",
    "admin",
];

/// One parsed file: per section, its keys in order with every value given.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OsloFile {
    path: PathBuf,
    sections: BTreeMap<String, Vec<(String, String)>>,
}

impl OsloFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let read = |source| ConfigError::Read {
            path: shown.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_FILE_BYTES {
            return Err(ConfigError::Invalid {
                path: shown,
                reason: format!(
                    "{size} bytes, more than the {MAX_FILE_BYTES} a configuration file may have"
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(path, &text)
    }

    /// Parses `text` (read from `path`, which errors name).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let invalid = |line: usize, reason: &str| ConfigError::Invalid {
            path: path.display().to_string(),
            reason: format!("line {line}: {reason}"),
        };
        let mut file = Self {
            path: path.to_owned(),
            sections: BTreeMap::new(),
        };
        let mut section: Option<String> = None;
        // The key whose value an indented line continues.
        let mut continuing = false;
        for (index, raw) in text.lines().enumerate() {
            let line_number = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continuing = false;
                continue;
            }
            if trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if raw.starts_with(char::is_whitespace) && continuing {
                if let Some(entries) = section.as_ref().and_then(|s| file.sections.get_mut(s)) {
                    if let Some((_, value)) = entries.last_mut() {
                        value.push('\n');
                        value.push_str(trimmed);
                    }
                }
                continue;
            }
            if let Some(header) = trimmed.strip_prefix('[') {
                let name = header
                    .strip_suffix(']')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .ok_or_else(|| invalid(line_number, "a section header is `[name]`"))?;
                file.sections.entry(name.to_owned()).or_default();
                section = Some(name.to_owned());
                continuing = false;
                continue;
            }
            let Some(current) = &section else {
                return Err(invalid(line_number, "a key before any [section]"));
            };
            let split = trimmed
                .find(['=', ':'])
                .ok_or_else(|| invalid(line_number, "expected `key = value`"))?;
            let key = trimmed[..split].trim();
            if key.is_empty() {
                return Err(invalid(line_number, "a value without a key"));
            }
            let value = unquote(trimmed[split + 1..].trim());
            file.sections
                .entry(current.clone())
                .or_default()
                .push((key.to_owned(), value.to_owned()));
            continuing = true;
        }
        Ok(file)
    }

    /// The last value of `key` in `section`.
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)?
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a list option: repeated keys, each split on commas, blanks dropped.
    fn list(&self, section: &str, key: &str) -> Option<Vec<String>> {
        let entries = self.sections.get(section)?;
        let mut found = false;
        let mut items = Vec::new();
        for (k, value) in entries {
            if k == key {
                found = true;
                items.extend(
                    value
                        .split([',', '\n'])
                        .map(str::trim)
                        .filter(|item| !item.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        found.then_some(items)
    }

    fn parsed<T: FromStr>(&self, section: &str, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(section, key)
            .map(|value| {
                value.parse().map_err(|error| ConfigError::Invalid {
                    path: self.path.display().to_string(),
                    reason: format!("[{section}] {key} = {value:?}: {error}"),
                })
            })
            .transpose()
    }

    fn boolean(&self, section: &str, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(section, key)
            .map(|value| match value.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                _ => Err(ConfigError::Invalid {
                    path: self.path.display().to_string(),
                    reason: format!("[{section}] {key} = {value:?}: expected true or false"),
                }),
            })
            .transpose()
    }

    /// Keys of the sections this module reads that it does not know, as `[section] key`.
    pub fn ignored(&self) -> Vec<String> {
        let mut ignored = Vec::new();
        for (section, entries) in &self.sections {
            if !KNOWN_SECTIONS.contains(&section.as_str()) {
                continue;
            }
            for (key, _) in entries {
                if !is_known_key(section, key) {
                    ignored.push(format!("[{section}] {key}"));
                }
            }
        }
        ignored.dedup();
        ignored
    }

    /// Lays this file's settings over `config`: what the file sets wins, what it does not set
    /// stays.
    pub fn apply(&self, config: &mut MeterConfig) -> Result<(), ConfigError> {
        if let Some(url) = self.get("DEFAULT", "transport_url") {
            config.url = Some(url.to_owned());
        }
        if let Some(level) = self.get("DEFAULT", "log_level") {
            config.log_level = Some(level.to_owned());
        } else if let Some(debug) = self.boolean("DEFAULT", "debug")? {
            config.log_level = Some(if debug { "debug" } else { "warn" }.to_owned());
        }
        if let Some(interval) = self.parsed("DEFAULT", "evaluation_interval")? {
            config.evaluator.evaluation_interval = Some(interval);
        }
        if let Some(interval) = self.parsed("evaluator", "evaluation_interval")? {
            config.evaluator.evaluation_interval = Some(interval);
        }
        if let Some(retries) = self.parsed("DEFAULT", "rest_notifier_max_retries")? {
            config.notifier.max_retries = Some(retries);
        }
        if let Some(source) = self.get("DEFAULT", "sample_source") {
            config.notification.sample_source = Some(source.to_owned());
        }
        if let Some(entries) = self.sections.get("oslo_messaging_rabbit") {
            for (key, value) in entries {
                let key = rabbit_option_name(key);
                if tidings::transport::amqp::KNOWN_OPTIONS.contains(&key) {
                    config
                        .oslo_messaging_rabbit
                        .insert(key.to_owned(), value.clone());
                }
            }
        }
        if let Some(connection) = self.get("database", "connection") {
            config.store = Some(store_url_from_sqlalchemy(connection).map_err(|reason| {
                ConfigError::Invalid {
                    path: self.path.display().to_string(),
                    reason: format!("[database] connection: {reason}"),
                }
            })?);
        }
        if let Some(ttl) = self.parsed("database", "metering_time_to_live")? {
            config.database.metering_time_to_live = ttl;
        }
        if let Some(secret) = self.get("publisher", "telemetry_secret") {
            config.telemetry_secret = Some(secret.to_owned());
        }
        self.apply_api(config)?;
        if let Some(size) = self.parsed("notifier", "batch_size")? {
            config.notifier.batch_size = Some(size);
        }
        if let Some(seconds) = self.parsed("notifier", "batch_timeout")? {
            config.notifier.batch_timeout = Some(seconds);
        }
        if let Some(networks) = self.list("notifier", "allow_networks") {
            config.actions.allow_networks = self.networks("allow_networks", networks)?;
        }
        if let Some(networks) = self.list("notifier", "deny_networks") {
            config.actions.deny_networks = self.networks("deny_networks", networks)?;
        }
        if let Some(deny) = self.boolean("notifier", "deny_private")? {
            config.actions.deny_private = Some(deny);
        }
        if let Some(file) = self.get("polling", "cfg_file") {
            config.polling.cfg_file = Some(self.relative(file));
        }
        if let Some(size) = self.parsed("polling", "batch_size")? {
            config.polling.batch_size = size;
        }
        if let Some(dirs) = self.list("meter", "meter_definitions_dirs") {
            config.meter.meter_definitions_dirs =
                dirs.iter().map(|dir| self.relative(dir)).collect();
        }
        if let Some(exchanges) = self.list("notification", "notification_control_exchanges") {
            config.notification.notification_control_exchanges = exchanges;
        }
        if let Some(size) = self.parsed("notification", "batch_size")? {
            config.notification.batch_size = Some(size);
        }
        if let Some(listen) = self.parsed("admin", "listen")? {
            config.admin.listen = Some(listen);
        }
        if let Some(public) = self.boolean("admin", "public")? {
            config.admin.public = Some(public);
        }
        Ok(())
    }

    fn apply_api(&self, config: &mut MeterConfig) -> Result<(), ConfigError> {
        let host: Option<IpAddr> = self.parsed("api", "host")?;
        let port: Option<u16> = self.parsed("api", "port")?;
        if host.is_some() || port.is_some() {
            let default = config.api.listen.unwrap_or(crate::api::DEFAULT_LISTEN);
            config.api.listen = Some(SocketAddr::new(
                host.unwrap_or(default.ip()),
                port.unwrap_or(default.port()),
            ));
        }
        if let Some(file) = self.get("api", "auth_tokens_file") {
            config.api.auth_tokens_file = Some(self.relative(file));
        }
        if let Some(url) = self.get("api", "keystone_url") {
            config.api.keystone_url = Some(url.to_owned());
        }
        if let Some(token) = self.get("api", "keystone_service_token") {
            config.api.keystone_service_token = Some(Secret::new(token));
        }
        if let Some(insecure) = self.boolean("api", "insecure_no_auth")? {
            config.api.insecure_no_auth = Some(insecure);
        }
        Ok(())
    }

    fn networks(
        &self,
        key: &str,
        items: Vec<String>,
    ) -> Result<Vec<crate::alarm_notifier::Network>, ConfigError> {
        items
            .iter()
            .map(|item| {
                item.parse().map_err(|error| ConfigError::Invalid {
                    path: self.path.display().to_string(),
                    reason: format!("[notifier] {key}: {item:?}: {error}"),
                })
            })
            .collect()
    }

    /// A path named in the file: relative ones are taken from the file's directory, as
    /// oslo.config finds `polling.yaml` beside `ceilometer.conf`.
    fn relative(&self, named: &str) -> PathBuf {
        let named = Path::new(named);
        match self.path.parent() {
            Some(dir) if named.is_relative() => dir.join(named),
            _ => named.to_owned(),
        }
    }
}

/// The name under which the transport knows an `[oslo_messaging_rabbit]` option.
fn rabbit_option_name(key: &str) -> &str {
    match key {
        "heartbeat_timeout_threshold" => "heartbeat",
        other => other,
    }
}

fn is_known_key(section: &str, key: &str) -> bool {
    let known: &[&str] = match section {
        "DEFAULT" => &[
            "transport_url",
            "debug",
            "log_level",
            "evaluation_interval",
            "rest_notifier_max_retries",
            "sample_source",
        ],
        "oslo_messaging_rabbit" => {
            return tidings::transport::amqp::KNOWN_OPTIONS.contains(&rabbit_option_name(key))
        }
        "database" => &["connection", "metering_time_to_live"],
        "publisher" => &["telemetry_secret"],
        "api" => &[
            "host",
            "port",
            "auth_tokens_file",
            "keystone_url",
            "keystone_service_token",
            "insecure_no_auth",
        ],
        "evaluator" => &["evaluation_interval"],
        "notifier" => &[
            "batch_size",
            "batch_timeout",
            "allow_networks",
            "deny_networks",
            "deny_private",
        ],
        "polling" => &["cfg_file", "batch_size"],
        "meter" => &["meter_definitions_dirs"],
        "notification" => &["notification_control_exchanges", "batch_size"],
        "admin" => &["listen", "public"],
        _ => &[],
    };
    known.contains(&key)
}

/// oslo.config strips one pair of matching quotes around a value.
fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

/// The store URL for an SQLAlchemy database URL, as Ceilometer's `[database] connection` has
/// it: `sqlite:////abs/path` (four slashes: absolute) and `sqlite:///rel/path` become
/// `sqlite:///abs/path` and `sqlite://rel/path`; `postgresql+DRIVER://` drops its driver.
/// MySQL is refused: tidings stores in SQLite or PostgreSQL.
pub fn store_url_from_sqlalchemy(connection: &str) -> Result<String, String> {
    let (scheme, rest) = connection
        .split_once("://")
        .ok_or_else(|| "expected a database URL such as postgresql://user@host/db".to_owned())?;
    let dialect = scheme.split('+').next().unwrap_or(scheme);
    match dialect {
        "sqlite" => match rest.strip_prefix('/') {
            _ if rest.is_empty() => Ok("sqlite::memory:".to_owned()),
            Some(path) if !path.is_empty() => Ok(format!("sqlite://{path}")),
            _ => Err(
                "an SQLite URL is sqlite:////absolute/path or sqlite:///relative/path".to_owned(),
            ),
        },
        "postgresql" | "postgres" => Ok(format!("postgresql://{rest}")),
        other => Err(format!(
            "{other} databases are not supported: use PostgreSQL (postgresql://…) or SQLite (sqlite:////path)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> OsloFile {
        OsloFile::parse(Path::new("/etc/ceilometer/ceilometer.conf"), text).unwrap()
    }

    #[test]
    fn a_ceilometer_conf_sets_what_it_names_and_nothing_else() {
        let file = parse(
            "[DEFAULT]\n\
             transport_url = rabbit://ceilometer:s3cret@rabbit:5672/\n\
             debug = True\n\
             # a comment\n\
             [database]\n\
             connection = postgresql+psycopg2://ceilometer@db/ceilometer\n\
             metering_time_to_live = 2592000\n\
             [publisher]\n\
             telemetry_secret = \"abc\"\n\
             [polling]\n\
             cfg_file = polling.yaml\n\
             [keystone_authtoken]\n\
             password = other-service\n",
        );
        let mut config = MeterConfig::default();
        file.apply(&mut config).unwrap();
        assert_eq!(
            config.url.as_deref(),
            Some("rabbit://ceilometer:s3cret@rabbit:5672/")
        );
        assert_eq!(
            config.store.as_deref(),
            Some("postgresql://ceilometer@db/ceilometer")
        );
        assert_eq!(config.telemetry_secret.as_deref(), Some("abc"));
        assert_eq!(config.database.metering_time_to_live, 2_592_000);
        assert_eq!(config.log_level.as_deref(), Some("debug"));
        assert_eq!(
            config.polling.cfg_file.as_deref(),
            Some(Path::new("/etc/ceilometer/polling.yaml"))
        );
        assert!(file.ignored().is_empty(), "{:?}", file.ignored());
    }

    #[test]
    fn repeated_keys_and_commas_make_lists_and_indented_lines_continue() {
        let file = parse(
            "[meter]\nmeter_definitions_dirs = /a,/b\nmeter_definitions_dirs = /c\n\
             [notification]\nnotification_control_exchanges = nova\n  cinder\n",
        );
        let mut config = MeterConfig::default();
        file.apply(&mut config).unwrap();
        assert_eq!(
            config.meter.meter_definitions_dirs,
            [Path::new("/a"), Path::new("/b"), Path::new("/c")]
        );
        assert_eq!(
            config.notification.notification_control_exchanges,
            ["nova", "cinder"]
        );
    }

    #[test]
    fn rabbit_options_take_the_transports_names() {
        let file = parse(
            "[oslo_messaging_rabbit]\nheartbeat_timeout_threshold = 30\nrabbit_quorum_queue = true\nrabbit_ha_queues = true\n",
        );
        let mut config = MeterConfig::default();
        file.apply(&mut config).unwrap();
        assert_eq!(
            config
                .oslo_messaging_rabbit
                .get("heartbeat")
                .map(String::as_str),
            Some("30")
        );
        assert_eq!(
            config
                .oslo_messaging_rabbit
                .get("rabbit_quorum_queue")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(file.ignored(), ["[oslo_messaging_rabbit] rabbit_ha_queues"]);
    }

    #[test]
    fn sqlalchemy_urls_become_store_urls() {
        assert_eq!(
            store_url_from_sqlalchemy("sqlite:////var/lib/m.db").unwrap(),
            "sqlite:///var/lib/m.db"
        );
        assert_eq!(
            store_url_from_sqlalchemy("sqlite:///m.db").unwrap(),
            "sqlite://m.db"
        );
        assert_eq!(
            store_url_from_sqlalchemy("postgresql://u:p@h/db").unwrap(),
            "postgresql://u:p@h/db"
        );
        let error = store_url_from_sqlalchemy("mysql+pymysql://u:p@h/db").unwrap_err();
        assert!(error.contains("mysql") && !error.contains("u:p"), "{error}");
    }

    #[test]
    fn malformed_lines_name_their_line_and_bad_values_their_key() {
        let error = OsloFile::parse(Path::new("x.conf"), "[DEFAULT]\njust words\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2"), "{error}");
        let file = parse("[evaluator]\nevaluation_interval = soon\n");
        let error = file
            .apply(&mut MeterConfig::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("evaluation_interval"), "{error}");
    }
}
