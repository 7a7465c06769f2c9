//! Configuration of the metering agents: one [`MeterConfig`] for every agent, read from a TOML
//! file (`--config`) and from oslo-style INI files (`--config-file`, repeatable, later files
//! winning: see [`oslo`]), with command-line and environment overrides on top ([`Overrides`]),
//! resolved with the defaults into what an agent's graph needs ([`AgentConfig`]).
//!
//! Precedence, highest first: flags, `TIDINGS_*` environment variables, the INI files (last
//! first), the TOML file, the defaults. [`MeterConfig::load_files`] reads the files again on
//! each reload.
//!
//! ```toml
//! url = "rabbit://guest:guest@127.0.0.1:5672/"
//! store = "sqlite:///var/lib/tidings/metering.db"
//! telemetry_secret = "change this for valid signing"
//!
//! [database]
//! metering_time_to_live = 2592000          # seconds; -1 (default) keeps samples forever
//! rollup_periods = [3600, 86400]           # statistics periods answered from roll-ups
//! [database.meter_time_to_live]
//! "disk.read.bytes" = 604800               # per meter, overriding the default
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
//! auth_tokens_file = "/etc/tidings/tokens.json"   # re-read on SIGHUP
//! # keystone_url = "http://keystone:5000"         # validates tokens the file does not know
//! # keystone_service_token = "…"                  # or $TIDINGS_KEYSTONE_SERVICE_TOKEN
//! # insecure_no_auth = false                      # true: serve off loopback without auth
//!
//! [actions]
//! allow_networks = ["10.20.0.0/16"]   # webhooks may reach these, even when private
//! deny_networks = ["10.20.9.0/24"]    # never these
//! # deny_private = true               # default: on when the API authenticates
//!
//! [meter]                             # the notification agent's definitions (re-read on SIGHUP)
//! meter_definitions_dirs = ["/etc/ceilometer/meters.d"]   # default: the built-in meters.yaml
//!
//! [notification]                      # where it listens (default: Ceilometer's exchanges)
//! notification_control_exchanges = ["nova", "cinder", "glance", "neutron", "manila"]
//!
//! [notifier]                          # the alarm notifier (Aodh's names)
//! batch_size = 10
//! batch_timeout = 0.1                 # seconds
//! max_retries = 2                     # Aodh's rest_notifier_max_retries
//!
//! [oslo_messaging_rabbit]             # transport options by oslo's names (see the URL docs)
//! rabbit_quorum_queue = "true"
//!
//! [admin]                             # /metrics and /health (also --admin-listen)
//! listen = "127.0.0.1:9101"
//! # public = false                    # true: serve them beyond loopback
//! ```

pub mod oslo;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::url::Scheme;
use tidings::TransportUrl;

use crate::alarm_notifier::{ActionPolicy, Network};
use crate::api::{KeystoneConfig, DEFAULT_LISTEN};
use crate::graph::Agent;
use crate::notification::config::{MeterSection, NotificationConfig, NotificationSection};
use crate::polling::config::Source;
use crate::polling::PollingConfig;
use crate::secrets::Secret;
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
    /// How long samples live and which roll-ups the store keeps (Ceilometer's `[database]`).
    #[serde(default)]
    pub database: store::StoreLayout,
    /// The polling agent.
    #[serde(default)]
    pub polling: PollingSection,
    /// The alarm evaluator.
    #[serde(default)]
    pub evaluator: EvaluatorSection,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiSection,
    /// Which networks alarm actions may reach.
    #[serde(default)]
    pub actions: ActionsSection,
    /// Where the notification agent reads meter definitions (`meter_definitions_dirs`).
    #[serde(default)]
    pub meter: MeterSection,
    /// Where the notification agent listens (`notification_control_exchanges`, `topics`).
    #[serde(default)]
    pub notification: NotificationSection,
    /// The alarm notifier.
    #[serde(default)]
    pub notifier: NotifierSection,
    /// Transport options by oslo's names, added to the transport URL where it does not set
    /// them.
    #[serde(default)]
    pub oslo_messaging_rabbit: BTreeMap<String, String>,
    /// The admin listener (`/metrics`, `/health`).
    #[serde(default)]
    pub admin: AdminSection,
    /// Log filter (`info`, `debug`, or `tidings=debug,lapin=warn`); applied again on reload.
    pub log_level: Option<String>,
}

