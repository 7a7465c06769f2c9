//! The test cluster of `tests/cluster/rabbit-cluster.sh`: three RabbitMQ nodes (`tda`, `tdb`,
//! `tdc`) on 127.0.0.1 beside the machine's own broker, joined into one cluster, each with a
//! TLS listener on a CA the script makes.
//!
//! Its facts (URLs, certificates, state directory) come from the `TDC_*` variables `scripts/test`
//! exports after starting it. Without them, the first use starts the cluster by running the
//! script (`ensure`: a cluster already running is reused), and the script stops a cluster it
//! started once this test process has exited. A cluster that cannot start fails the test with
//! the command to run: the cluster suites never skip.
//!
//! Everything here is synchronous (it runs the script and `rabbitmqctl`, ~0.5 s each); async
//! tests call it through [`blocking`]. The guards ([`Restore`], [`ClusterVhost`]) work in
//! `Drop`, so they also run while a failed test unwinds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The nodes of the cluster, seed first.
pub const NODES: [&str; 3] = ["tda", "tdb", "tdc"];

/// The test cluster, started or found once per test process.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::find_or_start)
}

/// Runs `work` (which may block: scripts, `rabbitmqctl`) off the runtime's worker threads; a
/// panic in it fails the calling test.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// The running test cluster.
#[derive(Debug)]
pub struct Cluster {
    vars: BTreeMap<String, String>,
    script: PathBuf,
}

