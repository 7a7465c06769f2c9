//! The collector as a runtime worker.
//!
//! Inputs: a transport (a manifold whose output is a [`tidings::Transport`]) and a store (a
//! manifold whose output is an `Arc<dyn Store>`, such as
//! [`store::manifold`](crate::store::manifold)). Output: the collector's counters as
//! a `watch::Receiver<CollectorReport>`. The engine's report shows the same counters under
//! the worker's `"report"`.

use std::sync::Arc;

use serde_json::json;
use tidings::Transport;
use tidings_runtime::{Manifold, TaskWorker, WorkerError};
use tokio::sync::watch;

use super::{Collector, CollectorConfig, CollectorReport};
use crate::graph;
use crate::store::Store;

/// The names of the manifolds the collector's manifold takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorInputs {
    /// Offers a `tidings::Transport` (default [`graph::TRANSPORT`]).
    pub transport: String,
    /// Offers an `Arc<dyn Store>` (default [`graph::STORE`]).
    pub store: String,
}

impl Default for CollectorInputs {
    fn default() -> Self {
        Self {
            transport: graph::TRANSPORT.to_owned(),
            store: graph::STORE.to_owned(),
        }
    }
}

/// The collector's manifold: started when both inputs run, restarted when either changes,
/// and failed (restarted with backoff) if its listener or RPC server stops on its own.
///
/// ```
/// use tidings_metering::collector::{self, CollectorConfig, CollectorInputs};
/// use tidings_metering::graph;
///
/// let manifold = collector::manifold(CollectorInputs::default(), CollectorConfig::default());
/// assert_eq!(manifold.inputs(), [graph::TRANSPORT, graph::STORE]);
/// ```
pub fn manifold(inputs: CollectorInputs, config: CollectorConfig) -> Manifold {
    let names = [inputs.transport.clone(), inputs.store.clone()];
    Manifold::new(move |_ctx, getter| {
        let inputs = inputs.clone();
        let config = config.clone();
        async move {
            let transport: Transport = getter.get(&inputs.transport)?;
            let store: Arc<dyn Store> = getter.get(&inputs.store)?;
            let collector = Collector::start(&transport, store, config)
                .await
                .map_err(WorkerError::failed)?;
            let counters = collector.subscribe();
            let shown = counters.clone();
            Ok(TaskWorker::spawn(|stop| async move {
                let ended_alone = tokio::select! {
                    () = stop.cancelled() => false,
                    () = collector.stopped() => true,
                };
                collector.stop().await;
                if ended_alone {
                    Err(WorkerError::failed(
                        "the collector's listener or RPC server stopped: transport closed",
                    ))
                } else {
                    Ok(())
                }
            })
            .with_report(move || json!(*shown.borrow()))
            .with_resource(counters))
        }
    })
    .with_inputs(names)
    .with_output(|worker: &TaskWorker<watch::Receiver<CollectorReport>>| worker.resource().clone())
}
