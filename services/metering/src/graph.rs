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
//! | `api`        | store, api (without a bus: no alarm change notifications)    |
//!
//! The engine, the launcher and the process (signals, exit codes, output) are the caller's; the
//! caller hands in the launcher's handle on what it reloads ([`Loaded`]). On a reload, the
//! polling agent (sources, intervals), the evaluator (evaluation interval), the notifier
//! (batching, retries, action networks) and the collector (telemetry secret) restart with their
//! new settings if theirs changed, and only then (see `Manifold::reloading`); the API reads
//! the new token table at its next request. The rest (bus, store, listening addresses) needs a
//! restart: [`needs_restart`] names what changed of it.

use std::sync::Arc;

use serde_json::json;
use tidings_runtime::{ConfigHandle, Engine, InstallError, Manifold};

use crate::alarm_notifier::HttpConfig;
use crate::alarm_notifier::{self, NotifierConfig, NotifierInputs};
use crate::api::{self, AdminRoutes, ApiConfig, ApiInputs, Authenticator, StatusFn, TokenTable};
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

/// What the launcher loads at start and on each reload, read together so that every agent
/// sees one consistent snapshot: the agent's settings and the API's token table.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The agent's settings.
    pub agent: AgentConfig,
    /// The API's token table (empty without a token file).
    pub tokens: TokenTable,
}

