//! `tidings-bench --only store-scale` with a few thousand samples: both stores are loaded,
//! measured and expired, and the JSON file holds `store-scale/<store>` with the keys operators'
//! scripts read. No speed thresholds: figures on a shared CI machine say nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{run_bench, BenchRun};

/// The keys of `store-scale/<store>` (a contract).
const KEYS: [&str; 8] = [
    "samples",
    "ingest_per_s",
    "meters_list_ms",
    "stats_full_ms",
    "stats_resource_ms",
    "stats_window_ms",
    "bytes_per_sample",
    "bytes_after_expiry",
];

#[test]
fn store_scale_loads_measures_and_expires_both_stores() {
    let BenchRun {
        stdout,
        stderr: _,
        json,
    } = run_bench(["--only", "store-scale", "--samples", "3000"]);
    // store-scale alone: no other scenario, no memory section; the load average is always there.
    assert_eq!(json.as_object().unwrap().len(), 3, "{json:#}");
    assert!(json["load_average"]["before"].is_number(), "{json:#}");
    assert!(json["load_average"]["after"].is_number(), "{json:#}");
    for store in ["sqlite", "postgres"] {
        let entry = &json[format!("store-scale/{store}")];
        for key in KEYS {
            let n = entry[key]
                .as_f64()
                .unwrap_or_else(|| panic!("store-scale/{store}.{key} in {json:#}"));
            assert!(n.is_finite() && n > 0.0, "store-scale/{store}.{key} = {n}");
        }
        assert_eq!(entry["samples"], 3000);
        assert_eq!(entry["curve"].as_array().unwrap().len(), 10);
        assert!(stdout.contains(&format!("store-scale/{store}")), "{stdout}");
    }
}
