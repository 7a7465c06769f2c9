//! # tidings-bench
//!
//! The benchmark behind the `tidings-bench` binary: every scenario run twice in one process — through tidings and through a
//! bare-lapin baseline with no framework — so that each figure comes with a ratio measured
//! under the same conditions (on a busy 2-core machine absolute figures drift; ratios hold).
//!
//! A run: the memory section first (on a quiet process), then each scenario × codec, both
//! sides in turn, for `rounds` rounds alternating which side goes first; the best round of each
//! side is kept (lowest latency, highest throughput), which filters out the moments another
//! process took the CPU. Every side of every round opens its own connections and queues. After
//! the scenarios, the oslo section (`oslo`) times oslo.messaging on the same broker beside
//! tidings' oslo JSON rows, the tail section (`tail`) measures call latency percentiles under an
//! open loop, and the agents section (`agents`) each idle metering agent's memory, on the
//! `tidings` binary. The scale section (`scale`, see [`scale`]) runs only when named.
//!
//! Unpublished: nothing published may depend on it. It uses the library crates as a user would
//! and changes none of them.

mod agents;
mod baseline;
mod child;
pub mod cpu;
mod harness;
pub mod oslo;
pub mod scale;
mod scenarios;
pub mod store_scale;
pub mod tail;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tidings::TransportUrl;

pub use harness::{BenchError, Result, Wire};

/// The local RabbitMQ; runs against it get a private vhost.
pub const DEFAULT_URL: &str = "rabbit://guest:guest@127.0.0.1:5672/";

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// One call in flight: µs per call.
    Call1,
    /// 64 calls in flight: calls per second.
    Call64,
    /// Confirmed one-way casts to one server: messages per second.
    Cast,
    /// Fanout casts to three servers: deliveries per second.
    Fanout3,
    /// Notifications to a listener taking batches: messages per second.
    NotifyBatch,
    /// Sample notifications through the collector into SQLite: samples per second.
    Ingest,
    /// OpenStack notifications through the notification agent (meters.yaml) and the collector
    /// into SQLite: notifications per second whose sample is stored.
    MeterNotify,
    /// As `MeterNotify`, the agent publishing a batch's samples in one message.
    MeterNotifyGrouped,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 8] = [
        Scenario::Call1,
        Scenario::Call64,
        Scenario::Cast,
        Scenario::Fanout3,
        Scenario::NotifyBatch,
        Scenario::Ingest,
        Scenario::MeterNotify,
        Scenario::MeterNotifyGrouped,
    ];

    /// The name in the table, before `/codec`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Call1 => "call-1",
            Scenario::Call64 => "call-64",
            Scenario::Cast => "cast",
            Scenario::Fanout3 => "fanout-3",
            Scenario::NotifyBatch => "notify-batch",
            Scenario::Ingest => "ingest",
            Scenario::MeterNotify => "meter-notify",
            Scenario::MeterNotifyGrouped => "meter-notify-grouped",
        }
    }

    /// The unit of its figures.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Call1 => "µs/call",
            Scenario::Call64 => "calls/s",
            Scenario::Cast | Scenario::NotifyBatch => "msgs/s",
            Scenario::Fanout3 => "msgs/s delivered",
            Scenario::Ingest => "samples/s",
            Scenario::MeterNotify | Scenario::MeterNotifyGrouped => "notifications/s",
        }
    }

    /// Whether a lower figure is better (latency) rather than a higher one (throughput).
    pub fn lower_is_better(self) -> bool {
        matches!(self, Scenario::Call1)
    }

    /// Whether the baseline also runs without publisher confirms: request/reply and
    /// publish/consume, where the table shows how far an unsafe baseline goes beyond the
    /// same-guarantee one. Ingest and the agent measure the store, not the publishes.
    pub fn has_unconfirmed_baseline(self) -> bool {
        matches!(
            self,
            Scenario::Call1
                | Scenario::Call64
                | Scenario::Cast
                | Scenario::Fanout3
                | Scenario::NotifyBatch
        )
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The broker.
    pub url: String,
    /// How long each side of each scenario runs, per round.
    pub duration: Duration,
    /// Rounds per scenario (sides alternate which goes first); the best of each side counts.
    pub rounds: usize,
    /// Calls held in flight in the memory section (0: skip the section).
    pub inflight: usize,
    /// How long the memory section follows the resident set after each burst.
    pub settle: Duration,
    /// Only scenarios whose full name (`call-1/json`) starts with one of these; all when empty.
    pub only: Vec<String>,
    /// `tidings` or `baseline` to run one side only (for profiling); both when `None`.
    pub side: Option<String>,
    /// Samples `store-scale` loads into each store.
    pub samples: u64,
    /// The PostgreSQL server `store-scale/postgres` uses (a schema of its own, dropped after).
    pub postgres: String,
    /// Whether the agents section may run (it needs the `tidings` binary next to this one).
    pub agents: bool,
    /// Whether the oslo section may run (it needs Python with oslo.messaging).
    pub oslo: bool,
    /// The Python the oslo section runs oslo.messaging with.
    pub oslo_python: PathBuf,
    /// Servers `scale/topics` grows to (10, 100, … up to this).
    pub scale_topics: usize,
    /// Idle clients `scale/reply-queues` grows to (100, 1000, … up to this).
    pub scale_clients: usize,
}

