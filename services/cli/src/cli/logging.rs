//! Log output on stderr, as text or JSON lines, with a level that a configuration reload can
//! change.
//!
//! The level comes from, in order: `-v`/`-vv`, `RUST_LOG`, the configuration's `log_level`
//! (`[DEFAULT] debug`/`log_level` in an INI file), `warn`. The first two are fixed for the
//! process; the configuration's is applied again at every reload.

use std::sync::OnceLock;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use super::LogFormat;

/// The filter a reload may replace; `None` when the command line or `RUST_LOG` fixed it.
static CONFIGURABLE: OnceLock<Option<reload::Handle<EnvFilter, Registry>>> = OnceLock::new();

/// Installs the global subscriber (once; later calls do nothing).
pub fn init<W>(verbose: u8, format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let fixed = match verbose {
        0 => std::env::var("RUST_LOG")
            .ok()
            .filter(|directives| !directives.trim().is_empty()),
        1 => Some("info".to_owned()),
        _ => Some("debug".to_owned()),
    };
    let configurable = fixed.is_none();
    let filter = filter_of(fixed.as_deref().unwrap_or("warn"));
    let (filter, handle) = reload::Layer::new(filter);
    let output: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                // Colours for a person at a terminal, not for a log file or a journal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(writer),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(writer),
        ),
    };
    // The filter goes on the output layer (a per-layer filter), so the reload handle's type
    // stays `Handle<EnvFilter, Registry>`.
    let installed = tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .try_init()
        .is_ok();
    let _ = CONFIGURABLE.set((installed && configurable).then_some(handle));
}

/// Applies the configuration's log level (`info`, `debug`, `tidings=debug,lapin=warn`), unless
/// the command line or `RUST_LOG` set one; `None` goes back to `warn`. A level that does not
/// parse is refused with the reason, and the current one stays.
pub fn apply_configured_level(level: Option<&str>) -> Result<(), String> {
    let Some(Some(handle)) = CONFIGURABLE.get() else {
        return Ok(());
    };
    let directives = level.unwrap_or("warn");
    let filter = EnvFilter::try_new(directives)
        .map_err(|error| format!("log_level {directives:?}: {error}"))?;
    let filter = quiet_lapin(filter);
    handle
        .modify(|current| *current = filter)
        .map_err(|error| error.to_string())
}

fn filter_of(directives: &str) -> EnvFilter {
    quiet_lapin(EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("warn")))
}

/// lapin logs every returned message at warn; the transport reports them itself.
fn quiet_lapin(filter: EnvFilter) -> EnvFilter {
    match tidings::transport::amqp::QUIET_LAPIN_RETURNS.parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    }
}
