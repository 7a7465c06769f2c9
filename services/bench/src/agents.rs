//! The agents section: the resident memory of each long-running metering agent when idle,
//! measured on the real `tidings` binary rather than inside this process, whose runtime,
//! allocations and both sides of every scenario would be counted too.
//!
//! For each kind: start `tidings meter KIND` against the run's broker and a SQLite file of its
//! own, wait until `/health` on its admin listener answers 200, let start-up allocations
//! finish, read `VmRSS` from `/proc/<pid>/status`, then stop it with SIGTERM and wait for it
//! to exit. Every wait has a deadline; a process left behind by an error is killed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::child::{ChildProcess, POLL};
use super::harness::{self, BenchError, Result};
use super::Env;

/// The long-running agents of `tidings meter`, in the order they are measured.
pub const KINDS: [&str; 7] = [
    "collector",
    "evaluator",
    "notifier",
    "polling",
    "notification",
    "api",
    "all-in-one",
];

/// The goal for an idle agent's resident set.
pub const GOAL_MIB: f64 = 20.0;

/// How long an agent may take to answer 200 on `/health` (it connects to the broker and opens
/// its store first).
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// How long after the first healthy answer the resident set is read, so that what start-up
/// allocates lazily (first deliveries, first polls, buffers) is counted.
const SETTLE: Duration = Duration::from_secs(2);

/// How long an agent may take to exit after SIGTERM (the launcher drains for up to 30 s).
const EXIT_WITHIN: Duration = Duration::from_secs(40);

/// One request to `/health`: connecting, sending and reading the status line.
const HEALTH_REQUEST: Duration = Duration::from_secs(2);

/// The `tidings` binary next to this one (both built by the same `cargo build`).
pub(crate) fn cli_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError(format!("cannot tell where this binary is: {e}")))?;
    let dir = exe
        .parent()
        .ok_or_else(|| BenchError(format!("{} has no directory", exe.display())))?;
    let binary = dir.join("tidings");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(BenchError(format!(
            "the agents section needs the tidings binary at {}: build it with \
             `cargo build --release -p tidings-cli` (without --release for a debug bench), \
             or pass --no-agents",
            binary.display()
        )))
    }
}

/// Measures each agent kind in turn; `step` is told which starts next. Returns `(kind, KiB)`.
pub(crate) async fn run(
    env: &Env,
    binary: &Path,
    step: &mut dyn FnMut(&str),
) -> Result<Vec<(String, u64)>> {
    let mut measured = Vec::with_capacity(KINDS.len());
    for kind in KINDS {
        step(&format!("agents: {kind}"));
        let rss_kib = measure(env, binary, kind)
            .await
            .map_err(|e| BenchError(format!("agents/{kind}: {e}")))?;
        measured.push((kind.to_owned(), rss_kib));
    }
    Ok(measured)
}

/// A running agent, killed (and reaped) if it is still running when dropped, so that no error
/// path leaves one behind.
struct AgentProcess {
    process: ChildProcess,
}

impl AgentProcess {
    /// Whether it has exited, with its log's last lines when it has.
    fn exited(&mut self) -> Option<String> {
        match self.process.try_wait() {
            Ok(Some(status)) => Some(format!("exited ({status}): {}", self.log_tail())),
            Ok(None) => None,
            Err(error) => Some(format!("cannot be waited for: {error}")),
        }
    }

    fn log_tail(&self) -> String {
        self.process.log_tail(5)
    }

    /// SIGTERM, then waits up to [`EXIT_WITHIN`] for the exit.
    async fn terminate(mut self) -> Result<()> {
        let pid = self.process.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !sent.success() {
            return Err(BenchError(format!("kill -TERM {pid} failed: {sent}")));
        }
        match self
            .process
            .wait_until(Instant::now() + EXIT_WITHIN)
            .await?
        {
            Some(_) => Ok(()),
            // The guard kills it.
            None => Err(BenchError(format!(
                "still running {EXIT_WITHIN:?} after SIGTERM"
            ))),
        }
    }
}

