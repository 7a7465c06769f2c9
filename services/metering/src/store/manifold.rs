//! The store as a runtime worker: a manifold that opens the store named by a URL and offers it
//! to its dependents as an `Arc<dyn Store>`.

use std::sync::Arc;

use serde_json::json;
use tidings_runtime::{Manifold, TaskWorker, WorkerError};

use super::{open, redact, Store, StoreConfig, StoreError};

/// A manifold that opens the configured URL (see [`open`]) and offers the store as
/// `Arc<dyn Store>`: dependents write `getter.get::<Arc<dyn Store>>(graph::STORE)?`.
///
/// A URL of an unsupported kind is fatal (it never gets better); a database that cannot be
/// reached is an ordinary failure, retried with the engine's backoff.
pub fn manifold(config: StoreConfig) -> Manifold {
    let url: Arc<str> = Arc::from(config.url);
    Manifold::new(move |_ctx, _getter| {
        let url = url.clone();
        async move {
            let store = open(&url).await.map_err(|error| match error {
                StoreError::UnsupportedUrl(_) => WorkerError::fatal(error),
                other => WorkerError::failed(other),
            })?;
            let shown = redact(&url);
            Ok(TaskWorker::spawn(|stop| async move {
                stop.cancelled().await;
                Ok(())
            })
            .with_report(move || json!({ "url": shown }))
            .with_resource(store))
        }
    })
    .with_output(|worker: &TaskWorker<Arc<dyn Store>>| worker.resource().clone())
}
