//! `tidings job run|status|results|wait|list|cancel`: Func-style asynchronous jobs from the
//! shell (see `tidings_jobs` and `docs/jobs.md`).
//!
//! Commands, flags, output formats and exit codes are a contract:
//! - `job run --topic T [--servers LIST] METHOD [ARGS]` prints the job id alone on stdout, at
//!   once: the job is recorded in the store and handed to a background process of this binary
//!   (`job follow`, hidden), which follows it to its end.
//! - `job status ID`: the job's status (`RUNNING`, `PARTIAL` or `FINISHED`) on the first line,
//!   then one line per server: name, part status, detail.
//! - `job results ID`: one JSON object per server and line, with `server`, `status`, and
//!   `result` or `error` (`{class, module, message}`) once the part ended.
//! - `job wait ID [--timeout S]`: waits, with a progress display when stderr is a terminal,
//!   prints the final status, and exits 0 when every part succeeded, 1 when any failed, 2 on
//!   timeout (3 on any other failure, as `call`).
//! - `job list`: the newest jobs, one line each.
//!
//! `status`, `results` and `list` read the store only. `wait` reads it too, and takes over a job
//! whose follower died (it then needs `--url`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use super::exit;
use serde_json::Value;
use tidings::{Transport, Version};
use tidings_jobs::{
    JobClient, JobError, JobEvent, JobEvents, JobOptions, JobSnapshot, JobSpec, JobStore, PartKind,
    PartSnapshot, PartStatus, Targets,
};
use tokio::time::Instant;

/// Arguments of `tidings job`.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Debug, clap::Subcommand)]
enum JobCommand {
    /// Start METHOD on servers of a topic and print the job id at once; a background process
    /// follows the job.
    Run(RunArgs),
    /// Print the job's status (RUNNING, PARTIAL or FINISHED), then one line per server.
    Status(IdArgs),
    /// Print the job's results as JSON lines: server, status, and result or error.
    Results(IdArgs),
    /// Wait for the job to finish: exit 0 when every part succeeded, 1 when any failed, 2 on
    /// timeout.
    Wait(WaitArgs),
    /// List jobs, newest first.
    List(ListArgs),
    /// Cancel the job's parts that have not ended, and stop them on their servers.
    Cancel(CancelArgs),
    /// Follow a job to its end (what `job run` starts in the background).
    #[command(hide = true)]
    Follow(FollowArgs),
}

/// Where the job store is.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArg {
    /// The job store, a SQLite file: PATH or sqlite://PATH (default:
    /// $XDG_STATE_HOME/tidings/jobs.sqlite, else ~/.local/state/tidings/jobs.sqlite).
    #[arg(long, env = "TIDINGS_JOB_STORE")]
    store: Option<String>,
}

impl StoreArg {
    fn path(&self) -> PathBuf {
        match &self.store {
            Some(store) => PathBuf::from(store.strip_prefix("sqlite://").unwrap_or(store)),
            None => default_store(),
        }
    }

    /// Opens the store, creating it (and its directory) when needed.
    pub async fn create(&self) -> Result<JobStore, String> {
        let path = self.path();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        JobStore::open(&path).await.map_err(|e| e.to_string())
    }

    /// Opens a store that exists already.
    async fn existing(&self) -> Result<JobStore, String> {
        let path = self.path();
        if !path.exists() {
            return Err(format!("no job store at {}", path.display()));
        }
        JobStore::open(&path).await.map_err(|e| e.to_string())
    }
}

fn default_store() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")));
    match state {
        Some(dir) => dir.join("tidings").join("jobs.sqlite"),
        None => PathBuf::from("tidings-jobs.sqlite"),
    }
}

/// Arguments of `tidings job run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Transport URL (rabbit://user:pass@host:5672/vhost).
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: String,
    #[command(flatten)]
    store: StoreArg,
    /// Topic of the servers.
    #[arg(long)]
    topic: String,
    /// Comma-separated server names and globs (`*`, `?`); globs match the servers that announce
    /// themselves on the topic. Default: every server that announces itself.
    #[arg(long)]
    servers: Option<String>,
    /// Exchange (default: the control exchange, `openstack`).
    #[arg(long)]
    exchange: Option<String>,
    /// Namespace of the method.
    #[arg(long)]
    namespace: Option<String>,
    /// API version requested, X.Y.
    #[arg(long)]
    version: Option<Version>,
    /// Seconds the whole job may take (default: no limit).
    #[arg(long)]
    timeout: Option<f64>,
    /// Seconds one part may take (default: no limit; plain calls one hour).
    #[arg(long)]
    part_timeout: Option<f64>,
    /// Seconds a server has to accept its part.
    #[arg(long, default_value_t = 10.0)]
    start_timeout: f64,
    /// Seconds a server running a part may stay silent before its part is given up.
    #[arg(long, default_value_t = 30.0)]
    liveness_timeout: f64,
    /// Seconds to listen for servers announcing themselves (globs, or no --servers).
    #[arg(long, default_value_t = 2.0)]
    discovery_window: f64,
    /// Method name.
    method: String,
    /// Keyword arguments as a JSON object.
    #[arg(default_value = "{}")]
    args: String,
}

