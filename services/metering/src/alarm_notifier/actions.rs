//! Alarm actions, Aodh's notifier plugins by URL scheme (`aodh/notifier/*.py`): `log://` logs
//! the alarm, `http://` and `https://` POST it as JSON with a timeout and bounded retries;
//! any other scheme is logged and skipped. Nothing here returns an error to the listener: a
//! failed action is logged and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::evaluator::AlarmUpdate;

/// Header carrying the request id, as Aodh's REST notifier sends it.
pub const REQUEST_ID_HEADER: &str = "x-openstack-request-id";

/// How `http(s)://` actions are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Per attempt (default 10 s).
    pub timeout: Duration,
    /// Attempts after the first, on connection errors, timeouts, 408, 429 and 5xx (default 2).
    pub max_retries: u32,
    /// Wait before the first retry, doubled for each further one (default 500 ms).
    pub retry_backoff: Duration,
    /// Longest wait between retries (default 10 s).
    pub max_backoff: Duration,
}

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
    /// The wait before retry number `retry` (0-based): the backoff doubled per retry, capped,
    /// with up to a tenth added at random so that many notifiers do not retry in step.
    pub fn backoff(&self, retry: u32) -> Duration {
        let doubled = self
            .retry_backoff
            .saturating_mul(2_u32.saturating_pow(retry.min(30)));
        let capped = doubled.min(self.max_backoff);
        capped + capped.mul_f64(fastrand::f64() / 10.0)
    }
}

/// Counters of the actions run.
#[derive(Debug, Default)]
pub(crate) struct ActionCounters {
    pub(crate) run: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) retries: AtomicU64,
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

/// Why an `http(s)://` action failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("{0}")]
    Request(#[from] reqwest::Error),
    #[error("HTTP {0}")]
    Status(StatusCode),
    #[error("body could not be serialised: {0}")]
    Body(#[from] serde_json::Error),
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
            Self::Body(_) => false,
        }
    }
}

/// Runs the actions of alarm updates.
#[derive(Debug)]
pub(crate) struct ActionRunner {
    client: reqwest::Client,
    http: HttpConfig,
    pub(crate) counters: ActionCounters,
}

impl ActionRunner {
    pub(crate) fn new(http: HttpConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder().build()?,
            http,
            counters: ActionCounters::default(),
        })
    }

    /// Runs every action of `update`, concurrently.
    pub(crate) async fn run_all(&self, update: &AlarmUpdate) {
        futures::future::join_all(update.actions.iter().map(|action| {
            let span = tracing::info_span!("alarm.action", alarm_id = %update.alarm_id);
            self.run(update, action).instrument(span)
        }))
        .await;
    }

    async fn run(&self, update: &AlarmUpdate, action: &str) {
        let url = match Url::parse(action) {
            Ok(url) => url,
            Err(error) => {
                tracing::warn!(alarm_id = %update.alarm_id, %error, "alarm action is not a URL, skipped");
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let shown = redacted(&url);
        match url.scheme() {
            "log" => {
                let line = log_line(update, &shown);
                tracing::info!(alarm_id = %update.alarm_id, "{line}");
                self.counters.run.fetch_add(1, Ordering::Relaxed);
            }
            "http" | "https" => match self.post(url, update).await {
                Ok(()) => {
                    self.counters.run.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(alarm_id = %update.alarm_id, action = %shown, %error, "Unable to notify alarm");
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            },
            scheme => {
                tracing::warn!(
                    alarm_id = %update.alarm_id,
                    "Action {scheme} for alarm {} is unknown, cannot notify",
                    update.alarm_id
                );
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
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
                Err(error) if error.retryable() && retry < self.http.max_retries => {
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
        } else {
            Err(PostError::Status(status))
        }
    }
}

/// The URL without its password, for logs.
fn redacted(url: &Url) -> String {
    if url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Only fails for URLs that cannot have credentials, which this one has.
    let _ = shown.set_password(Some("***"));
    shown.to_string()
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
            d >= Duration::from_millis(base) && d <= Duration::from_millis(base + base / 10)
        };
        assert!(within(http.backoff(0), 100));
        assert!(within(http.backoff(1), 200));
        assert!(within(http.backoff(5), 300));
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        let url =
            Url::parse("https://user:secret@hooks.example/alarm").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(redacted(&url), "https://user:***@hooks.example/alarm");
    }
}
