//! Retention: samples older than their meter's time to live are removed in the background,
//! a bounded step at a time, so that the collector's writes interleave with the removal
//! instead of waiting behind it.
//!
//! The cutoff of a meter is `now - time to live`, rounded down to a boundary of the largest
//! roll-up period: a roll-up bucket is then either wholly kept or wholly removed with its
//! samples, and statistics from roll-ups and from raw samples stay the same. A sample is thus
//! removed between its time to live and that plus the largest period (a day by default).
//!
//! Each store does one step per [`Store::expire_step`]: PostgreSQL
//! first drops whole day partitions that every meter has expired, then, like SQLite, deletes
//! at most a batch of samples of one meter; after the samples, a meter's roll-ups and
//! catalogue rows below its cutoff; SQLite finally gives freed pages back to the file system
//! (incremental vacuum) a bounded number of pages at a time. [`expire`] runs steps until
//! nothing is left; [`run`] does so on a timer, as the store manifold's worker.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::config::StoreLayout;
use super::rollup::bucket_start;
use super::sql::{micros, period_micros};
use super::{Store, StoreError};

/// What one expiry step (or a whole run) removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Samples deleted row by row.
    pub samples: u64,
    /// Whole time partitions dropped (PostgreSQL).
    pub partitions: u64,
    /// Roll-up and catalogue rows deleted.
    pub summaries: u64,
    /// Database pages given back to the file system (SQLite).
    pub pages: u64,
}

impl Expired {
    /// Whether the step did anything (a run goes on until a step does nothing).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn add(&mut self, other: &Expired) {
        self.samples += other.samples;
        self.partitions += other.partitions;
        self.summaries += other.summaries;
        self.pages += other.pages;
    }
}

/// The cutoff (µs) below which `meter`'s samples are removed at `now`, `None` for a meter
/// kept forever.
pub(super) fn cutoff(
    layout: &StoreLayout,
    periods: &[u64],
    meter: &str,
    now: DateTime<Utc>,
) -> Option<i64> {
    let ttl = layout.time_to_live(meter)?;
    let ttl = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
    Some(bucket_start(
        micros(&now).saturating_sub(ttl),
        alignment(periods),
    ))
}

/// What every cutoff is a multiple of (µs): the largest roll-up period, or 1 without any.
/// Two times in one such step are either both below a cutoff or both not.
pub(super) fn alignment(periods: &[u64]) -> i64 {
    periods.last().map_or(1, |p| period_micros(*p))
}

/// The cutoff below which *every* meter's samples are removed (whole partitions may go),
/// `None` when some meter is kept forever. `meters` are the stored meters; the default time
/// to live covers any other.
pub(super) fn common_cutoff(
    layout: &StoreLayout,
    periods: &[u64],
    meters: &[String],
    now: DateTime<Utc>,
) -> Option<i64> {
    // A meter not named takes the default; a sample of a new meter may arrive any time.
    let mut lowest =
        cutoff(layout, periods, "", now).filter(|_| layout.metering_time_to_live > 0)?;
    for meter in meters.iter().chain(layout.meter_time_to_live.keys()) {
        lowest = lowest.min(cutoff(layout, periods, meter, now)?);
    }
    Some(lowest)
}

/// Runs expiry steps on `store` until one does nothing; returns the total.
pub async fn expire(store: &dyn Store, now: DateTime<Utc>) -> Result<Expired, StoreError> {
    let mut total = Expired::default();
    loop {
        let step = store.expire_step(now).await?;
        if step.is_empty() {
            return Ok(total);
        }
        total.add(&step);
        // Let the writes that queued behind this step go first.
        tokio::task::yield_now().await;
    }
}

/// Expires samples every `interval` until `stop`; failures are logged and retried at the
/// next tick.
pub async fn run(store: Arc<dyn Store>, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let expiry = tokio::select! {
            () = stop.cancelled() => return,
            result = expire(store.as_ref(), Utc::now()) => result,
        };
        match expiry {
            Ok(done) if !done.is_empty() => tracing::info!(
                samples = done.samples,
                partitions = done.partitions,
                summaries = done.summaries,
                pages = done.pages,
                "expired samples past their time to live"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "sample expiry failed; retried at the next run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn cutoffs_fall_on_a_boundary_of_the_largest_period() {
        let layout = StoreLayout {
            metering_time_to_live: 3_600,
            meter_time_to_live: [("disk".to_owned(), -1)].into(),
            ..StoreLayout::default()
        };
        let now = Utc
            .with_ymd_and_hms(2026, 3, 10, 12, 30, 0)
            .single()
            .unwrap_or_default();
        let day = Utc
            .with_ymd_and_hms(2026, 3, 10, 0, 0, 0)
            .single()
            .unwrap_or_default();
        assert_eq!(
            cutoff(&layout, &[3_600, 86_400], "cpu", now),
            Some(micros(&day))
        );
        let hour = Utc
            .with_ymd_and_hms(2026, 3, 10, 11, 0, 0)
            .single()
            .unwrap_or_default();
        assert_eq!(cutoff(&layout, &[3_600], "cpu", now), Some(micros(&hour)));
        assert_eq!(cutoff(&layout, &[3_600], "disk", now), None);
        assert_eq!(common_cutoff(&layout, &[3_600], &["cpu".into()], now), None);
        let all = StoreLayout {
            metering_time_to_live: 3_600,
            ..StoreLayout::default()
        };
        assert_eq!(
            common_cutoff(&all, &[3_600], &["cpu".into()], now),
            Some(micros(&hour))
        );
    }
}
