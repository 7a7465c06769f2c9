//! The transport as a runtime worker.

use serde_json::json;
use tidings::Transport;
use tidings_runtime::{Manifold, TaskWorker, WorkerError};

use super::TransportConfig;

/// A manifold that connects to the configured URL and offers the [`Transport`]: dependents
/// write `getter.get::<Transport>(graph::TRANSPORT)?`. A broker that does not answer is an
/// ordinary failure, retried with the engine's backoff.
pub fn manifold(config: TransportConfig) -> Manifold {
    let url = config.url;
    Manifold::new(move |_ctx, _getter| {
        let url = url.clone();
        async move {
            let shown = url.to_string();
            let transport = Transport::connect_with(url, Default::default())
                .await
                .map_err(WorkerError::failed)?;
            let closing = transport.clone();
            let watched = transport.clone();
            Ok(TaskWorker::spawn(|stop| async move {
                stop.cancelled().await;
                closing.close().await;
                Ok(())
            })
            .with_report(move || json!({ "url": shown }))
            .with_health(move || watched.health())
            .with_resource(transport))
        }
    })
    .with_output(|worker: &TaskWorker<Transport>| worker.resource().clone())
}
