//! The agents' graphs: the names of the metering manifolds, and which manifolds each agent
//! runs with which settings. This is the one place that names a manifold; each manifold
//! declares its inputs by these names through its `…Inputs` default.
//!
//! | agent        | manifolds                                                    |
//! |--------------|--------------------------------------------------------------|
//! | `all-in-one` | transport, store, polling, collector, evaluator, notifier, api, observer |
//! | `polling`    | transport, polling                                           |
//! | `collector`  | transport, store, collector                                  |
//! | `evaluator`  | transport, store, evaluator                                  |
//! | `notifier`   | transport, notifier                                          |
//! | `api`        | store, api                                                   |
//!
//! The engine, the launcher and the process (signals, exit codes, output) are the caller's.

use std::sync::Arc;

use serde_json::json;
use tidings_runtime::{Engine, InstallError, Manifold};

use crate::alarm_notifier::{self, NotifierConfig, NotifierInputs};
use crate::api::{self, ApiConfig, ApiInputs, StatusFn};
use crate::collector::{self, CollectorConfig, CollectorInputs};
use crate::config::AgentConfig;
use crate::evaluator::{self, EvaluatorConfig, EvaluatorInputs};
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
}

/// The manifolds of `agent`, named, in the order they are installed. `status` is what the
/// API shows at `/v2/status`.
pub fn manifolds(
    agent: Agent,
    config: &AgentConfig,
    status: StatusFn,
) -> Vec<(&'static str, Manifold)> {
    match agent {
        Agent::AllInOne => vec![
            transport_manifold(config),
            store_manifold(config),
            polling_manifold(config),
            collector_manifold(config),
            evaluator_manifold(config),
            notifier_manifold(),
            api_manifold(config, status),
            observer_manifold(),
        ],
        Agent::Polling => vec![transport_manifold(config), polling_manifold(config)],
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
        Agent::Notifier => vec![transport_manifold(config), notifier_manifold()],
        Agent::Api => vec![store_manifold(config), api_manifold(config, status)],
    }
}

/// Installs `agent`'s manifolds on `engine`, the API showing the engine's report. All-in-one
/// first stores its demo alarm (see [`observer::ensure_demo_alarm`]).
pub async fn install(
    engine: &Engine,
    agent: Agent,
    config: &AgentConfig,
) -> Result<(), GraphError> {
    let reporting = engine.clone();
    let status: StatusFn = Arc::new(move || {
        serde_json::to_value(reporting.report()).unwrap_or_else(|e| json!({"error": e.to_string()}))
    });
    let manifolds = manifolds(agent, config, status);
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
        store::manifold(StoreConfig::new(config.store.clone())),
    )
}

fn polling_manifold(config: &AgentConfig) -> (&'static str, Manifold) {
    let manifold = polling::manifold(PollingInputs::default(), config.polling.clone());
    (POLLING, manifold)
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

fn notifier_manifold() -> (&'static str, Manifold) {
    let manifold = alarm_notifier::manifold(NotifierInputs::default(), NotifierConfig::default());
    (NOTIFIER, manifold)
}

fn api_manifold(config: &AgentConfig, status: StatusFn) -> (&'static str, Manifold) {
    let settings = ApiConfig::new(config.listen, status);
    (API, api::manifold(ApiInputs::default(), settings))
}

fn observer_manifold() -> (&'static str, Manifold) {
    let manifold = observer::manifold(ObserverInputs::default(), ObserverConfig::default());
    (OBSERVER, manifold)
}
