//! The alarm evaluator as a runtime worker.
//!
//! Inputs: a transport (a [`tidings::Transport`] output) for the group and the hand-off, and a
//! store (an `Arc<dyn Store>` output) for alarms and statistics. No output; the engine's report
//! shows the [`EvaluatorReport`](super::EvaluatorReport).

use std::sync::Arc;

use tidings::Transport;
use tidings_runtime::{Manifold, WorkerError};

use super::{start, EvaluatorConfig, EvaluatorError};
use crate::graph;
use crate::store::Store;

/// The names of the manifolds the evaluator takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvaluatorInputs {
    /// Offers a `tidings::Transport` (default [`graph::TRANSPORT`]).
    pub transport: String,
    /// Offers an `Arc<dyn Store>` (default [`graph::STORE`]).
    pub store: String,
}

impl Default for EvaluatorInputs {
    fn default() -> Self {
        Self {
            transport: graph::TRANSPORT.to_owned(),
            store: graph::STORE.to_owned(),
        }
    }
}

/// The evaluator's manifold: started when both inputs run. A bad configuration is fatal; a
/// failed join is retried with the engine's backoff.
pub fn manifold(inputs: EvaluatorInputs, config: EvaluatorConfig) -> Manifold {
    let names = [inputs.transport.clone(), inputs.store.clone()];
    Manifold::new(move |ctx, getter| {
        let config = config.clone();
        let transport = getter.get::<Transport>(&inputs.transport);
        let store = getter.get::<Arc<dyn Store>>(&inputs.store);
        async move {
            let (transport, store) = (transport?, store?);
            tokio::select! {
                () = ctx.cancelled() => Err(WorkerError::Aborted),
                started = start(&transport, store, config) => started.map_err(|error| match error {
                    EvaluatorError::Config(error) => WorkerError::fatal(error),
                    other => WorkerError::failed(other),
                }),
            }
        }
    })
    .with_inputs(names)
}
