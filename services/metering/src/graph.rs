//! The agents' graphs: the names of the metering manifolds, and which manifolds each agent
//! runs with which settings. This is the one place that names a manifold; each manifold
//! declares its inputs by these names through its `…Inputs` default.
//!
//! | agent        | manifolds                                                    |
//! |--------------|--------------------------------------------------------------|
//! | `all-in-one` | transport, store, polling, notification, collector, evaluator, notifier, api, observer |
//! | `polling`    | transport, polling                                           |
//! | `notification` | transport, notification (OpenStack's notifications to samples) |
//! | `collector`  | transport, store, collector                                  |
//! | `evaluator`  | transport, store, evaluator                                  |
//! | `notifier`   | transport, notifier (and store, when one is named)           |
//! | `api`        | store, api                                                   |
//!
//! The engine, the launcher and the process (signals, exit codes, output) are the caller's; the
//! caller hands in the launcher's handle on the token file, so that SIGHUP reaches the API.

use std::sync::Arc;

use serde_json::json;
use tidings_runtime::{ConfigHandle, Engine, InstallError, Manifold};

use crate::alarm_notifier::{self, NotifierConfig, NotifierInputs};
use crate::api::{self, ApiConfig, ApiInputs, Authenticator, StatusFn, TokenTable};
use crate::collector::{self, CollectorConfig, CollectorInputs};
use crate::config::AgentConfig;
use crate::evaluator::{self, EvaluatorConfig, EvaluatorInputs};
use crate::notification::{self, NotificationInputs};
use crate::observer::{self, ObserverConfig, ObserverInputs};
use crate::polling::{self, PollingInputs};
use crate::store::{self, StoreConfig, StoreError};
use crate::transport::{self, TransportConfig};

/// The bus: offers a `tidings::Transport`.
pub const TRANSPORT: &str = "transport";
/// The store: offers an `Arc<dyn Store>`.
pub const STORE: &str = "store";
/// The polling agent.
pub const POLLING: &str = "polling";
/// The notification agent (OpenStack's notifications to samples).
pub const NOTIFICATION: &str = "notification";
/// The collector: offers its counters.
pub const COLLECTOR: &str = "collector";
/// The alarm evaluator.
pub const EVALUATOR: &str = "evaluator";
/// The alarm notifier.
pub const NOTIFIER: &str = "notifier";
/// The HTTP API.
pub const API: &str = "api";
/// The all-in-one agent's progress printer.
pub const OBSERVER: &str = "observer";

/// Which agent a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agent {
    /// Every agent in one process.
    AllInOne,
    /// The polling agent.
    Polling,
    /// The notification agent: OpenStack's notifications to samples, by `meters.yaml`.
    Notification,
    /// The collector (samples in, statistics over RPC).
    Collector,
    /// The alarm evaluator (partitioned across running evaluators).
    Evaluator,
    /// The alarm notifier (runs alarm actions).
    Notifier,
    /// The HTTP API.
    Api,
}