/// `[notifier]`: how the alarm notifier batches and sends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierSection {
    /// Notifications handled at once (Aodh's `[notifier] batch_size`; default 10).
    pub batch_size: Option<usize>,
    /// Seconds a batch waits to fill (Aodh's `[notifier] batch_timeout`; default 0.1).
    pub batch_timeout: Option<f64>,
    /// Retries of a failed webhook (Aodh's `rest_notifier_max_retries`; default 2, at most 10).
    pub max_retries: Option<u32>,
}

/// `[admin]`: where `/metrics` and `/health` are served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin listener (none by default).
    pub listen: Option<SocketAddr>,
    /// Serve them beyond loopback (they show counters and states, never secrets).
    pub public: Option<bool>,
}

/// `[polling]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollingSection {
    /// Samples per notification.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Ceilometer's `polling.yaml`, whose sources replace `sources` (read again on reload).
    pub cfg_file: Option<PathBuf>,
    /// Sources; default one source polling every meter every 10 s.
    #[serde(default)]
    pub sources: Vec<Source>,
}

impl Default for PollingSection {
    fn default() -> Self {
        Self {
            batch_size: default_batch(),
            cfg_file: None,
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
    /// The token file (see `api::auth`; its format is a contract), re-read on SIGHUP.
    pub auth_tokens_file: Option<PathBuf>,
    /// A Keystone-compatible identity service that validates the tokens the file does not
    /// know (`GET /v3/auth/tokens`).
    pub keystone_url: Option<String>,
    /// The service token the API validates with (or `$TIDINGS_KEYSTONE_SERVICE_TOKEN`).
    pub keystone_service_token: Option<Secret>,
    /// Seconds a validated token is cached (default 300).
    pub keystone_cache_ttl: Option<u64>,
    /// Tokens cached at most (default 1000).
    pub keystone_cache_size: Option<usize>,
    /// Serve without authentication on a non-loopback address.
    pub insecure_no_auth: Option<bool>,
}

/// `[actions]`: where alarm actions may send requests (see `alarm_notifier::policy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsSection {
    /// Networks always allowed, built-in denials included (CIDR).
    #[serde(default)]
    pub allow_networks: Vec<Network>,
    /// Networks always refused (CIDR).
    #[serde(default)]
    pub deny_networks: Vec<Network>,
    /// Refuse loopback, private and shared ranges (default: when the API authenticates).
    pub deny_private: Option<bool>,
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
    /// The file (an oslo-style INI file) holds a line or a value that cannot be used.
    #[error("{path} is not a valid configuration file: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the line or the key.
        reason: String,
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

impl MeterConfig {
    /// The configuration of the TOML file `toml` (if any) with the INI files `ini` laid over
    /// it in order. Keys of known sections that nothing reads are logged.
    pub fn load_files(toml: Option<&Path>, ini: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut config = match toml {
            Some(path) => Self::load(path)?,
            None => Self::default(),
        };
        for path in ini {
            let file = oslo::OsloFile::load(path)?;
            let ignored = file.ignored();
            if !ignored.is_empty() {
                tracing::info!(file = %path.display(), ignored = ?ignored, "options not used by tidings");
            }
            file.apply(&mut config)?;
        }
        Ok(config)
    }
}

/// Settings given on the command line; each wins over the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Transport URL.
    pub url: Option<String>,
    /// Store URL.
    pub store: Option<String>,
    /// Seconds samples live (Ceilometer's `metering_time_to_live`; ≤ 0 keeps them forever).
    pub metering_time_to_live: Option<i64>,
    /// Address of the HTTP API.
    pub listen: Option<SocketAddr>,
    /// Seconds between alarm evaluations.
    pub evaluation_interval: Option<u64>,
    /// Seconds between polls when the file names no source.
    pub polling_interval: Option<u64>,
    /// The token file.
    pub auth_tokens_file: Option<PathBuf>,
    /// The identity service's URL.
    pub keystone_url: Option<String>,
    /// The identity service's service token.
    pub keystone_service_token: Option<Secret>,
    /// Serve the API without authentication off loopback.
    pub insecure_no_auth: bool,
    /// More networks actions may reach.
    pub allow_action_networks: Vec<Network>,
    /// More networks actions may not reach.
    pub deny_action_networks: Vec<Network>,
    /// The notification agent's exchanges (`--control-exchange`, repeatable).
    pub control_exchanges: Vec<String>,
    /// The notification agent's definitions (`--meter-definitions`, repeatable).
    pub meter_definitions: Vec<PathBuf>,
    /// Address of the admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Serve the admin listener beyond loopback.
    pub admin_public: bool,
}

/// How the API authenticates, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// The token file, re-read on SIGHUP.
    pub tokens_file: Option<PathBuf>,
    /// The identity service.
    pub keystone: Option<KeystoneConfig>,
    /// Serve without authentication off loopback.
    pub insecure_no_auth: bool,
}

