//! What the hostile-input suites share: `tidings` child processes watched from outside (their
//! output, whether they panicked, their peak RSS), a raw AMQP publisher that sends bodies as
//! they are, and builders of oslo envelopes, MessagePack bodies and junk.

#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Map, Value};
use tidings_suites::Bus;

pub const JSON: &str = "application/json";
pub const MSGPACK: &str = "application/msgpack";
pub const MIB: usize = 1024 * 1024;

/// A `tidings` child process: its stderr collected as it comes, its stdout lines on a channel,
/// killed (and reaped) on drop so that a failing test leaves nothing running.
pub struct Peer {
    what: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    /// Starts `tidings ARGS`.
    pub fn start(what: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let (send, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            what: what.to_owned(),
            child,
            stderr,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The end of its stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let all = self.stderr();
        let chars: Vec<char> = all.chars().collect();
        chars[chars.len().saturating_sub(4000)..].iter().collect()
    }

    /// Its stderr from the first panic on (the message and the start of the backtrace), or
    /// `None` when it never panicked.
    pub fn panic_report(&self) -> Option<String> {
        let all = self.stderr();
        let at = all.find("panicked")?;
        let start = all[..at].rfind('\n').map_or(0, |i| i + 1);
        Some(all[start..].chars().take(3000).collect())
    }

    /// Waits until its stderr contains `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(needle) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} never wrote {needle:?}; stderr:\n{}",
                self.what,
                self.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The next stdout line, or `None` when none came within `limit`.
    pub fn next_line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Fails the test when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            // Let the reader thread take the last lines.
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "{} exited ({status}); stderr:\n{}",
                self.what,
                self.stderr_tail()
            );
        }
    }

    /// Peak resident set size so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        peak_rss_mib(self.child.id())
    }

    /// Still running, never panicked, peak RSS under `bound_mib`; returns the peak.
    pub fn assert_healthy(&mut self, bound_mib: f64) -> f64 {
        self.assert_running();
        if let Some(report) = self.panic_report() {
            panic!("{} panicked:\n{report}", self.what);
        }
        let peak = self.peak_rss_mib();
        eprintln!(
            "{}: peak RSS {peak:.1} MiB (bound {bound_mib} MiB)",
            self.what
        );
        assert!(
            peak < bound_mib,
            "{}: peak RSS {peak:.1} MiB, over the bound of {bound_mib} MiB",
            self.what
        );
        peak
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmHWM of process `pid`, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"));
    kib / 1024.0
}

/// Runs `tidings ARGS` to completion: (exit code, stdout, stderr).
pub fn tidings(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// `tidings call` must print `expected`.
pub fn assert_call(url: &str, extra: &[&str], method: &str, args: &str, expected: &str) {
    let mut all = vec!["call", "--url", url, "--timeout", "30"];
    all.extend_from_slice(extra);
    all.extend_from_slice(&[method, args]);
    let (code, out, err) = tidings(&all);
    assert_eq!(code, Some(0), "tidings {all:?} failed: {err}");
    assert_eq!(out, expected, "tidings {all:?}");
}

/// The AMQP URI of a bus (lapin speaks `amqp://`).
pub fn amqp_uri(bus: &Bus) -> String {
    let url = bus.url();
    let rest = url.strip_prefix("rabbit://").unwrap_or(url);
    format!("amqp://{rest}")
}

/// A raw AMQP connection: publishes bodies exactly as given, with publisher confirms.
pub struct Raw {
    pub connection: Connection,
    pub channel: Channel,
}

impl Raw {
    pub async fn open(bus: &Bus) -> Self {
        let connection = Connection::connect(&amqp_uri(bus), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to RabbitMQ at {}: {e}", bus.url()));
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            connection,
            channel,
        }
    }

    /// Publishes `body` and waits for the broker's confirm.
    pub async fn publish(&self, exchange: &str, key: &str, content_type: &str, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                properties(content_type),
            )
            .await
            .unwrap_or_else(|e| panic!("publish to {exchange}/{key}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("confirm from {exchange}/{key}: {e}"));
        assert!(
            confirm.is_ack(),
            "the broker refused a publish to {exchange}/{key}"
        );
    }

    /// Messages ready in `queue` (which must exist).
    pub async fn ready(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {queue}: {e}"))
            .message_count()
    }
}

/// The properties oslo publishes with, with `content_type`.
pub fn properties(content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(content_type.into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
}

pub fn hex_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `{"oslo.version": "2.0", "oslo.message": INNER}` with `inner` as the JSON string.
pub fn envelope(inner: &str) -> Vec<u8> {
    json!({"oslo.version": "2.0", "oslo.message": inner})
        .to_string()
        .into_bytes()
}

/// The envelope of an inner message given as a JSON value.
pub fn envelope_of(inner: &Value) -> Vec<u8> {
    envelope(&inner.to_string())
}

/// A well-formed call of `echo(x)` answered to `reply_q` under `msg_id`.
pub fn call_fields(msg_id: &str, reply_q: &str) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "method": "echo",
        "args": {"x": "hostile"},
        "version": "1.3",
        "_msg_id": msg_id,
        "_reply_q": reply_q,
        "_timeout": null,
        "_unique_id": hex_id(),
        "_context_request_id": "req-hostile",
    }) else {
        unreachable!()
    };
    map
}

/// Deterministic junk bytes (xorshift), never valid JSON or MessagePack at the start.
pub fn junk(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    if let Some(first) = out.first_mut() {
        // 0xc1 is "never used" in MessagePack and no JSON value starts with it.
        *first = 0xc1;
    }
    out
}

/// MessagePack: a map header for `n` entries.
pub fn mp_map(out: &mut Vec<u8>, n: usize) {
    out.push(0xdf);
    out.extend_from_slice(&u32::try_from(n).unwrap().to_be_bytes());
}

/// MessagePack: a string.
pub fn mp_str(out: &mut Vec<u8>, s: &str) {
    out.push(0xdb);
    out.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// MessagePack: any JSON value.
pub fn mp_value(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(&rmp_serde::to_vec(value).unwrap());
}

/// The MessagePack envelope `{"oslo.version": "2.0", "oslo.message": {fields…}}`, with the
/// field named `raw_key` (if any) written as the raw MessagePack `raw_value`.
pub fn msgpack_request(fields: &Map<String, Value>, raw: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    mp_map(&mut out, 2);
    mp_str(&mut out, "oslo.version");
    mp_str(&mut out, "2.0");
    mp_str(&mut out, "oslo.message");
    let skip = raw.map(|(k, _)| k);
    let kept: Vec<_> = fields
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != skip)
        .collect();
    mp_map(&mut out, kept.len() + usize::from(raw.is_some()));
    for (key, value) in kept {
        mp_str(&mut out, key);
        mp_value(&mut out, value);
    }
    if let Some((key, bytes)) = raw {
        mp_str(&mut out, key);
        out.extend_from_slice(bytes);
    }
    out
}

/// Parses an oslo JSON reply or request body into its inner message.
pub fn open(body: &[u8]) -> Option<Map<String, Value>> {
    let outer: Value = serde_json::from_slice(body).ok()?;
    let inner: Value = serde_json::from_str(outer.get("oslo.message")?.as_str()?).ok()?;
    match inner {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Polls `probe` until it gives a value, failing after `limit`.
pub async fn until<T>(limit: Duration, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