impl Cluster {
    /// The script that runs the cluster.
    pub fn script_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/rabbit-cluster.sh")
    }

    fn find_or_start() -> Self {
        let script = Self::script_path();
        let vars: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("TDC_"))
            .collect();
        if vars.contains_key("TDC_TRANSPORT_URL") {
            return Self { vars, script };
        }
        let how_to_fix = format!(
            "the cluster suite needs the 3-node test cluster: run `eval \"$({} start)\"` \
             (needs rabbitmq-server and openssl) and run the tests again from that shell, or \
             see ../shared/reference/rabbit-cluster.md",
            script.display()
        );
        eprintln!(
            "[cluster] TDC_* not set: starting the test cluster with {} ensure",
            script.display()
        );
        let started = std::time::Instant::now();
        let output = Command::new(&script)
            .args(["ensure", "--stop-with", &std::process::id().to_string()])
            .output()
            .unwrap_or_else(|e| panic!("{how_to_fix}: cannot run the script: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{how_to_fix}\n--- the script said ---\n{stderr}"
        );
        eprintln!(
            "[cluster] cluster ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let vars = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), unquote(v)))
            .collect();
        Self { vars, script }
    }

    /// A `TDC_*` variable of the cluster; panics naming it when it is missing.
    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "{key} is not set: export every line of `{} start` (or unset TDC_TRANSPORT_URL \
                 and let the suite start the cluster)",
                self.script.display()
            )
        })
    }

    /// `TDC_STATE` for the script's environment, or nothing (the script's default) when it is
    /// unknown; for guards, which must not panic while a test unwinds.
    pub fn state_env(&self) -> Option<(&'static str, String)> {
        self.vars.get("TDC_STATE").map(|s| ("TDC_STATE", s.clone()))
    }

    /// The state directory (certificates, node data and logs).
    pub fn state(&self) -> PathBuf {
        PathBuf::from(self.var("TDC_STATE"))
    }

    /// The multi-host plain URL of `vhost` with `query` (`k=v&…`, may be empty).
    pub fn url(&self, vhost: &str, query: &str) -> String {
        with_vhost(self.var("TDC_TRANSPORT_URL"), vhost, query)
    }

    /// The multi-host URL of the TLS listeners of `vhost` with `query`; TLS itself is for the
    /// query (`ssl=1&ssl_ca_file=…`) to ask.
    pub fn tls_url(&self, vhost: &str, query: &str) -> String {
        with_vhost(self.var("TDC_TRANSPORT_URL_TLS"), vhost, query)
    }

    /// `amqps://` to one node's TLS listener (host `localhost`, the certificate's name).
    pub fn amqps_url(&self, node: &str, vhost: &str, query: &str) -> String {
        let key = format!("TDC_AMQPS_URL_{}", node.to_uppercase());
        let base = self.var(&key);
        let base = base.strip_suffix("%2F").unwrap_or(base);
        with_vhost(base, vhost, query)
    }

    /// Runs the script with `args`; its stdout, or a panic with its stderr.
    pub fn script(&self, args: &[&str]) -> String {
        let output = Command::new(&self.script)
            .args(args)
            .env("TDC_STATE", self.var("TDC_STATE"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} {args:?}: {e}", self.script.display()));
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}{}",
            self.script.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `rabbitmqctl -q ARGS` on `node` (`any` picks a running one).
    pub fn ctl(&self, node: &str, args: &[&str]) -> String {
        let mut all = vec!["ctl", node, "-q"];
        all.extend_from_slice(args);
        self.script(&all)
    }

    /// SIGKILL of `node`; returns once its VM is gone.
    pub fn kill(&self, node: &str) {
        self.script(&["kill", node]);
    }

    /// Starts `node` again (after a kill); returns once it listens.
    pub fn restart(&self, node: &str) {
        self.script(&["restart", node]);
    }

    /// Starts every node that is down.
    pub fn heal(&self) {
        self.script(&["heal"]);
    }

    /// The node leading quorum queue `queue` of `vhost`.
    pub fn leader(&self, queue: &str, vhost: &str) -> String {
        self.script(&["leader", queue, vhost]).trim().to_owned()
    }

    /// The members of quorum queue `queue` of `vhost` that are online (node names, short).
    pub fn online_members(&self, queue: &str, vhost: &str) -> Vec<String> {
        let json = self.ctl(
            "any",
            &[
                "list_queues",
                "-p",
                vhost,
                "name",
                "online",
                "--formatter",
                "json",
            ],
        );
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("list_queues printed no JSON ({e}): {json}"));
        rows.iter()
            .find(|row| row["name"] == queue)
            .and_then(|row| row["online"].as_array())
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n.as_str())
                    .map(|n| n.trim_end_matches("@localhost").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes queue `queue` of `vhost` as an operator does; returns how many messages it held
    /// (RabbitMQ says so), which were destroyed with it.
    pub fn delete_queue(&self, queue: &str, vhost: &str) -> usize {
        // -q would drop the line that counts the messages.
        let out = self.script(&["ctl", "any", "delete_queue", "-p", vhost, queue]);
        // "Queue was successfully deleted with 3 ready messages"
        out.split_whitespace()
            .skip_while(|w| *w != "with")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("delete_queue said something unexpected: {out}"))
    }

    /// Lines of every node's log written at or after `since` that contain `needle`.
    pub fn log_lines_since(&self, since: SystemTime, needle: &str) -> Vec<(SystemTime, String)> {
        let state = self.state();
        let mut found = Vec::new();
        for node in NODES {
            let path = state
                .join(node)
                .join("log")
                .join(format!("{node}@localhost.log"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for line in text.lines().filter(|l| l.contains(needle)) {
                if let Some(at) = log_time(line).filter(|at| *at >= since) {
                    found.push((at, line.to_owned()));
                }
            }
        }
        found.sort();
        found
    }

    /// AMQP connections the nodes accepted in `[from, to)`, from their logs.
    ///
    /// The broker logs each accepted connection at info level ("accepting AMQP connection"),
    /// about a second late; read this once `to` is a second or more in the past.
    // The broker's count, not the client's: `Transport::stats().connections_opened` also
    // counts attempts on a node that refused the TCP connection.
    pub fn connections_accepted(&self, from: SystemTime, to: SystemTime) -> usize {
        self.log_lines_since(from, "accepting AMQP connection")
            .iter()
            .filter(|(at, _)| *at < to)
            .count()
    }
}

/// A value as bash's `printf %q` quotes it, back to itself: each `\x` is `x`. (Paths with
/// characters that need `$'…'` quoting are not supported.)
fn unquote(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The time stamp that starts a RabbitMQ log line: `2026-12-01 03:32:01.813596+00:00 [info] …`.
fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split(" [").next()?;
    let at = chrono::DateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f%:z").ok()?;
    Some(SystemTime::from(at))
}

fn with_vhost(base: &str, vhost: &str, query: &str) -> String {
    let base = base.trim_end_matches('/');
    if query.is_empty() {
        format!("{base}/{vhost}")
    } else {
        format!("{base}/{vhost}?{query}")
    }
}

/// A vhost of its own on the cluster for one test, with every permission for `guest`; deleted
/// when dropped (even when the test fails).
#[derive(Debug)]
pub struct ClusterVhost {
    name: String,
}

impl ClusterVhost {
    /// A fresh vhost named after `what`.
    pub fn new(what: &str) -> Self {
        let name = format!(
            "tdc-{what}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let cluster = cluster();
        cluster.ctl("any", &["add_vhost", &name]);
        cluster.ctl(
            "any",
            &["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"],
        );
        Self { name }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ClusterVhost {
    fn drop(&mut self) {
        let _ = Command::new(Cluster::script_path())
            .args(["ctl", "any", "-q", "delete_vhost", &self.name])
            .envs(cluster().state_env())
            .output();
    }
}

/// Starts every node that is down when dropped, so a failed test leaves the cluster whole for
/// the next one. Synchronous: it may run while unwinding.
#[derive(Debug, Default)]
pub struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let started = std::time::Instant::now();
        let healed = Command::new(Cluster::script_path())
            .arg("heal")
            .envs(cluster().state_env())
            .output();
        match healed {
            Ok(output) if output.status.success() => {
                let took = started.elapsed();
                if took > std::time::Duration::from_secs(1) {
                    println!(
                        "[cluster] killed nodes restarted in {:.1} s",
                        took.as_secs_f64()
                    );
                }
            }
            Ok(output) => eprintln!(
                "[cluster] could not restart the killed nodes: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("[cluster] could not run the script to heal: {error}"),
        }
    }
}
