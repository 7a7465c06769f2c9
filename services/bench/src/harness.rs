//! What both sides of every scenario share, so that tidings and the baseline are measured by the
//! same yardstick: the payloads, the delivery counter, the throughput pump and the latency loop.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Publishes in flight at once in the throughput scenarios (tidings: casts or calls awaited
/// concurrently; baseline: publishes whose confirms are outstanding). oslo's executor size.
pub(crate) const WINDOW: usize = 64;

/// Messages published but not yet consumed before the publisher waits for the consumers, so
/// that a run measures the steady state and not how deep the broker can queue.
pub(crate) const BACKLOG: u64 = 4_096;

/// How long the consumers may go without progress before a run is declared stalled.
pub(crate) const STALL: Duration = Duration::from_secs(60);

/// Notifications per batch in `notify-batch` and `ingest` (the collector's default batch size
/// is 50, Ceilometer's `batch_size`).
pub(crate) const BATCH: usize = 50;

/// The longest a batch waits to fill after its first message.
pub(crate) const BATCH_TIMEOUT: Duration = Duration::from_millis(100);

/// A failed benchmark run, with what failed.
#[derive(Debug)]
pub struct BenchError(pub String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Not `std::error::Error`, so that every error converts with `?`.
impl<E: std::error::Error> From<E> for BenchError {
    fn from(error: E) -> Self {
        Self(error.to_string())
    }
}

/// A benchmark result.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// The body codec of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// oslo JSON (tidings) / plain JSON (baseline).
    Json,
    /// MessagePack on both sides.
    Msgpack,
}

impl Wire {
    /// `json` or `msgpack`, as in scenario names.
    pub fn name(self) -> &'static str {
        match self {
            Wire::Json => "json",
            Wire::Msgpack => "msgpack",
        }
    }

    /// The content type sent with the baseline's bodies.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Wire::Json => tidings::codec::JSON_CONTENT_TYPE,
            Wire::Msgpack => tidings::codec::MSGPACK_CONTENT_TYPE,
        }
    }

    /// The tidings codec.
    pub(crate) fn codec(self) -> tidings::codec::Codec {
        match self {
            Wire::Json => tidings::codec::Codec::OsloJson,
            Wire::Msgpack => tidings::codec::Codec::MessagePack,
        }
    }

    /// Encodes a baseline body.
    pub(crate) fn encode<T: serde::Serialize>(self, value: &T) -> Result<Vec<u8>> {
        Ok(match self {
            Wire::Json => serde_json::to_vec(value)?,
            Wire::Msgpack => rmp_serde::to_vec_named(value)?,
        })
    }

    /// Decodes a baseline body.
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(self, body: &[u8]) -> Result<T> {
        Ok(match self {
            Wire::Json => serde_json::from_slice(body)?,
            Wire::Msgpack => rmp_serde::from_slice(body)?,
        })
    }
}

/// The keyword arguments of every request and the payload of every notification: a small
/// record like those agents exchange (about 150 bytes of JSON).
pub(crate) fn payload() -> Value {
    json!({
        "instance_id": "0b6f1c2e-5a8d-4a43-9e51-3c1f0e4c2b7a",
        "host": "compute-17",
        "flavor": {"vcpus": 2, "ram": 2048, "disk": 20},
        "tags": ["bench", "tidings"],
        "count": 42
    })
}

/// The request context of every request: what an oslo service typically sends.
pub(crate) fn context() -> serde_json::Map<String, Value> {
    let mut context = serde_json::Map::new();
    context.insert("user_id".into(), "u-bench".into());
    context.insert("project_id".into(), "p-bench".into());
    context.insert(
        "request_id".into(),
        "req-5c2e9a4f-0d2b-4f7e-8c1a-6b3d9e0f1a2b".into(),
    );
    context
}

/// Samples per notification in `ingest`: the polling agent sends a pollster's samples together.
pub(crate) const SAMPLES_PER_NOTIFICATION: usize = 10;