/// A job id and the store.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The job's id.
    id: String,
    #[command(flatten)]
    store: StoreArg,
}

/// Arguments of `tidings job wait`.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The job's id.
    id: String,
    #[command(flatten)]
    store: StoreArg,
    /// Seconds to wait at most (default: until the job finishes).
    #[arg(long)]
    timeout: Option<f64>,
    /// Transport URL, needed only to take over a job whose follower died.
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: Option<String>,
}

/// Arguments of `tidings job list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArg,
    /// How many jobs to show, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// Arguments of `tidings job cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The job's id.
    id: String,
    #[command(flatten)]
    store: StoreArg,
    /// Transport URL, to tell the servers.
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: String,
}

/// Arguments of `tidings job follow`.
#[derive(Debug, clap::Args)]
pub struct FollowArgs {
    /// The job's id.
    id: String,
    #[command(flatten)]
    store: StoreArg,
    /// Transport URL.
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: String,
    /// The lease holder that created the job.
    #[arg(long)]
    holder: Option<String>,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(exit::CANNOT_RUN)
}

fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("{flag} must be a non-negative number of seconds, got {value}"))
}

/// Runs `tidings job …`.
pub async fn run_job(args: JobArgs) -> ExitCode {
    match args.command {
        JobCommand::Run(args) => run(args).await,
        JobCommand::Status(args) => status(args).await,
        JobCommand::Results(args) => results(args).await,
        JobCommand::Wait(args) => wait(args).await,
        JobCommand::List(args) => list(args).await,
        JobCommand::Cancel(args) => cancel(args).await,
        JobCommand::Follow(args) => follow(args).await,
    }
}

fn spec_of(args: &RunArgs) -> Result<JobSpec, String> {
    let args_value: Value =
        serde_json::from_str(&args.args).map_err(|e| format!("ARGS is not valid JSON: {e}"))?;
    let options = JobOptions {
        start_timeout: seconds("--start-timeout", args.start_timeout)?,
        liveness_timeout: seconds("--liveness-timeout", args.liveness_timeout)?,
        part_timeout: args
            .part_timeout
            .map(|s| seconds("--part-timeout", s))
            .transpose()?,
        job_timeout: args.timeout.map(|s| seconds("--timeout", s)).transpose()?,
        discovery_window: seconds("--discovery-window", args.discovery_window)?,
        ..JobOptions::default()
    };
    let mut spec = JobSpec::new(&args.topic, &args.method)
        .args(args_value)
        .map_err(|e| e.to_string())?
        .servers(Targets::parse(args.servers.as_deref().unwrap_or("")))
        .options(options);
    spec.exchange = args.exchange.clone();
    spec.namespace = args.namespace.clone();
    spec.version = args.version;
    Ok(spec)
}

