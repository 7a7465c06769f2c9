//! The bus as a runtime worker: a manifold that opens the transport named by a URL and offers
//! it to the agents as a [`Transport`].

use serde_json::json;
use tidings::{Transport, TransportUrl};

use crate::runtime::{Manifold, TaskWorker, WorkerError};

/// A manifold that connects to `url` and offers the [`Transport`]: dependents write
/// `getter.get::<Transport>("transport")?`. A URL that does not parse is fatal; a broker that
/// does not answer is an ordinary failure, retried with the engine's backoff.
pub fn manifold(url: TransportUrl) -> Manifold {
    Manifold::new(move |_ctx, _getter| {
        let url = url.clone();
        async move {
            let shown = url.to_string();
            let transport = Transport::connect_with(url, Default::default())
                .await
                .map_err(WorkerError::failed)?;
            let closing = transport.clone();
            Ok(TaskWorker::spawn(|stop| async move {
                stop.cancelled().await;
                closing.close().await;
                Ok(())
            })
            .with_report(move || json!({ "url": shown }))
            .with_resource(transport))
        }
    })
    .with_output(|worker: &TaskWorker<Transport>| worker.resource().clone())
}