/// The flags that point `kind` at a store of its own and free ports, beside the broker URL
/// (given in the environment, so that its password is not on a command line).
fn arguments(kind: &str, store: &str) -> Vec<String> {
    let mut args = vec![
        "meter".to_owned(),
        kind.to_owned(),
        "--admin-listen".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    let with_store = ["--store".to_owned(), store.to_owned()];
    let api_listen = ["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    match kind {
        "collector" | "evaluator" | "notifier" => args.extend(with_store),
        "api" | "all-in-one" => {
            args.extend(with_store);
            args.extend(api_listen);
        }
        _ => {}
    }
    args
}

async fn measure(env: &Env, binary: &Path, kind: &str) -> Result<u64> {
    let store_file = env.scratch_file(&format!("agent-{kind}.sqlite"));
    let log = env.scratch_file(&format!("agent-{kind}.log"));
    let result = measure_with(env, binary, kind, &store_file, &log).await;
    env.remove_scratch(&store_file);
    let _ = std::fs::remove_file(&log);
    result
}

async fn measure_with(
    env: &Env,
    binary: &Path,
    kind: &str,
    store_file: &Path,
    log: &Path,
) -> Result<u64> {
    let store = format!("sqlite://{}", store_file.display());
    let child = Command::new(binary)
        .args(arguments(kind, &store))
        .env("TIDINGS_TRANSPORT_URL", env.url.to_url_string_unredacted())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .map_err(|e| BenchError(format!("cannot start {}: {e}", binary.display())))?;
    let mut agent = AgentProcess {
        process: ChildProcess::new(child, log.to_owned()),
    };
    let deadline = Instant::now() + HEALTHY_WITHIN;
    let admin = admin_address(&mut agent, deadline).await?;
    wait_healthy(&mut agent, admin, deadline).await?;
    tokio::time::sleep(SETTLE).await;
    if let Some(why) = agent.exited() {
        return Err(BenchError(why));
    }
    let rss_kib = harness::process_rss_kib(agent.process.id())
        .ok_or_else(|| BenchError("no VmRSS in its /proc status".into()))?;
    agent.terminate().await?;
    Ok(rss_kib)
}

/// The admin listener's address, from the line the agent writes on its stderr once bound.
async fn admin_address(agent: &mut AgentProcess, deadline: Instant) -> Result<SocketAddr> {
    const MARK: &str = "admin listener on http://";
    loop {
        let log = std::fs::read_to_string(agent.process.log()).unwrap_or_default();
        let address = log.lines().find_map(|line| {
            let rest = &line[line.find(MARK)? + MARK.len()..];
            rest.split_whitespace().next()?.parse().ok()
        });
        if let Some(address) = address {
            return Ok(address);
        }
        if let Some(why) = agent.exited() {
            return Err(BenchError(why));
        }
        if Instant::now() >= deadline {
            return Err(BenchError(format!(
                "no admin listener within {HEALTHY_WITHIN:?}: {}",
                agent.log_tail()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `/health` answers 200.
async fn wait_healthy(
    agent: &mut AgentProcess,
    admin: SocketAddr,
    deadline: Instant,
) -> Result<()> {
    loop {
        let last = match tokio::task::spawn_blocking(move || health_status(admin)).await? {
            Ok(200) => return Ok(()),
            Ok(status) => format!("status {status}"),
            Err(error) => error.to_string(),
        };
        if let Some(why) = agent.exited() {
            return Err(BenchError(why));
        }
        if Instant::now() >= deadline {
            return Err(BenchError(format!(
                "/health not 200 within {HEALTHY_WITHIN:?} (last: {last}): {}",
                agent.log_tail()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The status code of `GET /health` (HTTP/1.0, so the server closes after answering).
fn health_status(admin: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&admin, HEALTH_REQUEST)?;
    stream.set_read_timeout(Some(HEALTH_REQUEST))?;
    stream.set_write_timeout(Some(HEALTH_REQUEST))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    // The status line fits in the first read's worth; the body is not needed.
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        let n = stream.read(&mut head[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
        if head[..filled].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..filled]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP status line: {line:?}"),
            )
        })
}