/// How long the memory section follows the resident set after each burst by default: well past
/// the allocator's one-second decay, so what it shows is what the process keeps.
pub const MEMORY_SETTLE: Duration = Duration::from_secs(10);

/// Samples `store-scale` loads by default: a third of a month of a thousand-instance cloud.
pub const DEFAULT_SAMPLES: u64 = 10_000_000;

/// The PostgreSQL of `store-scale/postgres` by default.
pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// What one scenario measured.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `scenario/codec`.
    #[serde(skip)]
    pub scenario: String,
    /// The figure through tidings.
    pub tidings: f64,
    /// The figure of the bare-lapin baseline, with the same delivery guarantee as tidings
    /// (confirmed publishes where tidings confirms).
    pub baseline: f64,
    /// The bare-lapin baseline publishing without confirms (`cast`, `fanout-3`,
    /// `notify-batch`): for reference only, since it gives up what tidings guarantees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_unconfirmed: Option<f64>,
    /// tidings ÷ baseline: always against the same-guarantee baseline, never the unconfirmed.
    pub ratio: f64,
    /// The unit of both figures.
    pub unit: &'static str,
    /// CPU time per delivery (or call) of each side's best round, this process's and the
    /// broker's: where the cost of a message lies.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu: BTreeMap<&'static str, cpu::CpuCost>,
}

/// The memory section (VmRSS of this process, KiB).
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryReport {
    /// Calls held in flight.
    pub inflight: usize,
    /// The agent just started: a transport serving RPC and one with a reply queue, after one
    /// call.
    pub started_kib: u64,
    /// The just-started agent's resident set, anonymous and file-backed.
    pub started_split: RssSplit,
    /// Calls made one at a time between `started_kib` and `idle_kib`.
    pub warm_up_calls: usize,
    /// The idle agent the bursts are measured against: the same agent after `warm_up_calls`
    /// calls one at a time, as an agent is once it has served some traffic.
    pub idle_kib: u64,
    /// With `inflight` calls in flight, per round.
    pub inflight_kib: Vec<u64>,
    /// The allocator's view with `inflight` calls in flight, per round.
    pub inflight_heap: Vec<HeapKib>,
    /// After the round's calls returned, per round.
    pub after_kib: Vec<u64>,
    /// The process's peak (VmHWM) by the end of the section.
    pub peak_kib: u64,
    /// The allocator's view of the idle agent.
    pub idle_heap: HeapKib,
    /// The allocator's view after the round's calls returned, per round.
    pub after_heap: Vec<HeapKib>,
    /// The idle agent's resident set, anonymous and file-backed.
    pub idle_split: RssSplit,
    /// The same after the round's calls returned, per round.
    pub after_split: Vec<RssSplit>,
    /// How long VmRSS is followed after a round's calls returned, in seconds.
    pub settled_s: f64,
    /// VmRSS `settled_s` after the round's calls returned, per round: what the process keeps
    /// once the allocator has handed back what it will.
    pub settled_kib: Vec<u64>,
    /// The allocator's view `settled_s` after the round's calls returned, per round.
    pub settled_heap: Vec<HeapKib>,
    /// The resident set's parts `settled_s` after the round's calls returned, per round.
    pub settled_split: Vec<RssSplit>,
    /// Per round, how long after its calls returned VmRSS was first back within 25 % of the
    /// idle agent's, in milliseconds (sampled every 100 ms); `None` when it was not within
    /// `settled_s`.
    pub back_within_ms: Vec<Option<u64>>,
}

/// A resident set in its two parts, in KiB: anonymous memory (heap, stacks, the C libraries'
/// allocations) and pages of mapped files, the binary's code above all, which the kernel can
/// drop and read again at will.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RssSplit {
    /// `RssAnon` of /proc/self/status.
    pub anon_kib: u64,
    /// `RssFile` of /proc/self/status.
    pub file_kib: u64,
}

