//! The polling agent as a runtime worker.
//!
//! Input: a transport (a manifold whose output is a [`tidings::Transport`]). No output. The
//! engine's report shows the agent's counters.

use tidings::Transport;
use tidings_runtime::{Manifold, WorkerError};

use super::{start_serving, PollingConfig};
use crate::graph;

/// The names of the manifolds the polling agent takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollingInputs {
    /// Offers a `tidings::Transport` (default [`graph::TRANSPORT`]).
    pub transport: String,
}

impl Default for PollingInputs {
    fn default() -> Self {
        Self {
            transport: graph::TRANSPORT.to_owned(),
        }
    }
}

/// The polling agent's manifold: started when the transport runs; it polls on timers and serves
/// `poll_now` (see [`super::rpc`]). Sources that break Ceilometer's rules are fatal (they never
/// get better).
pub fn manifold(inputs: PollingInputs, config: PollingConfig) -> Manifold {
    let input = inputs.transport.clone();
    Manifold::new(move |_ctx, getter| {
        let config = config.clone();
        let transport: Result<Transport, _> = getter.get(&input);
        async move {
            let transport = transport.map_err(|e| WorkerError::missing(e.to_string()))?;
            start_serving(&transport, config).await
        }
    })
    .with_inputs([inputs.transport])
}
