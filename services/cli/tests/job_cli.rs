//! `tidings job run|status|wait|results|list` against `tidings demo-server`s on the machine's
//! RabbitMQ, as an operator runs them: the id alone on stdout at once, the status lines, the
//! JSON lines of results, and `wait`'s exit codes (0 all parts succeeded, 1 some failed,
//! 2 timeout).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failure to run the binary fails the test

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tidings_suites::Bus;

const TOPIC: &str = "jobs-cli";

fn tidings(url: &str, store: &PathBuf, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .env("TIDINGS_TRANSPORT_URL", url)
        .env("TIDINGS_JOB_STORE", store)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A demo server process, stopped with SIGTERM on drop.
struct DemoServer(Child);

impl DemoServer {
    fn start(url: &str, server: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args([
                "demo-server",
                "--url",
                url,
                "--topic",
                TOPIC,
                "--server",
                server,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Calls `echo` on `server` until it answers (its queues exist once it does).
fn wait_until_served(url: &str, store: &PathBuf, server: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let args = [
            "call",
            "--topic",
            TOPIC,
            "--server",
            server,
            "--timeout",
            "2",
            "echo",
            r#"{"x": 0}"#,
        ];
        if tidings(url, store, &args).status.success() {
            return;
        }
    }
    panic!("demo server {server} never answered");
}

struct StoreFile(PathBuf);

impl Drop for StoreFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[test]
fn job_run_status_wait_results_against_demo_servers() {
    let bus = Bus::amqp();
    let url = bus.url().to_owned();
    let store = StoreFile(std::env::temp_dir().join(format!(
        "tidings-job-cli-{}.sqlite",
        uuid::Uuid::new_v4().simple()
    )));
    let store_path = store.0.clone();
    let _d1 = DemoServer::start(&url, "d-1");
    let _d2 = DemoServer::start(&url, "d-2");
    wait_until_served(&url, &store_path, "d-1");
    wait_until_served(&url, &store_path, "d-2");

    // Three parts of 3 s, one on a server that does not exist: the id comes at once.
    let started = Instant::now();
    let run = tidings(
        &url,
        &store_path,
        &[
            "job",
            "run",
            "--topic",
            TOPIC,
            "--servers",
            "d-1,d-2,d-gone",
            "slow",
            r#"{"secs": 3}"#,
        ],
    );
    assert!(run.status.success(), "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "before any part ended"
    );
    let id = stdout(&run);
    assert!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "the id alone: {id:?}"
    );

    let status = tidings(&url, &store_path, &["job", "status", &id]);
    assert!(status.status.success());
    let text = stdout(&status);
    let first = text.lines().next().unwrap();
    assert!(["RUNNING", "PARTIAL"].contains(&first), "{text}");

    let waited = tidings(&url, &store_path, &["job", "wait", &id, "--timeout", "0.5"]);
    assert_eq!(waited.status.code(), Some(2), "timeout: {waited:?}");

    let waited = tidings(&url, &store_path, &["job", "wait", &id, "--timeout", "30"]);
    assert_eq!(waited.status.code(), Some(1), "a part failed: {waited:?}");
    assert_eq!(stdout(&waited), "FINISHED");

    let status = tidings(&url, &store_path, &["job", "status", &id]);
    let text = stdout(&status);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "FINISHED");
    for (server, status) in [
        ("d-1", "FINISHED"),
        ("d-2", "FINISHED"),
        ("d-gone", "FINISHED"),
    ] {
        assert!(
            lines[1..]
                .iter()
                .any(|l| l.split_whitespace().take(2).eq([server, status])),
            "{text}"
        );
    }

    let results = tidings(&url, &store_path, &["job", "results", &id]);
    let parts: Vec<Value> = stdout(&results)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parts.len(), 3);
    for part in &parts {
        let keys: Vec<&str> = part
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            keys.contains(&"server") && keys.contains(&"status"),
            "{part}"
        );
        match part["server"].as_str().unwrap() {
            "d-gone" => assert_eq!(part["error"]["class"], "ServerUnreachable", "{part}"),
            _ => assert_eq!(part["result"], "done", "{part}"),
        }
    }

    // Every part succeeds: exit 0.
    let run = tidings(
        &url,
        &store_path,
        &[
            "job",
            "run",
            "--topic",
            TOPIC,
            "--servers",
            "d-*",
            "echo",
            r#"{"x": 7}"#,
        ],
    );
    let second = stdout(&run);
    let waited = tidings(
        &url,
        &store_path,
        &["job", "wait", &second, "--timeout", "30"],
    );
    assert_eq!(waited.status.code(), Some(0), "{waited:?}");
    let results = tidings(&url, &store_path, &["job", "results", &second]);
    assert_eq!(
        stdout(&results).lines().count(),
        2,
        "both demo servers discovered"
    );

    let list = tidings(&url, &store_path, &["job", "list"]);
    let text = stdout(&list);
    assert!(text.contains(&id) && text.contains(&second), "{text}");
}
