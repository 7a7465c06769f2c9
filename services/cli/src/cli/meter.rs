//! `tidings meter AGENT`: the metering service's agents, alone or all in one process, each a
//! graph of manifolds (see `tidings_metering::graph`) on one dependency engine under the
//! launcher (SIGTERM/SIGINT drain, exit 0). `tidings meter dlq list|replay` reads the
//! collector's dead-letter queues (see `dlq`); `tidings meter check-definitions` tries meter
//! definitions on notifications (see `definitions`).
//!
//! `all-in-one` runs on `memory://` and SQLite by default, so it works with nothing installed,
//! and adds a demo alarm on the host's load so that samples and alarm states show within a
//! minute. The split agents talk over RabbitMQ and refuse `memory://`, which cannot reach
//! another process.
//!
//! The API authenticates with the token file (`--auth-tokens`), which the launcher re-reads on
//! SIGHUP, and/or an identity service (`--keystone-url`); without either it serves on loopback
//! only unless `--insecure-no-auth`. Nothing printed here shows a credential: URLs and errors
//! go through `secrets::mask_text`.
//!
//! This module parses flags and the configuration file and runs the engine; the metering
//! crate decides what each agent runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tidings_metering::alarm_notifier::Network;
use tidings_metering::api::auth::TokenFileError;
use tidings_metering::api::TokenTable;
use tidings_metering::config::{AgentConfig, MeterConfig, Overrides};
use tidings_metering::graph::{self, Agent as Graph, Loaded};
use tidings_metering::observer::DEMO_ALARM;
use tidings_metering::secrets::{self, Secret};
use tidings_metering::store;
use tidings_runtime::{Engine, EngineConfig, Launcher, LoadError};

use super::admin::{self, AdminArgs};
use super::definitions::{self, run_check_definitions, CheckDefinitionsArgs};
use super::dlq::{run_dlq, DlqArgs};
use super::exit;
use super::logging;
use super::poll_now::{run_poll_now, PollNowArgs};

/// Which agent to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Agent {
    /// Every agent in one process (memory:// and SQLite unless told otherwise).
    AllInOne,
    /// The polling agent.
    Polling,
    /// The notification agent: OpenStack services' notifications to samples, by meters.yaml.
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

impl From<Agent> for Graph {
    fn from(agent: Agent) -> Self {
        match agent {
            Agent::AllInOne => Graph::AllInOne,
            Agent::Polling => Graph::Polling,
            Agent::Notification => Graph::Notification,
            Agent::Collector => Graph::Collector,
            Agent::Evaluator => Graph::Evaluator,
            Agent::Notifier => Graph::Notifier,
            Agent::Api => Graph::Api,
        }
    }
}

/// Arguments of `tidings meter`: an agent to run, or an operator's command.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MeterArgs {
    #[command(subcommand)]
    command: Option<MeterCommand>,
    /// Which agent to run.
    #[arg(required = true)]
    agent: Option<Agent>,
    /// TOML configuration file; everything else overrides it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// An oslo-style INI file (ceilometer.conf, aodh.conf), repeatable, later files winning;
    /// re-read on SIGHUP.
    #[arg(long = "config-file", value_name = "FILE")]
    config_file: Vec<PathBuf>,
    /// Transport URL (all-in-one defaults to memory://metering); also --transport-url.
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: Option<String>,
    /// Store URL: sqlite://PATH or postgres://… (default: the embedded SQLite file).
    #[arg(long)]
    store: Option<String>,
    /// Seconds samples are kept, as Ceilometer's metering_time_to_live (-1: forever, the
    /// default); the file's [database] table sets it per meter.
    #[arg(long, allow_hyphen_values = true)]
    metering_time_to_live: Option<i64>,
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
    /// The API's token file, a JSON object {"<token>": {"user_id", "project_id", "roles"}};
    /// re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    auth_tokens: Option<PathBuf>,
    /// A Keystone-compatible identity service that validates tokens the file does not know.
    #[arg(long, value_name = "URL")]
    keystone_url: Option<String>,
    /// The service token the API validates tokens with (prefer the environment variable).
    #[arg(long, env = "TIDINGS_KEYSTONE_SERVICE_TOKEN", hide_env_values = true)]
    keystone_service_token: Option<String>,
    /// Serve the API without authentication on a non-loopback address: anyone who reaches the
    /// port manages every alarm.
    #[arg(long)]
    insecure_no_auth: bool,
    /// A network (CIDR) alarm actions may reach even where the defaults refuse (repeatable).
    #[arg(long, value_name = "CIDR")]
    allow_action_network: Vec<Network>,
    /// A network (CIDR) alarm actions may never reach (repeatable).
    #[arg(long, value_name = "CIDR")]
    deny_action_network: Vec<Network>,
    /// An exchange the notification agent listens on (repeatable; default Ceilometer's list:
    /// nova, glance, neutron, cinder, heat, keystone, trove, zaqar, swift, ceilometer, magnum,
    /// dns, ironic, aodh).
    #[arg(long = "control-exchange", value_name = "NAME")]
    control_exchange: Vec<String>,
    /// Meter definitions for the notification agent: a meters.yaml file or a directory of
    /// *.yaml (repeatable; default the built-in file); re-read on SIGHUP.
    #[arg(long = "meter-definitions", value_name = "PATH")]
    meter_definitions: Vec<PathBuf>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Operators' commands beside the agents.
