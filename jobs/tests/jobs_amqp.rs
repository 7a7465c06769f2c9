//! Jobs on the machine's RabbitMQ, each test on a vhost of its own: five servers with parts of
//! different lengths, one that fails and one that is dead; a caller that restarts; a server
//! that dies while running its part; a Python oslo.messaging server taking part with a plain
//! call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use tidings::Transport;
use tidings_jobs::{
    discovery, failure, JobClient, JobEvent, JobOptions, JobSpec, JobStatus, JobStore, PartKind,
    PartStatus, Targets,
};
use tidings_suites::{python, Bus};

use support::{quick_options, JobsServer, StoreFile, Work, TOPIC};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Consecutive distinct job statuses of `events`.
fn status_sequence(events: &[JobEvent]) -> Vec<JobStatus> {
    let mut sequence: Vec<JobStatus> = Vec::new();
    for event in events {
        if sequence.last() != Some(&event.status) {
            sequence.push(event.status);
        }
    }
    sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_servers_run_partial_then_finished_and_results_outlive_them() {
    let bus = Bus::amqp();
    let store_file = StoreFile::new();
    let mut servers = Vec::new();
    for (name, work) in [
        ("jobs-fast", Work::Succeeds(secs(0.3))),
        ("jobs-medium", Work::Succeeds(secs(1.5))),
        ("jobs-slow", Work::Succeeds(secs(6.0))),
        ("jobs-failing", Work::Fails(secs(0.5))),
    ] {
        servers.push(JobsServer::start(bus.url(), name, work).await);
    }
    // The dead server ran once (its queue is there) and is gone: nobody takes its messages.
    JobsServer::start(bus.url(), "jobs-dead", Work::Succeeds(secs(0.1)))
        .await
        .kill()
        .await;

    let transport = bus.transport().await;
    let store = JobStore::open(&store_file.0).await.unwrap();
    let jobs = JobClient::new(&transport, store);
    // Four discovered by the glob; the dead one named, as a Python server would be.
    let spec = JobSpec::new(TOPIC, "work")
        .servers(Targets::parse("jobs-*,jobs-dead"))
        .options(quick_options());
    let started = tokio::time::Instant::now();
    let id = jobs.start(spec).await.unwrap();
    assert!(
        started.elapsed() < secs(1.0),
        "the id comes at once, before any part ends"
    );
    let mut events = jobs.events(&id).await.unwrap();
    let mut seen = Vec::new();
    let recording = tokio::time::timeout(secs(30.0), async {
        while let Some(event) = events.next().await.unwrap() {
            seen.push(event);
        }
        seen
    });
    let seen = recording.await.expect("the job finished within 30 s");
    assert_eq!(
        status_sequence(&seen),
        [JobStatus::Running, JobStatus::Partial, JobStatus::Finished],
        "{seen:#?}"
    );
    // PARTIAL came once the dead server's start had timed out, while the slow part ran.
    let partial_at = seen
        .iter()
        .position(|e| e.status == JobStatus::Partial)
        .unwrap();
    assert!(seen[..=partial_at].iter().any(|e| e
        .part
        .as_ref()
        .is_some_and(|p| p.server == "jobs-dead" && p.status == PartStatus::Finished)));

    let job = jobs.status(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Finished);
    assert_eq!(job.parts.len(), 5);
    let history: Vec<String> = jobs
        .store()
        .history(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.server.is_none())
        .map(|h| h.status)
        .collect();
    assert_eq!(history, ["RUNNING", "PARTIAL", "FINISHED"]);

    // The servers and the caller's connection go; the results stay readable from the store
    // alone, opened afresh with no transport at all.
    for server in servers {
        server.kill().await;
    }
    jobs.close().await;
    drop(jobs);
    transport.close().await;
    let reopened = JobStore::open(&store_file.0).await.unwrap();
    let job = reopened.snapshot(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Finished);
    for name in ["jobs-fast", "jobs-medium", "jobs-slow"] {
        let part = job.part(name).unwrap();
        assert_eq!(part.kind, PartKind::Job);
        assert!(
            part.remote_id.is_some(),
            "the part id is kept with the result"
        );
        let result = part.outcome.clone().unwrap().unwrap();
        assert_eq!(result["server"], json!(name));
    }
    let failing = job.part("jobs-failing").unwrap().outcome.clone().unwrap();
    let error = failing.unwrap_err();
    assert_eq!(
        (error.class.as_str(), error.module.as_str()),
        ("WorkFailed", "tests.jobs")
    );
    let dead = job.part("jobs-dead").unwrap().outcome.clone().unwrap();
    let error = dead.unwrap_err();
    assert!(
        failure::is(&error, failure::SERVER_UNREACHABLE),
        "{error:?}"
    );
    assert_eq!(job.failed(), 2);
    assert!(!job.succeeded());
    let lines: Vec<serde_json::Value> = job
        .parts
        .iter()
        .map(|p| serde_json::to_value(p.result_line()).unwrap())
        .collect();
    assert_eq!(lines[0]["status"], "FINISHED");
    assert!(lines
        .iter()
        .all(|l| l.get("result").is_some() != l.get("error").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_survives_a_restart_of_its_caller() {
    let bus = Bus::amqp();
    let store_file = StoreFile::new();
    let a = JobsServer::start(bus.url(), "jobs-a", Work::Succeeds(secs(3.0))).await;
    let b = JobsServer::start(bus.url(), "jobs-b", Work::Succeeds(secs(4.0))).await;

    // The first caller starts the job and dies once both parts run.
    let first = bus.transport().await;
    let lease = Duration::from_secs(1);
    let id = {
        let jobs = JobClient::new(&first, JobStore::open(&store_file.0).await.unwrap())
            .with_lease_ttl(lease);
        let spec = JobSpec::new(TOPIC, "work")
            .servers(Targets::parse("jobs-a,jobs-b"))
            .options(quick_options());
        let id = jobs.start(spec).await.unwrap();
        let mut events = jobs.events(&id).await.unwrap();
        while events.status() != JobStatus::Partial {
            events.next().await.unwrap().expect("the job goes on");
        }
        id
        // Dropped here without a word: its follower stops mid-job, its lease runs out.
    };
    first.close().await;

    let second = bus.transport().await;
    let jobs = JobClient::new(&second, JobStore::open(&store_file.0).await.unwrap());
    let job = jobs.status(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Partial);
    assert!(job.parts.iter().all(|p| p.remote_id.is_some()));
    // Not before the dead caller's lease expired; then at once.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert!(jobs.resume(&id).await.unwrap());
    let job = jobs.wait(&id, Some(secs(20.0))).await.unwrap();
    assert!(job.succeeded(), "{job:#?}");
    for name in ["jobs-a", "jobs-b"] {
        let result = job.part(name).unwrap().outcome.clone().unwrap().unwrap();
        assert_eq!(result["server"], json!(name));
    }
    a.kill().await;
    b.kill().await;
    jobs.close().await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_dies_mid_part_ends_it_with_server_lost() {
    let bus = Bus::amqp();
    let steady = JobsServer::start(bus.url(), "jobs-steady", Work::Succeeds(secs(1.0))).await;
    let doomed = JobsServer::start(bus.url(), "jobs-doomed", Work::Succeeds(secs(60.0))).await;
    let transport = bus.transport().await;
    let jobs = JobClient::new(&transport, JobStore::in_memory().await.unwrap());
    let spec = JobSpec::new(TOPIC, "work")
        .servers(Targets::parse("jobs-steady,jobs-doomed"))
        .options(quick_options());
    let id = jobs.start(spec).await.unwrap();
    let mut events = jobs.events(&id).await.unwrap();
    while events.status() != JobStatus::Partial {
        events.next().await.unwrap().expect("the job goes on");
    }
    let died = tokio::time::Instant::now();
    doomed.kill().await;
    let job = jobs.wait(&id, Some(secs(20.0))).await.unwrap();
    assert!(
        died.elapsed() < secs(8.0),
        "noticed within the liveness timeout (3 s) and a wait round"
    );
    assert!(!job.part("jobs-steady").unwrap().failed());
    let error = job
        .part("jobs-doomed")
        .unwrap()
        .outcome
        .clone()
        .unwrap()
        .unwrap_err();
    assert!(failure::is(&error, failure::SERVER_LOST), "{error:?}");
    steady.kill().await;
    transport.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_oslo_messaging_server_takes_part_with_a_plain_call() {
    let bus = Bus::amqp();
    // The Python server and a tidings server both serve `sleep(secs)` -> "slept".
    let mut py = python::rpc_server(&bus, TOPIC, "py-1", &[]).await;
    let transport = bus.transport().await;
    let target = tidings::Target::topic(TOPIC).with_server("rs-1");
    let endpoint = tidings_suites::test_endpoint(
        "rs-1",
        std::sync::Arc::new(tidings_suites::Probe::default()),
    );
    let runner = tidings_jobs::JobRunner::new(&target, vec![endpoint.clone()]);
    let server = tidings::rpc::RpcServer::builder(&transport, target)
        .endpoint(endpoint)
        .endpoint(runner.endpoint())
        .start()
        .await
        .unwrap();

    // Discovery hears only the tidings server: the Python one has no jobs namespace.
    let found = discovery::discover(&transport, TOPIC, secs(1.0))
        .await
        .unwrap();
    assert_eq!(found, ["rs-1"]);

    let caller = Transport::connect(bus.url()).await.unwrap();
    let jobs = JobClient::new(&caller, JobStore::in_memory().await.unwrap());
    let spec = JobSpec::new(TOPIC, "sleep")
        .servers(Targets::parse("py-1,rs-*"))
        .version(tidings::Version::new(1, 3))
        .args(json!({"secs": 1.5}))
        .unwrap()
        .options(JobOptions {
            liveness_timeout: secs(4.0),
            ..quick_options()
        });
    let id = jobs.start(spec).await.unwrap();
    let job = jobs.wait(&id, Some(secs(30.0))).await.unwrap();
    assert!(job.succeeded(), "{job:#?}");
    let py_part = job.part("py-1").unwrap();
    assert_eq!(py_part.kind, PartKind::Call);
    assert_eq!(
        py_part.remote_id, None,
        "a plain call has no server-side id"
    );
    assert_eq!(py_part.outcome, Some(Ok(json!("slept"))));
    let rs_part = job.part("rs-1").unwrap();
    assert_eq!(rs_part.kind, PartKind::Job);
    assert_eq!(rs_part.outcome, Some(Ok(json!("slept"))));

    // The Python server saw one `start` it could not serve, then the plain call.
    let client =
        tidings::rpc::RpcClient::new(&caller, tidings::Target::topic(TOPIC).with_server("py-1"))
            .version(tidings::Version::new(1, 3));
    let received: serde_json::Value = client
        .call(
            &tidings::Context::new(),
            "received",
            json!({"method": "sleep"}),
        )
        .await
        .unwrap();
    assert_eq!(received.as_array().map(Vec::len), Some(1), "{received}");
    assert_eq!(received[0]["message"]["args"], json!({"secs": 1.5}));

    server.stop(secs(1.0)).await;
    py.close_stdin();
    py.finish().await;
    jobs.close().await;
    caller.close().await;
    transport.close().await;
}
