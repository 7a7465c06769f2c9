//! A short run: 20 000 messages through every path must cause no panic, and the server, the
//! listener, the reply queue and the collector must stay alive throughout.

use std::time::Duration;

use tidings_fuzz::{run, FuzzConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_messages_cause_no_panic_and_keep_every_path_alive() {
    let config = FuzzConfig {
        messages: 20_000,
        seed: 20_260_101,
        batch: 500,
        liveness_timeout: Duration::from_secs(30),
        max_triage_probes: 60,
        ..FuzzConfig::default()
    };
    let report = match run(&config).await {
        Ok(report) => report,
        Err(error) => panic!("the run could not go on: {error}"),
    };
    println!("{report}");
    assert_eq!(report.messages, 20_000);
    assert!(
        report.liveness_failures.is_empty(),
        "liveness: {:?}",
        report.liveness_failures
    );
    assert_eq!(
        report.liveness_checks, 41,
        "one check before and one after each batch"
    );
    assert_eq!(report.panics(), 0, "panics:\n{report}");
}
