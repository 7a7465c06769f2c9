//! Alarm actions, Aodh's notifier plugins by URL scheme (`aodh/notifier/*.py`): `log://` logs
//! the alarm, `http://` and `https://` POST it as JSON with a timeout and bounded retries;
//! any other scheme is logged and skipped. Nothing here returns an error to the listener: a
//! failed action is logged and counted.
//!
//! Every action passes the [`ActionPolicy`] before each request: the scheme and a literal
//! address here, host names in the HTTP client's resolver, which hands the client only the
//! addresses it checked. Redirects are not followed, proxies from the environment are not
//! used (a proxy would resolve the name itself), and requests are capped per alarm and
//! overall. What is logged has its credentials masked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::policy::{self, ActionPolicy, CheckedAction, CheckingResolver, Refusal};
use crate::evaluator::AlarmUpdate;
use crate::secrets;

/// Header carrying the request id, as Aodh's REST notifier sends it.
pub const REQUEST_ID_HEADER: &str = "x-openstack-request-id";

/// How `http(s)://` actions are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Per attempt (default 10 s).
    pub timeout: Duration,
    /// Attempts after the first, on connection errors, timeouts, 408, 429 and 5xx (default 2,
    /// at most [`MAX_HTTP_RETRIES`]).
    pub max_retries: u32,
    /// Wait before the first retry, doubled for each further one (default 500 ms).
    pub retry_backoff: Duration,
    /// Longest wait between retries (default 10 s).
    pub max_backoff: Duration,
}

/// The most retries of one action, whatever the configuration says: an action is given up
/// (logged and counted as failed) within `(MAX_HTTP_RETRIES + 1) × timeout` plus the waits.
pub const MAX_HTTP_RETRIES: u32 = 10;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_retries: 2,
            retry_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl HttpConfig {
    /// The wait before retry number `retry` (0-based), by the service's one rule
    /// ([`Backoff`](crate::retry::Backoff)): the backoff doubled per retry, capped at
    /// `max_backoff`, less a random part of up to half so that many notifiers do not retry in
    /// step.
    pub fn backoff(&self, retry: u32) -> Duration {
        crate::retry::Backoff::new(self.retry_backoff, self.max_backoff).delay(retry)
    }

    /// The retries allowed, bounded by [`MAX_HTTP_RETRIES`].
    pub fn retries(&self) -> u32 {
        self.max_retries.min(MAX_HTTP_RETRIES)
    }
}

/// Counters of the actions run.
#[derive(Debug, Default)]
pub(crate) struct ActionCounters {
    pub(crate) run: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) refused: AtomicU64,
}

/// The JSON body of an `http(s)://` action, fields in Aodh's order.
#[derive(Debug, Serialize)]
struct RestBody<'a> {
    alarm_name: &'a str,
    alarm_id: &'a str,
    severity: &'a str,
    previous: &'a str,
    current: &'a str,
    reason: &'a str,
    reason_data: &'a Value,
}

/// Why an `http(s)://` action failed. Never holds the URL (reqwest's errors lose theirs).
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("{0}")]
    Request(reqwest::Error),
    #[error("HTTP {0}")]
    Status(StatusCode),
    #[error("HTTP {0}: redirects are not followed")]
    Redirect(StatusCode),
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("body could not be serialised: {0}")]
    Body(#[from] serde_json::Error),
}

impl From<reqwest::Error> for PostError {
    fn from(error: reqwest::Error) -> Self {
        match policy::refusal_in(&error) {
            Some(refusal) => Self::Refused(refusal.clone()),
            None => Self::Request(error.without_url()),
        }
    }
}

impl PostError {
    fn retryable(&self) -> bool {
        match self {
            Self::Request(error) => !error.is_builder(),
            Self::Status(status) => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            Self::Refused(refusal) => refusal.is_transient(),
            Self::Redirect(_) | Self::Body(_) => false,
        }
    }
}

/// Caps on requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActionLimits {
    /// HTTP requests in flight at once, all alarms together (default 32).
    pub max_concurrent: usize,
    /// Actions of one alarm running at once (default 4).
    pub max_concurrent_per_alarm: usize,
}

impl Default for ActionLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 32,
            max_concurrent_per_alarm: 4,
        }
    }
}

/// Runs the actions of alarm updates.
#[derive(Debug)]
pub(crate) struct ActionRunner {
    client: reqwest::Client,
    http: HttpConfig,
    policy: Arc<ActionPolicy>,
    limits: ActionLimits,
    /// One permit per HTTP request in flight.
    in_flight: Arc<Semaphore>,
    /// Per alarm id, the permits of its actions; an entry lives while one of its actions runs.
    per_alarm: Mutex<HashMap<String, Arc<Semaphore>>>,
    pub(crate) counters: ActionCounters,
}