#[derive(Debug, clap::Subcommand)]
enum MeterCommand {
    /// The collector's dead-letter queues: list the samples in them, or replay them.
    Dlq(DlqArgs),
    /// Every polling agent polls now, as one job; shows each agent's part as it finishes.
    PollNow(PollNowArgs),
    /// What each meter definition makes of the notifications in a file (nothing is sent).
    CheckDefinitions(CheckDefinitionsArgs),
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {}", secrets::mask_text(&message));
    ExitCode::from(exit::CANNOT_RUN)
}

/// Runs `tidings meter AGENT`.
pub async fn run_meter(args: MeterArgs) -> ExitCode {
    let agent = match (args.command, args.agent) {
        (Some(MeterCommand::Dlq(dlq)), _) => return run_dlq(dlq).await,
        (Some(MeterCommand::PollNow(args)), _) => return run_poll_now(args).await,
        (Some(MeterCommand::CheckDefinitions(check)), _) => {
            return run_check_definitions(check).await
        }
        (None, Some(agent)) => Graph::from(agent),
        (None, None) => return fail("name an agent to run, or a command".to_owned()),
    };
    let files = ConfigFiles {
        toml: args.config.clone(),
        ini: args.config_file.clone(),
    };
    let overrides = Overrides {
        url: args.url,
        store: args.store,
        metering_time_to_live: args.metering_time_to_live,
        listen: args.listen,
        evaluation_interval: args.evaluation_interval,
        polling_interval: args.polling_interval,
        auth_tokens_file: args.auth_tokens,
        keystone_url: args.keystone_url,
        keystone_service_token: args.keystone_service_token.map(Secret::new),
        insecure_no_auth: args.insecure_no_auth,
        allow_action_networks: args.allow_action_network,
        deny_action_networks: args.deny_action_network,
        control_exchanges: args.control_exchange,
        meter_definitions: args.meter_definitions,
        admin_listen: args.admin.admin_listen,
        admin_public: args.admin.admin_public,
    };
    let initial = match load(agent, &files, &overrides) {
        Ok(loaded) => loaded,
        Err(error) => return fail(error),
    };
    let config = initial.agent.clone();
    if let Err(error) = logging::apply_configured_level(config.log_level.as_deref()) {
        return fail(error);
    }
    let engine = match Engine::new(EngineConfig::default()) {
        Ok(engine) => engine,
        Err(error) => return fail(error.to_string()),
    };
    // Before anything serves: from here on SIGHUP reloads instead of ending the process.
    let signals = match tidings_runtime::os_signals() {
        Ok(signals) => signals,
        Err(error) => return fail(format!("cannot watch signals: {error}")),
    };
    // The notification agent's meter definitions: read before it starts, again on SIGHUP.
    let meter_definitions = matches!(agent, Graph::Notification | Graph::AllInOne)
        .then(|| config.notification.definitions.clone());
    if let Some(definitions) = &meter_definitions {
        if let Err(error) = definitions::load_at_start(definitions) {
            return fail(error);
        }
    }
    let applied = std::sync::Arc::new(std::sync::Mutex::new(config.clone()));
    let launcher = Launcher::new(engine.clone(), initial, move || {
        if let Some(definitions) = &meter_definitions {
            definitions::reload_on_hangup(definitions);
        }
        let reloaded = reload(agent, &files, &overrides, &applied);
        async move { reloaded }
    })
    .with_drain_deadline(Duration::from_secs(30));
    let handle = launcher.config();
    if let Err(error) = graph::install(&engine, agent, &handle).await {
        return fail(error.to_string());
    }
    let _admin = match config.admin_listen {
        Some(addr) => match admin::start(addr, config.admin_public, Some(engine.clone())).await {
            Ok(server) => Some(server),
            Err(error) => {
                engine.kill();
                return fail(error);
            }
        },
        None => None,
    };
    if agent == Graph::AllInOne {
        println!(
            "metering all-in-one on {} with store {}; API on http://{} ({}); demo alarm '{DEMO_ALARM}' (load.1 avg > 4 over 2×10 s)",
            config.url,
            store::redact(&config.store),
            config.listen,
            api_access(&config),
        );
    }
    if let Some(seconds) = args.run_for {
        let stopping = engine.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stopping.kill();
        });
    }
    let outcome = launcher.run(signals).await;
    eprintln!(
        "metering stopped: {}",
        secrets::mask_text(&format!("{outcome:?}"))
    );
    ExitCode::from(outcome.code())
}

