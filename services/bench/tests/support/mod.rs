//! Running `tidings-bench` from a suite: the binary against the machine's RabbitMQ (the default
//! URL, so each run makes and deletes a private vhost), its JSON file read back and removed.

use std::ffi::OsStr;
use std::process::Command;

use serde_json::Value;

/// What a successful run printed and wrote.
#[allow(dead_code)] // Each suite is a crate of its own, and not every one reads every part.
pub struct BenchRun {
    pub stdout: String,
    pub stderr: String,
    pub json: Value,
}

/// Runs the bench with `args` and `--json` into a file of its own; fails the test with both
/// outputs when the run fails.
pub fn run_bench<I, S>(args: I) -> BenchRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let json_path = std::env::temp_dir().join(format!(
        "tidings-bench-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .env_remove("TIDINGS_TRANSPORT_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "bench failed: {stdout}\n{stderr}");
    let json = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json_path);
    BenchRun {
        stdout,
        stderr,
        json,
    }
}
