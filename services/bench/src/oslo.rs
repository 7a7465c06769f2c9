//! The oslo section: oslo.messaging's own figures for `call-1`, `call-64` and `cast`, taken in
//! the same run as tidings' on the same broker and vhost, so that "N× oslo" is one measurement
//! rather than two tables from different moments of a shared machine.
//!
//! `tests/interop/oslo_bench.py` (built into this binary, so the figures always come from the
//! script of the same commit) runs in a child Python process — the interop venv's, which has
//! oslo.messaging — with the run's `--duration`, and writes its figures as JSON. tidings' figure
//! for each scenario is the oslo JSON row of this run (`call-1/json`, …) when it ran, else the
//! section runs tidings' side of that scenario itself. The child is bounded by a deadline and
//! killed on every path that does not see it exit, so no Python process outlives the section.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use tidings::url::Scheme;

use super::child::ChildProcess;
use super::harness::{BenchError, Result, Wire};
use super::{scenarios, Env, Row, Scenario};

/// The interpreter by default: the interop venv that `bash scripts/test --setup` makes, relative
/// to the current directory (the workspace root).
pub const DEFAULT_PYTHON: &str = ".venv/interop/bin/python";

/// The scenarios oslo_bench.py times, in its order.
pub const SCENARIOS: [Scenario; 3] = [Scenario::Call1, Scenario::Call64, Scenario::Cast];

/// The script and the module it imports, written to the run's scratch directory side by side.
const SCRIPT: &str = include_str!("../../../tests/interop/oslo_bench.py");
const COMMON: &str = include_str!("../../../tests/interop/common.py");

/// What the child may take beyond its three measurements: interpreter start and imports,
/// connections, its own wait of up to 120 s for the server to handle every cast, and a
/// reconnect pause while stopping. Past it, the child is taken to hang.
const SLACK: Duration = Duration::from_secs(180);

/// Lines of the child's stderr quoted when it fails (the traceback's end).
const STDERR_LINES: usize = 8;

/// One scenario of the section.
#[derive(Clone, Debug, Serialize)]
pub struct OsloRow {
    /// `call-1`, `call-64` or `cast`.
    #[serde(skip)]
    pub scenario: &'static str,
    /// oslo.messaging's figure.
    pub oslo: f64,
    /// tidings' figure with oslo JSON.
    pub tidings: f64,
    /// The unit of both figures.
    pub unit: &'static str,
    /// How many times better tidings did: tidings ÷ oslo for throughput, oslo ÷ tidings for
    /// latency, so that above 1 always favours tidings.
    pub tidings_over_oslo: f64,
}

/// The section.
#[derive(Clone, Debug)]
pub struct OsloReport {
    /// oslo.messaging's version, as the venv has it.
    pub version: String,
    /// One row per scenario, in [`SCENARIOS`] order.
    pub rows: Vec<OsloRow>,
}

impl OsloReport {
    /// `{"version": "18.3.1", scenario: {oslo, tidings, unit, tidings_over_oslo}}`.
    pub fn json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("version".to_owned(), self.version.clone().into());
        for row in &self.rows {
            map.insert(
                row.scenario.to_owned(),
                serde_json::to_value(row).unwrap_or_default(),
            );
        }
        serde_json::Value::Object(map)
    }
}

/// Where to find Python and whether the section was asked for by name, from which
/// [`interpreter`] decides whether it runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Selection<'a> {
    /// `--only oslo` (or a prefix of it).
    pub explicit: bool,
    /// A full run (no `--only`, no `--side`): it runs when Python is there.
    pub implicit: bool,
    /// The interpreter to run the script with.
    pub python: &'a Path,
}

/// The interpreter to run the section with; `None` to skip it. A missing interpreter fails a
/// run that named the section and is one line on stderr in a full run, which should not need
/// Python to measure tidings.
pub(crate) fn interpreter(selection: Selection<'_>) -> Result<Option<PathBuf>> {
    if !selection.explicit && !selection.implicit {
        return Ok(None);
    }
    if selection.python.is_file() {
        return Ok(Some(selection.python.to_owned()));
    }
    let how = "`bash scripts/test --setup` makes it (so does `python3 -m venv .venv/interop && \
               .venv/interop/bin/pip install oslo.messaging==18.3.1`); --oslo-python PATH names \
               another";
    if selection.explicit {
        Err(BenchError(format!(
            "the oslo section needs Python with oslo.messaging at {}: {how}",
            selection.python.display()
        )))
    } else {
        eprintln!(
            "oslo section skipped: no Python at {}: {how}; --no-oslo skips the section quietly",
            selection.python.display()
        );
        Ok(None)
    }
}

