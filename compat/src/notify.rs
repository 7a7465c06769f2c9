//! Blocking notification handlers: plain fns registered on a [`NotificationEndpoint`] beside
//! async ones, run on a [`BlockingPool`].
//!
//! They follow the async handlers' rules: `Ok(Outcome)` settles the message, an `Err` counts as
//! a requeue request (as an exception does in oslo.messaging), and a panic is caught on the pool
//! thread and counts the same. A listener handing a message to a blocking handler waits for a
//! pool permit while holding its own slot, so a full pool stops the listener from taking more
//! (its prefetch is its `max_concurrency`), exactly as for RPC.
//!
//! ```
//! use tidings::notify::{IncomingNotification, NotificationEndpoint, Outcome, Priority};
//! use tidings_compat::{BlockingNotificationEndpointExt, BlockingPool};
//!
//! fn record(n: IncomingNotification) -> Result<Outcome, std::io::Error> {
//!     // e.g. append to a file with std::fs: blocking is fine here.
//!     let _ = n.event_type;
//!     Ok(Outcome::Handled)
//! }
//!
//! # fn main() -> Result<(), tidings_compat::PoolError> {
//! let pool = BlockingPool::new(4)?;
//! let endpoint = NotificationEndpoint::new().on_blocking(Priority::Info, &pool, record);
//! assert!(endpoint.handles(Priority::Info));
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use tidings::notify::{IncomingNotification, NotificationEndpoint, Outcome, Priority};

use crate::pool::{BlockingPool, PoolError};

/// Registers blocking notification handlers on a [`NotificationEndpoint`].
pub trait BlockingNotificationEndpointExt: Sized {
    /// Handles `priority` one notification at a time with the blocking fn `handler`, on `pool`
    /// (the blocking twin of [`NotificationEndpoint::on`]).
    #[must_use]
    fn on_blocking<F, E>(self, priority: Priority, pool: &BlockingPool, handler: F) -> Self
    where
        F: Fn(IncomingNotification) -> Result<Outcome, E> + Send + Sync + 'static,
        E: fmt::Display + 'static;

    /// Handles `priority` a batch at a time with the blocking fn `handler`, on `pool` (the
    /// blocking twin of [`NotificationEndpoint::on_batch`]); the batch takes one thread.
    #[must_use]
    fn on_batch_blocking<F, E>(self, priority: Priority, pool: &BlockingPool, handler: F) -> Self
    where
        F: Fn(Vec<IncomingNotification>) -> Result<Outcome, E> + Send + Sync + 'static,
        E: fmt::Display + 'static;
}

impl BlockingNotificationEndpointExt for NotificationEndpoint {
    fn on_blocking<F, E>(self, priority: Priority, pool: &BlockingPool, handler: F) -> Self
    where
        F: Fn(IncomingNotification) -> Result<Outcome, E> + Send + Sync + 'static,
        E: fmt::Display + 'static,
    {
        let handler = Arc::new(handler);
        let pool = pool.clone();
        self.on(priority, move |notification: IncomingNotification| {
            run_on(&pool, handler.clone(), notification)
        })
    }

    fn on_batch_blocking<F, E>(self, priority: Priority, pool: &BlockingPool, handler: F) -> Self
    where
        F: Fn(Vec<IncomingNotification>) -> Result<Outcome, E> + Send + Sync + 'static,
        E: fmt::Display + 'static,
    {
        let handler = Arc::new(handler);
        let pool = pool.clone();
        self.on_batch(priority, move |batch: Vec<IncomingNotification>| {
            run_on(&pool, handler.clone(), batch)
        })
    }
}

/// Runs `handler(input)` on `pool`; the error (the handler's, or its panic) as text, which is
/// what the listener logs before requeueing.
fn run_on<I, F, E>(
    pool: &BlockingPool,
    handler: Arc<F>,
    input: I,
) -> impl std::future::Future<Output = Result<Outcome, String>> + Send + 'static
where
    I: Send + 'static,
    F: Fn(I) -> Result<Outcome, E> + Send + Sync + 'static,
    E: fmt::Display + 'static,
{
    let pool = pool.clone();
    async move {
        let job = move || handler(input).map_err(|error| error.to_string());
        match pool.run(job).await {
            Ok(outcome) => outcome,
            Err(PoolError::Panicked { detail }) => {
                tracing::error!(%detail, "blocking notification handler panicked");
                Err(format!("blocking notification handler panicked: {detail}"))
            }
            Err(error) => Err(error.to_string()),
        }
    }
}