/// A `telemetry.polling` payload of `n` fresh samples (unique `message_id`s).
pub(crate) fn samples_payload(n: usize) -> Value {
    let samples: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "source": "openstack",
                "counter_name": "cpu_util",
                "counter_type": "gauge",
                "counter_unit": "%",
                "counter_volume": 12.5 + i as f64,
                "user_id": "u-bench",
                "project_id": "p-bench",
                "resource_id": format!("vm-{i}"),
                "timestamp": "2026-11-22T19:53:05.297642",
                "resource_metadata": {"host": "compute-17"},
                "message_id": uuid::Uuid::new_v4().to_string(),
            })
        })
        .collect();
    json!({ "samples": samples })
}

/// Counts deliveries (or completions, or stored samples) and wakes whoever waits for a count.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    count: AtomicU64,
    changed: Notify,
}

impl Tally {
    pub(crate) fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Raises the count to `n` (for counters kept elsewhere, e.g. the collector's report).
    pub(crate) fn raise_to(&self, n: u64) {
        self.count.fetch_max(n, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    pub(crate) fn get(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until the count reaches `target`; fails when it does not move for [`STALL`].
    pub(crate) async fn wait_for(&self, target: u64) -> Result<()> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = self.get();
            if now >= target {
                return Ok(());
            }
            if tokio::time::timeout(STALL, changed).await.is_err() {
                return Err(BenchError(format!(
                    "stalled at {now} of {target} deliveries for {STALL:?}"
                )));
            }
        }
    }
}

/// Runs `publish(i)` for i = 0, 1, … with up to [`WINDOW`] in flight until `duration` is over,
/// never more than [`BACKLOG`] deliveries behind the consumers, then waits until `tally` counts
/// `copies` deliveries of every message. Returns deliveries per second, from the first publish
/// to the last delivery.
pub(crate) async fn pump<F, Fut>(
    duration: Duration,
    copies: u64,
    tally: &Tally,
    publish: F,
) -> Result<f64>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    pump_within(duration, copies, BACKLOG, tally, publish).await
}

/// [`pump`] letting the consumers fall at most `backlog` deliveries behind instead of
/// [`BACKLOG`] (large messages: 4096 of 1 MiB would be 4 GiB queued in the broker).
pub(crate) async fn pump_within<F, Fut>(
    duration: Duration,
    copies: u64,
    backlog: u64,
    tally: &Tally,
    mut publish: F,
) -> Result<f64>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let base = tally.get();
    let start = Instant::now();
    let deadline = start + duration;
    let mut in_flight = FuturesUnordered::new();
    let mut sent: u64 = 0;
    loop {
        let expected = base + sent * copies;
        let behind = expected.saturating_sub(tally.get());
        if in_flight.len() < WINDOW && behind <= backlog && Instant::now() < deadline {
            in_flight.push(publish(sent));
            sent += 1;
            continue;
        }
        if let Some(done) = in_flight.next().await {
            done?;
            continue;
        }
        if Instant::now() >= deadline {
            break;
        }
        // The window is empty and the consumers are behind: wait for them.
        tally.wait_for(expected - backlog).await?;
    }
    tally.wait_for(base + sent * copies).await?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok((sent * copies) as f64 / elapsed.max(f64::MIN_POSITIVE))
}

/// Runs `call()` one at a time until `duration` is over; returns microseconds per call.
pub(crate) async fn latency<F, Fut>(duration: Duration, mut call: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let start = Instant::now();
    let deadline = start + duration;
    let mut calls: u64 = 0;
    while Instant::now() < deadline || calls == 0 {
        call().await?;
        calls += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / calls as f64)
}

/// Runs `call()` with [`WINDOW`] calls in flight until `duration` is over; returns calls per
/// second.
pub(crate) async fn throughput<F, Fut>(duration: Duration, call: F) -> Result<f64>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    // A call's completion is its delivery: count them as they end.
    let tally = Tally::default();
    let mut call = call;
    pump(duration, 1, &tally, |i| {
        let done = call(i);
        let tally = &tally;
        async move {
            done.await?;
            tally.add(1);
            Ok(())
        }
    })
    .await
}

/// The longest latency the tail histograms hold, in µs: past every call's 30 s timeout.
const HIGHEST_LATENCY_US: u64 = 60_000_000;