/// jemalloc's view of this process's heap, in KiB: what the program holds, against what the
/// allocator keeps resident for it. The gap is the allocator's (pages not handed back yet,
/// partly used slabs, its metadata); the rest of the resident set beside the heap is code,
/// stacks and the C libraries' own allocations.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct HeapKib {
    /// Bytes allocated and not freed (`stats.allocated`).
    pub live_kib: u64,
    /// Pages of the allocator's slabs and extents that hold at least one live allocation
    /// (`stats.active`): above `live_kib` by what partly used pages waste.
    pub active_kib: u64,
    /// The allocator's own bookkeeping (`stats.metadata`).
    pub metadata_kib: u64,
    /// Physically resident pages the allocator maps, metadata included (`stats.resident`).
    pub resident_kib: u64,
    /// Of `live_kib`, what threads' caches hold for their next allocations
    /// (`stats.arenas.<all>.tcache_bytes`): freed by the program, not yet by the allocator.
    pub thread_cached_kib: u64,
}

/// A whole run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Scenario rows, in run order.
    pub rows: Vec<Row>,
    /// The memory section, unless skipped.
    pub memory: Option<MemoryReport>,
    /// 1-minute load average before and after the run.
    pub load: (Option<f64>, Option<f64>),
    /// `store-scale/<store>`, when asked for.
    pub store_scale: Vec<store_scale::StoreScale>,
    /// The tail section (open-loop call latency), one row per load; empty when skipped.
    pub tail: Vec<tail::TailRow>,
    /// The agents section: `(kind, VmRSS in KiB)` of each idle agent; empty when skipped.
    pub agents: Vec<(String, u64)>,
    /// The oslo section, unless skipped.
    pub oslo: Option<oslo::OsloReport>,
    /// The scale section, when asked for.
    pub scale: Option<scale::ScaleReport>,
}

