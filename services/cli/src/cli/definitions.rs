//! Meter definitions from the shell: `tidings meter check-definitions FILE` (what each
//! definition makes of the notifications in FILE, one JSON line each, nothing published), and
//! the loading and SIGHUP reloading of the notification agent's definitions for `meter.rs`.
//!
//! Exit codes of `check-definitions`: 0 when every definition loaded, 1 when some were
//! rejected (the lines say which and why), 3 when the definitions or the notifications file
//! cannot be read at all.

use std::path::PathBuf;
use std::process::ExitCode;

use super::exit;
use tidings_metering::notification::check::check;
use tidings_metering::notification::definitions::{
    DefinitionSet, MeterDefinitions, SampleOptions, Source,
};

/// Arguments of `tidings meter check-definitions`.
#[derive(Debug, clap::Args)]
pub struct CheckDefinitionsArgs {
    /// A notifications file: one notification (oslo envelope, message, or Ceilometer's
    /// `{ctxt, publisher_id, event_type, payload, metadata}`), a JSON list, or JSON lines.
    file: PathBuf,
    /// Meter definitions: a meters.yaml file or a directory of *.yaml (repeatable; the
    /// built-in file when none).
    #[arg(long = "meter-definitions", value_name = "PATH")]
    meter_definitions: Vec<PathBuf>,
    /// `sample_source` of the samples.
    #[arg(long, default_value = "openstack")]
    sample_source: String,
}

/// Runs `tidings meter check-definitions`.
pub async fn run_check_definitions(args: CheckDefinitionsArgs) -> ExitCode {
    let sources: Vec<Source> = args
        .meter_definitions
        .into_iter()
        .map(Source::Path)
        .collect();
    let set = match DefinitionSet::load(&sources) {
        Ok(set) => set,
        Err(error) => return fail(&error.to_string()),
    };
    let text = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(error) => return fail(&format!("cannot read {}: {error}", args.file.display())),
    };
    let options = SampleOptions {
        source: args.sample_source,
        ..SampleOptions::default()
    };
    match check(&set, &text, &options) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            let rejected = set.problems().iter().any(|p| p.kind == "rejected");
            ExitCode::from(u8::from(rejected))
        }
        Err(error) => fail(&error.to_string()),
    }
}

/// Loads the notification agent's definitions before it starts, so that a file that cannot be
/// read stops the command with its reason; rejected definitions are warnings.
pub fn load_at_start(definitions: &MeterDefinitions) -> Result<(), String> {
    let report = definitions.reload().map_err(|e| e.to_string())?;
    for problem in report.problems.iter().filter(|p| p.kind == "rejected") {
        eprintln!(
            "warning: meter definition {} in {} not loaded: {}",
            problem.definition, problem.file, problem.reason
        );
    }
    Ok(())
}

/// What SIGHUP does to the definitions: read them again; on an error keep those in use and
/// say why (the launcher's other configuration reloads regardless).
pub fn reload_on_hangup(definitions: &MeterDefinitions) {
    match definitions.reload() {
        Ok(report) => tracing::info!(
            definitions = report.loaded,
            rejected = report
                .problems
                .iter()
                .filter(|p| p.kind == "rejected")
                .count(),
            "meter definitions reloaded"
        ),
        Err(error) => {
            tracing::warn!(%error, "meter definitions not reloaded; keeping those in use")
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(exit::CANNOT_RUN)
}
