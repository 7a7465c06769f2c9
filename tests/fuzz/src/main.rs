//! `tidings-fuzz`: runs the fuzzer and prints its report.
//!
//! ```sh
//! cargo run --release -p tidings-fuzz -- --messages 1000000 --seed 42 --out /tmp/fuzz-out
//! ```
//!
//! Exits with status 1 when a panic was seen or a liveness check failed, 2 when the run itself
//! could not go on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tidings_fuzz::{run, FuzzConfig};

/// Feeds mutated and generated oslo.messaging bodies through tidings' decode, dispatch,
/// notification and collector paths, counting panics and peak memory.
#[derive(Debug, Parser)]
#[command(name = "tidings-fuzz")]
struct Args {
    /// Messages to try.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Seed of the run (a random one, printed, when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Directory for panicking inputs (default: a fresh temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Messages between liveness checks.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Longest wait for one liveness check, in seconds.
    #[arg(long, default_value_t = 30)]
    liveness_timeout: u64,
    /// Inputs saved per panic location.
    #[arg(long, default_value_t = 3)]
    max_saved_per_site: usize,
    /// Fresh rigs the run may start to attribute dispatch panics to inputs.
    #[arg(long, default_value_t = 400)]
    max_triage_probes: usize,
    /// Progress line every this many messages (0: none).
    #[arg(long, default_value_t = 50_000)]
    progress: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    eprintln!("tidings-fuzz: seed {seed}, {} messages", args.messages);
    let config = FuzzConfig {
        messages: args.messages,
        seed,
        out_dir: args.out,
        batch: args.batch,
        liveness_timeout: Duration::from_secs(args.liveness_timeout),
        max_saved_per_site: args.max_saved_per_site,
        max_triage_probes: args.max_triage_probes,
        progress_every: (args.progress > 0).then_some(args.progress),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tidings-fuzz: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&config)) {
        Ok(report) => {
            println!("{report}");
            if report.panics() == 0 && report.liveness_failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("tidings-fuzz: seed {seed}: {error}");
            ExitCode::from(2)
        }
    }
}
