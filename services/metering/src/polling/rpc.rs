//! The polling agent's own RPC: `poll_now`, which polls every source once and publishes the
//! samples at once, whatever the timers say. Each agent serves it on [`TOPIC`] as server
//! `<host>`, beside the `tidings.jobs` endpoint, so that an operator runs it on every agent as
//! one job (`tidings meter poll-now`) and watches the parts finish; a plain call works too.
//!
//! Both sides import the constants below, so no name is spelled twice.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tidings::rpc::{Contract, ContractEndpoint, Method, NoArgs, RpcServer, State};
use tidings::transport::TransportError;
use tidings::{Context, RemoteError, Target, Transport, Version};
use tidings_jobs::JobRunner;

use super::Cycle;

/// The topic polling agents serve their RPC on (one server per agent, named after its host).
pub const TOPIC: &str = "tidings-polling";

/// The polling agent's API: namespace `tidings.polling`, version 1.0.
#[derive(Debug)]
pub struct PollingApi;

impl Contract for PollingApi {
    const NAMESPACE: Option<&'static str> = Some("tidings.polling");
    const VERSION: Version = Version::new(1, 0);
}

/// What one `poll_now` published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollReport {
    /// Samples published.
    pub samples: u64,
    /// Notifications they went out in.
    pub notifications: u64,
}

/// Polls every source once, now.
pub const POLL_NOW: Method<PollingApi, NoArgs, PollReport> = Method::new("poll_now");

type Cycles = Arc<Vec<Arc<Cycle>>>;

async fn poll_now(
    State(cycles): State<Cycles>,
    _ctx: Context,
    _: NoArgs,
) -> Result<PollReport, RemoteError> {
    let mut total = PollReport::default();
    for cycle in cycles.iter() {
        let report = cycle.poll().await.map_err(|error| {
            RemoteError::new(
                "PublishFailed",
                "tidings.polling",
                format!("could not publish the samples: {error}"),
            )
        })?;
        total.samples += report.samples;
        total.notifications += report.notifications;
    }
    Ok(total)
}

/// Serves `poll_now` over `cycles` on [`TOPIC`] as server `host`, as a plain method and as jobs.
pub(super) async fn serve(
    transport: &Transport,
    host: &str,
    cycles: Vec<Arc<Cycle>>,
) -> Result<RpcServer, TransportError> {
    let target = Target::topic(TOPIC).with_server(host);
    let endpoint = ContractEndpoint::<PollingApi, Cycles>::with_state(Arc::new(cycles))
        .handle(POLL_NOW, poll_now)
        .into_inner()
        .into_stateless();
    let jobs = JobRunner::new(&target, vec![endpoint.clone()]);
    RpcServer::builder(transport, target)
        .endpoint(endpoint)
        .endpoint(jobs.endpoint())
        .start()
        .await
}