async fn run(args: RunArgs) -> ExitCode {
    if args.url.starts_with("memory://") {
        return fail(
            "job run hands the job to a background process, which memory:// cannot reach; \
             use a broker URL",
        );
    }
    let spec = match spec_of(&args) {
        Ok(spec) => spec,
        Err(message) => return fail(message),
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
    let id = match jobs.create(&spec).await {
        Ok(id) => id,
        Err(error) => return fail(error),
    };
    if let Err(error) = spawn_follower(&id, &args.store.path(), jobs.holder(), &args.url) {
        let _ = jobs.cancel(&id).await;
        transport.close().await;
        return fail(format!(
            "cannot start the process that follows the job: {error}"
        ));
    }
    println!("{id}");
    transport.close().await;
    ExitCode::SUCCESS
}

/// Starts `tidings job follow ID` in the background, detached from this terminal's signals:
/// it outlives this process, which exits at once. Its output goes to `$TIDINGS_JOB_LOG` when
/// set; what it does is in the store either way.
fn spawn_follower(
    id: &str,
    store: &std::path::Path,
    holder: &str,
    url: &str,
) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let mut command = std::process::Command::new(exe);
    command
        .args(["job", "follow", id, "--holder", holder])
        .arg("--store")
        .arg(store)
        // In the environment, not the arguments: `ps` shows arguments to everyone.
        .env("TIDINGS_TRANSPORT_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match std::env::var_os("TIDINGS_JOB_LOG") {
        Some(path) => {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            command.stderr(log);
        }
        None => {
            command.stderr(Stdio::null());
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    // Not waited for: it runs on after this process exits, and init reaps it.
    #[allow(clippy::zombie_processes)]
    let _follower = command.spawn()?;
    Ok(())
}

async fn follow(args: FollowArgs) -> ExitCode {
    let store = match args.store.existing().await {
        Ok(store) => store,
        Err(message) => return fail(message),
    };
    let transport = match Transport::connect(&args.url).await {
        Ok(transport) => transport,
        Err(error) => return fail(format!("cannot open the transport: {error}")),
    };
    let mut jobs = JobClient::new(&transport, store);
    if let Some(holder) = args.holder {
        jobs = jobs.with_holder(holder);
    }
    let outcome = jobs.follow(&args.id).await;
    transport.close().await;
    match outcome {
        Ok(job) => {
            tracing::info!(job = %job.id, status = %job.status, "followed the job to its end");
            ExitCode::SUCCESS
        }
        Err(error) => fail(error),
    }
}

/// The detail column of a part in `job status`.
fn detail(part: &PartSnapshot) -> String {
    match &part.outcome {
        Some(Ok(result)) => {
            let text = result.to_string();
            if text.chars().count() > 60 {
                let cut: String = text.chars().take(57).collect();
                format!("ok {cut}...")
            } else {
                format!("ok {text}")
            }
        }
        Some(Err(error)) => format!("error {}: {}", error.class, error.message),
        None => match (part.status, part.kind, &part.remote_id) {
            (PartStatus::Starting, _, _) => "waiting for the server to accept".to_owned(),
            (_, PartKind::Job, Some(id)) => format!("part {id}"),
            (_, PartKind::Call, _) => "plain call".to_owned(),
            _ => String::new(),
        },
    }
}

fn print_status(job: &JobSnapshot) {
    println!("{}", job.status);
    let width = job.parts.iter().map(|p| p.server.len()).max().unwrap_or(0);
    for part in &job.parts {
        println!(
            "{:<width$}  {:<8}  {}",
            part.server,
            part.status.as_str(),
            detail(part)
        );
    }
    if let Some(error) = &job.error {
        eprintln!("job error {}: {}", error.class, error.message);
    }
}

async fn snapshot(store: &StoreArg, id: &str) -> Result<(JobStore, JobSnapshot), String> {
    let store = store.existing().await?;
    let job = store.snapshot(id).await.map_err(|e| e.to_string())?;
    Ok((store, job))
}

async fn status(args: IdArgs) -> ExitCode {
    let job = match snapshot(&args.store, &args.id).await {
        Ok((_, job)) => job,
        Err(message) => return fail(message),
    };
    print_status(&job);
    if !job.resolved {
        eprintln!(
            "note: the servers of topic {} are being looked for",
            job.topic
        );
    }
    if !job.is_finished() && !job.followed {
        eprintln!(
            "note: no process follows this job any more; `tidings job wait {}` continues it",
            job.id
        );
    }
    ExitCode::SUCCESS
}

async fn results(args: IdArgs) -> ExitCode {
    let job = match snapshot(&args.store, &args.id).await {
        Ok((_, job)) => job,
        Err(message) => return fail(message),
    };
    let mut out = std::io::stdout().lock();
    for part in &job.parts {
        let line = serde_json::to_string(&part.result_line()).unwrap_or_default();
        if writeln!(out, "{line}").is_err() {
            return ExitCode::from(exit::CANNOT_RUN);
        }
    }
    if let Some(error) = &job.error {
        eprintln!("job error {}: {}", error.class, error.message);
    }
    ExitCode::SUCCESS
}

async fn list(args: ListArgs) -> ExitCode {
    let store = match args.store.existing().await {
        Ok(store) => store,
        Err(message) => return fail(message),
    };
    let jobs = match store.list(args.limit).await {
        Ok(jobs) => jobs,
        Err(error) => return fail(error),
    };
    for job in jobs {
        println!(
            "{}  {:<8}  {}  {}  {}  {}/{} ended, {} failed",
            job.id,
            job.status.as_str(),
            job.created_at,
            job.topic,
            job.method,
            job.ended,
            job.parts,
            job.failed
        );
    }
    ExitCode::SUCCESS
}

async fn cancel(args: CancelArgs) -> ExitCode {
    let store = match args.store.existing().await {
        Ok(store) => store,
        Err(message) => return fail(message),
    };
    let transport = match Transport::connect(&args.url).await {
        Ok(transport) => transport,
        Err(error) => return fail(format!("cannot open the transport: {error}")),
    };
    let outcome = JobClient::new(&transport, store).cancel(&args.id).await;
    transport.close().await;
    match outcome {
        Ok(job) => {
            print_status(&job);
            ExitCode::SUCCESS
        }
        Err(error) => fail(error),
    }
}

/// The exit code of a job that stands as `job`: 0 when it finished and every part succeeded,
/// 1 when any failed.
pub fn finished_code(job: &JobSnapshot) -> ExitCode {
    if job.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAILED)
    }
}

