//! The observer as a runtime worker.
//!
//! Input: a store (an `Arc<dyn Store>` output). No output.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tidings_runtime::{Manifold, PeriodicTasks, Schedule, WorkerError};

use super::{print_progress, ObserverConfig};
use crate::graph;
use crate::store::Store;

/// The names of the manifolds the observer takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverInputs {
    /// Offers an `Arc<dyn Store>` (default [`graph::STORE`]).
    pub store: String,
}

impl Default for ObserverInputs {
    fn default() -> Self {
        Self {
            store: graph::STORE.to_owned(),
        }
    }
}

/// The observer's manifold: prints progress on a timer while the store runs.
pub fn manifold(inputs: ObserverInputs, config: ObserverConfig) -> Manifold {
    let input = inputs.store.clone();
    Manifold::new(move |_ctx, getter| {
        let store = getter.get::<Arc<dyn Store>>(&input);
        let interval = config.interval;
        async move {
            let store = store?;
            let printed = Arc::new(Mutex::new(HashSet::<String>::new()));
            let schedule = Schedule::every(interval).map_err(WorkerError::fatal)?;
            let tasks = PeriodicTasks::new().add("print", schedule, move |_stop| {
                let (store, printed) = (store.clone(), printed.clone());
                async move {
                    print_progress(store.as_ref(), &printed)
                        .await
                        .map_err(WorkerError::failed)
                }
            });
            Ok(tasks.spawn())
        }
    })
    .with_inputs([inputs.store])
}
