//! The HTTP API as a runtime worker.
//!
//! Inputs: a store (an `Arc<dyn Store>` output) and, optionally, a transport (a
//! [`tidings::Transport`] output) on which it announces alarm changes as Aodh's API does (see
//! [`alarm_changes`](crate::alarm_changes)). No output.

use std::sync::Arc;

use tidings::Transport;
use tidings_runtime::{Manifold, WorkerError};

use super::{start, ApiConfig, StartError};
use crate::alarm_changes::ChangeNotifier;
use crate::graph;
use crate::store::Store;

/// The names of the manifolds the API takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiInputs {
    /// Offers an `Arc<dyn Store>` (default [`graph::STORE`]).
    pub store: String,
    /// Offers a `tidings::Transport` for change notifications; `None` (the default) sends none.
    pub transport: Option<String>,
}

impl Default for ApiInputs {
    fn default() -> Self {
        Self {
            store: graph::STORE.to_owned(),
            transport: None,
        }
    }
}

/// The API's manifold: serves on the configured address while the store runs; an address
/// that cannot be bound is retried with the engine's backoff, and serving without
/// authentication off loopback (unless allowed) is fatal.
pub fn manifold(inputs: ApiInputs, config: ApiConfig) -> Manifold {
    let input = inputs.store.clone();
    let bus = inputs.transport.clone();
    Manifold::new(move |_ctx, getter| {
        let store: Result<Arc<dyn Store>, _> = getter.get(&input);
        let transport = bus.as_ref().map(|name| getter.get::<Transport>(name));
        let mut config = config.clone();
        async move {
            let store = store.map_err(|e| WorkerError::missing(e.to_string()))?;
            if let Some(transport) = transport {
                config = config.with_changes(ChangeNotifier::api(&transport?));
            }
            let (worker, _) = start(&config, store).await.map_err(|error| match error {
                // Never gets better by retrying.
                StartError::Unauthenticated(_) => WorkerError::fatal(error),
                other => WorkerError::failed(other),
            })?;
            Ok(worker)
        }
    })
    .with_inputs([Some(inputs.store), inputs.transport].into_iter().flatten())
}
