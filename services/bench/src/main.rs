//! `tidings-bench`: tidings side by side with a bare-lapin baseline, scenario by scenario, in
//! one run (see the library of this crate). Build it in release for real figures:
//! `cargo run --release -p tidings-bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc, set up in `.cargo/config.toml` to give freed memory back to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;
use tidings_bench::{self as bench, BenchConfig};

/// Benchmark tidings against a bare-lapin baseline on a broker; print the table.
#[derive(Debug, Parser)]
#[command(name = "tidings-bench", version, about)]
struct BenchArgs {
    /// Broker URL. On the default local broker each run gets a private vhost
    /// (tidings-bench-<uuid>, made and deleted with rabbitmqctl).
    #[arg(long, env = "TIDINGS_TRANSPORT_URL", default_value = bench::DEFAULT_URL)]
    url: String,
    /// Seconds each side of each scenario runs, per round.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds per scenario, alternating which side goes first; the best of each side counts.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Calls held in flight in the memory section (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    inflight: usize,
    /// A short run (0.2 s per side, one round, 1000 calls in flight), for smoke tests.
    #[arg(long)]
    quick: bool,
    /// Only scenarios and sections whose name starts with this (repeatable), e.g.
    /// --only call-1 --only cast/json, or --only tail (open-loop latency), --only agents
    /// (each idle metering agent's memory) or --only oslo (oslo.messaging on the same broker)
    /// for one section alone; --only scale (or scale/payload, scale/topics, scale/fanout,
    /// scale/reply-queues) for the scale section, run only when named.
    #[arg(long, value_name = "PREFIX")]
    only: Vec<String>,
    /// Run one side only (tidings, or baseline: both bare-lapin sides), e.g. under a profiler;
    /// ratios need both.
    #[arg(long, value_name = "SIDE", value_parser = ["tidings", "baseline"])]
    side: Option<String>,
    /// Also write {scenario: {tidings, baseline, baseline_unconfirmed, ratio, unit}} (and
    /// "load_average", "memory", "tail", "agents", "oslo", "store-scale/<store>", "scale") as
    /// JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Samples store-scale loads into each store (run it with --only store-scale).
    #[arg(long, value_name = "N", default_value_t = bench::DEFAULT_SAMPLES)]
    samples: u64,
    /// Skip the agents section (it runs the tidings binary found next to this one).
    #[arg(long)]
    no_agents: bool,
    /// Skip the oslo section (it runs oslo.messaging's benchmark with --oslo-python). A full
    /// run without that Python skips it with a note on stderr; --only oslo fails.
    #[arg(long)]
    no_oslo: bool,
    /// Python with oslo.messaging for the oslo section (`bash scripts/test --setup` makes the
    /// default venv).
    #[arg(long, value_name = "PATH", env = "TIDINGS_INTEROP_PYTHON", default_value = bench::oslo::DEFAULT_PYTHON)]
    oslo_python: PathBuf,
    /// PostgreSQL server of store-scale/postgres (it makes and drops a schema of its own).
    #[arg(long, value_name = "URL", env = "TIDINGS_BENCH_POSTGRES", default_value = bench::DEFAULT_POSTGRES)]
    postgres: String,
    /// Servers scale/topics grows to: 10, 100, … up to N, each its own topic.
    #[arg(long, value_name = "N", default_value_t = bench::scale::DEFAULT_TOPICS)]
    scale_topics: usize,
    /// Idle clients (each with a reply queue) scale/reply-queues grows to: 100, 1000, … up to N.
    #[arg(long, value_name = "N", default_value_t = bench::scale::DEFAULT_CLIENTS)]
    scale_clients: usize,
}

/// Exit code of a command line that does not parse (EX_USAGE), as `tidings` uses.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = match BenchArgs::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let code = if error.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        // Registered before anything runs, so that no signal takes the default way out and
        // leaves the run's vhost and child processes behind.
        match Interrupts::register() {
            Ok(interrupts) => run_bench(args, interrupts).await,
            Err(error) => {
                eprintln!("error: could not watch for SIGINT and SIGTERM: {error}");
                ExitCode::FAILURE
            }
        }
    });
    // Tasks of an interrupted run are cancelled; none may hold the exit up for long.
    runtime.shutdown_timeout(SHUTDOWN_PATIENCE);
    code
}

/// How long an ending run waits for its runtime's threads.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

/// SIGINT (Ctrl-C) and SIGTERM, which end a run early.
struct Interrupts {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the first of them, with the status a shell gives a process it killed
    /// (128 + the signal's number).
    async fn first(&mut self) -> u8 {
        tokio::select! {
            _ = self.interrupt.recv() => 130,
            _ = self.terminate.recv() => 143,
        }
    }
}

/// Runs the benchmark and prints the table; exit 1 when a scenario fails.
async fn run_bench(args: BenchArgs, mut interrupts: Interrupts) -> ExitCode {
    let mut config = BenchConfig {
        url: args.url,
        duration: Duration::from_secs_f64(args.duration.max(0.01)),
        rounds: args.rounds.max(1),
        inflight: args.inflight,
        settle: bench::MEMORY_SETTLE,
        only: args.only,
        side: args.side,
        samples: args.samples.max(1),
        postgres: args.postgres,
        agents: !args.no_agents,
        oslo: !args.no_oslo,
        oslo_python: args.oslo_python,
        scale_topics: args.scale_topics.max(1),
        scale_clients: args.scale_clients.max(1),
    };
    if args.quick {
        config.duration = Duration::from_millis(200);
        config.rounds = 1;
        config.inflight = config.inflight.min(1_000);
        config.settle = Duration::from_secs(1);
    }
    let run = tokio::select! {
        run = bench::run(&config) => run,
        status = interrupts.first() => {
            // The run, dropped unfinished, deletes its vhost and scratch files and kills the
            // processes it started.
            eprintln!("interrupted: the run's vhost, scratch files and child processes are removed");
            return ExitCode::from(status);
        }
    };
    let report = match run {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table(&config));
    if let Some(path) = &args.json {
        let text = match serde_json::to_string_pretty(&report.json()) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(error) = std::fs::write(path, text + "\n") {
            eprintln!("error: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
