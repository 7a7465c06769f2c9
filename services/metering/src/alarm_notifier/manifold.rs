//! The alarm notifier as a runtime worker.
//!
//! Inputs: a transport (a [`tidings::Transport`] output) and, where the agent has one, the
//! store the alarms' actions are read from (an `Arc<dyn Store>` output). No output; the
//! engine's report shows the [`NotifierReport`](super::NotifierReport).

use std::sync::Arc;

use tidings::Transport;
use tidings_runtime::{Manifold, WorkerError};

use super::{start_with, NotifierConfig};
use crate::graph;
use crate::store::Store;

/// The names of the manifolds the notifier takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierInputs {
    /// Offers a `tidings::Transport` (default [`graph::TRANSPORT`]).
    pub transport: String,
    /// Offers the alarms' `Arc<dyn Store>` (default none: actions come from the messages; the
    /// graphs that run a store name [`graph::STORE`]).
    pub store: Option<String>,
}

impl Default for NotifierInputs {
    fn default() -> Self {
        Self {
            transport: graph::TRANSPORT.to_owned(),
            store: None,
        }
    }
}

/// The notifier's manifold: started when its inputs run; a listener that cannot start is
/// retried with the engine's backoff.
pub fn manifold(inputs: NotifierInputs, config: NotifierConfig) -> Manifold {
    let transport_input = inputs.transport.clone();
    let store_input = inputs.store.clone();
    let mut names = vec![inputs.transport];
    names.extend(inputs.store);
    Manifold::new(move |ctx, getter| {
        let config = config.clone();
        let transport = getter.get::<Transport>(&transport_input);
        let store = store_input
            .as_deref()
            .map(|name| getter.get::<Arc<dyn Store>>(name));
        async move {
            let transport = transport?;
            let store = store.transpose()?;
            tokio::select! {
                () = ctx.cancelled() => Err(WorkerError::Aborted),
                started = start_with(&transport, config, store) => started.map_err(WorkerError::failed),
            }
        }
    })
    .with_inputs(names)
}
