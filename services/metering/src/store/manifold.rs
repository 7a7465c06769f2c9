//! The store as a runtime worker: a manifold that opens the store named by a URL and offers it
//! to its dependents as an `Arc<dyn Store>`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tidings_runtime::{Manifold, TaskWorker, WorkerError};
use tokio::time::MissedTickBehavior;

use super::{open, redact, Store, StoreConfig, StoreError};
use crate::secrets;

/// How often the worker checks that the database answers, for health checks: a store that
/// stops answering shows within this time.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How long a probe may take before the store counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A manifold that opens the configured URL (see [`open`]) and offers the store as
/// `Arc<dyn Store>`: dependents write `getter.get::<Arc<dyn Store>>(graph::STORE)?`.
///
/// A URL of an unsupported kind is fatal (it never gets better); a database that cannot be
/// reached is an ordinary failure, retried with the engine's backoff. Once open, the worker
/// probes the database every few seconds and reports it down (see `Worker::health`) while it
/// does not answer; its dependents keep running and hold their work meanwhile.
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
            let health = Arc::new(Mutex::new(Ok(())));
            let probing = (store.clone(), health.clone());
            Ok(TaskWorker::spawn(|stop| async move {
                let (store, health) = probing;
                let mut every = tokio::time::interval(PROBE_EVERY);
                every.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        _ = every.tick() => {}
                    }
                    let answer = match tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err(format!("store down: {error}")),
                        Err(_) => Err(format!(
                            "store down: no answer to a probe within {PROBE_TIMEOUT:?}"
                        )),
                    };
                    let answer = answer.map_err(|e| secrets::mask_text(&e));
                    *health.lock().unwrap_or_else(PoisonError::into_inner) = answer;
                }
            })
            .with_report(move || json!({ "url": shown }))
            .with_health(move || {
                health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .with_resource(store))
        }
    })
    .with_output(|worker: &TaskWorker<Arc<dyn Store>>| worker.resource().clone())
}
