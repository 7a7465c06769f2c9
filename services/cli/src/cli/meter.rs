//! `tidings meter AGENT`: the metering service's agents, alone or all in one process, each a
//! graph of manifolds (see `tidings_metering::graph`) on one dependency engine under the
//! launcher (SIGTERM/SIGINT drain, exit 0).
//!
//! `all-in-one` runs on `memory://` and SQLite by default, so it works with nothing installed,
//! and adds a demo alarm on the host's load so that samples and alarm states show within a
//! minute. The split agents talk over RabbitMQ and refuse `memory://`, which cannot reach
//! another process.
//!
//! This module parses flags and the configuration file and runs the engine; the metering
//! crate decides what each agent runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tidings_metering::config::{MeterConfig, Overrides};
use tidings_metering::graph::{self, Agent as Graph};
use tidings_metering::observer::DEMO_ALARM;
use tidings_metering::store;
use tidings_runtime::{Engine, EngineConfig, Launcher};

use super::rpc::EXIT_FAILURE;

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

impl From<Agent> for Graph {
    fn from(agent: Agent) -> Self {
        match agent {
            Agent::AllInOne => Graph::AllInOne,
            Agent::Polling => Graph::Polling,
            Agent::Collector => Graph::Collector,
            Agent::Evaluator => Graph::Evaluator,
            Agent::Notifier => Graph::Notifier,
            Agent::Api => Graph::Api,
        }
    }
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

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_FAILURE)
}

/// Runs `tidings meter AGENT`.
pub async fn run_meter(args: MeterArgs) -> ExitCode {
    let agent = Graph::from(args.agent);
    let file = match &args.config {
        Some(path) => match MeterConfig::load(path) {
            Ok(file) => file,
            Err(error) => return fail(error.to_string()),
        },
        None => MeterConfig::default(),
    };
    let overrides = Overrides {
        url: args.url,
        store: args.store,
        listen: args.listen,
        evaluation_interval: args.evaluation_interval,
        polling_interval: args.polling_interval,
    };
    let config = match file.resolve(agent, &overrides) {
        Ok(config) => config,
        Err(error) => return fail(error.to_string()),
    };
    let engine = match Engine::new(EngineConfig::default()) {
        Ok(engine) => engine,
        Err(error) => return fail(error.to_string()),
    };
    if let Err(error) = graph::install(&engine, agent, &config).await {
        return fail(error.to_string());
    }
    if agent == Graph::AllInOne {
        println!(
            "metering all-in-one on {} with store {}; API on http://{}; demo alarm '{DEMO_ALARM}' (load.1 avg > 4 over 2×10 s)",
            config.url,
            store::redact(&config.store),
            config.listen
        );
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
    let signals = match tidings_runtime::os_signals() {
        Ok(signals) => signals,
        Err(error) => return fail(format!("cannot watch signals: {error}")),
    };
    let outcome = launcher.run(signals).await;
    eprintln!("metering stopped: {outcome:?}");
    ExitCode::from(outcome.code())
}