impl Report {
    /// The table printed on stdout.
    pub fn table(&self, config: &BenchConfig) -> String {
        let mut out = String::new();
        let load = |l: Option<f64>| l.map_or("?".to_owned(), |l| format!("{l:.2}"));
        let _ = writeln!(
            out,
            "tidings-bench: {} s per side, best of {} round(s); load average {} before, {} after",
            config.duration.as_secs_f64(),
            config.rounds,
            load(self.load.0),
            load(self.load.1),
        );
        if !self.rows.is_empty() {
            let _ = writeln!(
                out,
                "ratio = tidings ÷ baseline (bare lapin, same guarantee: confirmed publishes): \
                 lower is better for latency (µs/call), higher is better for throughput (/s)"
            );
            let _ = writeln!(
                out,
                "unconfirmed = bare lapin publishing without confirms, for reference (not in the ratio)"
            );
            let _ = writeln!(
                out,
                "{:<22} {:>12} {:>12} {:>12}  {:<17} {:>6}",
                "scenario", "tidings", "baseline", "unconfirmed", "unit", "ratio"
            );
            for row in &self.rows {
                let unconfirmed = row
                    .baseline_unconfirmed
                    .map_or("-".to_owned(), |figure| format!("{figure:.1}"));
                let _ = writeln!(
                    out,
                    "{:<22} {:>12.1} {:>12.1} {:>12}  {:<17} {:>6.2}",
                    row.scenario, row.tidings, row.baseline, unconfirmed, row.unit, row.ratio
                );
            }
            cpu_table(&self.rows, &mut out);
        }
        if let Some(oslo) = &self.oslo {
            oslo_table(oslo, &mut out);
        }
        if !self.store_scale.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<22} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>14}",
                "store-scale",
                "samples",
                "ingest/s",
                "meters ms",
                "full ms",
                "res. ms",
                "window ms",
                "B/sample",
                "B after expiry"
            );
            for s in &self.store_scale {
                let _ = writeln!(
                    out,
                    "{:<22} {:>10} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.1} {:>14}",
                    format!("store-scale/{}", s.store),
                    s.samples,
                    s.ingest_per_s,
                    s.meters_list_ms,
                    s.stats_full_ms,
                    s.stats_resource_ms,
                    s.stats_window_ms,
                    s.bytes_per_sample,
                    s.bytes_after_expiry
                );
            }
        }
        if !self.tail.is_empty() {
            self.tail_table(&mut out);
        }
        if let Some(scale) = &self.scale {
            scale::table(scale, &mut out);
        }
        if !self.agents.is_empty() {
            let _ = writeln!(
                out,
                "\nagents (VmRSS of `tidings meter KIND`, idle, 2 s after /health answered 200; \
                 goal < {} MiB)",
                agents::GOAL_MIB
            );
            for (kind, kib) in &self.agents {
                let mib = *kib as f64 / 1024.0;
                let verdict = if mib < agents::GOAL_MIB {
                    "met"
                } else {
                    "over"
                };
                let _ = writeln!(out, "{kind:<34} {mib:>8.1} MiB  {verdict}");
            }
        }
        if let Some(memory) = &self.memory {
            let mib = |kib: u64| kib as f64 / 1024.0;
            let _ = writeln!(out, "\nmemory (VmRSS of this process: client and server)");
            let parts = |split: &RssSplit, heap: &HeapKib| {
                format!(
                    "anon {:.1}, file {:.1}; heap {:.1} live ({:.1} in thread caches), \
                     {:.1} active, {:.1} metadata, {:.1} resident",
                    mib(split.anon_kib),
                    mib(split.file_kib),
                    mib(heap.live_kib),
                    mib(heap.thread_cached_kib),
                    mib(heap.active_kib),
                    mib(heap.metadata_kib),
                    mib(heap.resident_kib)
                )
            };
            // A round's parts, when both were read.
            let parts_of = |splits: &[RssSplit], heaps: &[HeapKib], round: usize| match (
                splits.get(round),
                heaps.get(round),
            ) {
                (Some(split), Some(heap)) => parts(split, heap),
                _ => String::new(),
            };
            let split = &memory.started_split;
            let _ = writeln!(
                out,
                "{:<34} {:>8.1} MiB   anon {:.1}, file {:.1}",
                "just started (after one call)",
                mib(memory.started_kib),
                mib(split.anon_kib),
                mib(split.file_kib)
            );
            let _ = writeln!(
                out,
                "{:<34} {:>8.1} MiB   {}",
                format!("idle (after {} calls)", memory.warm_up_calls),
                mib(memory.idle_kib),
                parts(&memory.idle_split, &memory.idle_heap)
            );
            for (round, (inflight, after)) in memory
                .inflight_kib
                .iter()
                .zip(&memory.after_kib)
                .enumerate()
            {
                let after_parts = parts_of(&memory.after_split, &memory.after_heap, round);
                let inflight_heap = memory
                    .inflight_heap
                    .get(round)
                    .map_or(String::new(), |heap| {
                        format!(
                            "heap {:.1} live, {:.1} active",
                            mib(heap.live_kib),
                            mib(heap.active_kib)
                        )
                    });
                let _ = writeln!(
                    out,
                    "{:<34} {:>8.1} MiB   {inflight_heap}",
                    format!("{} calls in flight (round {})", memory.inflight, round + 1),
                    mib(*inflight)
                );
                let _ = writeln!(
                    out,
                    "{:<34} {:>8.1} MiB   {after_parts}",
                    format!("after they returned (round {})", round + 1),
                    mib(*after)
                );
                if let Some(settled) = memory.settled_kib.get(round) {
                    let back = match memory.back_within_ms.get(round).copied().flatten() {
                        Some(ms) => format!("within 25 % of idle {:.2} s after", ms as f64 / 1e3),
                        None => "not back within 25 % of idle".to_owned(),
                    };
                    let settled_parts =
                        parts_of(&memory.settled_split, &memory.settled_heap, round);
                    // The parts go on a line of their own, under the other rows' parts.
                    let _ = writeln!(
                        out,
                        "{:<34} {:>8.1} MiB   {back}\n{:50}{settled_parts}",
                        format!("{} s after (round {})", memory.settled_s, round + 1),
                        mib(*settled),
                        ""
                    );
                }
            }
            let _ = writeln!(
                out,
                "{:<34} {:>8.1} MiB",
                "peak (VmHWM)",
                mib(memory.peak_kib)
            );
        }
        out
    }

    /// The tail section's table: each side's percentiles at each load, and the p99 ratio.
    fn tail_table(&self, out: &mut String) {
        let max_rate = |side: fn(&tail::TailRow) -> Option<&tail::Percentiles>| {
            self.tail
                .first()
                .and_then(side)
                .map_or("-".to_owned(), |p| {
                    format!("{:.0} calls/s", p.max_rate_per_s)
                })
        };
        let _ = writeln!(
            out,
            "\ntail (call/json, open loop: latency in µs from each call's scheduled send; \
             maximum sustained rate: tidings {}, baseline {})",
            max_rate(|row| row.tidings.as_ref()),
            max_rate(|row| row.baseline.as_ref()),
        );
        let _ = writeln!(
            out,
            "{:<6} {:>10} {:>8} {:>8} {:>8}   {:>10} {:>8} {:>8} {:>8}   {:>9}",
            "load",
            "tidings/s",
            "p50",
            "p99",
            "p99.9",
            "baseline/s",
            "p50",
            "p99",
            "p99.9",
            "p99 ratio"
        );
        let side = |p: &Option<tail::Percentiles>| match p {
            Some(p) => format!(
                "{:>10.0} {:>8} {:>8} {:>8}",
                p.rate_per_s, p.p50_us, p.p99_us, p.p999_us
            ),
            None => format!("{:>10} {:>8} {:>8} {:>8}", "-", "-", "-", "-"),
        };
        for row in &self.tail {
            let ratio = row
                .p99_ratio
                .map_or("-".to_owned(), |ratio| format!("{ratio:.2}"));
            let _ = writeln!(
                out,
                "{:<6} {}   {}   {:>9}",
                format!("{} %", row.load_percent),
                side(&row.tidings),
                side(&row.baseline),
                ratio
            );
        }
    }

    /// `{scenario: {tidings, baseline, baseline_unconfirmed?, ratio, unit}}`, plus `memory`,
    /// `tail`, `agents` (`{kind: rss_kib}`) and `oslo` (`{version, scenario: {oslo, tidings,
    /// unit, tidings_over_oslo}}`) when measured, and always `load_average`: `{before, after}`
    /// (the 1-minute load, `null` where unknown), since figures from a busy machine are read
    /// differently.
    pub fn json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert(
            "load_average".to_owned(),
            serde_json::json!({ "before": self.load.0, "after": self.load.1 }),
        );
        for row in &self.rows {
            map.insert(
                row.scenario.clone(),
                serde_json::to_value(row).unwrap_or_default(),
            );
        }
        for scale in &self.store_scale {
            map.insert(
                format!("store-scale/{}", scale.store),
                serde_json::to_value(scale).unwrap_or_default(),
            );
        }
        if let Some(memory) = &self.memory {
            map.insert(
                "memory".to_owned(),
                serde_json::to_value(memory).unwrap_or_default(),
            );
        }
        if !self.tail.is_empty() {
            map.insert(
                "tail".to_owned(),
                serde_json::to_value(&self.tail).unwrap_or_default(),
            );
        }
        if !self.agents.is_empty() {
            let agents = self
                .agents
                .iter()
                .map(|(kind, kib)| (kind.clone(), serde_json::Value::from(*kib)))
                .collect();
            map.insert("agents".to_owned(), serde_json::Value::Object(agents));
        }
        if let Some(oslo) = &self.oslo {
            map.insert("oslo".to_owned(), oslo.json());
        }
        if let Some(scale) = &self.scale {
            map.insert(
                "scale".to_owned(),
                serde_json::to_value(scale).unwrap_or_default(),
            );
        }
        serde_json::Value::Object(map)
    }
}

