//! The alarm notifier, modelled on Aodh's (`aodh-notifier`): a batch notification listener on
//! exchange `aodh`, topic `alarming`, priority `sample`, that runs the actions of every
//! `alarm.update` it receives (see `actions` for the schemes). Messages are acknowledged once
//! their actions have run, whatever the actions did: a failing webhook is retried within
//! bounds, logged and counted, and never stops the listener nor loops the message.
//!
//! Where actions come from: with a store ([`start_with_store`]), an alarm's actions are read
//! from the store by the alarm id in the message, for the state the message reports, so a
//! message published by anyone else on the bus cannot choose where the notifier sends
//! requests; an alarm that is not in the store has no actions run. Without a store
//! ([`start`]; a notifier beside a Python evaluator with its own database) the actions in the
//! message are run. Either way every action passes the [`ActionPolicy`] first (see `policy`).
//!
//! [`start`] is the plain API; [`manifold`] puts the same thing under the runtime's engine, and
//! [`NotifierConfig`] says how it runs.

pub mod actions;
mod config;
mod manifold;
pub mod policy;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tidings::notify::{
    IncomingNotification, NotificationEndpoint, NotificationListener, Outcome, Priority,
};
use tidings::transport::TransportError;
use tidings::{Target, Transport};
use tidings_runtime::{TaskWorker, Worker, WorkerError};

use self::actions::ActionRunner;
pub use self::actions::{ActionLimits, HttpConfig, REQUEST_ID_HEADER};
pub use self::config::NotifierConfig;
pub use self::manifold::{manifold, NotifierInputs};
pub use self::policy::{ActionPolicy, Network, Refusal};
use crate::evaluator::handoff::{AlarmUpdate, EVENT_TYPE, EXCHANGE, TOPIC};
use crate::model::AlarmState;
use crate::store::{Store, StoreError};

/// How long a stopping notifier lets actions in flight finish.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Why the notifier did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifierError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client for alarm actions: {0}")]
    Http(#[from] reqwest::Error),
    /// The listener's queues could not be declared.
    #[error("cannot listen for alarm notifications: {0}")]
    Transport(#[from] TransportError),
}

/// What the notifier reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NotifierReport {
    /// `alarm.update` notifications handled.
    pub notifications: u64,
    /// Notifications of another event type, or whose payload was not an alarm update.
    pub ignored: u64,
    /// Actions that ran (logged, or POSTed with a 2xx answer).
    pub actions_run: u64,
    /// Actions that failed after their retries.
    pub actions_failed: u64,
    /// Actions with an unknown scheme or an invalid URL.
    pub actions_skipped: u64,
    /// HTTP retries made.
    pub http_retries: u64,
    /// Actions the [`ActionPolicy`] refused (an address it denies).
    pub actions_refused: u64,
    /// Updates whose alarm is not in the store: their actions were not run.
    pub not_in_store: u64,
    /// Updates whose alarm could not be read from the store: their actions were not run.
    pub store_errors: u64,
}

#[derive(Debug)]
struct Shared {
    runner: ActionRunner,
    /// Where actions come from, when the notifier has a store.
    store: Option<Arc<dyn Store>>,
    notifications: AtomicU64,
    ignored: AtomicU64,
    not_in_store: AtomicU64,
    store_errors: AtomicU64,
}

impl Shared {
    fn report(&self) -> NotifierReport {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let actions = &self.runner.counters;
        NotifierReport {
            notifications: load(&self.notifications),
            ignored: load(&self.ignored),
            actions_run: load(&actions.run),
            actions_failed: load(&actions.failed),
            actions_skipped: load(&actions.skipped),
            http_retries: load(&actions.retries),
            actions_refused: load(&actions.refused),
            not_in_store: load(&self.not_in_store),
            store_errors: load(&self.store_errors),
        }
    }

