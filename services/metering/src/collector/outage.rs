//! The store's health as the collector sees it: up, or down since some instant after some
//! failed attempts. Shared by every batch, so that while the store is down one batch probes
//! it (with backoff) and the others wait for the answer, rather than each hammering a database
//! that is restarting.
//!
//! This module decides nothing about samples; `ingest` asks it whether to wait and how long.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, MutexGuard};
use tokio::time::Instant;

use crate::retry::Backoff;
use crate::store::StoreError;

/// How often a continuing outage is logged again.
const STILL_DOWN_LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Since {
    started: Instant,
    failures: u32,
    logged: Instant,
}

/// Up or down, and since when.
#[derive(Debug)]
pub(crate) struct StoreOutage {
    down: watch::Sender<bool>,
    since: Mutex<Option<Since>>,
    probe: tokio::sync::Mutex<()>,
    retry: Backoff,
}

/// What a failed attempt changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The first failure of an outage.
    Began,
    /// The outage goes on.
    Continues,
}

impl StoreOutage {
    pub(crate) fn new(retry: Backoff) -> Self {
        Self {
            down: watch::Sender::new(false),
            since: Mutex::new(None),
            probe: tokio::sync::Mutex::new(()),
            retry,
        }
    }

    fn since(&self) -> std::sync::MutexGuard<'_, Option<Since>> {
        self.since.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the last attempt on the store found it unavailable.
    pub(crate) fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// The right to probe the store while it is down: one batch at a time holds it, the
    /// others queue for it (in order) and usually find the store back when their turn comes.
    pub(crate) async fn probe(&self) -> MutexGuard<'_, ()> {
        self.probe.lock().await
    }

    /// Resolves once the store is up again (cancellation safe).
    pub(crate) async fn back(&self) {
        let mut down = self.down.subscribe();
        let _ = down.wait_for(|down| !down).await;
    }

    /// The wait before the next probe: the retry policy over the failures of this outage.
    pub(crate) fn next_delay(&self) -> Duration {
        let failures = self.since().as_ref().map_or(0, |s| s.failures);
        self.retry.delay(failures.saturating_sub(1))
    }

    /// Records a failed attempt, logging the start of an outage and then at most every
    /// [`STILL_DOWN_LOG_EVERY`] while it goes on.
    pub(crate) fn failed(&self, error: &StoreError, held: u64) -> Failure {
        let now = Instant::now();
        let mut since = self.since();
        match since.as_mut() {
            None => {
                *since = Some(Since {
                    started: now,
                    failures: 1,
                    logged: now,
                });
                drop(since);
                self.down.send_replace(true);
                tracing::warn!(%error, "metering store unavailable: holding the samples taken, taking no more, retrying with backoff");
                Failure::Began
            }
            Some(outage) => {
                outage.failures = outage.failures.saturating_add(1);
                if now.duration_since(outage.logged) >= STILL_DOWN_LOG_EVERY {
                    outage.logged = now;
                    tracing::warn!(
                        %error,
                        down_for = ?now.duration_since(outage.started),
                        attempts = outage.failures,
                        batches_held = held,
                        "metering store still unavailable"
                    );
                }
                Failure::Continues
            }
        }
    }

    /// The store answered (stored, or refused some data on its merits): an outage, if there
    /// was one, is over.
    pub(crate) fn answered(&self) {
        if !self.is_down() {
            return;
        }
        let ended = self.since().take();
        self.down.send_replace(false);
        if let Some(outage) = ended {
            tracing::warn!(
                down_for = ?outage.started.elapsed(),
                attempts = outage.failures,
                "metering store available again; storing the samples held"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> StoreError {
        StoreError::Unavailable("connection refused".into())
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_begins_at_the_first_failure_and_ends_at_the_first_answer() {
        let outage = std::sync::Arc::new(StoreOutage::new(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
        )));
        assert!(!outage.is_down());
        assert_eq!(outage.failed(&unavailable(), 0), Failure::Began);
        assert_eq!(outage.failed(&unavailable(), 1), Failure::Continues);
        assert!(outage.is_down());
        let waiting = outage.clone();
        let back = tokio::spawn(async move { waiting.back().await });
        tokio::task::yield_now().await;
        assert!(
            !back.is_finished(),
            "back() resolved while the store is down"
        );
        outage.answered();
        assert!(!outage.is_down());
        tokio::time::timeout(Duration::from_millis(1), back)
            .await
            .unwrap_or_else(|_| panic!("back() still waits although the store answered"))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn probes_back_off_with_the_failures_of_the_outage_up_to_the_cap() {
        let outage = StoreOutage::new(Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(400),
        ));
        for _ in 0..10 {
            outage.failed(&unavailable(), 0);
        }
        let wait = outage.next_delay();
        assert!(
            wait <= Duration::from_millis(400) && wait >= Duration::from_millis(200),
            "{wait:?}"
        );
        outage.answered();
        assert!(outage.next_delay() <= Duration::from_millis(100));
    }
}