/// CPU time per delivery of each row's sides, this process's and the broker's, under the
/// scenario table; nothing when no row has any.
fn cpu_table(rows: &[Row], out: &mut String) {
    if rows.iter().all(|row| row.cpu.is_empty()) {
        return;
    }
    let _ = writeln!(
        out,
        "\ncpu: µs of CPU per delivery (per call for call-1 and call-64) in the best round, \
         this process (client and server) + the broker"
    );
    let _ = writeln!(
        out,
        "{:<32} {:>17} {:>17} {:>17}",
        "scenario", "tidings", "baseline", "unconfirmed"
    );
    let side = |row: &Row, key: &str| {
        row.cpu
            .get(key)
            .map_or("-".to_owned(), |cost| match cost.broker_us {
                Some(broker) => format!("{:.1} + {broker:.1}", cost.process_us),
                None => format!("{:.1}", cost.process_us),
            })
    };
    for row in rows.iter().filter(|row| !row.cpu.is_empty()) {
        let _ = writeln!(
            out,
            "{:<32} {:>17} {:>17} {:>17}",
            format!("cpu {}", row.scenario),
            side(row, "tidings"),
            side(row, "baseline"),
            side(row, "baseline_unconfirmed"),
        );
    }
}

/// What every side of every scenario shares: the broker, the time per side, fresh names.
#[derive(Debug)]
pub(crate) struct Env {
    /// The local broker's OS process, whose CPU time the scenarios' figures include.
    broker_pid: Option<u32>,
    /// The CPU cost of the last measurement, taken by the scenario loop after each side.
    cost: std::sync::Mutex<Option<cpu::CpuCost>>,
    url: TransportUrl,
    duration: Duration,
    sequence: AtomicU64,
    scratch: ScratchDir,
    /// The vhost made for this run, when there is one: the scale section reads the broker's
    /// side with `rabbitmqctl` only there.
    private_vhost: Option<String>,
}

impl Env {
    /// A name no other side of this run uses.
    fn name(&self, what: &str) -> String {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("bench-{what}-{n}")
    }

    /// A short warm-up before each measurement: connections, declarations, caches.
    fn warm_up(&self) -> Duration {
        (self.duration / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
    }

    /// [`harness::pump`] after a warm-up of the same kind: the figure of a throughput scenario.
    async fn pump<F, Fut>(&self, copies: u64, tally: &harness::Tally, publish: F) -> Result<f64>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        self.pump_within(copies, harness::BACKLOG, tally, publish)
            .await
    }

