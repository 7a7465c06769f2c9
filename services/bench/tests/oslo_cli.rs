//! The oslo section: oslo.messaging's benchmark run by `tidings-bench` in the same run, on the
//! machine's RabbitMQ, with the interop venv's Python (`TIDINGS_INTEROP_PYTHON`, which
//! `scripts/test` sets, else `.venv/interop/bin/python` in the workspace). Without that Python
//! the test that needs it fails under CI (where `scripts/test --setup` always makes it) and is
//! skipped, with the reason, elsewhere.
//! No speed thresholds: figures on a shared CI machine say nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

mod support;
use support::{run_bench, BenchRun};

/// The interop venv's Python, or `None` (after saying why) where a test may skip.
fn interop_python() -> Option<PathBuf> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("TIDINGS_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".venv/interop/bin/python"));
    if python.is_file() {
        return Some(python);
    }
    let why = format!(
        "no Python with oslo.messaging at {}: run `bash scripts/test --setup`, or point \
         TIDINGS_INTEROP_PYTHON at one",
        python.display()
    );
    assert!(
        std::env::var("CI").map_or(true, |ci| ci != "true"),
        "{why} (CI always has it)"
    );
    eprintln!("skipped: {why}");
    None
}

/// `--only oslo` beside one scenario row (tidings' side only, as a profiling run would have it):
/// oslo.messaging's three figures, tidings' taken from the `cast/json` row of the same run and
/// measured by the section for the two calls, and the ratio that favours tidings above 1.
#[test]
fn oslo_section_times_oslo_messaging_beside_tidings() {
    let Some(python) = interop_python() else {
        return;
    };
    let started = std::time::Instant::now();
    let mut args: Vec<OsString> = [
        "--quick",
        "--inflight",
        "0",
        "--only",
        "oslo",
        "--only",
        "cast/json",
        // The row's tidings figure is all the section takes; the baselines would only add
        // seconds.
        "--side",
        "tidings",
        "--oslo-python",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(python.into_os_string());
    let BenchRun {
        stdout,
        stderr,
        json,
    } = run_bench(args);
    eprintln!("oslo section run in {:?}", started.elapsed());
    assert!(
        stdout.contains("oslo.messaging 18.3.1, same broker, same run"),
        "{stdout}"
    );
    // Only the calls needed tidings' side from the section itself.
    assert!(stderr.contains("oslo: call-1/json: tidings"), "{stderr}");
    assert!(!stderr.contains("oslo: cast/json: tidings"), "{stderr}");

    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 3, "cast/json, load_average and oslo: {keys:?}");
    let oslo = &json["oslo"];
    assert_eq!(oslo["version"], "18.3.1", "{oslo:#}");
    for (scenario, unit) in [
        ("call-1", "µs/call"),
        ("call-64", "calls/s"),
        ("cast", "msgs/s"),
    ] {
        let entry = &oslo[scenario];
        let figure = |key: &str| {
            let n = entry[key]
                .as_f64()
                .unwrap_or_else(|| panic!("oslo.{scenario}.{key} in {oslo:#}"));
            assert!(n.is_finite() && n > 0.0, "oslo.{scenario}.{key} = {n}");
            n
        };
        let (theirs, ours, ratio) = (
            figure("oslo"),
            figure("tidings"),
            figure("tidings_over_oslo"),
        );
        assert_eq!(entry["unit"], unit, "{entry}");
        let expected = if scenario == "call-1" {
            theirs / ours
        } else {
            ours / theirs
        };
        assert!((ratio - expected).abs() < 1e-9, "{scenario}: {entry}");
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(scenario))
            .unwrap_or_else(|| panic!("no {scenario} row in\n{stdout}"));
        assert!(row.contains(unit), "{row}");
    }
    // The tidings figure of cast is the run's own cast/json row.
    assert_eq!(oslo["cast"]["tidings"], json["cast/json"]["tidings"]);
}

/// A child that fails fails the section, quoting the end of its stderr.
#[test]
fn oslo_section_fails_with_the_end_of_a_failed_childs_stderr() {
    let dir = std::env::temp_dir().join(format!(
        "tidings-bench-oslo-fake-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("python");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'warming up' >&2\necho 'ModuleNotFoundError: oslo_messaging' >&2\nexit 3\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(["--only", "oslo", "--oslo-python"])
        .arg(&fake)
        .env_remove("TIDINGS_TRANSPORT_URL")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("oslo_bench.py failed")
            && stderr.contains("ModuleNotFoundError: oslo_messaging"),
        "{stderr}"
    );
}

/// Asked for by name without its Python: a clear error before the broker is touched.
#[test]
fn oslo_section_asked_for_without_python_fails_and_says_how_to_get_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(["--only", "oslo", "--oslo-python", "/nonexistent/bin/python"])
        .env_remove("TIDINGS_TRANSPORT_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/bin/python") && stderr.contains("scripts/test --setup"),
        "{stderr}"
    );
}