/// Calls the open loop keeps in flight at most. Beyond, a due send waits for a reply; its
/// latency still runs from its scheduled time, so the wait is measured, not hidden.
const OPEN_LOOP_IN_FLIGHT: usize = 4_096;

/// Runs `call()` at `rate` per second for `duration` on a fixed schedule, whatever the replies
/// do (an open loop), then waits for the calls still out; returns each call's latency in µs,
/// counted from its *scheduled* send time so that a stall counts for every call it held back
/// (no coordinated omission).
///
/// The schedule comes from a thread of its own sleeping until each send time: the runtime's
/// timer has a granularity of one millisecond, which would add up to that much to every
/// latency; a thread's sleep wakes within tens of µs.
pub(crate) async fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    mut call: F,
) -> Result<Histogram<u64>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut histogram = Histogram::<u64>::new_with_bounds(1, HIGHEST_LATENCY_US, 3)
        .map_err(|e| BenchError(format!("latency histogram: {e}")))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(BenchError(format!("cannot send at {rate} calls/s")));
    }
    let sends = (duration.as_secs_f64() * rate).ceil().max(1.0) as u64;
    let (due, mut schedule) = tokio::sync::mpsc::unbounded_channel::<std::time::Instant>();
    let start = std::time::Instant::now();
    // Ends after the last send, or at the first send after the receiver is gone (an error).
    std::thread::Builder::new()
        .name("open-loop-pacer".into())
        .spawn(move || {
            for i in 0..sends {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                let now = std::time::Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if due.send(at).is_err() {
                    return;
                }
            }
        })?;
    let mut in_flight = FuturesUnordered::new();
    let mut scheduling = true;
    loop {
        tokio::select! {
            // Replies first, so each is stamped as soon as it is seen.
            biased;
            Some((scheduled, done, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let () = result?;
                let latency: Duration = done - scheduled;
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                histogram.saturating_record(micros.max(1));
            }
            next = schedule.recv(), if scheduling && in_flight.len() < OPEN_LOOP_IN_FLIGHT => {
                match next {
                    Some(scheduled) => {
                        let sent = call();
                        in_flight.push(async move {
                            let result = sent.await;
                            (scheduled, std::time::Instant::now(), result)
                        });
                    }
                    None => scheduling = false,
                }
            }
            else => break,
        }
    }
    Ok(histogram)
}

/// jemalloc's statistics of this process's heap, refreshed now; zeros where they cannot be read.
pub(crate) fn heap_kib() -> crate::HeapKib {
    use tikv_jemalloc_ctl::{epoch, stats, Access, AsName};
    let _ = epoch::advance();
    let kib = |bytes: Result<usize, tikv_jemalloc_ctl::Error>| bytes.map_or(0, |b| b as u64 / 1024);
    crate::HeapKib {
        live_kib: kib(stats::allocated::read()),
        active_kib: kib(stats::active::read()),
        metadata_kib: kib(stats::metadata::read()),
        resident_kib: kib(stats::resident::read()),
        // 4096 is jemalloc's MALLCTL_ARENAS_ALL: the sum over every arena.
        thread_cached_kib: kib(b"stats.arenas.4096.tcache_bytes\0".name().read()),
    }
}

/// This process's resident set in its anonymous and file-backed parts.
pub(crate) fn rss_split() -> crate::RssSplit {
    crate::RssSplit {
        anon_kib: status_kib("RssAnon:"),
        file_kib: status_kib("RssFile:"),
    }
}

/// The resident set of this process (`VmRSS` of /proc/self/status), in KiB.
pub(crate) fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// The peak resident set of this process (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// The resident set of another process (`VmRSS` of /proc/PID/status), in KiB; `None` when
/// it cannot be read (the process is gone).
pub(crate) fn process_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn status_kib(key: &str) -> u64 {
    proc_status_kib("/proc/self/status", key).unwrap_or(0)
}

/// A `KEY:  N kB` line of a /proc status file.
fn proc_status_kib(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok().and_then(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    })
}

/// The 1-minute load average (/proc/loadavg), for the report's header.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