    /// [`Env::pump`] with the consumers at most `backlog` deliveries behind.
    async fn pump_within<F, Fut>(
        &self,
        copies: u64,
        backlog: u64,
        tally: &harness::Tally,
        mut publish: F,
    ) -> Result<f64>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        harness::pump_within(self.warm_up(), copies, backlog, tally, &mut publish).await?;
        let meter = cpu::CpuMeter::start(self.broker_pid);
        let started = Instant::now();
        let rate = harness::pump_within(self.duration, copies, backlog, tally, publish).await?;
        self.record_cost(meter.per_unit(rate * started.elapsed().as_secs_f64()));
        Ok(rate)
    }

    /// Keeps the CPU cost of the measurement that just ended, for [`take_cost`]
    /// (Self::take_cost).
    fn record_cost(&self, cost: Option<cpu::CpuCost>) {
        *self.cost.lock().unwrap_or_else(|e| e.into_inner()) = cost;
    }

    /// The CPU cost of the last measurement, once.
    fn take_cost(&self) -> Option<cpu::CpuCost> {
        self.cost.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// `call-1` (µs per call) or, when `concurrent`, `call-64` (calls/s), after a warm-up.
    async fn calls<F, Fut>(&self, concurrent: bool, mut call: F) -> Result<f64>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        harness::latency(self.warm_up(), &mut call).await?;
        let meter = cpu::CpuMeter::start(self.broker_pid);
        let started = Instant::now();
        let (figure, calls_per_second) = if concurrent {
            let rate = harness::throughput(self.duration, |_| call()).await?;
            (rate, rate)
        } else {
            let micros = harness::latency(self.duration, call).await?;
            (micros, 1e6 / micros)
        };
        self.record_cost(meter.per_unit(calls_per_second * started.elapsed().as_secs_f64()));
        Ok(figure)
    }

    /// A fresh file in this run's scratch directory.
    fn scratch_file(&self, what: &str) -> PathBuf {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.scratch.0.join(format!("{n}-{what}"))
    }

    /// Removes a SQLite file and its WAL companions.
    fn remove_scratch(&self, path: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

/// The oslo section's table: both figures of each scenario and how many times better tidings
/// did.
fn oslo_table(oslo: &oslo::OsloReport, out: &mut String) {
    let _ = writeln!(
        out,
        "\noslo.messaging {}, same broker, same run (threading executor, 64 threads; tidings \
         with oslo JSON)",
        oslo.version
    );
    let _ = writeln!(
        out,
        "tidings ÷ oslo = how many times better tidings did (oslo ÷ tidings for µs/call): \
         higher is better for tidings"
    );
    let _ = writeln!(
        out,
        "{:<22} {:>12} {:>12}  {:<17} {:>14}",
        "oslo scenario", "oslo", "tidings", "unit", "tidings ÷ oslo"
    );
    for row in &oslo.rows {
        let _ = writeln!(
            out,
            "{:<22} {:>12.1} {:>12.1}  {:<17} {:>14.1}",
            row.scenario, row.oslo, row.tidings, row.unit, row.tidings_over_oslo
        );
    }
}

/// A vhost of our own on the local broker, deleted when dropped.
#[derive(Debug)]
struct PrivateVhost(String);

impl PrivateVhost {
    fn create() -> Result<Self> {
        let name = format!("tidings-bench-{}", uuid::Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &name])?;
        eprintln!("vhost {name} on the local broker, deleted when the run ends or is interrupted");
        let vhost = Self(name);
        rabbitmqctl(&["set_permissions", "-p", &vhost.0, "guest", ".*", ".*", ".*"])?;
        Ok(vhost)
    }
}

impl Drop for PrivateVhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.0]);
    }
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let output = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .map_err(|e| BenchError(format!("rabbitmqctl {args:?}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BenchError(format!(
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Progress on stderr: one line rewritten in place on a terminal, a line per step otherwise.
#[derive(Debug)]
struct Progress {
    total: usize,
    done: usize,
    terminal: bool,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let line = format!("[{}/{}] {what}", self.done, self.total);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

/// Who runs one side of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    /// Through tidings.
    Tidings,
    /// Bare lapin with tidings' guarantee: the denominator of the ratio.
    Baseline,
    /// Bare lapin publishing without confirms (publish/consume scenarios only).
    Unconfirmed,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Tidings => "tidings",
            Side::Baseline => "baseline",
            Side::Unconfirmed => "baseline unconfirmed",
        }
    }

    /// The key of this side's figures in a row's JSON (as the row's own fields name them).
    fn json_key(self) -> &'static str {
        match self {
            Side::Tidings => "tidings",
            Side::Baseline => "baseline",
            Side::Unconfirmed => "baseline_unconfirmed",
        }
    }

    /// Whether `--side` lets this side run: `baseline` covers both bare-lapin sides.
    fn selected(self, only: Option<&str>) -> bool {
        match only {
            None => true,
            Some(only) => match self {
                Side::Tidings => only == "tidings",
                Side::Baseline | Side::Unconfirmed => only == "baseline",
            },
        }
    }
}

