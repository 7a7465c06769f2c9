//! The store as a runtime worker: a manifold that opens the store named by a URL and offers it
//! to its dependents as an `Arc<dyn Store>`; when samples have a time to live, its worker runs
//! the background expiry ([`retention::run`]) for as long as the store is up.

use std::sync::Arc;

use serde_json::json;
use tidings_runtime::{Manifold, TaskWorker, WorkerError};

use std::time::Duration;

use super::{open_with, redact, retention, Store, StoreConfig, StoreError};

/// A manifold that opens the configured store (see [`open_with`]) and offers it as
/// `Arc<dyn Store>`: dependents write `getter.get::<Arc<dyn Store>>(graph::STORE)?`.
///
/// A URL of an unsupported kind is fatal (it never gets better); a database that cannot be
/// reached is an ordinary failure, retried with the engine's backoff.
pub fn manifold(config: StoreConfig) -> Manifold {
    let config = Arc::new(config);
    Manifold::new(move |_ctx, _getter| {
        let config = config.clone();
        async move {
            let store = open_with(&config).await.map_err(|error| match error {
                StoreError::UnsupportedUrl(_) => WorkerError::fatal(error),
                other => WorkerError::failed(other),
            })?;
            let shown = redact(&config.url);
            let expires = config.layout.expires();
            let interval = Duration::from_secs(config.layout.expiry_interval);
            let expiring = store.clone();
            Ok(TaskWorker::spawn(move |stop| async move {
                if expires {
                    retention::run(expiring, interval, stop).await;
                } else {
                    stop.cancelled().await;
                }
                Ok(())
            })
            .with_report(move || json!({ "url": shown, "expiry": expires }))
            .with_resource(store))
        }
    })
    .with_output(|worker: &TaskWorker<Arc<dyn Store>>| worker.resource().clone())
}
