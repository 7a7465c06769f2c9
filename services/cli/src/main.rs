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
    let code = runtime.block_on(cli::run(cli));
    // The process ends here, and the runtime with it: it is not dropped, because dropping cancels
    // the tasks still running, and lapin's I/O thread, when it is still connecting (a stop soon
    // after start), waits on one of them and panics when it is cancelled.
    std::mem::forget(runtime);
    code
}