async fn wait(args: WaitArgs) -> ExitCode {
    let timeout = match args.timeout.map(|s| seconds("--timeout", s)).transpose() {
        Ok(timeout) => timeout,
        Err(message) => return fail(message),
    };
    let (store, job) = match snapshot(&args.store, &args.id).await {
        Ok(found) => found,
        Err(message) => return fail(message),
    };
    // A job whose follower died is continued here, for as long as this wait lasts.
    let mut transport = None;
    let events = if !job.is_finished() && !job.followed {
        let Some(url) = &args.url else {
            return fail(format!(
                "no process follows job {} any more: give --url (or TIDINGS_TRANSPORT_URL) to \
                 continue it",
                job.id
            ));
        };
        let connected = match Transport::connect(url).await {
            Ok(connected) => connected,
            Err(error) => return fail(format!("cannot open the transport: {error}")),
        };
        let jobs = JobClient::new(&connected, store.clone());
        transport = Some((connected, jobs.clone()));
        match jobs.resume(&job.id).await {
            Ok(_) => jobs.events(&job.id).await,
            Err(error) => Err(error),
        }
    } else {
        store.events(&job.id).await
    };
    let events = match events {
        Ok(events) => events,
        Err(error) => return fail(error),
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let outcome = watch(events, deadline, &mut progress).await;
    progress.clear();
    let code = match outcome {
        Ok(job) => {
            println!("{}", job.status);
            finished_code(&job)
        }
        Err(JobError::WaitTimedOut { status, .. }) => {
            println!("{status}");
            ExitCode::from(exit::TIMEOUT)
        }
        Err(error) => fail(error),
    };
    if let Some((transport, jobs)) = transport {
        jobs.close().await;
        transport.close().await;
    }
    code
}

/// Follows `events` until the job finishes or `deadline` passes, drawing `progress`.
pub async fn watch(
    mut events: JobEvents,
    deadline: Option<Instant>,
    progress: &mut Progress,
) -> Result<JobSnapshot, JobError> {
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    loop {
        let timed_out = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = events.next() => match next? {
                Some(event) => progress.event(&event, events.snapshot()),
                None => return Ok(events.snapshot().clone()),
            },
            () = timed_out => {
                let job = events.snapshot();
                return Err(JobError::WaitTimedOut {
                    job: job.id.clone(),
                    status: job.status,
                    waited: Duration::ZERO,
                });
            }
            _ = redraw.tick(), if progress.tty => progress.draw(events.snapshot()),
        }
    }
}

/// What `job wait` shows on a terminal: a line per part as it ends, and a status line kept
/// up to date below them.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    started: Instant,
    drawn: bool,
    listed: bool,
}

impl Progress {
    /// A display that draws only when `tty`.
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            started: Instant::now(),
            drawn: false,
            listed: false,
        }
    }

    fn event(&mut self, event: &JobEvent, job: &JobSnapshot) {
        if !self.tty {
            return;
        }
        if !self.listed {
            // The parts that ended before this wait began, once.
            self.listed = true;
            self.clear();
            for part in job
                .parts
                .iter()
                .filter(|p| p.status == PartStatus::Finished)
            {
                eprintln!("  {}  {}", part.server, detail(part));
            }
            if event.part.is_none() {
                self.draw(job);
                return;
            }
        }
        if let Some(part) = event
            .part
            .as_ref()
            .filter(|p| p.status == PartStatus::Finished)
        {
            self.clear();
            eprintln!("  {}  {}", part.server, detail(part));
        }
        self.draw(job);
    }

    fn draw(&mut self, job: &JobSnapshot) {
        if !self.tty {
            return;
        }
        let total = if job.resolved {
            job.parts.len().to_string()
        } else {
            "?".to_owned()
        };
        eprint!(
            "\r\x1b[2K{:<8} {}/{} parts ended, {} failed  {:.0}s",
            job.status.as_str(),
            job.ended(),
            total,
            job.failed(),
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        self.drawn = true;
    }

    /// Removes the status line.
    pub fn clear(&mut self) {
        if self.tty && self.drawn {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
            self.drawn = false;
        }
    }
}