/// The sides of `scenario`, in the order of its first round.
fn sides(scenario: Scenario) -> &'static [Side] {
    if scenario.has_unconfirmed_baseline() {
        &[Side::Tidings, Side::Baseline, Side::Unconfirmed]
    } else {
        &[Side::Tidings, Side::Baseline]
    }
}

/// The scenario × codec pairs selected by `only`. Ingest runs in both codecs too: the
/// collector accepts both.
pub fn selected(only: &[String]) -> Vec<(Scenario, Wire)> {
    Scenario::ALL
        .into_iter()
        .flat_map(|s| [(s, Wire::Json), (s, Wire::Msgpack)])
        .filter(|(s, w)| {
            let name = format!("{}/{}", s.name(), w.name());
            only.is_empty() || only.iter().any(|o| name.starts_with(o.as_str()))
        })
        .collect()
}

/// Whether a section run only when named (`tail`, `agents`), or in a full run, is selected by
/// `only`: when it is empty, or one of its prefixes starts the section's name.
pub fn section_selected(only: &[String], section: &str) -> bool {
    only.is_empty()
        || only
            .iter()
            .any(|o| !o.is_empty() && section.starts_with(o.as_str()))
}

/// The stores of `store-scale` that `only` names (`store-scale` for both,
/// `store-scale/sqlite` for one); none unless named, since it loads millions of samples.
pub fn selected_stores(only: &[String]) -> Vec<&'static str> {
    store_scale::STORES
        .into_iter()
        .filter(|store| {
            let name = format!("store-scale/{store}");
            only.iter()
                .any(|o| o.starts_with("store-scale") && name.starts_with(o.as_str()))
        })
        .collect()
}

/// Whether `only` names the oslo section itself (not a full run's default).
fn oslo_named(only: &[String]) -> bool {
    !only.is_empty() && section_selected(only, "oslo")
}

/// Runs the benchmark.
pub async fn run(config: &BenchConfig) -> Result<Report> {
    let url: TransportUrl = config.url.parse()?;
    if url.memory_name().is_some() {
        return Err(BenchError(
            "the baseline needs RabbitMQ: give an amqp:// or rabbit:// URL".into(),
        ));
    }
    // Decided before the broker is touched, so that a missing Python fails at once.
    let oslo_python = if config.oslo {
        oslo::interpreter(oslo::Selection {
            explicit: oslo_named(&config.only),
            // Not in a run of one side, which is for profiling.
            implicit: config.only.is_empty() && config.side.is_none(),
            python: &config.oslo_python,
        })?
    } else {
        None
    };
    // The default local broker: a private vhost, so runs never collide with other users.
    let vhost = if config.url.trim_end_matches('/') == DEFAULT_URL.trim_end_matches('/') {
        Some(PrivateVhost::create()?)
    } else {
        None
    };
    let url = match &vhost {
        Some(vhost) => url.with_virtual_host(vhost.0.clone()),
        None => url,
    };
    // Only the default local broker's node is asked for: another URL may name a remote one.
    let broker_pid = vhost.as_ref().and_then(|_| cpu::local_broker_pid());
    let env = Env {
        broker_pid,
        cost: std::sync::Mutex::new(None),
        url,
        duration: config.duration,
        sequence: AtomicU64::new(0),
        scratch: ScratchDir::create()?,
        private_vhost: vhost.as_ref().map(|vhost| vhost.0.clone()),
    };
    // The scratch directory (held by `env`) and the vhost go when the run ends, and also when
    // it is dropped unfinished (an interrupted run).
    let result = run_in(&env, config, oslo_python.as_deref()).await;
    drop(env);
    drop(vhost);
    result
}

