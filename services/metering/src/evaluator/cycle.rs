//! One evaluation cycle: the members of the cycle, this evaluator's share of the enabled
//! threshold alarms on the hash ring, and for each alarm the fetch → evaluate → record →
//! hand-off sequence, with counters for the report. Also when cycles run ([`next_cycle`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tracing::Instrument;

use super::config::Clock;
use super::constraints;
use super::group::{with_membership, SharedMembership};
use super::handoff::{AlarmUpdate, Handoff};
use super::partition::HashRing;
use super::threshold::{self, Decision};
use crate::alarm_changes::ChangeNotifier;
use crate::model::{Alarm, AlarmChange};
use crate::store::{Store, StoreError};

/// The only alarm type evaluated here.
pub const THRESHOLD: &str = "threshold";

/// Which cycle to run next and how long to wait for its boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextCycle {
    /// The cycle number.
    pub cycle: u64,
    /// Cycles given up because the evaluator fell more than an interval behind.
    pub skipped: u64,
    /// Time until the cycle's boundary (zero when it has passed).
    pub wait: Duration,
}

/// The cycle after `last` (or, first, the next boundary after `now_ms`): run at its boundary,
/// or at once if the boundary passed less than an interval ago; cycles whose whole interval
/// has passed are skipped rather than run late in a burst.
pub fn next_cycle(interval_ms: i64, last: Option<u64>, now_ms: i64) -> NextCycle {
    let interval_ms = interval_ms.max(1);
    let current = u64::try_from(now_ms.max(0) / interval_ms).unwrap_or(0);
    let wanted = last.map_or(current + 1, |last| last + 1);
    let (cycle, skipped) = if wanted < current {
        (current, current - wanted)
    } else {
        (wanted, 0)
    };
    let boundary = i64::try_from(cycle)
        .unwrap_or(i64::MAX)
        .saturating_mul(interval_ms);
    let wait_ms = boundary.saturating_sub(now_ms).max(0);
    NextCycle {
        cycle,
        skipped,
        wait: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)),
    }
}

/// What an evaluator has done, for its report.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) cycles: AtomicU64,
    pub(crate) skipped_cycles: AtomicU64,
    pub(crate) evaluated: AtomicU64,
    pub(crate) transitions: AtomicU64,
    pub(crate) notifications: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) heartbeat_failures: AtomicU64,
}

/// The group as seen in the last cycle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CycleView {
    /// The last cycle run.
    pub(crate) cycle: Option<u64>,
    /// Its members, sorted.
    pub(crate) members: Vec<String>,
    /// How many alarms were this evaluator's share.
    pub(crate) share: usize,
}

/// Runs cycles for one evaluator.
#[derive(Debug)]
pub(crate) struct CycleRunner {
    pub(crate) member_id: String,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) handoff: Handoff,
    /// Announces recorded transitions (`alarm.state_transition`), as Aodh's evaluator does.
    pub(crate) changes: ChangeNotifier,
    pub(crate) membership: SharedMembership,
    pub(crate) clock: Clock,
    pub(crate) ingestion_lag: Duration,
    pub(crate) max_concurrency: usize,
    pub(crate) counters: Arc<Counters>,
    pub(crate) view: Arc<Mutex<CycleView>>,
}

