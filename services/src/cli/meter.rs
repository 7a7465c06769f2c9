//! `tidings meter AGENT`: the metering service's agents, alone or all in one process, each a
//! manifold on one dependency engine under the launcher (SIGTERM/SIGINT drain, exit 0).
//!
//! `all-in-one` runs on `memory://` and SQLite by default, so it works with nothing installed,
//! and adds a demo alarm on the host's load so that samples and alarm states show within a
//! minute. The split agents talk over RabbitMQ and refuse `memory://`, which cannot reach
//! another process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tidings::url::Scheme;
use tidings::TransportUrl;

use super::rpc::EXIT_FAILURE;
use crate::metering::config::MeterConfig;
use crate::metering::model::{Alarm, AlarmState, ComparisonOperator, StatisticKind, ThresholdRule};
use crate::metering::polling::config::Source;
use crate::metering::polling::PollingConfig;
use crate::metering::store::{self, Store};
use crate::metering::{alarm_notifier, api, collector, evaluator, polling, transport};
use crate::runtime::{
    Engine, EngineConfig, Launcher, Manifold, PeriodicTasks, Schedule, WorkerError,
};

/// Default address of the HTTP API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8042";

/// Which agent to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Agent {
    /// Every agent in one process (memory:// and SQLite unless told otherwise).
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

