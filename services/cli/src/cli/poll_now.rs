//! `tidings meter poll-now`: every polling agent polls at once, as one job over the agents
//! (see `tidings_metering::polling::rpc`), and each agent's part is shown as it finishes.
//!
//! The job is recorded in the job store like any other, so `tidings job results ID` reads it
//! later. Exit codes are those of `tidings job wait`: 0 when every agent polled, 1 when any
//! failed, 2 when some had not finished within `--timeout`.

use std::process::ExitCode;
use std::time::Duration;

use tidings::rpc::Contract;
use tidings::Transport;
use tidings_jobs::{JobClient, JobOptions, JobSpec, JobStatus, PartStatus, Targets};
use tidings_metering::polling::rpc::{PollReport, PollingApi, POLL_NOW, TOPIC};

use super::exit;
use super::job::{finished_code, StoreArg};

/// Arguments of `tidings meter poll-now`.
#[derive(Debug, clap::Args)]
pub struct PollNowArgs {
    /// Transport URL of the polling agents' bus.
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: String,
    #[command(flatten)]
    store: StoreArg,
    /// Comma-separated agents (host names and globs); default: every agent that answers.
    #[arg(long)]
    servers: Option<String>,
    /// Seconds to wait for every agent.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(exit::CANNOT_RUN)
}

/// Runs `tidings meter poll-now`.
pub async fn run_poll_now(args: PollNowArgs) -> ExitCode {
    let Ok(timeout) = Duration::try_from_secs_f64(args.timeout) else {
        return fail(format!(
            "--timeout must be a non-negative number of seconds, got {}",
            args.timeout
        ));
    };
    let store = match args.store.create().await {
        Ok(store) => store,
        Err(message) => return fail(message),
    };
    let transport = match Transport::connect(&args.url).await {
        Ok(transport) => transport,
        Err(error) => return fail(format!("cannot open the transport: {error}")),
    };
    let jobs = JobClient::new(&transport, store);
    let mut spec = JobSpec::new(TOPIC, POLL_NOW.name())
        .version(PollingApi::VERSION)
        .servers(Targets::parse(args.servers.as_deref().unwrap_or("")))
        .options(JobOptions {
            job_timeout: Some(timeout),
            ..JobOptions::default()
        });
    spec.namespace = PollingApi::NAMESPACE.map(str::to_owned);
    let code = match jobs.start(spec).await {
        Ok(id) => show(&jobs, &id).await,
        Err(error) => fail(error),
    };
    jobs.close().await;
    transport.close().await;
    code
}

async fn show(jobs: &JobClient, id: &str) -> ExitCode {
    eprintln!("job {id}: every polling agent on {TOPIC} polls now");
    let mut events = match jobs.events(id).await {
        Ok(events) => events,
        Err(error) => return fail(error),
    };
    loop {
        match events.next().await {
            Ok(Some(event)) => {
                let Some(part) = event.part.filter(|p| p.status == PartStatus::Finished) else {
                    continue;
                };
                match part.outcome {
                    Some(Ok(result)) => match serde_json::from_value::<PollReport>(result) {
                        Ok(report) => println!(
                            "{}  polled: {} samples in {} notifications",
                            part.server, report.samples, report.notifications
                        ),
                        Err(_) => println!("{}  polled", part.server),
                    },
                    Some(Err(error)) => {
                        println!(
                            "{}  failed: {}: {}",
                            part.server, error.class, error.message
                        )
                    }
                    None => {}
                }
            }
            Ok(None) => break,
            Err(error) => return fail(error),
        }
    }
    let job = events.snapshot();
    if let Some(error) = &job.error {
        println!("{}: {}", error.class, error.message);
    }
    let polled = job.parts.len() - job.failed();
    println!(
        "{}: {polled} of {} agents polled",
        job.status,
        job.parts.len()
    );
    let timed_out = job.parts.iter().any(|p| {
        matches!(&p.outcome, Some(Err(e)) if tidings_jobs::failure::is(e, tidings_jobs::failure::JOB_TIMEOUT))
    });
    if timed_out || job.status != JobStatus::Finished {
        return ExitCode::from(exit::TIMEOUT);
    }
    finished_code(job)
}