impl CycleRunner {
    /// Evaluates this evaluator's share of cycle `cycle`. Failures are logged and counted;
    /// the next cycle tries again, as Aodh's does.
    pub(crate) async fn run(&self, cycle: u64) {
        let members = with_membership(&self.membership, |m| m.members_for_cycle(cycle));
        let now = self.clock.now();
        let ring = HashRing::new(&members);
        let alarms = match self.store.alarms().await {
            Ok(alarms) => alarms,
            Err(error) => {
                tracing::warn!(%error, cycle, "could not load alarms; next cycle will retry");
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
        };
        let mine: Vec<Alarm> = alarms
            .into_iter()
            .filter(|a| a.enabled && a.alarm_type == THRESHOLD)
            // Outside every time constraint an alarm is not evaluated at all, as in Aodh.
            .filter(|a| constraints::is_open(&a.time_constraints, now))
            .filter(|a| ring.belongs_to(&self.member_id, &a.alarm_id))
            .collect();
        tracing::debug!(
            cycle,
            members = members.len(),
            share = mine.len(),
            "alarm evaluation cycle"
        );
        *self.view.lock().unwrap_or_else(PoisonError::into_inner) = CycleView {
            cycle: Some(cycle),
            members,
            share: mine.len(),
        };
        self.counters.cycles.fetch_add(1, Ordering::Relaxed);
        stream::iter(mine)
            .for_each_concurrent(self.max_concurrency, |alarm| {
                let span = tracing::info_span!("alarm.evaluate", cycle, alarm_id = %alarm.alarm_id);
                async move { self.evaluate(&alarm).await }.instrument(span)
            })
            .await;
    }

    /// Evaluates one alarm: statistics (a failed fetch counts as no data, as in Aodh), the
    /// pure decision, then the history record and the hand-off.
    async fn evaluate(&self, alarm: &Alarm) {
        let now = self.clock.now();
        let query = threshold::statistics_query(&alarm.threshold_rule, now, self.ingestion_lag);
        let statistics = match self.store.statistics(&query).await {
            Ok(statistics) => statistics,
            Err(error) => {
                tracing::warn!(%error, alarm_id = %alarm.alarm_id, "statistics fetch failed");
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
        };
        self.counters.evaluated.fetch_add(1, Ordering::Relaxed);
        crate::metrics::alarm_evaluated();
        let Some(decision) = threshold::evaluate(alarm, &statistics) else {
            return;
        };
        if decision.changed && !self.record(alarm, &decision, now).await {
            return;
        }
        let Some(update) = AlarmUpdate::new(alarm, &decision) else {
            return;
        };
        match self.handoff.send(&update).await {
            Ok(()) => {
                self.counters.notifications.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(%error, alarm_id = %alarm.alarm_id, "alarm notification failed");
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records a transition; false when it could not be (then nothing is notified).
    async fn record(
        &self,
        alarm: &Alarm,
        decision: &Decision,
        now: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        tracing::info!(
            alarm_id = %alarm.alarm_id,
            from = alarm.state.as_str(),
            to = decision.state.as_str(),
            reason = %decision.reason,
            "alarm state transition"
        );
        // As Aodh's evaluator records it: made by no user, on behalf of the alarm's project.
        let mut change =
            AlarmChange::new(alarm, "state transition", decision.state, &decision.reason);
        change.reason_data = decision.reason_data.clone();
        change.timestamp = now;
        change.user_id = None;
        change.project_id = None;
        change.detail = Some(serde_json::json!({
            "state": decision.state.as_str(),
            "transition_reason": decision.reason,
        }));
        match self.store.set_state(&change).await {
            Ok(()) => {
                self.changes.publish(&change);
                self.counters.transitions.fetch_add(1, Ordering::Relaxed);
                crate::metrics::alarm_transition();
                true
            }
            Err(StoreError::NoSuchAlarm(_)) => {
                tracing::debug!(alarm_id = %alarm.alarm_id, "alarm deleted during evaluation");
                false
            }
            Err(error) => {
                tracing::warn!(%error, alarm_id = %alarm.alarm_id, "could not record state");
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_cycle_is_the_next_boundary() {
        let next = next_cycle(1000, None, 10_300);
        assert_eq!(next.cycle, 11);
        assert_eq!(next.wait, Duration::from_millis(700));
    }

    #[test]
    fn a_run_started_early_waits_for_its_boundary() {
        let next = next_cycle(1000, Some(10), 10_750);
        assert_eq!((next.cycle, next.skipped), (11, 0));
        assert_eq!(next.wait, Duration::from_millis(250));
    }

    #[test]
    fn a_late_run_goes_at_once_within_its_interval_and_skips_beyond() {
        let late = next_cycle(1000, Some(10), 11_400);
        assert_eq!(
            (late.cycle, late.skipped, late.wait),
            (11, 0, Duration::ZERO)
        );
        let very_late = next_cycle(1000, Some(10), 13_400);
        assert_eq!((very_late.cycle, very_late.skipped), (13, 2));
    }
}