/// The settings that changed between `old` and `new` and that only a restart applies, by the
/// name an operator knows them by.
pub fn needs_restart(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    check(old.url != new.url, "transport_url");
    check(old.store != new.store, "[database] connection");
    check(
        old.database != new.database,
        "[database] metering_time_to_live/rollup_periods",
    );
    check(old.listen != new.listen, "[api] host/port");
    check(old.auth.keystone != new.auth.keystone, "[api] keystone_url");
    check(
        old.auth.tokens_file != new.auth.tokens_file,
        "[api] auth_tokens_file",
    );
    check(
        old.auth.insecure_no_auth != new.auth.insecure_no_auth,
        "[api] insecure_no_auth",
    );
    check(
        (old.admin_listen, old.admin_public) != (new.admin_listen, new.admin_public),
        "[admin] listen/public",
    );
    check(
        old.notification.control_exchanges != new.notification.control_exchanges
            || old.notification.topics != new.notification.topics,
        "[notification] notification_control_exchanges",
    );
    changed
}

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
    /// The admin routes could not be set up.
    #[error(transparent)]
    Admin(#[from] tidings_runtime::admin::AdminError),
    /// The identity service's client could not be built.
    #[error("cannot set up token validation: {0}")]
    Auth(#[from] reqwest::Error),
}

/// The manifolds of `agent`, named, in the order they are installed, reading their settings
/// through `config`. `status` is what the API shows at `/v2/status`; `auth` how it
/// authenticates (see [`authenticator`]). Must be called inside a Tokio runtime.
pub fn manifolds(
    agent: Agent,
    config: &ConfigHandle<Loaded>,
    status: StatusFn,
    auth: Option<Authenticator>,
    admin: Option<AdminRoutes>,
) -> Vec<(&'static str, Manifold)> {
    let now = config.snapshot();
    let settings = &now.agent;
    match agent {
        Agent::AllInOne => vec![
            transport_manifold(settings),
            store_manifold(settings),
            polling_manifold(config),
            notification_manifold(settings),
            collector_manifold(config),
            evaluator_manifold(config),
            notifier_manifold(config, true),
            api_manifold(settings, status, auth, admin, true),
            observer_manifold(),
        ],
        Agent::Polling => vec![transport_manifold(settings), polling_manifold(config)],
        Agent::Notification => vec![
            transport_manifold(settings),
            notification_manifold(settings),
        ],
        Agent::Collector => vec![
            transport_manifold(settings),
            store_manifold(settings),
            collector_manifold(config),
        ],
        Agent::Evaluator => vec![
            transport_manifold(settings),
            store_manifold(settings),
            evaluator_manifold(config),
        ],
        Agent::Notifier if settings.store_given => vec![
            transport_manifold(settings),
            store_manifold(settings),
            notifier_manifold(config, true),
        ],
        Agent::Notifier => vec![
            transport_manifold(settings),
            notifier_manifold(config, false),
        ],
        Agent::Api => vec![
            store_manifold(settings),
            api_manifold(settings, status, auth, admin, false),
        ],
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
/// tokens through `config` (see [`authenticator`]). All-in-one first stores its demo alarm
/// (see [`observer::ensure_demo_alarm`]).
pub async fn install(
    engine: &Engine,
    agent: Agent,
    config: &ConfigHandle<Loaded>,
) -> Result<(), GraphError> {
    let reporting = engine.clone();
    let status: StatusFn = Arc::new(move || {
        serde_json::to_value(reporting.report()).unwrap_or_else(|e| json!({"error": e.to_string()}))
    });
    let settings = config.snapshot().agent.clone();
    let tokens = config.project(|loaded| loaded.tokens.clone());
    let auth = authenticator(&settings, Some(tokens))?;
    // All-in-one serves the process's metrics and health on the API's port too.
    let admin = match agent {
        Agent::AllInOne => {
            let metrics = tidings_runtime::admin::metrics_router(Some(engine.clone()))?;
            describe_metrics();
            Some(AdminRoutes {
                metrics,
                health: tidings_runtime::admin::health_router(Some(engine.clone())),
            })
        }
        _ => None,
    };
    let manifolds = manifolds(agent, config, status, auth, admin);
    if agent == Agent::AllInOne {
        observer::ensure_demo_alarm(&settings.store, &settings.polling.host).await?;
    }
    for (name, manifold) in manifolds {
        engine.install(name, manifold)?;
    }
    Ok(())
}

/// The help text of the library's and the agents' metrics, for the recorder installed now.
pub fn describe_metrics() {
    tidings::metrics::describe();
    crate::metrics::describe();
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

fn polling_manifold(config: &ConfigHandle<Loaded>) -> (&'static str, Manifold) {
    let polling = config.project(|loaded| loaded.agent.polling.clone());
    let manifold = Manifold::reloading(polling, |settings| {
        polling::manifold(PollingInputs::default(), settings.clone())
    });
    (POLLING, manifold)
}

fn notification_manifold(config: &AgentConfig) -> (&'static str, Manifold) {
    let manifold =
        notification::manifold(NotificationInputs::default(), config.notification.clone());
    (NOTIFICATION, manifold)
}

fn collector_manifold(config: &ConfigHandle<Loaded>) -> (&'static str, Manifold) {
    let secret = config.project(|loaded| loaded.agent.telemetry_secret.clone());
    let manifold = Manifold::reloading(secret, |secret| {
        let settings = CollectorConfig {
            telemetry_secret: secret.clone(),
            ..Default::default()
        };
        collector::manifold(CollectorInputs::default(), settings)
    });
    (COLLECTOR, manifold)
}

fn evaluator_manifold(config: &ConfigHandle<Loaded>) -> (&'static str, Manifold) {
    let interval = config.project(|loaded| loaded.agent.evaluation_interval);
    let manifold = Manifold::reloading(interval, |interval| {
        evaluator::manifold(
            EvaluatorInputs::default(),
            EvaluatorConfig::every(*interval),
        )
    });
    (EVALUATOR, manifold)
}

/// The notifier, reading actions from the store when `with_store`.
fn notifier_manifold(config: &ConfigHandle<Loaded>, with_store: bool) -> (&'static str, Manifold) {
    let settings = config.project(|loaded| {
        let agent = &loaded.agent;
        let defaults = NotifierConfig::default();
        NotifierConfig {
            batch_size: agent.notifier.batch_size,
            batch_timeout: agent.notifier.batch_timeout,
            http: HttpConfig {
                max_retries: agent.notifier.max_retries,
                ..defaults.http
            },
            policy: agent.actions.clone(),
            ..defaults
        }
    });
    let manifold = Manifold::reloading(settings, move |settings| {
        let inputs = NotifierInputs {
            store: with_store.then(|| STORE.to_owned()),
            ..NotifierInputs::default()
        };
        alarm_notifier::manifold(inputs, settings.clone())
    });
    (NOTIFIER, manifold)
}

/// The API, announcing alarm changes on the bus `with_transport` (the `api` agent alone has
/// none).
fn api_manifold(
    config: &AgentConfig,
    status: StatusFn,
    auth: Option<Authenticator>,
    admin: Option<AdminRoutes>,
    with_transport: bool,
) -> (&'static str, Manifold) {
    let inputs = ApiInputs {
        transport: with_transport.then(|| TRANSPORT.to_owned()),
        ..ApiInputs::default()
    };
    let mut settings =
        ApiConfig::new(config.listen, status).with_action_policy(config.actions.clone());
    settings.auth = auth;
    settings.insecure_no_auth = config.auth.insecure_no_auth;
    settings.admin = admin;
    (API, api::manifold(inputs, settings))
}

fn observer_manifold() -> (&'static str, Manifold) {
    let manifold = observer::manifold(ObserverInputs::default(), ObserverConfig::default());
    (OBSERVER, manifold)
}
