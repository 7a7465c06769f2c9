//! `poll_now`: a polling agent polls at once when asked, as a part of a job over every agent
//! that answers on the polling topic (what `tidings meter poll-now` runs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tidings::rpc::Contract;
use tidings_jobs::{JobClient, JobOptions, JobSpec, JobStore};
use tidings_metering::polling::rpc::{PollReport, PollingApi, POLL_NOW, TOPIC};
use tidings_metering::polling::{self, PollingConfig};
use tidings_runtime::Worker;
use tidings_suites::Bus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_polls_now_as_a_part_of_one_job() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    // Timers far away: only poll_now publishes after the first cycle.
    let agent = polling::start_serving(&transport, PollingConfig::every_meter(3600, "host-a"))
        .await
        .unwrap();

    let jobs = JobClient::new(&transport, JobStore::in_memory().await.unwrap());
    let mut spec = JobSpec::new(TOPIC, POLL_NOW.name())
        .version(PollingApi::VERSION)
        .options(JobOptions {
            discovery_window: Duration::from_millis(300),
            ..JobOptions::default()
        });
    spec.namespace = PollingApi::NAMESPACE.map(str::to_owned);
    let id = jobs.start(spec).await.unwrap();
    let job = jobs.wait(&id, Some(Duration::from_secs(20))).await.unwrap();
    assert!(job.succeeded(), "{job:#?}");
    let part = job.part("host-a").expect("the agent was discovered");
    let report: PollReport =
        serde_json::from_value(part.outcome.clone().unwrap().unwrap()).unwrap();
    assert!(report.samples > 0 && report.notifications > 0, "{report:?}");

    agent.kill();
    agent.wait().await.unwrap();
}