/// Why an agent could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// The all-in-one demo alarm could not be stored.
    #[error(transparent)]
    DemoAlarm(#[from] StoreError),
    /// The engine refused a manifold.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The identity service's client could not be built.
    #[error("cannot set up token validation: {0}")]
    Auth(#[from] reqwest::Error),
}

/// The manifolds of `agent`, named, in the order they are installed. `status` is what the
/// API shows at `/v2/status`; `auth` how it authenticates (see [`authenticator`]).
pub fn manifolds(
    agent: Agent,
    config: &AgentConfig,
    status: StatusFn,
    auth: Option<Authenticator>,
) -> Vec<(&'static str, Manifold)> {
    match agent {
        Agent::AllInOne => vec![
            transport_manifold(config),
            store_manifold(config),
            polling_manifold(config),
            notification_manifold(config),
            collector_manifold(config),
            evaluator_manifold(config),
            notifier_manifold(config, true),
            api_manifold(config, status, auth),
            observer_manifold(),
        ],
        Agent::Polling => vec![transport_manifold(config), polling_manifold(config)],
        Agent::Notification => vec![transport_manifold(config), notification_manifold(config)],
        Agent::Collector => vec![
            transport_manifold(config),
            store_manifold(config),
            collector_manifold(config),
        ],
        Agent::Evaluator => vec![
            transport_manifold(config),
            store_manifold(config),
            evaluator_manifold(config),
        ],
        Agent::Notifier if config.store_given => vec![
            transport_manifold(config),
            store_manifold(config),
            notifier_manifold(config, true),
        ],
        Agent::Notifier => vec![transport_manifold(config), notifier_manifold(config, false)],
        Agent::Api => vec![store_manifold(config), api_manifold(config, status, auth)],
    }
}

/// The API's authenticator for `config`: the token file through `tokens` (the launcher's
/// handle, so SIGHUP re-reads it; required when the configuration names a token file) and the
/// identity service. `None` when neither is configured.
pub fn authenticator(
    config: &AgentConfig,
    tokens: Option<ConfigHandle<TokenTable>>,
) -> Result<Option<Authenticator>, reqwest::Error> {
    let mut auth = Authenticator::default();
    if config.auth.tokens_file.is_some() {
        if let Some(tokens) = tokens {
            auth = auth.with_token_table(tokens);
        }
    }
    if let Some(keystone) = &config.auth.keystone {
        auth = auth.with_keystone(keystone.clone())?;
    }
    Ok(auth.is_configured().then_some(auth))
}

/// Installs `agent`'s manifolds on `engine`, the API showing the engine's report and reading
/// tokens through `tokens` (see [`authenticator`]). All-in-one first stores its demo alarm
/// (see [`observer::ensure_demo_alarm`]).
pub async fn install(
    engine: &Engine,
    agent: Agent,
    config: &AgentConfig,
    tokens: Option<ConfigHandle<TokenTable>>,
) -> Result<(), GraphError> {
    let reporting = engine.clone();
    let status: StatusFn = Arc::new(move || {
        serde_json::to_value(reporting.report()).unwrap_or_else(|e| json!({"error": e.to_string()}))
    });
    let auth = authenticator(config, tokens)?;
    let manifolds = manifolds(agent, config, status, auth);
    if agent == Agent::AllInOne {
        observer::ensure_demo_alarm(&config.store, &config.polling.host).await?;
    }
    for (name, manifold) in manifolds {
        engine.install(name, manifold)?;
    }
    Ok(())
}

fn transport_manifold(config: &AgentConfig) -> (&'static str, Manifold) {
    let settings = TransportConfig {
        url: config.url.clone(),
    };
    (TRANSPORT, transport::manifold(settings))
}

fn store_manifold(config: &AgentConfig) -> (&'static str, Manifold) {
    (
        STORE,
        store::manifold(
            StoreConfig::new(config.store.clone()).with_layout(config.database.clone()),
        ),
    )
}

fn polling_manifold(config: &AgentConfig) -> (&'static str, Manifold) {
    let manifold = polling::manifold(PollingInputs::default(), config.polling.clone());
    (POLLING, manifold)
}

fn notification_manifold(config: &AgentConfig) -> (&'static str, Manifold) {
    let manifold =
        notification::manifold(NotificationInputs::default(), config.notification.clone());
    (NOTIFICATION, manifold)
}

fn collector_manifold(config: &AgentConfig) -> (&'static str, Manifold) {
    let settings = CollectorConfig {
        telemetry_secret: config.telemetry_secret.clone(),
        ..Default::default()
    };
    (
        COLLECTOR,
        collector::manifold(CollectorInputs::default(), settings),
    )
}

fn evaluator_manifold(config: &AgentConfig) -> (&'static str, Manifold) {
    let settings = EvaluatorConfig::every(config.evaluation_interval);
    (
        EVALUATOR,
        evaluator::manifold(EvaluatorInputs::default(), settings),
    )
}

/// The notifier, reading actions from the store when `with_store`.
fn notifier_manifold(config: &AgentConfig, with_store: bool) -> (&'static str, Manifold) {
    let inputs = NotifierInputs {
        store: with_store.then(|| STORE.to_owned()),
        ..NotifierInputs::default()
    };
    let settings = NotifierConfig {
        policy: config.actions.clone(),
        ..NotifierConfig::default()
    };
    (NOTIFIER, alarm_notifier::manifold(inputs, settings))
}

fn api_manifold(
    config: &AgentConfig,
    status: StatusFn,
    auth: Option<Authenticator>,
) -> (&'static str, Manifold) {
    let mut settings =
        ApiConfig::new(config.listen, status).with_action_policy(config.actions.clone());
    settings.auth = auth;
    settings.insecure_no_auth = config.auth.insecure_no_auth;
    (API, api::manifold(ApiInputs::default(), settings))
}

fn observer_manifold() -> (&'static str, Manifold) {
    let manifold = observer::manifold(ObserverInputs::default(), ObserverConfig::default());
    (OBSERVER, manifold)
}
