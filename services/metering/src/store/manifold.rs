//! The store as a runtime worker: a manifold that opens the store named by a URL and offers it
//! to its dependents as an `Arc<dyn Store>`. For as long as the store is up, its worker probes
//! the database for health checks and, when samples have a time to live, runs the background
//! expiry ([`retention::run`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tidings_runtime::{Manifold, TaskWorker, WorkerError};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{open_with, redact, retention, Store, StoreConfig, StoreError};
use crate::secrets;

/// How often the worker checks that the database answers, for health checks: a store that
/// stops answering shows within this time.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How long a probe may take before the store counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the last probe found: `Ok`, or why the store is down.
type Health = Arc<Mutex<Result<(), String>>>;

/// A manifold that opens the configured store (see [`open_with`]) and offers it as
/// `Arc<dyn Store>`: dependents write `getter.get::<Arc<dyn Store>>(graph::STORE)?`.
///
/// A URL of an unsupported kind is fatal (it never gets better); a database that cannot be
/// reached is an ordinary failure, retried with the engine's backoff. Once open, the worker
/// probes the database every few seconds and reports it down (see `Worker::health`) while it
/// does not answer; its dependents keep running and hold their work meanwhile.
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
            let health: Health = Arc::new(Mutex::new(Ok(())));
            let (probed, expiring, recorded) = (store.clone(), store.clone(), health.clone());
            Ok(TaskWorker::spawn(move |stop| async move {
                let expiry = async {
                    if expires {
                        retention::run(expiring, interval, stop.clone()).await;
                    }
                };
                tokio::join!(probe(probed, recorded, stop.clone()), expiry);
                Ok(())
            })
            .with_report(move || json!({ "url": shown, "expiry": expires }))
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

/// Probes `store` every [`PROBE_EVERY`] until `stop`, keeping the last answer in `health`.
async fn probe(store: Arc<dyn Store>, health: Health, stop: CancellationToken) {
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let answer = match tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("store down: {error}")),
            Err(_) => Err(format!(
                "store down: no answer to a probe within {PROBE_TIMEOUT:?}"
            )),
        };
        *health.lock().unwrap_or_else(PoisonError::into_inner) =
            answer.map_err(|e| secrets::mask_text(&e));
    }
}