impl AuthSettings {
    /// Whether any source of tokens is configured.
    pub fn is_configured(&self) -> bool {
        self.tokens_file.is_some() || self.keystone.is_some()
    }
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
    /// The polling definitions file could not be used.
    #[error(transparent)]
    Polling(#[from] crate::polling::yaml::PollingFileError),
    /// A transport option from the configuration is not valid.
    #[error("[oslo_messaging_rabbit] {key} = {value:?}: {reason}")]
    RabbitOption {
        /// The option.
        key: String,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A split agent was given a URL that cannot reach another process.
    #[error("{0} only reaches this process; the split agents need a rabbit:// URL (or run `tidings meter all-in-one`)")]
    InProcessUrl(TransportUrl),
    /// The API would serve without authentication on a non-loopback address.
    #[error(transparent)]
    Unauthenticated(#[from] crate::api::StartError),
    /// An identity service without the token to validate with.
    #[error("keystone_url needs a service token: [api] keystone_service_token or $TIDINGS_KEYSTONE_SERVICE_TOKEN")]
    KeystoneWithoutToken,
}

/// Everything an agent's graph needs, resolved from file, overrides and defaults.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The bus.
    pub url: TransportUrl,
    /// The store's URL (may hold a password: show it through [`store::redact`]).
    pub store: String,
    /// How long samples live and which roll-ups the store keeps.
    pub database: store::StoreLayout,
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Ceilometer's telemetry secret: samples are signed and checked with it when set.
    pub telemetry_secret: Option<String>,
    /// Time between alarm evaluations.
    pub evaluation_interval: Duration,
    /// What the polling agent polls.
    pub polling: PollingConfig,
    /// Whether the store was named (flag or file) rather than defaulted: a split notifier reads
    /// alarms' actions from a store only when it was given one.
    pub store_given: bool,
    /// How the API authenticates.
    pub auth: AuthSettings,
    /// Where alarm actions may send requests.
    pub actions: ActionPolicy,
    /// The notification agent.
    pub notification: NotificationConfig,
    /// The alarm notifier's batching and retries.
    pub notifier: NotifierSettings,
    /// The admin listener's address, if it has one.
    pub admin_listen: Option<SocketAddr>,
    /// Whether the admin listener may serve beyond loopback.
    pub admin_public: bool,
    /// The log filter the configuration asks for.
    pub log_level: Option<String>,
}

/// The alarm notifier's settings that a reload can change.
#[derive(Clone, Debug, PartialEq)]
pub struct NotifierSettings {
    /// Notifications handled at once.
    pub batch_size: usize,
    /// Longest wait for a batch to fill.
    pub batch_timeout: Duration,
    /// Retries of a failed webhook.
    pub max_retries: u32,
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
        let mut url: TransportUrl = url.parse().map_err(ResolveError::BadUrl)?;
        for (key, value) in &self.oslo_messaging_rabbit {
            if !tidings::transport::amqp::KNOWN_OPTIONS.contains(&key.as_str()) {
                return Err(ResolveError::RabbitOption {
                    key: key.clone(),
                    value: value.clone(),
                    reason: "not an option of the transport".to_owned(),
                });
            }
            if url.option(key).is_none() && url.scheme() != Scheme::Memory {
                url = url.with_option(key.clone(), value.clone());
            }
        }
        if !all_in_one && agent != Agent::Api && url.scheme() == Scheme::Memory {
            return Err(ResolveError::InProcessUrl(url));
        }
        let default_interval = if all_in_one { 5 } else { 10 };
        let mut sources = match &self.polling.cfg_file {
            Some(path) => crate::polling::yaml::load_sources(path)?,
            None => self.polling.sources.clone(),
        };
        if sources.is_empty() {
            sources.push(Source {
                name: "host".to_owned(),
                interval: overrides.polling_interval.unwrap_or(default_interval),
                meters: vec!["*".to_owned()],
            });
        }
        let named_store = overrides.store.clone().or(self.store.clone());
        let listen = overrides
            .listen
            .or(self.api.listen)
            .unwrap_or(DEFAULT_LISTEN);
        let auth = self.auth_settings(overrides)?;
        if matches!(agent, Agent::AllInOne | Agent::Api)
            && !auth.is_configured()
            && !auth.insecure_no_auth
            && !listen.ip().is_loopback()
        {
            return Err(crate::api::StartError::Unauthenticated(listen).into());
        }
        let actions = ActionPolicy {
            allow: [
                self.actions.allow_networks.as_slice(),
                &overrides.allow_action_networks,
            ]
            .concat(),
            deny: [
                self.actions.deny_networks.as_slice(),
                &overrides.deny_action_networks,
            ]
            .concat(),
            strict: self.actions.deny_private.unwrap_or(auth.is_configured()),
        };
        let mut database = self.database.clone();
        if let Some(ttl) = overrides.metering_time_to_live {
            database.metering_time_to_live = ttl;
        }
        Ok(AgentConfig {
            url,
            database,
            store_given: named_store.is_some(),
            store: named_store.unwrap_or_else(store::default_url),
            listen,
            auth,
            actions,
            telemetry_secret: self.telemetry_secret.clone(),
            evaluation_interval: Duration::from_secs(
                overrides
                    .evaluation_interval
                    .or(self.evaluator.evaluation_interval)
                    .unwrap_or(if all_in_one { 5 } else { 60 })
                    .max(1),
            ),
            notification: NotificationConfig::resolve(
                &self.meter,
                &self.notification,
                &overrides.control_exchanges,
                &overrides.meter_definitions,
                self.telemetry_secret.clone(),
                hostname(),
            ),
            notifier: self.notifier_settings(),
            admin_listen: overrides.admin_listen.or(self.admin.listen),
            admin_public: overrides.admin_public || self.admin.public.unwrap_or(false),
            log_level: self.log_level.clone(),
            polling: PollingConfig {
                sources,
                batch_size: self.polling.batch_size,
                telemetry_secret: self.telemetry_secret.clone(),
                host: hostname(),
            },
        })
    }
}

impl MeterConfig {
    fn notifier_settings(&self) -> NotifierSettings {
        let defaults = crate::alarm_notifier::NotifierConfig::default();
        let section = &self.notifier;
        NotifierSettings {
            batch_size: section.batch_size.unwrap_or(defaults.batch_size).max(1),
            batch_timeout: section
                .batch_timeout
                .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
                .map_or(defaults.batch_timeout, |seconds| {
                    Duration::from_secs_f64(seconds.min(60.0))
                }),
            max_retries: section
                .max_retries
                .unwrap_or(defaults.http.max_retries)
                .min(crate::alarm_notifier::actions::MAX_HTTP_RETRIES),
        }
    }

