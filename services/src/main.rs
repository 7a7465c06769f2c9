//! The `tidings` command: demo server, calls and casts from the shell, and (later) the metering
//! services.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tidings_services::cli::Cli::parse();
    tidings_services::cli::init_tracing(cli.verbose);
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
    runtime.block_on(tidings_services::cli::run(cli))
}
