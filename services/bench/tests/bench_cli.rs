//! `tidings-bench --quick` against the machine's RabbitMQ: the table has every scenario with
//! both figures and a ratio, the JSON file has the same keys, and the memory and tail sections
//! are there; the oslo section (tests/oslo_cli.rs) is skipped for want of its Python, with a
//! note.
//! No speed thresholds: figures on a shared CI machine say nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{output_within, run_bench, BenchRun, BENCH_DEADLINE};

/// Scenarios whose baseline also runs without publisher confirms.
const UNCONFIRMED: [&str; 5] = ["call-1", "call-64", "cast", "fanout-3", "notify-batch"];

const SCENARIOS: [&str; 8] = [
    "call-1",
    "call-64",
    "cast",
    "fanout-3",
    "notify-batch",
    "ingest",
    "meter-notify",
    "meter-notify-grouped",
];

#[test]
fn quick_bench_prints_the_table_and_writes_the_json() {
    // The default URL: the bench makes (and deletes) a private vhost for the run. A full run
    // whose Python for the oslo section is missing goes on without it.
    let BenchRun {
        stdout,
        stderr,
        json,
    } = run_bench([
        "--quick",
        "--no-agents",
        "--oslo-python",
        "/nonexistent/bin/python",
    ]);
    // Progress went to stderr, one step per side of each scenario.
    assert!(stderr.contains("call-1/json: tidings"), "{stderr}");
    assert!(
        stderr.contains("oslo section skipped: no Python at /nonexistent/bin/python")
            && stderr.contains("scripts/test --setup"),
        "{stderr}"
    );

    let header = stdout
        .lines()
        .find(|l| l.starts_with("scenario"))
        .expect("a header line");
    for column in ["tidings", "baseline", "unconfirmed", "unit", "ratio"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(stdout.contains("lower is better") && stdout.contains("higher is better"));

    let object = json.as_object().unwrap();
    // CPU µs per delivery summed over every row: this process's, the broker's.
    let mut cpu_seen = [0.0_f64; 2];
    for scenario in SCENARIOS {
        for codec in ["json", "msgpack"] {
            let name = format!("{scenario}/{codec}");
            // A table row: name, two figures, the unconfirmed figure or `-`, a unit (one or
            // more words), a ratio.
            let row = stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no row for {name} in\n{stdout}"));
            let fields: Vec<&str> = row.split_whitespace().collect();
            assert!(fields.len() >= 6, "{row}");
            for figure in [fields[1], fields[2], fields[fields.len() - 1]] {
                let n: f64 = figure.parse().unwrap_or_else(|_| panic!("{row}"));
                assert!(n.is_finite() && n > 0.0, "{row}");
            }
            let unconfirmed = UNCONFIRMED.contains(&scenario);
            if unconfirmed {
                let n: f64 = fields[3].parse().unwrap_or_else(|_| panic!("{row}"));
                assert!(n.is_finite() && n > 0.0, "{row}");
            } else {
                assert_eq!(fields[3], "-", "{row}");
            }
            let entry = object
                .get(&name)
                .unwrap_or_else(|| panic!("no {name} in the JSON"));
            for key in ["tidings", "baseline", "ratio"] {
                let n = entry[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name}.{key}"));
                assert!(n.is_finite() && n > 0.0, "{name}.{key} = {n}");
            }
            assert!(entry["unit"].is_string(), "{name}.unit");
            // Present exactly where the unconfirmed baseline runs; never in the ratio.
            assert_eq!(
                entry["baseline_unconfirmed"]
                    .as_f64()
                    .is_some_and(|n| n > 0.0),
                unconfirmed,
                "{name}.baseline_unconfirmed"
            );
            let ratio = entry["tidings"].as_f64().unwrap() / entry["baseline"].as_f64().unwrap();
            assert!((ratio - entry["ratio"].as_f64().unwrap()).abs() < 1e-9);
            // CPU per delivery of each side that ran, this process's and the local broker's.
            let mut sides = vec!["tidings", "baseline"];
            if unconfirmed {
                sides.push("baseline_unconfirmed");
            }
            for side in sides {
                for part in ["process_us", "broker_us"] {
                    let n = entry["cpu"][side][part]
                        .as_f64()
                        .unwrap_or_else(|| panic!("{name}.cpu.{side}.{part}"));
                    assert!(n.is_finite() && n >= 0.0, "{name}.cpu.{side}.{part} = {n}");
                    cpu_seen[usize::from(part == "broker_us")] += n;
                }
            }
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("cpu {name} "))),
                "no cpu row for {name} in\n{stdout}"
            );
        }
    }
    // Clock ticks are 10 ms: a quick side may spend less than one, but not every side of
    // every scenario on both sides of the socket.
    assert!(cpu_seen[0] > 0.0 && cpu_seen[1] > 0.0, "{cpu_seen:?}");
    assert!(stdout.contains("cpu: µs of CPU per delivery"), "{stdout}");
    assert_eq!(
        object.len(),
        SCENARIOS.len() * 2 + 3,
        "scenarios, memory, load_average and tail"
    );
    for when in ["before", "after"] {
        let load = json["load_average"][when].as_f64().unwrap();
        assert!(
            load.is_finite() && load >= 0.0,
            "load_average.{when} = {load}"
        );
    }

    // The memory section: just started, idle after the warm-up calls, then in flight and
    // after, round by round.
    assert!(stdout.contains("memory (VmRSS"), "{stdout}");
    let memory = &json["memory"];
    assert!(memory["started_kib"].as_u64().unwrap() > 0, "{memory}");
    assert!(memory["started_split"]["anon_kib"].as_u64().unwrap() > 0);
    assert!(memory["warm_up_calls"].as_u64().unwrap() > 0, "{memory}");
    assert!(memory["idle_kib"].as_u64().unwrap() > 0);
    let rounds = memory["inflight_kib"].as_array().unwrap().len();
    assert!(rounds >= 2, "{memory}");
    assert_eq!(memory["after_kib"].as_array().unwrap().len(), rounds);
    // The allocator's own figures: zeros would mean its statistics are not built in.
    assert!(
        memory["idle_heap"]["live_kib"].as_u64().unwrap() > 0,
        "{memory}"
    );
    let after_heap = memory["after_heap"].as_array().unwrap();
    assert_eq!(after_heap.len(), rounds, "{memory}");
    assert!(after_heap.iter().all(|heap| {
        let kib = |key: &str| heap[key].as_u64().unwrap();
        kib("active_kib") >= kib("live_kib")
            && kib("resident_kib") >= kib("active_kib")
            && kib("metadata_kib") > 0
    }));
    // The resident set in its parts: the binary's code is always among the file pages.
    let after_split = memory["after_split"].as_array().unwrap();
    assert_eq!(after_split.len(), rounds, "{memory}");
    assert!(after_split
        .iter()
        .chain([&memory["idle_split"]])
        .all(|split| split["anon_kib"].as_u64().unwrap() > 0
            && split["file_kib"].as_u64().unwrap() > 0));
    // Followed after each burst: where it ended, and when (if) it was back near idle.
    assert_eq!(memory["settled_s"].as_f64(), Some(1.0), "{memory}");
    let settled = memory["settled_kib"].as_array().unwrap();
    assert_eq!(settled.len(), rounds, "{memory}");
    assert!(settled.iter().all(|kib| kib.as_u64().unwrap() > 0));
    let back = memory["back_within_ms"].as_array().unwrap();
    assert_eq!(back.len(), rounds, "{memory}");
    assert!(back.iter().all(|ms| ms.is_null() || ms.is_u64()));
    assert!(stdout.contains("1 s after (round 1)"), "{stdout}");

    // The tail section: three loads, both sides, percentiles in order.
    assert!(stdout.contains("tail (call/json, open loop"), "{stdout}");
    let tail = json["tail"].as_array().unwrap();
    let loads: Vec<u64> = tail
        .iter()
        .map(|row| row["load_percent"].as_u64().unwrap())
        .collect();
    assert_eq!(loads, [25, 50, 80]);
    for row in tail {
        assert!(row["rate_per_s"].as_f64().unwrap() > 0.0, "{row}");
        for side in ["tidings", "baseline"] {
            let p = |key: &str| {
                row[side][key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{side}.{key} in {row}"))
            };
            assert!(p("p50_us") > 0, "{row}");
            assert!(
                p("p50_us") <= p("p99_us") && p("p99_us") <= p("p999_us"),
                "{row}"
            );
        }
        let ratio = row["p99_ratio"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{row}");
    }
}

/// `--only agents` runs the `tidings` binary beside this one: each idle agent's memory in the
/// table and the JSON; without the binary, an error that says how to build it.
#[test]
fn agents_section_measures_each_agent_or_says_how_to_build_the_binary() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_tidings-bench"));
    let cli = bench.with_file_name("tidings");
    let json_path = std::env::temp_dir().join(format!(
        "tidings-bench-agents-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let output = output_within(
        Command::new(bench)
            .args(["--only", "agents", "--json"])
            .arg(&json_path)
            .env_remove("TIDINGS_TRANSPORT_URL"),
        BENCH_DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !cli.is_file() {
        assert!(!output.status.success(), "{stdout}");
        assert!(
            stderr.contains("cargo build --release -p tidings-cli"),
            "{stderr}"
        );
        return;
    }
    assert!(output.status.success(), "bench failed: {stdout}\n{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json_path);
    // agents alone: no scenario, no memory or tail section.
    assert_eq!(json.as_object().unwrap().len(), 2, "{json:#}");
    let agents = json["agents"].as_object().unwrap();
    for kind in [
        "collector",
        "evaluator",
        "notifier",
        "polling",
        "notification",
        "api",
        "all-in-one",
    ] {
        let kib = agents[kind]
            .as_u64()
            .unwrap_or_else(|| panic!("{kind} in {json:#}"));
        assert!(kib > 1024, "{kind}: {kib} KiB");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(kind) && l.contains("MiB")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("goal < 20 MiB"), "{stdout}");
}

/// Ctrl-C (SIGINT) in the middle of a scenario: the run stops at once, deletes its private
/// vhost and exits with the status a shell gives a process killed by the signal.
#[test]
fn an_interrupted_run_deletes_its_vhost_and_exits_as_signalled() {
    let stderr_path = std::env::temp_dir().join(format!(
        "tidings-bench-interrupted-{}.stderr",
        uuid::Uuid::new_v4().simple()
    ));
    // Long enough that only the signal can end it in time.
    let child = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(["--only", "cast/json", "--duration", "600", "--rounds", "1"])
        .args(["--inflight", "0", "--no-agents", "--no-oslo"])
        .env_remove("TIDINGS_TRANSPORT_URL")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut bench = GroupGuard(child);
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    let vhost = poll_until(STARTED_WITHIN, "the first scenario to start", || {
        if let Some(status) = bench.0.try_wait().unwrap() {
            panic!("the bench ended by itself ({status}):\n{}", stderr());
        }
        let text = stderr();
        let vhost = text
            .lines()
            .find_map(|l| l.strip_prefix("vhost "))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned);
        vhost.filter(|_| text.contains("cast/json: tidings"))
    });
    assert!(vhosts().contains(&vhost), "{vhost} not made:\n{}", stderr());

    let sent = Command::new("kill")
        .args(["-INT", &bench.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = poll_until(ENDED_WITHIN, "the bench to exit after SIGINT", || {
        bench.0.try_wait().unwrap()
    });
    let text = stderr();
    let _ = std::fs::remove_file(&stderr_path);
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    assert!(!vhosts().contains(&vhost), "{vhost} left behind:\n{text}");
}

/// How long the bench may take to make its vhost and start a scenario on a loaded machine.
const STARTED_WITHIN: Duration = Duration::from_secs(120);
/// How long an interrupted run may take to clean up (one `rabbitmqctl delete_vhost`).
const ENDED_WITHIN: Duration = Duration::from_secs(60);

/// Calls `check` every 50 ms until it returns something; fails the test after `deadline`.
fn poll_until<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < deadline, "waited {deadline:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The local broker's vhosts; `rabbitmqctl` is part of what these suites need.
fn vhosts() -> Vec<String> {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "list_vhosts"])
        .output()
        .expect("rabbitmqctl, to list the broker's vhosts");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

/// A process that leads its own group, killed with the group if the test ends before it does.
struct GroupGuard(std::process::Child);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", self.0.id())])
                .status();
            let _ = self.0.wait();
        }
    }
}
