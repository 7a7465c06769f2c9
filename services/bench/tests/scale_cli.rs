//! `tidings-bench --quick --only scale` with small counts against the machine's RabbitMQ: every
//! part prints its table and writes its rows under `scale` in the JSON, with positive figures.
//! No speed thresholds: figures on a shared CI machine say nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

mod support;
use support::{run_bench, BenchRun};

/// A positive, finite number at `key` of `row`.
fn positive(row: &Value, key: &str) -> f64 {
    let n = row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {row}"));
    assert!(n.is_finite() && n > 0.0, "{key} = {n} in {row}");
    n
}

/// Both sides and the ratio of a `{tidings, baseline, ratio}` figure, all positive.
fn pair(row: &Value, key: &str) {
    for side in ["tidings", "baseline", "ratio"] {
        positive(&row[key], side);
    }
}

#[test]
fn quick_scale_run_writes_every_part() {
    let BenchRun {
        stdout,
        stderr: _,
        json,
    } = run_bench([
        "--quick",
        "--only",
        "scale",
        "--scale-topics",
        "20",
        "--scale-clients",
        "50",
    ]);
    // scale alone: no scenario, no memory section; the load average is always there.
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["load_average", "scale"], "{json:#}");
    let scale = &json["scale"];
    for part in [
        "scale/payload",
        "scale/topics",
        "scale/fanout",
        "scale/reply-queues",
    ] {
        assert!(stdout.contains(part), "no {part} in\n{stdout}");
    }

    let payload = scale["payload"].as_array().unwrap();
    let sizes: Vec<u64> = payload
        .iter()
        .map(|row| row["payload_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [100, 1024, 10_240, 102_400, 1_048_576]);
    for row in payload {
        pair(row, "call_us");
        pair(row, "cast_msgs_per_s");
        pair(row, "cast_mb_per_s");
    }

    // 10 and 20 servers on one transport, then on a transport each.
    let topics = scale["topics"].as_array().unwrap();
    let layout: Vec<(u64, u64)> = topics
        .iter()
        .map(|row| {
            (
                row["servers"].as_u64().unwrap(),
                row["transports"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(layout, [(10, 1), (20, 1), (10, 10), (20, 20)]);
    for row in topics {
        for key in [
            "start_ms",
            "start_ms_per_server",
            "rss_before_kib",
            "rss_after_kib",
            "call_each_ms",
            "stop_ms",
        ] {
            positive(row, key);
        }
        // Memory deltas of a few servers may be lost in the allocator's noise: present, not
        // necessarily positive.
        assert!(row["kib_per_server"].is_number(), "{row}");
        assert!(row["broker_kib_per_server"].is_number(), "{row}");
    }

    let fanout = scale["fanout"].as_array().unwrap();
    let servers: Vec<u64> = fanout
        .iter()
        .map(|row| row["servers"].as_u64().unwrap())
        .collect();
    assert_eq!(servers, [3, 10, 50]);
    for row in fanout {
        pair(row, "delivered_per_s");
        pair(row, "casts_per_s");
    }

    // 50 clients sharing connections, then 50 with connections of their own.
    let replies = scale["reply_queues"].as_array().unwrap();
    let layout: Vec<(u64, u64, u64)> = replies
        .iter()
        .map(|row| {
            (
                row["clients"].as_u64().unwrap(),
                row["clients_per_connection"].as_u64().unwrap(),
                row["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(layout, [(50, 50, 2), (50, 1, 100)]);
    for row in replies {
        for key in [
            "open_ms",
            "open_us_per_client",
            "rss_before_kib",
            "rss_after_kib",
            "broker_queue_kib",
            "close_ms",
        ] {
            positive(row, key);
        }
        assert!(row["kib_per_client"].is_number(), "{row}");
        assert!(row["broker_kib_per_client"].is_number(), "{row}");
        // Reply queues outlive their clients until they expire, as oslo's do.
        assert_eq!(row["queues_left_after_close"], 50, "{row}");
    }
}
