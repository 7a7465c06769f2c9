//! The collector agent: takes samples off the bus, validates them, stores them, and serves
//! statistics over RPC.
//!
//! - **Listener** (batches) on exchange `ceilometer`, priority `sample`, both of Ceilometer's
//!   sample paths: topic `notifications` (event type `telemetry.polling`, payload
//!   `{"samples": [...]}`) and topic `metering` (event type `metering`, payload `[...]`). Each
//!   batch is verified (when a telemetry secret is set), validated and stored in one call to
//!   the [`Store`]; an invalid sample is dropped, counted and logged, never failing the batch.
//!   While the store is unavailable the batch is held, unacknowledged, and retried with
//!   jittered, capped backoff until the store is back (the collector takes no new deliveries
//!   beyond the listener's prefetch meanwhile); a sample the store refuses on its merits goes
//!   alone, with the reason, to the dead-letter queue `<queue>.dlq` ([`dead_letter`]) and the
//!   rest of its batch is stored. `tidings meter dlq` lists and replays those queues.
//! - **RPC server** on exchange `ceilometer`, topic `metering`: `get_statistics`,
//!   `list_meters` and `record_metering_data` (the old RPC publisher's cast; at most once,
//!   like every oslo RPC).
//!
//! [`Collector::start`] runs it without the engine; [`manifold`] declares it for the engine, and
//! [`CollectorConfig`] says how it runs.
//! This module does not parse samples (`sample`) or talk SQL (`store`).

mod config;
pub mod dead_letter;
mod ingest;
mod manifold;
mod outage;
pub mod rpc;

use std::sync::Arc;
use std::time::Duration;

use tidings::notify::{NotificationEndpoint, NotificationListener, Priority};
use tidings::rpc::RpcServer;
use tidings::transport::TransportError;
use tidings::{Target, Transport};
use tokio::sync::watch;

use super::store::Store;
use dead_letter::DeadLetters;
use ingest::Ingest;

pub use config::{CollectorConfig, DEFAULT_MAX_BATCHES_IN_FLIGHT, DEFAULT_STORE_RETRY};
pub use ingest::{CollectorReport, Tally, REFUSED_BY_STORE};
pub use manifold::{manifold, CollectorInputs};

pub use crate::sample::contract::{EXCHANGE, METERING_TOPIC, POLLING_TOPIC};

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectorError {
    /// The sample listener could not subscribe.
    #[error("collector listener on exchange {EXCHANGE}: {0}")]
    Listener(#[source] TransportError),
    /// The RPC server could not subscribe.
    #[error("collector RPC server on {EXCHANGE}/{topic}: {0}", topic = rpc::TOPIC)]
    RpcServer(#[source] TransportError),
}

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    listener: NotificationListener,
    server: RpcServer,
    ingest: Arc<Ingest>,
    stop_deadline: Duration,
}

impl Collector {
    /// Subscribes the listener and the RPC server on `transport` and starts storing into
    /// `store`.
    pub async fn start(
        transport: &Transport,
        store: Arc<dyn Store>,
        config: CollectorConfig,
    ) -> Result<Self, CollectorError> {
        let ingest = Arc::new(Ingest::new(
            store,
            config.telemetry_secret.clone(),
            config.store_retry,
            Some(DeadLetters::new(transport.clone(), config.pool.clone())),
        ));
        let handler = ingest.clone();
        let endpoint =
            NotificationEndpoint::new().on_batch(Priority::Sample, move |batch| {
                let ingest = handler.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(ingest.ingest_notifications(batch).await)
                }
            });
        let targets = [POLLING_TOPIC, METERING_TOPIC]
            .into_iter()
            .map(|topic| Target::topic(topic).with_exchange(EXCHANGE))
            .collect();
        let mut listener = NotificationListener::builder(transport, targets)
            .endpoint(endpoint)
            .allow_requeue(true)
            .max_concurrency(config.max_batches_in_flight)
            .batch(config.batch_size, config.batch_timeout);
        if let Some(pool) = &config.pool {
            listener = listener.pool(pool.clone());
        }
        let listener = listener.start().await.map_err(CollectorError::Listener)?;
        let mut target = Target::topic(rpc::TOPIC).with_exchange(EXCHANGE);
        if let Some(server) = &config.server {
            target = target.with_server(server.clone());
        }
        let server = match RpcServer::builder(transport, target)
            .endpoint(rpc::endpoint(ingest.clone()))
            .start()
            .await
        {
            Ok(server) => server,
            Err(error) => {
                listener.stop(config.stop_deadline).await;
                return Err(CollectorError::RpcServer(error));
            }
        };
        Ok(Self {
            listener,
            server,
            ingest,
            stop_deadline: config.stop_deadline,
        })
    }

    /// The counters so far.
    pub fn report(&self) -> CollectorReport {
        self.ingest.report()
    }

    /// The counters, updated after every batch: wait on them with
    /// [`watch::Receiver::wait_for`].
    pub fn subscribe(&self) -> watch::Receiver<CollectorReport> {
        self.ingest.subscribe()
    }

    /// Resolves when the listener or the RPC server ends on its own (its transport closed).
    /// Cancellation safe.
    pub async fn stopped(&self) {
        tokio::select! {
            () = self.listener.stopped() => {}
            () = self.server.stopped() => {}
        }
    }

    /// Stops consuming, lets batches and calls in flight finish within the configured
    /// deadline, and closes. Samples not yet handed to a batch stay in the broker.
    pub async fn stop(self) {
        let deadline = self.stop_deadline;
        tokio::join!(self.listener.stop(deadline), self.server.stop(deadline));
    }
}