/// Steps [`run`] reports: the child, then tidings' side of each scenario the run's rows lack.
pub(crate) fn steps(rows_with_tidings: &dyn Fn(Scenario) -> bool, rounds: usize) -> usize {
    1 + SCENARIOS
        .iter()
        .filter(|scenario| !rows_with_tidings(**scenario))
        .count()
        * rounds
}

/// The `--json` row name of `scenario` with oslo JSON.
pub(crate) fn row_name(scenario: Scenario) -> String {
    format!("{}/{}", scenario.name(), Wire::Json.name())
}

/// Runs oslo_bench.py, then tidings' side of the scenarios `rows` has no tidings figure for
/// (`rounds` rounds, the best kept as for the rows).
pub(crate) async fn run(
    env: &Env,
    python: &Path,
    rows: &[Row],
    rounds: usize,
    step: &mut dyn FnMut(&str),
) -> Result<OsloReport> {
    step("oslo: oslo.messaging (call-1, call-64, cast)");
    let dir = env.scratch_file("oslo");
    std::fs::create_dir_all(&dir)?;
    let measured = run_script(env, python, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (version, figures) = measured?;

    let mut report = OsloReport {
        version,
        rows: Vec::with_capacity(SCENARIOS.len()),
    };
    for (scenario, oslo) in SCENARIOS.into_iter().zip(figures) {
        let name = row_name(scenario);
        let from_rows = rows
            .iter()
            .find(|row| row.scenario == name && row.tidings.is_finite())
            .map(|row| row.tidings);
        let tidings = match from_rows {
            Some(figure) => figure,
            None => {
                let mut best: Option<f64> = None;
                for round in 0..rounds {
                    step(&format!("oslo: {name}: tidings (round {})", round + 1));
                    let figure = scenarios::run(env, scenario, Wire::Json)
                        .await
                        .map_err(|e| BenchError(format!("oslo: {name} (tidings): {e}")))?;
                    best = Some(match best {
                        None => figure,
                        Some(kept) if scenario.lower_is_better() => kept.min(figure),
                        Some(kept) => kept.max(figure),
                    });
                }
                best.unwrap_or(f64::NAN)
            }
        };
        let tidings_over_oslo = if scenario.lower_is_better() {
            oslo / tidings
        } else {
            tidings / oslo
        };
        report.rows.push(OsloRow {
            scenario: scenario.name(),
            oslo,
            tidings,
            unit: scenario.unit(),
            tidings_over_oslo,
        });
    }
    Ok(report)
}

/// The last lines of the child's stderr, for one error message.
fn stderr_tail(process: &ChildProcess) -> String {
    let tail = process.log_tail(STDERR_LINES);
    if tail.is_empty() {
        "no output on stderr".to_owned()
    } else {
        tail
    }
}

/// The URL as oslo.messaging reads it: its `amqp://` is the AMQP 1.0 driver, so tidings'
/// `amqp://` (AMQP 0-9-1) becomes `rabbit://`.
fn oslo_url(env: &Env) -> Result<String> {
    let url = env.url.to_url_string_unredacted();
    match env.url.scheme() {
        Scheme::Rabbit => Ok(url),
        Scheme::Amqp => Ok(format!("rabbit{}", &url["amqp".len()..])),
        other => Err(BenchError(format!(
            "the oslo section needs a rabbit:// or amqp:// URL, not {}:// (oslo.messaging takes \
             TLS from its configuration, not from the URL)",
            other.as_str()
        ))),
    }
}

/// Runs the script in `dir` and reads its JSON: oslo.messaging's version and one figure per
/// scenario, in [`SCENARIOS`] order.
async fn run_script(env: &Env, python: &Path, dir: &Path) -> Result<(String, Vec<f64>)> {
    let script = dir.join("oslo_bench.py");
    std::fs::write(&script, SCRIPT)?;
    std::fs::write(dir.join("common.py"), COMMON)?;
    let json_path = dir.join("oslo.json");
    let stderr = dir.join("stderr.log");
    let timeout = SLACK + env.duration * 4;
    let child = Command::new(python)
        .arg(&script)
        .arg("--duration")
        .arg(env.duration.as_secs_f64().to_string())
        .arg("--json")
        .arg(&json_path)
        // In the environment rather than on the command line, where any user could read the
        // password.
        .env("TIDINGS_TRANSPORT_URL", oslo_url(env)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .map_err(|e| BenchError(format!("oslo: cannot start {}: {e}", python.display())))?;
    let mut process = ChildProcess::new(child, stderr);
    let Some(status) = process.wait_until(Instant::now() + timeout).await? else {
        let tail = stderr_tail(&process);
        drop(process);
        return Err(BenchError(format!(
            "oslo: oslo_bench.py did not finish within {} s and was killed: {tail}",
            timeout.as_secs()
        )));
    };
    if !status.success() {
        return Err(BenchError(format!(
            "oslo: oslo_bench.py failed ({status}) with {}: {}",
            python.display(),
            stderr_tail(&process)
        )));
    }
    let text = std::fs::read_to_string(&json_path)
        .map_err(|e| BenchError(format!("oslo: oslo_bench.py wrote no JSON: {e}")))?;
    parse(&text)
}

/// oslo_bench.py's JSON: `{"version": v, "call-1/json": {"oslo": x, "unit": u}, …}`.
fn parse(text: &str) -> Result<(String, Vec<f64>)> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| BenchError(format!("oslo: oslo_bench.py's JSON does not parse: {e}")))?;
    let version = json["version"]
        .as_str()
        .ok_or_else(|| BenchError(format!("oslo: no version in oslo_bench.py's JSON: {json}")))?
        .to_owned();
    let mut figures = Vec::with_capacity(SCENARIOS.len());
    for scenario in SCENARIOS {
        let name = row_name(scenario);
        let entry = &json[name.as_str()];
        let figure = entry["oslo"]
            .as_f64()
            .filter(|figure| figure.is_finite() && *figure > 0.0)
            .ok_or_else(|| {
                BenchError(format!(
                    "oslo: no figure for {name} in oslo_bench.py's JSON: {json}"
                ))
            })?;
        // The same yardstick on both sides, or the ratio means nothing.
        if entry["unit"].as_str() != Some(scenario.unit()) {
            return Err(BenchError(format!(
                "oslo: {name} is in {} in oslo_bench.py's JSON, {} here",
                entry["unit"],
                scenario.unit()
            )));
        }
        figures.push(figure);
    }
    Ok((version, figures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_scripts_json() {
        let text = r#"{"call-1/json": {"oslo": 3357.2, "unit": "µs/call"},
                       "call-64/json": {"oslo": 245.0, "unit": "calls/s"},
                       "cast/json": {"oslo": 442.5, "unit": "msgs/s"},
                       "version": "18.3.1"}"#;
        let (version, figures) = parse(text).unwrap();
        assert_eq!(version, "18.3.1");
        assert_eq!(figures, [3357.2, 245.0, 442.5]);
    }

    #[test]
    fn refuses_a_missing_figure_or_another_unit() {
        let missing = r#"{"call-1/json": {"oslo": 1.0, "unit": "µs/call"}, "version": "1"}"#;
        assert!(parse(missing).unwrap_err().0.contains("call-64/json"));
        let unit = r#"{"call-1/json": {"oslo": 1.0, "unit": "ms/call"}, "version": "1"}"#;
        assert!(parse(unit).unwrap_err().0.contains("ms/call"));
    }

    #[test]
    fn a_missing_python_fails_only_when_asked_for() {
        let python = Path::new("/nonexistent/bin/python");
        let asked = Selection {
            explicit: true,
            implicit: false,
            python,
        };
        let error = interpreter(asked).unwrap_err().0;
        assert!(error.contains("scripts/test --setup"), "{error}");
        let full_run = Selection {
            explicit: false,
            implicit: true,
            python,
        };
        assert!(interpreter(full_run).unwrap().is_none());
        let neither = Selection {
            explicit: false,
            implicit: false,
            python: Path::new("/bin/sh"),
        };
        assert!(interpreter(neither).unwrap().is_none());
    }
}
