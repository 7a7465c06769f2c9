//! The alarm notifier as a runtime worker.
//!
//! Input: a transport (a [`tidings::Transport`] output). No output; the engine's report shows
//! the [`NotifierReport`](super::NotifierReport).

use tidings::Transport;
use tidings_runtime::{Manifold, WorkerError};

use super::{start, NotifierConfig};
use crate::graph;

/// The names of the manifolds the notifier takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierInputs {
    /// Offers a `tidings::Transport` (default [`graph::TRANSPORT`]).
    pub transport: String,
}

impl Default for NotifierInputs {
    fn default() -> Self {
        Self {
            transport: graph::TRANSPORT.to_owned(),
        }
    }
}

/// The notifier's manifold: started when the transport runs; a listener that cannot start is
/// retried with the engine's backoff.
pub fn manifold(inputs: NotifierInputs, config: NotifierConfig) -> Manifold {
    let input = inputs.transport.clone();
    Manifold::new(move |ctx, getter| {
        let config = config.clone();
        let transport = getter.get::<Transport>(&input);
        async move {
            let transport = transport?;
            tokio::select! {
                () = ctx.cancelled() => Err(WorkerError::Aborted),
                started = start(&transport, config) => started.map_err(WorkerError::failed),
            }
        }
    })
    .with_inputs([inputs.transport])
}
