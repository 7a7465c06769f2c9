//! `tidings-bench --only store-scale` with a few thousand samples: both stores are loaded,
//! measured and expired, and the JSON file holds `store-scale/<store>` with the keys operators'
//! scripts read. No speed thresholds: figures on a shared CI machine say nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

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
    let json_path = std::env::temp_dir().join(format!(
        "tidings-store-scale-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(["--only", "store-scale", "--samples", "3000", "--json"])
        .arg(&json_path)
        .env_remove("TIDINGS_TRANSPORT_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stdout}\n{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json_path);
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
