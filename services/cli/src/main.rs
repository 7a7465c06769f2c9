//! The `tidings` command: the metering service's agents (`meter`), calls, casts and
//! notifications from the shell, and a demo server. This crate parses flags and configuration
//! and hands over to the library crates; it holds no service logic of its own beyond the demo.

mod cli;
mod demo;

use std::process::ExitCode;

/// jemalloc, set up in `.cargo/config.toml` to give freed memory back to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    cli::init_tracing(cli.verbose, cli.log_format);
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
    runtime.block_on(cli::run(cli))
}
