//! The Python peers of the interop suites: the scripts in `tests/interop/`, run with the
//! interpreter named by `TIDINGS_INTEROP_PYTHON` (`scripts/test` creates `.venv/interop` and sets
//! it), else `.venv/interop/bin/python` in the workspace. Without one that imports
//! oslo.messaging 18.3.1 every test using them fails: they are the proof of wire compatibility
//! and never skip.
//!
//! A Python process prints one JSON object per line; its guard ([`Python`]) kills it when
//! dropped, so a failing test leaves nothing running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::Bus;

/// The oslo.messaging release `scripts/test` installs.
pub const OSLO_MESSAGING_VERSION: &str = "18.3.1";

/// How long a Python process may take to print its next line (start-up included).
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The Python interpreter with oslo.messaging, checked once; panics (failing the test) when it
/// is missing or has another version.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = std::env::var_os("TIDINGS_INTEROP_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join(".venv/interop/bin/python"));
        let how_to_fix = format!(
            "the interop tests need Python with oslo.messaging=={OSLO_MESSAGING_VERSION}: run \
             `bash scripts/test --setup` (it creates .venv/interop), or point \
             TIDINGS_INTEROP_PYTHON at such an interpreter (tried {})",
            python.display()
        );
        let probe = std::process::Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m, oslo_messaging; print(m.version('oslo.messaging'))",
            ])
            .output()
            .unwrap_or_else(|e| panic!("{how_to_fix}: cannot run it: {e}"));
        let version = String::from_utf8_lossy(&probe.stdout).trim().to_owned();
        assert!(
            probe.status.success(),
            "{how_to_fix}: `import oslo_messaging` failed: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        assert_eq!(
            version, OSLO_MESSAGING_VERSION,
            "{how_to_fix}: found oslo.messaging {version}"
        );
        python
    })
}

/// A running Python script. Dropping it kills the process (`kill_on_drop`); its stdin stays
/// open while it lives (or until [`close_stdin`](Self::close_stdin)), and the servers and
/// listeners stop when it closes, so they end even if this test process is killed outright.
#[derive(Debug)]
pub struct Python {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
}

impl Python {
    /// Starts `script` (a file in `tests/interop/`) with `args`.
    pub fn spawn(script: &str, args: &[&str]) -> Self {
        Self::spawn_with_env(script, args, &[])
    }

    /// Starts `script` with `args` and the environment variables `env` added (for example
    /// `TIDINGS_OSLO_CONFIG_FILE`, an oslo.config file the scripts load; see
    /// `tests/interop/common.py`).
    pub fn spawn_with_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("interop")
            .join(script);
        let mut child = Command::new(python())
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .env("PYTHONUNBUFFERED", "1")
            // No __pycache__ beside the scripts in the work tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut buf).await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            what: format!("{script} {}", args.join(" ")),
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// Closes the process's stdin: a server or listener stops cleanly and exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits (briefly) until the process's stderr is read to its end, so a failure report
    /// after it exited shows everything it wrote.
    pub async fn drain_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
    }

    /// Fails the test with what the process wrote on stderr.
    pub fn fail(&self, why: &str) -> ! {
        let stderr = self.stderr.lock().unwrap().clone();
        let tail: String = {
            let chars: Vec<char> = stderr.chars().collect();
            chars[chars.len().saturating_sub(6000)..].iter().collect()
        };
        panic!("{}: {why}\n--- its stderr (end) ---\n{tail}", self.what)
    }

    /// The next JSON line, or `None` when the process closed its stdout.
    pub async fn next_line(&mut self) -> Option<Value> {
        let line = match tokio::time::timeout(LINE_TIMEOUT, self.stdout.next_line()).await {
            Ok(Ok(line)) => line?,
            Ok(Err(e)) => self.fail(&format!("reading its stdout failed: {e}")),
            Err(_) => self.fail(&format!("printed nothing for {LINE_TIMEOUT:?}")),
        };
        match serde_json::from_str(&line) {
            Ok(value) => Some(value),
            Err(e) => self.fail(&format!("printed a line that is not JSON ({e}): {line}")),
        }
    }

    /// Every remaining line, then the exit status, which must be success.
    pub async fn finish(mut self) -> Vec<Value> {
        let mut lines = Vec::new();
        while let Some(line) = self.next_line().await {
            lines.push(line);
        }
        let status = tokio::time::timeout(LINE_TIMEOUT, self.child.wait()).await;
        self.drain_stderr().await;
        match status {
            Ok(Ok(status)) if status.success() => lines,
            Ok(Ok(status)) => self.fail(&format!("exited with {status}")),
            Ok(Err(e)) => self.fail(&format!("wait failed: {e}")),
            Err(_) => self.fail("did not exit after closing its stdout"),
        }
    }
}

/// An oslo.messaging RPC server (`tests/interop/rpc_server.py`) named `name` on `topic`, with
/// `extra` as further arguments; ready: its queues exist.
pub async fn rpc_server(bus: &Bus, topic: &str, name: &str, extra: &[&str]) -> Python {
    let mut args = vec![bus.url(), topic, name];
    args.extend_from_slice(extra);
    let mut server = Python::spawn("rpc_server.py", &args);
    match server.next_line().await {
        Some(line) if line["event"] == "ready" => server,
        Some(line) => server.fail(&format!("expected the ready line, got {line}")),
        None => {
            server.drain_stderr().await;
            server.fail("exited before it was ready")
        }
    }
}

/// What a Python client run printed, by operation id.
#[derive(Debug)]
pub struct Outcomes(pub HashMap<String, Value>);

impl Outcomes {
    /// The line printed for `id`, whatever it says.
    pub fn get(&self, id: &str) -> &Value {
        self.0
            .get(id)
            .unwrap_or_else(|| panic!("no outcome for {id}: {self:#?}"))
    }

    /// The result of `id`, which must have succeeded.
    pub fn result(&self, id: &str) -> &Value {
        let outcome = self.get(id);
        assert!(outcome["error"].is_null(), "{id} failed: {outcome:#}");
        &outcome["result"]
    }

    /// The error of `id` as Python saw it (class, module, message, args, exc_type, value).
    pub fn error(&self, id: &str) -> &Value {
        let outcome = self.get(id);
        assert!(
            outcome.get("error").is_some(),
            "{id} succeeded: {outcome:#}"
        );
        &outcome["error"]
    }
}

/// Runs `ops` (see `tests/interop/rpc_client.py`) in order with an oslo.messaging RPC client
/// on `topic`.
pub async fn rpc_client(bus: &Bus, topic: &str, ops: Value) -> Outcomes {
    rpc_client_at(bus.url(), topic, ops, &[]).await
}

/// [`rpc_client`] on the transport URL `url`, with the environment variables `env` added.
pub async fn rpc_client_at(url: &str, topic: &str, ops: Value, env: &[(&str, &str)]) -> Outcomes {
    let count = ops.as_array().map_or(0, Vec::len);
    let lines = Python::spawn_with_env("rpc_client.py", &[url, topic, &ops.to_string()], env)
        .finish()
        .await;
    let outcomes: HashMap<String, Value> = lines
        .into_iter()
        .map(|line| (line["id"].as_str().unwrap_or_default().to_owned(), line))
        .collect();
    assert_eq!(
        outcomes.len(),
        count,
        "one line per operation: {outcomes:#?}"
    );
    Outcomes(outcomes)
}