    /// The update with the actions to run: the stored alarm's for the reported state when the
    /// notifier has a store (`None` when it has none to give), else the message's own.
    async fn with_trusted_actions(&self, mut update: AlarmUpdate) -> Option<AlarmUpdate> {
        let Some(store) = &self.store else {
            return Some(update);
        };
        let alarm = match store.alarm(&update.alarm_id).await {
            Ok(alarm) => alarm,
            Err(StoreError::NoSuchAlarm(_)) => {
                tracing::warn!(
                    alarm_id = %update.alarm_id,
                    "alarm update for an alarm that is not in the store: its actions are not run"
                );
                self.not_in_store.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(error) => {
                tracing::warn!(alarm_id = %update.alarm_id, %error, "cannot read the alarm: its actions are not run");
                self.store_errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let actions = match update.current.as_str() {
            state if state == AlarmState::Ok.as_str() => &alarm.ok_actions,
            state if state == AlarmState::Alarm.as_str() => &alarm.alarm_actions,
            state if state == AlarmState::InsufficientData.as_str() => {
                &alarm.insufficient_data_actions
            }
            other => {
                tracing::warn!(alarm_id = %update.alarm_id, state = other, "alarm update with an unknown state, skipped");
                self.ignored.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        if *actions != update.actions {
            tracing::debug!(alarm_id = %update.alarm_id, "the message's actions differ from the stored alarm's; running the stored ones");
        }
        update.actions.clone_from(actions);
        update.alarm_name = alarm.name;
        update.severity = alarm.severity;
        Some(update)
    }

    /// Aodh's `sample(notifications)` endpoint: each notification's actions, in order.
    async fn handle(&self, batch: Vec<IncomingNotification>) -> Result<Outcome, Infallible> {
        for notification in batch {
            if notification.event_type != EVENT_TYPE {
                self.ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match notification.payload_as::<AlarmUpdate>() {
                Ok(update) => {
                    self.notifications.fetch_add(1, Ordering::Relaxed);
                    if let Some(update) = self.with_trusted_actions(update).await {
                        self.runner.run_all(&update).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "alarm notification with an unreadable payload, skipped");
                    self.ignored.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(Outcome::Handled)
    }
}

/// A running alarm notifier. As a [`Worker`], `kill` stops consuming and lets the actions in
/// flight finish (up to 10 s).
#[derive(Debug)]
pub struct AlarmNotifier {
    worker: TaskWorker,
    shared: Arc<Shared>,
}

impl AlarmNotifier {
    /// The counters now.
    pub fn report(&self) -> NotifierReport {
        self.shared.report()
    }

    /// Stops (see the type's docs) and waits for the end.
    pub async fn stop(self) -> Result<(), WorkerError> {
        self.worker.kill();
        self.worker.wait().await
    }
}

impl Worker for AlarmNotifier {
    fn kill(&self) {
        self.worker.kill();
    }

    fn wait(&self) -> BoxFuture<'_, Result<(), WorkerError>> {
        self.worker.wait()
    }

    fn report(&self) -> Option<Value> {
        serde_json::to_value(self.shared.report()).ok()
    }
}

/// Starts listening for alarm notifications on `transport` and running the actions they carry
/// (each checked by the policy). Prefer [`start_with_store`] wherever the alarms' store is
/// reachable.
pub async fn start(
    transport: &Transport,
    config: NotifierConfig,
) -> Result<AlarmNotifier, NotifierError> {
    start_with(transport, config, None).await
}

/// Starts listening for alarm notifications on `transport` and running the actions of the
/// alarms they name, as `store` holds them.
pub async fn start_with_store(
    transport: &Transport,
    store: Arc<dyn Store>,
    config: NotifierConfig,
) -> Result<AlarmNotifier, NotifierError> {
    start_with(transport, config, Some(store)).await
}

async fn start_with(
    transport: &Transport,
    config: NotifierConfig,
    store: Option<Arc<dyn Store>>,
) -> Result<AlarmNotifier, NotifierError> {
    if store.is_none() {
        tracing::warn!("alarm notifier without a store: it runs the actions that alarm.update messages carry (each checked against the action policy); give it the alarms' store to run only stored actions");
    }
    let shared = Arc::new(Shared {
        runner: ActionRunner::new(config.http.clone(), config.policy.clone(), config.limits)?,
        store,
        notifications: AtomicU64::new(0),
        ignored: AtomicU64::new(0),
        not_in_store: AtomicU64::new(0),
        store_errors: AtomicU64::new(0),
    });
    let handling = shared.clone();
    let endpoint = NotificationEndpoint::new().on_batch(Priority::Sample, move |batch| {
        let shared = handling.clone();
        async move { shared.handle(batch).await }
    });
    let listener = NotificationListener::builder(
        transport,
        vec![Target::topic(TOPIC).with_exchange(EXCHANGE)],
    )
    .endpoint(endpoint)
    .batch(config.batch_size, config.batch_timeout)
    .start()
    .await?;
    let worker = TaskWorker::spawn(move |stop| async move {
        let on_its_own = tokio::select! {
            () = stop.cancelled() => false,
            () = listener.stopped() => true,
        };
        listener.stop(STOP_DEADLINE).await;
        if on_its_own {
            Err(WorkerError::failed(
                "alarm notification listener ended on its own",
            ))
        } else {
            Ok(())
        }
    });
    Ok(AlarmNotifier { worker, shared })
}
