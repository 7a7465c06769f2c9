//! The HTTP API as a runtime worker.
//!
//! Input: a store (an `Arc<dyn Store>` output). No output. The API never touches the bus.

use std::sync::Arc;

use tidings_runtime::{Manifold, WorkerError};

use super::{start, ApiConfig, StartError};
use crate::graph;
use crate::store::Store;

/// The names of the manifolds the API takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiInputs {
    /// Offers an `Arc<dyn Store>` (default [`graph::STORE`]).
    pub store: String,
}

impl Default for ApiInputs {
    fn default() -> Self {
        Self {
            store: graph::STORE.to_owned(),
        }
    }
}

/// The API's manifold: serves on the configured address while the store runs; an address
/// that cannot be bound is retried with the engine's backoff, and serving without
/// authentication off loopback (unless allowed) is fatal.
pub fn manifold(inputs: ApiInputs, config: ApiConfig) -> Manifold {
    let input = inputs.store.clone();
    Manifold::new(move |_ctx, getter| {
        let store: Result<Arc<dyn Store>, _> = getter.get(&input);
        let config = config.clone();
        async move {
            let store = store.map_err(|e| WorkerError::missing(e.to_string()))?;
            let (worker, _) = start(&config, store).await.map_err(|error| match error {
                // Never gets better by retrying.
                StartError::Unauthenticated(_) => WorkerError::fatal(error),
                other => WorkerError::failed(other),
            })?;
            Ok(worker)
        }
    })
    .with_inputs([inputs.store])
}
