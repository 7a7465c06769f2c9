//! What the jobs suites share: servers whose `work` method takes a time of their own and
//! succeeds or fails, served beside the jobs endpoint, as separate processes would.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tidings::rpc::{Endpoint, RpcServer};
use tidings::{Context, RemoteError, Target, Transport};
use tidings_jobs::{JobOptions, JobRunner};

/// The topic every suite's servers serve.
pub const TOPIC: &str = "jobs-suite";

/// What a server's `work` does.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Sleeps this long, then answers `{"server": NAME, "slept": SECS}`.
    Succeeds(Duration),
    /// Sleeps this long, then raises `WorkFailed` (module `tests.jobs`).
    Fails(Duration),
}

/// The endpoint of a server named `name`: `work` (any arguments) as `behaviour` says.
pub fn work_endpoint(name: &str, behaviour: Work) -> Endpoint {
    let name = name.to_owned();
    Endpoint::new().method("work", move |_ctx: Context, _args: Map<String, Value>| {
        let name = name.clone();
        async move {
            match behaviour {
                Work::Succeeds(time) => {
                    tokio::time::sleep(time).await;
                    Ok(json!({"server": name, "slept": time.as_secs_f64()}))
                }
                Work::Fails(time) => {
                    tokio::time::sleep(time).await;
                    Err(RemoteError::new(
                        "WorkFailed",
                        "tests.jobs",
                        format!("{name} failed as asked"),
                    ))
                }
            }
        }
    })
}

/// A tidings server serving `work` and the jobs endpoint on its own transport.
#[derive(Debug)]
pub struct JobsServer {
    pub name: String,
    pub runner: JobRunner,
    server: RpcServer,
    transport: Transport,
}

impl JobsServer {
    /// Starts server `name` on `url` (its own connection, as another process would have).
    pub async fn start(url: &str, name: &str, behaviour: Work) -> Self {
        let transport = Transport::connect(url).await.unwrap();
        let target = Target::topic(TOPIC).with_server(name);
        let endpoint = work_endpoint(name, behaviour);
        let runner = JobRunner::new(&target, vec![endpoint.clone()]);
        let server = RpcServer::builder(&transport, target)
            .endpoint(endpoint)
            .endpoint(runner.endpoint())
            .start()
            .await
            .unwrap();
        Self {
            name: name.to_owned(),
            runner,
            server,
            transport,
        }
    }

    /// Dies: stops consuming and drops every part it runs, without a word to anyone.
    pub async fn kill(self) {
        // The connection goes first, as when a process dies: a wait call the caller holds must
        // not be answered `Cancelled` by the parts' cancellation below.
        self.transport.close().await;
        self.runner.cancel_all();
        self.server.stop(Duration::from_millis(100)).await;
    }
}

/// Options with short timeouts, so that dead servers are noticed within seconds.
pub fn quick_options() -> JobOptions {
    JobOptions {
        start_timeout: Duration::from_secs(3),
        liveness_timeout: Duration::from_secs(3),
        discovery_window: Duration::from_millis(800),
        ..JobOptions::default()
    }
}

/// A store file of its own, deleted (with SQLite's side files) when dropped.
#[derive(Debug)]
pub struct StoreFile(pub PathBuf);

impl StoreFile {
    pub fn new() -> Self {
        let name = format!("tidings-jobs-{}.sqlite", uuid::Uuid::new_v4().simple());
        Self(std::env::temp_dir().join(name))
    }
}

impl Drop for StoreFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}