/// This run's scratch directory (databases, logs of child processes), removed when dropped.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("tidings-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run_in(env: &Env, config: &BenchConfig, oslo_python: Option<&Path>) -> Result<Report> {
    let selected = selected(&config.only);
    let stores = selected_stores(&config.only);
    let scale_parts = scale::selected_parts(&config.only);
    let tail = section_selected(&config.only, "tail");
    // The memory section comes with the scenarios; a run of a section alone (store-scale,
    // tail) leaves it out.
    let memory = config.inflight > 0 && (config.only.is_empty() || !selected.is_empty());
    let tail_sides = if config.side.is_some() { 1 } else { 2 };
    // Found before anything runs, so that a missing binary fails at once, not minutes in.
    let agents_binary = if config.agents && section_selected(&config.only, "agents") {
        Some(agents::cli_binary()?)
    } else {
        None
    };
    let rounds = config.rounds.max(1);
    let side_runs: usize = selected
        .iter()
        .map(|(scenario, _)| {
            sides(*scenario)
                .iter()
                .filter(|side| side.selected(config.side.as_deref()))
                .count()
        })
        .sum();
    // The oslo section takes tidings' figures from the oslo JSON rows when their tidings side
    // runs.
    let tidings_rows = |scenario: Scenario| {
        Side::Tidings.selected(config.side.as_deref()) && selected.contains(&(scenario, Wire::Json))
    };
    let mut progress = Progress {
        total: side_runs * rounds
            + usize::from(memory)
            + if tail { tail::steps(tail_sides) } else { 0 }
            + if agents_binary.is_some() {
                agents::KINDS.len()
            } else {
                0
            }
            + stores.len()
            + oslo_python.map_or(0, |_| oslo::steps(&tidings_rows, rounds))
            + scale::steps(&scale_parts, config),
        done: 0,
        terminal: std::io::stderr().is_terminal(),
    };
    let mut report = Report {
        load: (harness::load_average(), None),
        ..Report::default()
    };
    if memory {
        progress.step(&format!("memory: {} calls in flight", config.inflight));
        report.memory = Some(scenarios::memory(env, config.inflight, config.settle).await?);
    }
    for (scenario, wire) in selected {
        let name = format!("{}/{}", scenario.name(), wire.name());
        let mut best: BTreeMap<Side, f64> = BTreeMap::new();
        let mut best_cost: BTreeMap<Side, cpu::CpuCost> = BTreeMap::new();
        let sides = sides(scenario);
        for round in 0..rounds {
            // Rotate which side goes first, so none always gets the warmer machine.
            for offset in 0..sides.len() {
                let side = sides[(round + offset) % sides.len()];
                if !side.selected(config.side.as_deref()) {
                    continue;
                }
                progress.step(&format!("{name}: {} (round {})", side.name(), round + 1));
                let figure = match side {
                    Side::Tidings => scenarios::run(env, scenario, wire).await,
                    Side::Baseline => baseline::run(env, scenario, wire).await,
                    Side::Unconfirmed => baseline::run_unconfirmed(env, scenario, wire).await,
                }
                .map_err(|e| BenchError(format!("{name} ({}): {e}", side.name())))?;
                let cost = env.take_cost();
                // A figure that is not a number never stays the best (as `f64::min` and
                // `max` would have it).
                let better = best.get(&side).is_none_or(|kept| {
                    if kept.is_nan() {
                        true
                    } else if scenario.lower_is_better() {
                        figure < *kept
                    } else {
                        figure > *kept
                    }
                });
                if better {
                    best.insert(side, figure);
                    match cost {
                        Some(cost) => best_cost.insert(side, cost),
                        None => best_cost.remove(&side),
                    };
                }
            }
        }
        let figure = |side| best.get(&side).copied();
        let tidings = figure(Side::Tidings).unwrap_or(f64::NAN);
        let baseline = figure(Side::Baseline).unwrap_or(f64::NAN);
        report.rows.push(Row {
            scenario: name,
            tidings,
            baseline,
            baseline_unconfirmed: figure(Side::Unconfirmed),
            ratio: tidings / baseline,
            unit: scenario.unit(),
            cpu: best_cost
                .into_iter()
                .map(|(side, cost)| (side.json_key(), cost))
                .collect(),
        });
    }
    if let Some(python) = oslo_python {
        report.oslo = Some(
            oslo::run(env, python, &report.rows, rounds, &mut |what| {
                progress.step(what)
            })
            .await?,
        );
    }
    if tail {
        report.tail = tail::run(env, config.side.as_deref(), &mut |what| progress.step(what))
            .await
            .map_err(|e| BenchError(format!("tail: {e}")))?;
    }
    if let Some(binary) = &agents_binary {
        report.agents = agents::run(env, binary, &mut |what| progress.step(what)).await?;
    }
    if !scale_parts.is_empty() {
        let measured =
            scale::run(env, &scale_parts, config, &mut |what| progress.step(what)).await?;
        report.scale = Some(measured);
    }
    for store in stores {
        progress.step(&format!("store-scale/{store}: {} samples", config.samples));
        let scale = store_scale::run(env, store, config.samples, &config.postgres)
            .await
            .map_err(|e| BenchError(format!("store-scale/{store}: {e}")))?;
        report.store_scale.push(scale);
    }
    progress.finish();
    report.load.1 = harness::load_average();
    Ok(report)
}
