//! The interop Python with Ceilometer, for the metering suites that check against the real
//! thing. `TIDINGS_INTEROP_PYTHON` names it (`scripts/test` creates `.venv/interop` with
//! `ceilometer==27.0.0` and sets it), else `.venv/interop/bin/python` in the workspace.
//! Without it these tests fail: they are the proof of compatibility and never skip.
#![allow(dead_code)] // each suite uses a part of it

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The release `scripts/test` installs.
pub const CEILOMETER_VERSION: &str = "27.0.0";

/// The interpreter, checked once: it must import Ceilometer at the pinned release.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = std::env::var_os("TIDINGS_INTEROP_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join(".venv/interop/bin/python"));
        let how_to_fix = format!(
            "these tests need Python with ceilometer=={CEILOMETER_VERSION}: run `bash \
             scripts/test --setup` (it installs it in .venv/interop), or point \
             TIDINGS_INTEROP_PYTHON at such an interpreter (tried {})",
            python.display()
        );
        let probe = Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m, ceilometer; print(m.version('ceilometer'))",
            ])
            .output()
            .unwrap_or_else(|e| panic!("{how_to_fix}: cannot run it: {e}"));
        assert!(
            probe.status.success(),
            "{how_to_fix}: `import ceilometer` failed: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let version = String::from_utf8_lossy(&probe.stdout).trim().to_owned();
        assert_eq!(version, CEILOMETER_VERSION, "{how_to_fix}: found {version}");
        python
    })
}

/// A script from `services/metering/tests/ceilometer/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ceilometer")
        .join(name)
}

/// A Python helper answering one JSON line per JSON request line. Killed when dropped.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    pub fn spawn(name: &str) -> Self {
        let mut child = Command::new(python())
            .arg(script(name))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    pub fn ask(&mut self, request: &Value) -> Value {
        writeln!(self.stdin, "{request}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("helper answered {line:?} to {request}: {e}"))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