/// The configuration files a process reads, at start and on each reload.
#[derive(Debug, Clone)]
struct ConfigFiles {
    toml: Option<PathBuf>,
    ini: Vec<PathBuf>,
}

/// Reads the files, resolves `agent`'s settings with `overrides`, and reads the token file.
fn load(agent: Graph, files: &ConfigFiles, overrides: &Overrides) -> Result<Loaded, String> {
    let file = MeterConfig::load_files(files.toml.as_deref(), &files.ini)
        .map_err(|error| error.to_string())?;
    let agent = file
        .resolve(agent, overrides)
        .map_err(|error| error.to_string())?;
    let tokens = read_tokens(agent.auth.tokens_file.as_deref()).map_err(|e| e.to_string())?;
    Ok(Loaded { agent, tokens })
}

/// A reload: the new snapshot, with the log level applied and what needs a restart named; or
/// why the files cannot be used, and then the running configuration stays.
fn reload(
    agent: Graph,
    files: &ConfigFiles,
    overrides: &Overrides,
    applied: &std::sync::Mutex<AgentConfig>,
) -> Result<Loaded, LoadError> {
    let loaded = load(agent, files, overrides).map_err(|error| secrets::mask_text(&error))?;
    logging::apply_configured_level(loaded.agent.log_level.as_deref())?;
    let mut applied = applied.lock().unwrap_or_else(|e| e.into_inner());
    let needs_restart = graph::needs_restart(&applied, &loaded.agent);
    if !needs_restart.is_empty() {
        tracing::warn!(
            settings = ?needs_restart,
            "configuration reloaded, but these settings change only with a restart; still running with the old ones"
        );
    }
    *applied = loaded.agent.clone();
    Ok(loaded)
}

/// The token file's table, or an empty one without a file.
fn read_tokens(path: Option<&Path>) -> Result<TokenTable, TokenFileError> {
    let Some(path) = path else {
        return Ok(TokenTable::default());
    };
    let table = TokenTable::load(path)?;
    tracing::info!(path = %path.display(), tokens = table.len(), "token file read");
    Ok(table)
}

/// How the banner describes access to the API.
fn api_access(config: &AgentConfig) -> &'static str {
    match (config.auth.is_configured(), config.auth.insecure_no_auth) {
        (true, _) => "X-Auth-Token required",
        (false, false) => "no authentication: loopback only",
        (false, true) => "INSECURE: no authentication",
    }
}