impl ActionRunner {
    pub(crate) fn new(
        http: HttpConfig,
        policy: ActionPolicy,
        limits: ActionLimits,
    ) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckingResolver {
                policy: policy.clone(),
            }))
            .connect_timeout(http.timeout)
            .build()?;
        Ok(Self {
            client,
            http,
            policy,
            limits,
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            per_alarm: Mutex::new(HashMap::new()),
            counters: ActionCounters::default(),
        })
    }

    /// Runs every action of `update`, concurrently up to the per-alarm cap.
    pub(crate) async fn run_all(&self, update: &AlarmUpdate) {
        let slots = self.alarm_slots(&update.alarm_id);
        futures::future::join_all(update.actions.iter().map(|action| {
            let span = tracing::info_span!("alarm.action", alarm_id = %update.alarm_id);
            let slots = slots.clone();
            async move {
                // Never closed; a closed semaphore would only lift the cap.
                let _slot = slots.acquire().await.ok();
                self.run(update, action).await;
            }
            .instrument(span)
        }))
        .await;
        drop(slots);
        self.release_alarm_slots(&update.alarm_id);
    }

    fn alarm_slots(&self, alarm_id: &str) -> Arc<Semaphore> {
        let mut per_alarm = self
            .per_alarm
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        per_alarm
            .entry(alarm_id.to_owned())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(self.limits.max_concurrent_per_alarm.max(1)))
            })
            .clone()
    }

    fn release_alarm_slots(&self, alarm_id: &str) {
        let mut per_alarm = self
            .per_alarm
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Clones are made under this lock only, so a count of one means nobody else holds it.
        if per_alarm
            .get(alarm_id)
            .is_some_and(|slots| Arc::strong_count(slots) == 1)
        {
            per_alarm.remove(alarm_id);
        }
    }

    async fn run(&self, update: &AlarmUpdate, action: &str) {
        let shown = secrets::mask_url(action);
        match self.policy.check_url(action) {
            Ok(CheckedAction::Log) => {
                let line = log_line(update, &shown);
                tracing::info!(alarm_id = %update.alarm_id, "{line}");
                self.counters.run.fetch_add(1, Ordering::Relaxed);
                crate::metrics::action(crate::metrics::action_outcome::OK);
            }
            Ok(CheckedAction::Http(url)) => match self.post(url, update).await {
                Ok(()) => {
                    self.counters.run.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::action(crate::metrics::action_outcome::OK);
                }
                Err(PostError::Refused(refusal)) if !refusal.is_transient() => {
                    tracing::warn!(alarm_id = %update.alarm_id, action = %shown, %refusal, "alarm action refused");
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::action(crate::metrics::action_outcome::REFUSED);
                }
                Err(error) => {
                    let error = secrets::mask_text(&error.to_string());
                    tracing::warn!(alarm_id = %update.alarm_id, action = %shown, %error, "Unable to notify alarm");
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::action(crate::metrics::action_outcome::FAILED);
                }
            },
            Err(Refusal::Scheme(scheme)) => {
                tracing::warn!(
                    alarm_id = %update.alarm_id,
                    "Action {scheme} for alarm {} is unknown, cannot notify",
                    update.alarm_id
                );
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::action(crate::metrics::action_outcome::SKIPPED);
            }
            Err(Refusal::Malformed(error)) => {
                tracing::warn!(alarm_id = %update.alarm_id, action = %shown, %error, "alarm action is not a URL, skipped");
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::action(crate::metrics::action_outcome::SKIPPED);
            }
            Err(refusal) => {
                tracing::warn!(alarm_id = %update.alarm_id, action = %shown, %refusal, "alarm action refused");
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                crate::metrics::action(crate::metrics::action_outcome::REFUSED);
            }
        }
    }

    /// POSTs the alarm to `url`, retrying what may succeed later.
    async fn post(&self, url: Url, update: &AlarmUpdate) -> Result<(), PostError> {
        let body = serde_json::to_vec(&RestBody {
            alarm_name: &update.alarm_name,
            alarm_id: &update.alarm_id,
            severity: &update.severity,
            previous: &update.previous,
            current: &update.current,
            reason: &update.reason,
            reason_data: &update.reason_data,
        })?;
        let request_id = format!("req-{}", uuid::Uuid::new_v4());
        tracing::info!(
            request_id,
            "Notifying alarm <{}> with action {} because {}.",
            update.alarm_id,
            redacted(&url),
            update.reason,
        );

        let mut retry = 0;
        loop {
            let outcome = self.post_once(&url, &request_id, body.clone()).await;
            match outcome {
                Ok(()) => return Ok(()),
                Err(error) if error.retryable() && retry < self.http.retries() => {
                    let wait = self.http.backoff(retry);
                    tracing::debug!(%error, ?wait, retry = retry + 1, "alarm action failed; retrying");
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    retry += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn post_once(&self, url: &Url, request_id: &str, body: Vec<u8>) -> Result<(), PostError> {
        // Never closed; a closed semaphore would only lift the cap.
        let _permit = self.in_flight.acquire().await.ok();
        let response = self
            .client
            .post(url.clone())
            .timeout(self.http.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(REQUEST_ID_HEADER, request_id)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            Err(PostError::Redirect(status))
        } else {
            Err(PostError::Status(status))
        }
    }
}

/// The URL without its credentials, for logs.
fn redacted(url: &Url) -> String {
    secrets::mask_url(url.as_str())
}

/// The line a `log://` action writes, worded as Aodh's log notifier words it.
pub fn log_line(update: &AlarmUpdate, action: &str) -> String {
    format!(
        "Notifying alarm {} {} of {} priority from {} to {} with action {} because {}.",
        update.alarm_name,
        update.alarm_id,
        update.severity,
        update.previous,
        update.current,
        action,
        update.reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let http = HttpConfig {
            retry_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            ..HttpConfig::default()
        };
        let within = |d: Duration, base: u64| {
            d >= Duration::from_millis(base / 2) && d <= Duration::from_millis(base)
        };
        for _ in 0..50 {
            assert!(within(http.backoff(0), 100));
            assert!(within(http.backoff(1), 200));
            assert!(within(http.backoff(5), 300));
        }
    }

    #[test]
    fn retries_are_bounded_whatever_the_configuration() {
        let http = HttpConfig {
            max_retries: u32::MAX,
            ..HttpConfig::default()
        };
        assert_eq!(http.retries(), MAX_HTTP_RETRIES);
        assert_eq!(HttpConfig::default().retries(), 2);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        let url =
            Url::parse("https://user:secret@hooks.example/alarm").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(redacted(&url), "https://user:***@hooks.example/alarm");
    }
}
