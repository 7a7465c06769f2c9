//! Running `tidings-bench` from a suite: the binary against the machine's RabbitMQ (the default
//! URL, so each run makes and deletes a private vhost), its JSON file read back and removed.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings-bench"));
    command
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .env_remove("TIDINGS_TRANSPORT_URL");
    let output = output_within(&mut command, BENCH_DEADLINE);
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

/// Longest a bench run of a suite may take: a few times the slowest one on a loaded machine
/// (the store-scale run, about two minutes), so that a run that hangs fails the suite with
/// what it printed and where it waits instead of holding CI until its own deadline.
pub const BENCH_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Runs `command` to its end, as `Command::output` does, but at most `deadline`: past it, the
/// test fails with the program's output so far and, where `gdb` is installed, the stack of
/// each of its threads, and the program is killed with every process it started.
pub fn output_within(command: &mut Command, deadline: Duration) -> Output {
    let scratch = std::env::temp_dir().join(format!(
        "tidings-bench-run-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&scratch).unwrap();
    let (stdout_path, stderr_path) = (scratch.join("stdout"), scratch.join("stderr"));
    // A group of its own, so that the agents a bench runs are killed with it.
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done.send(());
        status
    });
    let in_time = finished.recv_timeout(deadline).is_ok();
    if !in_time {
        let stacks = Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("(no stacks: gdb: {e})"));
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pid}")])
            .status();
        let _ = waiter.join();
        let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&scratch);
        panic!(
            "{command:?} still ran after {deadline:?}; killed.\nstdout:\n{stdout}\nstderr:\n{stderr}\nthreads:\n{stacks}"
        );
    }
    let status = waiter.join().unwrap().unwrap();
    let output = Output {
        status,
        stdout: std::fs::read(&stdout_path).unwrap(),
        stderr: std::fs::read(&stderr_path).unwrap(),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    output
}
