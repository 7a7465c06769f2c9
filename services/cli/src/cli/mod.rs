//! Command-line interface of the `tidings` binary. Subcommand names and flags are a contract:
//! operators' scripts use them.

mod admin;
mod definitions;
mod demo;
mod dlq;
mod env;
pub mod exit;
mod job;
pub mod logging;
mod meter;
mod notify;
mod poll_now;
mod rpc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Async RPC and notifications over AMQP, wire-compatible with oslo.messaging.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, about)]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines as text, or as one JSON object a line (with the fields of the spans they
    /// happen in).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo server and call each of its methods in one process on memory://, printing
    /// what happens.
    Demo,
    /// Serve the demo methods (echo, add, fail, slow, blocking_sleep; version 1.3) on a topic until
    /// interrupted, as plain calls and as jobs (`tidings job run`).
    DemoServer(demo::DemoServerArgs),
    /// Call METHOD and print its JSON result. Exit 1 on a remote error, 2 on a timeout.
    Call(rpc::RpcArgs),
    /// Cast METHOD (no reply); --fanout sends to every server on the topic.
    Cast(rpc::CastArgs),
    /// Publish one notification.
    Notify(notify::NotifyArgs),
    /// Run the metering service: all-in-one, or one agent (polling, notification, collector,
    /// evaluator, notifier, api); `meter dlq list|replay` for the collector's dead-lettered
    /// samples; `meter check-definitions` to try meter definitions on notifications.
    Meter(Box<meter::MeterArgs>),
    /// Jobs across many servers: `job run` prints a job id at once; `job status`, `results`,
    /// `wait` (exit 0 all parts succeeded, 1 some failed, 2 timeout), `list`, `cancel`.
    Job(job::JobArgs),
    /// Print notifications as JSON lines (priority, publisher_id, event_type, payload, metadata,
    /// context); exit after --count.
    Listen(notify::ListenArgs),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line: time, level, target, message and fields, the current span and
    /// the spans it is in.
    Json,
}

/// Parses the command line, every flag also read from its `TIDINGS_*` environment variable
/// (see [`env`]); `--help` and `--version` print and exit 0, bad usage exits 64.
pub fn parse() -> Result<Cli, ExitCode> {
    use clap::{CommandFactory, FromArgMatches};
    let parsed = env::with_environment_variables(Cli::command())
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    match parsed {
        Ok(cli) => Ok(cli),
        Err(error) => {
            let code = if error.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = error.print();
            Err(ExitCode::from(code))
        }
    }
}

/// Sets up log output on stderr: the level from `-v`, else `RUST_LOG`, else `warn` until a
/// configuration names one (see [`logging::apply_configured_level`]).
pub fn init_tracing(verbose: u8, format: LogFormat) {
    logging::init(verbose, format, MaskedStderr);
}

/// Log output on stderr with every credential in a URL masked, whoever logged it: our own
/// events mask what they show already, but a dependency at debug level (a database driver
/// printing a statement's parameters, an HTTP client printing a request) does not know what a
/// webhook's password is.
pub(crate) struct MaskedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedEvent;

    fn make_writer(&'a self) -> Self::Writer {
        MaskedEvent(Vec::new())
    }
}

/// One event's text, masked and written to stderr in one piece when the formatter is done.
pub(crate) struct MaskedEvent(Vec<u8>);

impl std::io::Write for MaskedEvent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedEvent {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let _ = std::io::Write::write_all(
            &mut std::io::stderr().lock(),
            tidings_metering::secrets::mask_text(&text).as_bytes(),
        );
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Demo => demo::run_demo().await,
        Command::DemoServer(args) => demo::run_demo_server(args).await,
        Command::Call(args) => rpc::run_call(args).await,
        Command::Cast(args) => rpc::run_cast(args).await,
        Command::Notify(args) => notify::run_notify(args).await,
        Command::Listen(args) => notify::run_listen(args).await,
        Command::Meter(args) => meter::run_meter(*args).await,
        Command::Job(args) => job::run_job(args).await,
    }
}