/// Arguments of `tidings meter`.
#[derive(Debug, clap::Args)]
pub struct MeterArgs {
    /// Which agent to run.
    agent: Agent,
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Transport URL (all-in-one defaults to memory://metering).
    #[arg(long, env = "TIDINGS_TRANSPORT_URL")]
    url: Option<String>,
    /// Store URL: sqlite://PATH or postgres://… (default: the embedded SQLite file).
    #[arg(long)]
    store: Option<String>,
    /// Address of the HTTP API (default 127.0.0.1:8042).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Seconds between alarm evaluations (default 60; all-in-one 5).
    #[arg(long)]
    evaluation_interval: Option<u64>,
    /// Seconds between polls when the configuration names no source (default 10; all-in-one 5).
    #[arg(long)]
    polling_interval: Option<u64>,
    /// Stop by itself after this many seconds (for demos and scripts).
    #[arg(long)]
    run_for: Option<u64>,
}

/// Everything the agents need, resolved from file, flags and defaults.
struct Resolved {
    url: TransportUrl,
    store: String,
    listen: SocketAddr,
    secret: Option<String>,
    evaluation_interval: Duration,
    polling: PollingConfig,
}

fn resolve(args: &MeterArgs) -> Result<Resolved, String> {
    let file = match &args.config {
        Some(path) => MeterConfig::load(path).map_err(|e| e.to_string())?,
        None => MeterConfig::default(),
    };
    let all_in_one = args.agent == Agent::AllInOne;
    let url = match args.url.clone().or(file.url.clone()) {
        Some(url) => url,
        // The API reads the store only; it never touches the bus.
        None if all_in_one || args.agent == Agent::Api => "memory://metering".to_owned(),
        None => {
            return Err(
                "--url is required: the split agents talk over RabbitMQ (rabbit://…)".to_owned(),
            )
        }
    };
    let url: TransportUrl = url.parse().map_err(|e| format!("--url: {e}"))?;
    if !all_in_one && args.agent != Agent::Api && url.scheme() == Scheme::Memory {
        return Err(format!(
            "{url} only reaches this process; the split agents need a rabbit:// URL (or run `tidings meter all-in-one`)"
        ));
    }
    let default_interval = if all_in_one { 5 } else { 10 };
    let host = hostname();
    let mut sources = file.polling.sources.clone();
    if sources.is_empty() {
        sources.push(Source {
            name: "host".to_owned(),
            interval: args.polling_interval.unwrap_or(default_interval),
            meters: vec!["*".to_owned()],
        });
    }
    Ok(Resolved {
        url,
        store: args
            .store
            .clone()
            .or(file.store.clone())
            .unwrap_or_else(store::default_url),
        listen: match args.listen.or(file.api.listen) {
            Some(listen) => listen,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| "bad default address".to_owned())?,
        },
        secret: file.telemetry_secret.clone(),
        evaluation_interval: Duration::from_secs(
            args.evaluation_interval
                .or(file.evaluator.evaluation_interval)
                .unwrap_or(if all_in_one { 5 } else { 60 })
                .max(1),
        ),
        polling: PollingConfig {
            sources,
            batch_size: file.polling.batch_size,
            telemetry_secret: file.telemetry_secret,
            host,
        },
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The demo alarm of `all-in-one`: the host's 1-minute load above 4 over two 10 s periods.
fn demo_alarm(host: &str) -> Alarm {
    let now = Utc::now();
    Alarm {
        alarm_id: uuid::Uuid::new_v4().to_string(),
        name: "demo-host-load".to_owned(),
        alarm_type: "threshold".to_owned(),
        threshold_rule: ThresholdRule {
            meter_name: "load.1".to_owned(),
            threshold: 4.0,
            comparison_operator: ComparisonOperator::Gt,
            statistic: StatisticKind::Avg,
            period: 10,
            evaluation_periods: 2,
            query: vec![crate::metering::model::QueryTerm {
                field: "resource_id".to_owned(),
                op: "eq".to_owned(),
                value: host.to_owned(),
            }],
        },
        state: AlarmState::InsufficientData,
        state_reason: "Not evaluated yet".to_owned(),
        state_timestamp: now,
        alarm_actions: vec!["log://".to_owned()],
        ok_actions: vec!["log://".to_owned()],
        insufficient_data_actions: Vec::new(),
        repeat_actions: false,
        severity: "low".to_owned(),
        enabled: true,
        timestamp: now,
    }
}

/// Prints what the all-in-one service does: samples stored and alarm transitions.
fn observer(store_input: &str) -> Manifold {
    let input = store_input.to_owned();
    Manifold::new(move |_ctx, getter| {
        let store = getter.get::<Arc<dyn Store>>(&input);
        async move {
            let store = store?;
            let printed = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
            let schedule = Schedule::every(Duration::from_secs(5)).map_err(WorkerError::fatal)?;
            let tasks = PeriodicTasks::new().add("print", schedule, move |_stop| {
                let (store, printed) = (store.clone(), printed.clone());
                async move {
                    print_progress(store.as_ref(), &printed)
                        .await
                        .map_err(WorkerError::failed)
                }
            });
            Ok(tasks.spawn())
        }
    })
    .with_inputs([store_input.to_owned()])
}

async fn print_progress(
    store: &dyn Store,
    printed: &Mutex<std::collections::HashSet<String>>,
) -> Result<(), store::StoreError> {
    let meters = store.meters(None).await?;
    let mut names: Vec<&str> = meters.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let load = store
        .statistics(&crate::metering::model::StatisticsQuery {
            meter: "load.1".to_owned(),
            ..Default::default()
        })
        .await?;
    let count = load.first().map_or(0, |s| s.count);
    let highest = load.first().map_or(0.0, |s| s.max);
    let meters_line = format!("meters stored: {}", names.join(", "));
    let new_meters = printed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(meters_line.clone());
    if new_meters {
        println!("{meters_line}");
    }
    println!("samples: {count} load.1 samples stored (highest load {highest})");
    for alarm in store.alarms().await? {
        for change in store.history(&alarm.alarm_id).await? {
            let key = format!(
                "{}-{}-{}",
                alarm.alarm_id,
                change.timestamp.timestamp_micros(),
                change.current.as_str()
            );
            let fresh = printed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
            if fresh {
                let previous = change.previous.map_or("-", |p| p.as_str());
                println!(
                    "alarm {}: {} -> {} ({})",
                    alarm.name,
                    previous,
                    change.current.as_str(),
                    change.reason
                );
            }
        }
    }
    Ok(())
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_FAILURE)
}

/// Runs `tidings meter AGENT`.
pub async fn run_meter(args: MeterArgs) -> ExitCode {
    let resolved = match resolve(&args) {
        Ok(resolved) => resolved,
        Err(message) => return fail(message),
    };
    let engine = match Engine::new(EngineConfig::default()) {
        Ok(engine) => engine,
        Err(error) => return fail(error.to_string()),
    };
    let status_engine = engine.clone();
    let status: api::StatusFn = Arc::new(move || {
        serde_json::to_value(status_engine.report())
            .unwrap_or_else(|e| json!({"error": e.to_string()}))
    });
    let needs_store = matches!(
        args.agent,
        Agent::AllInOne | Agent::Collector | Agent::Evaluator | Agent::Api
    );
    let needs_transport = args.agent != Agent::Api;
    let mut manifolds: Vec<(&str, Manifold)> = Vec::new();
    if needs_transport {
        manifolds.push(("transport", transport::manifold(resolved.url.clone())));
    }
    if needs_store {
        manifolds.push(("store", store::manifold(resolved.store.clone())));
    }
    let all = args.agent == Agent::AllInOne;
    if all || args.agent == Agent::Polling {
        manifolds.push((
            "polling",
            polling::manifold(resolved.polling.clone(), "transport"),
        ));
    }
    if all || args.agent == Agent::Collector {
        let config = collector::CollectorConfig {
            telemetry_secret: resolved.secret.clone(),
            ..Default::default()
        };
        manifolds.push((
            "collector",
            collector::manifold(collector::CollectorInputs::default(), config),
        ));
    }
    if all || args.agent == Agent::Evaluator {
        let config = evaluator::EvaluatorConfig::every(resolved.evaluation_interval);
        manifolds.push((
            "evaluator",
            evaluator::manifold(config, "transport", "store"),
        ));
    }
    if all || args.agent == Agent::Notifier {
        manifolds.push((
            "notifier",
            alarm_notifier::manifold(Default::default(), "transport"),
        ));
    }
    if all || args.agent == Agent::Api {
        manifolds.push(("api", api::manifold(resolved.listen, "store", status)));
    }
    if all {
        manifolds.push(("observer", observer("store")));
        if let Err(message) = add_demo_alarm(&resolved).await {
            return fail(message);
        }
        println!(
            "metering all-in-one on {} with store {}; API on http://{}; demo alarm 'demo-host-load' (load.1 avg > 4 over 2×10 s)",
            resolved.url,
            store::redact(&resolved.store),
            resolved.listen
        );
    }
    for (name, manifold) in manifolds {
        if let Err(error) = engine.install(name, manifold) {
            return fail(error.to_string());
        }
    }
    if let Some(seconds) = args.run_for {
        let stopping = engine.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stopping.kill();
        });
    }
    let launcher =
        Launcher::new(engine, (), || async { Ok(()) }).with_drain_deadline(Duration::from_secs(30));
    let signals = match crate::runtime::os_signals() {
        Ok(signals) => signals,
        Err(error) => return fail(format!("cannot watch signals: {error}")),
    };
    let outcome = launcher.run(signals).await;
    eprintln!("metering stopped: {outcome:?}");
    ExitCode::from(outcome.code())
}

/// Stores the demo alarm unless one of that name exists.
async fn add_demo_alarm(resolved: &Resolved) -> Result<(), String> {
    let store = store::open(&resolved.store)
        .await
        .map_err(|e| e.to_string())?;
    let alarms = store.alarms().await.map_err(|e| e.to_string())?;
    if !alarms.iter().any(|a| a.name == "demo-host-load") {
        store
            .create_alarm(&demo_alarm(&resolved.polling.host))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
