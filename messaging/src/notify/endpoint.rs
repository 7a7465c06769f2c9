//! Notification endpoints: handlers per priority, with an optional filter.
//!
//! A handler is an async fn over one notification (or, for batch handlers, a `Vec` of them)
//! returning `Result<Outcome, E>`. An `Err` counts as a request to requeue, as an exception does
//! in oslo.messaging; a panic is caught and counts the same.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::filter::Filter;
use super::{IncomingNotification, Priority};

/// What a handler decided about a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done with; acknowledge it.
    Handled,
    /// Try again later (only when the listener allows requeue; otherwise acknowledged).
    Requeue,
}

type BatchFn =
    dyn Fn(Vec<IncomingNotification>) -> BoxFuture<'static, Result<Outcome, String>> + Send + Sync;

/// Handlers for some priorities, behind an optional filter.
#[derive(Clone, Default)]
pub struct NotificationEndpoint {
    handlers: HashMap<Priority, Arc<BatchFn>>,
    filter: Option<Filter>,
}

impl fmt::Debug for NotificationEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut priorities: Vec<_> = self.handlers.keys().collect();
        priorities.sort();
        f.debug_struct("NotificationEndpoint")
            .field("priorities", &priorities)
            .field("filter", &self.filter)
            .finish()
    }
}

impl NotificationEndpoint {
    /// An endpoint with no handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles `priority` one notification at a time (in a batch listener: each message of the
    /// batch in turn; the first requeue decides for the batch).
    #[must_use]
    pub fn on<F, Fut, E>(mut self, priority: Priority, handler: F) -> Self
    where
        F: Fn(IncomingNotification) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
        E: fmt::Display,
    {
        let handler = Arc::new(handler);
        let batch = move |notifications: Vec<IncomingNotification>| {
            let handler = handler.clone();
            async move {
                for notification in notifications {
                    match handler(notification).await {
                        Ok(Outcome::Handled) => {}
                        Ok(Outcome::Requeue) => return Ok(Outcome::Requeue),
                        Err(error) => return Err(error.to_string()),
                    }
                }
                Ok(Outcome::Handled)
            }
            .boxed()
        };
        self.handlers.insert(priority, Arc::new(batch));
        self
    }

    /// Handles `priority` in batches: the handler gets every message of that priority in a batch
    /// (one at a time in a listener without batches), and its outcome settles them all.
    #[must_use]
    pub fn on_batch<F, Fut, E>(mut self, priority: Priority, handler: F) -> Self
    where
        F: Fn(Vec<IncomingNotification>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
        E: fmt::Display,
    {
        let handler = Arc::new(handler);
        let batch = move |notifications: Vec<IncomingNotification>| {
            let handler = handler.clone();
            async move { handler(notifications).await.map_err(|e| e.to_string()) }.boxed()
        };
        self.handlers.insert(priority, Arc::new(batch));
        self
    }

    /// Only notifications passing `filter` reach this endpoint.
    #[must_use]
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Whether the endpoint has a handler for `priority`.
    pub fn handles(&self, priority: Priority) -> bool {
        self.handlers.contains_key(&priority)
    }

    /// Whether the endpoint's filter lets `notification` through.
    pub fn accepts(&self, notification: &IncomingNotification) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(notification))
    }

    /// Runs the handler of `priority`; `None` when there is none. Errors and panics are logged
    /// and become [`Outcome::Requeue`].
    pub(crate) async fn run(
        &self,
        priority: Priority,
        notifications: Vec<IncomingNotification>,
    ) -> Option<Outcome> {
        let handler = self.handlers.get(&priority)?;
        let outcome = match AssertUnwindSafe(handler(notifications))
            .catch_unwind()
            .await
        {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => {
                tracing::warn!(%priority, %error, "notification handler failed");
                Outcome::Requeue
            }
            Err(_) => {
                tracing::error!(%priority, "notification handler panicked");
                Outcome::Requeue
            }
        };
        Some(outcome)
    }
}
