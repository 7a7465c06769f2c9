//! The jobs rules on the in-process transport, where they run in milliseconds: ids at once,
//! timeouts, cancellation, discovery, blocking endpoints, and progress read by another process
//! from the store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use tidings::rpc::RpcServer;
use tidings::{Context, Target};
use tidings_compat::{BlockingEndpointExt, BlockingPool};
use tidings_jobs::{
    discovery, failure, JobClient, JobError, JobOptions, JobRunner, JobSpec, JobStatus, JobStore,
    PartStatus, Targets,
};
use tidings_suites::Bus;

use support::{quick_options, JobsServer, StoreFile, Work, TOPIC};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

async fn client(bus: &Bus) -> JobClient {
    JobClient::new(&bus.transport().await, JobStore::in_memory().await.unwrap())
}

fn spec(servers: &str) -> JobSpec {
    JobSpec::new(TOPIC, "work")
        .servers(Targets::parse(servers))
        .options(quick_options())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_comes_back_before_any_part_ends() {
    let bus = Bus::memory();
    let server = JobsServer::start(bus.url(), "m-1", Work::Succeeds(secs(2.0))).await;
    let jobs = client(&bus).await;
    let id = jobs.start(spec("m-1")).await.unwrap();
    let job = jobs.status(&id).await.unwrap();
    assert_ne!(job.status, JobStatus::Finished);
    let job = jobs.wait(&id, Some(secs(10.0))).await.unwrap();
    assert!(job.succeeded());
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_past_the_timeout_says_how_the_job_stands() {
    let bus = Bus::memory();
    let server = JobsServer::start(bus.url(), "m-1", Work::Succeeds(secs(5.0))).await;
    let jobs = client(&bus).await;
    let id = jobs.start(spec("m-1")).await.unwrap();
    match jobs.wait(&id, Some(secs(0.5))).await {
        Err(JobError::WaitTimedOut { status, .. }) => assert_ne!(status, JobStatus::Finished),
        other => panic!("expected a wait timeout, got {other:?}"),
    }
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_matching_nothing_finishes_the_job_with_no_servers() {
    let bus = Bus::memory();
    let jobs = client(&bus).await;
    let id = jobs.start(spec("nobody-*")).await.unwrap();
    let job = jobs.wait(&id, Some(secs(5.0))).await.unwrap();
    assert_eq!(job.status, JobStatus::Finished);
    assert!(job.parts.is_empty());
    assert!(failure::is(
        job.error.as_ref().unwrap(),
        failure::NO_SERVERS
    ));
    assert!(!job.succeeded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_server_without_a_queue_is_unreachable_at_once() {
    let bus = Bus::memory();
    let jobs = client(&bus).await;
    let started = tokio::time::Instant::now();
    let id = jobs.start(spec("ghost")).await.unwrap();
    let job = jobs.wait(&id, Some(secs(5.0))).await.unwrap();
    assert!(
        started.elapsed() < secs(2.0),
        "no wait for the start timeout"
    );
    let error = job.parts[0].outcome.clone().unwrap().unwrap_err();
    assert!(
        failure::is(&error, failure::SERVER_UNREACHABLE),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_hears_every_jobs_server_of_the_topic() {
    let bus = Bus::memory();
    let a = JobsServer::start(bus.url(), "d-a", Work::Succeeds(secs(0.0))).await;
    let b = JobsServer::start(bus.url(), "d-b", Work::Succeeds(secs(0.0))).await;
    let transport = bus.transport().await;
    let found = discovery::discover(&transport, TOPIC, secs(0.3))
        .await
        .unwrap();
    assert_eq!(found, ["d-a", "d-b"]);
    let jobs = client(&bus).await;
    let id = jobs
        .start(JobSpec::new(TOPIC, "work").options(quick_options()))
        .await
        .unwrap();
    let job = jobs.wait(&id, Some(secs(5.0))).await.unwrap();
    let servers: Vec<&str> = job.parts.iter().map(|p| p.server.as_str()).collect();
    assert_eq!(servers, ["d-a", "d-b"], "no list: every server announced");
    assert!(job.succeeded());
    a.kill().await;
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_ends_open_parts_and_stops_them_on_their_servers() {
    let bus = Bus::memory();
    let server = JobsServer::start(bus.url(), "m-1", Work::Succeeds(secs(60.0))).await;
    let jobs = client(&bus).await;
    let id = jobs.start(spec("m-1")).await.unwrap();
    let mut events = jobs.events(&id).await.unwrap();
    while events.status() != JobStatus::Partial {
        events.next().await.unwrap().unwrap();
    }
    assert_eq!(server.runner.running(), 1);
    let job = jobs.cancel(&id).await.unwrap();
    assert_eq!(job.status, JobStatus::Finished);
    let error = job.parts[0].outcome.clone().unwrap().unwrap_err();
    assert!(failure::is(&error, failure::CANCELLED));
    let stopped = tidings_suites::eventually(secs(5.0), || server.runner.running() == 0).await;
    assert!(stopped, "the server stopped the part");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_past_its_timeout_ends_with_part_timeout_and_is_stopped() {
    let bus = Bus::memory();
    let quick = JobsServer::start(bus.url(), "m-quick", Work::Succeeds(secs(0.1))).await;
    let stuck = JobsServer::start(bus.url(), "m-stuck", Work::Succeeds(secs(60.0))).await;
    let jobs = client(&bus).await;
    let options = JobOptions {
        part_timeout: Some(secs(1.0)),
        ..quick_options()
    };
    let id = jobs
        .start(spec("m-quick,m-stuck").options(options))
        .await
        .unwrap();
    let job = jobs.wait(&id, Some(secs(10.0))).await.unwrap();
    assert!(!job.part("m-quick").unwrap().failed());
    let error = job
        .part("m-stuck")
        .unwrap()
        .outcome
        .clone()
        .unwrap()
        .unwrap_err();
    assert!(failure::is(&error, failure::PART_TIMEOUT), "{error:?}");
    let stopped = tidings_suites::eventually(secs(5.0), || stuck.runner.running() == 0).await;
    assert!(stopped, "the server stopped the part");
    quick.kill().await;
    stuck.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_ends_its_open_parts_with_job_timeout() {
    let bus = Bus::memory();
    let stuck = JobsServer::start(bus.url(), "m-stuck", Work::Succeeds(secs(60.0))).await;
    let jobs = client(&bus).await;
    let options = JobOptions {
        job_timeout: Some(secs(1.0)),
        ..quick_options()
    };
    let id = jobs.start(spec("m-stuck").options(options)).await.unwrap();
    let job = jobs.wait(&id, Some(secs(10.0))).await.unwrap();
    let error = job.parts[0].outcome.clone().unwrap().unwrap_err();
    assert!(failure::is(&error, failure::JOB_TIMEOUT), "{error:?}");
    stuck.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_endpoints_run_as_parts_like_async_ones() {
    let bus = Bus::memory();
    let transport = bus.transport().await;
    let pool = BlockingPool::new(2).unwrap();
    let target = Target::topic(TOPIC).with_server("m-blocking");
    let endpoint = tidings::rpc::Endpoint::new().blocking_method(
        "work",
        &pool,
        |_ctx: &Context, _: tidings::rpc::NoArgs| {
            std::thread::sleep(Duration::from_millis(200));
            Ok::<_, tidings::RemoteError>("ground")
        },
    );
    let runner = JobRunner::new(&target, vec![endpoint.clone()]);
    let server = RpcServer::builder(&transport, target)
        .endpoint(endpoint)
        .endpoint(runner.endpoint())
        .start()
        .await
        .unwrap();
    let jobs = client(&bus).await;
    let id = jobs.start(spec("m-blocking")).await.unwrap();
    let job = jobs.wait(&id, Some(secs(10.0))).await.unwrap();
    assert_eq!(job.parts[0].outcome, Some(Ok(json!("ground"))));
    server.stop(secs(1.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_follows_progress_through_the_store() {
    let bus = Bus::memory();
    let store_file = StoreFile::new();
    let a = JobsServer::start(bus.url(), "m-a", Work::Succeeds(secs(0.3))).await;
    let b = JobsServer::start(bus.url(), "m-b", Work::Fails(secs(0.8))).await;
    let transport = bus.transport().await;
    let follower = JobClient::new(&transport, JobStore::open(&store_file.0).await.unwrap());
    let id = follower.start(spec("m-a,m-b")).await.unwrap();

    // A reader with its own connection to the store, as `tidings job wait` has.
    let reader = JobClient::new(&transport, JobStore::open(&store_file.0).await.unwrap());
    let mut events = reader.events(&id).await.unwrap();
    let mut finished_parts = Vec::new();
    while let Some(event) = tokio::time::timeout(secs(10.0), events.next())
        .await
        .unwrap()
        .unwrap()
    {
        if let Some(part) = event.part.filter(|p| p.status == PartStatus::Finished) {
            finished_parts.push(part.server);
        }
    }
    assert_eq!(finished_parts, ["m-a", "m-b"]);
    assert_eq!(events.status(), JobStatus::Finished);
    let job = reader.wait(&id, Some(secs(1.0))).await.unwrap();
    assert_eq!(job.failed(), 1);
    a.kill().await;
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_followed_elsewhere_cannot_be_followed_twice() {
    let bus = Bus::memory();
    let store_file = StoreFile::new();
    // Long enough work that the job cannot end (and its lease go) before the second client
    // asks, however busy the machine.
    let server = JobsServer::start(bus.url(), "m-1", Work::Succeeds(secs(5.0))).await;
    let transport = bus.transport().await;
    let first = JobClient::new(&transport, JobStore::open(&store_file.0).await.unwrap());
    let second = JobClient::new(&transport, JobStore::open(&store_file.0).await.unwrap());
    let id = first.start(spec("m-1")).await.unwrap();
    assert!(
        !second.resume(&id).await.unwrap(),
        "the first holds the lease"
    );
    assert!(matches!(
        second.follow(&id).await,
        Err(JobError::Followed(_))
    ));
    let job = second.wait(&id, Some(secs(60.0))).await.unwrap();
    assert!(job.succeeded());
    server.kill().await;
}
