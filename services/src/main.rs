//! The `tidings` command: demo server, calls and casts from the shell, and (later) the metering
//! services.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match tidings_services::cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
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