    fn auth_settings(&self, overrides: &Overrides) -> Result<AuthSettings, ResolveError> {
        let keystone_url = overrides
            .keystone_url
            .clone()
            .or(self.api.keystone_url.clone());
        let keystone = match keystone_url {
            None => None,
            Some(url) => {
                let token = overrides
                    .keystone_service_token
                    .clone()
                    .or(self.api.keystone_service_token.clone())
                    .ok_or(ResolveError::KeystoneWithoutToken)?;
                let mut config = KeystoneConfig::new(url, token.expose());
                if let Some(ttl) = self.api.keystone_cache_ttl {
                    config.cache_ttl = Duration::from_secs(ttl);
                }
                if let Some(size) = self.api.keystone_cache_size {
                    config.cache_size = size;
                }
                Some(config)
            }
        };
        Ok(AuthSettings {
            tokens_file: overrides
                .auth_tokens_file
                .clone()
                .or(self.api.auth_tokens_file.clone()),
            keystone,
            insecure_no_auth: overrides.insecure_no_auth
                || self.api.insecure_no_auth.unwrap_or(false),
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
    fn auth_and_action_settings_resolve() {
        let text = "[api]\nlisten = \"0.0.0.0:8042\"\nauth_tokens_file = \"/etc/t.json\"\n\
                    [actions]\nallow_networks = [\"10.1.0.0/16\"]\ndeny_networks = [\"10.1.9.0/24\"]\n";
        let config: MeterConfig = toml::from_str(text).unwrap();
        let resolved = config.resolve(Agent::Api, &Overrides::default()).unwrap();
        assert_eq!(
            resolved.auth.tokens_file.as_deref(),
            Some(Path::new("/etc/t.json"))
        );
        assert!(resolved.actions.strict, "strict once the API authenticates");
        assert_eq!(resolved.actions.allow[0].to_string(), "10.1.0.0/16");
        assert_eq!(resolved.actions.deny[0].to_string(), "10.1.9.0/24");
        assert!(
            toml::from_str::<MeterConfig>("[actions]\nallow_networks = [\"10.0.0.0/99\"]").is_err()
        );
    }

    #[test]
    fn no_auth_off_loopback_needs_the_insecure_flag() {
        let open = Overrides {
            listen: Some("0.0.0.0:8042".parse().unwrap()),
            ..Overrides::default()
        };
        let error = MeterConfig::default()
            .resolve(Agent::Api, &open)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--insecure-no-auth"), "{error}");
        let insecure = Overrides {
            insecure_no_auth: true,
            ..open.clone()
        };
        let resolved = MeterConfig::default()
            .resolve(Agent::Api, &insecure)
            .unwrap();
        assert!(!resolved.actions.strict);
        // Agents without the API do not care where it would listen.
        assert!(MeterConfig::default()
            .resolve(
                Agent::Notifier,
                &Overrides {
                    url: Some("rabbit://h/".into()),
                    ..open
                }
            )
            .is_ok());
    }

    #[test]
    fn an_identity_service_needs_a_service_token_which_never_shows() {
        let keystone = Overrides {
            keystone_url: Some("http://keystone:5000".into()),
            ..Overrides::default()
        };
        assert!(matches!(
            MeterConfig::default().resolve(Agent::Api, &keystone),
            Err(ResolveError::KeystoneWithoutToken)
        ));
        let with_token = Overrides {
            keystone_service_token: Some(Secret::new("svc-s3cret")),
            ..keystone
        };
        let resolved = MeterConfig::default()
            .resolve(Agent::Api, &with_token)
            .unwrap();
        assert!(resolved.auth.keystone.is_some());
        assert!(!format!("{resolved:?} {with_token:?}").contains("svc-s3cret"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = toml::from_str::<MeterConfig>("urll = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("urll"), "{error}");
    }
}
