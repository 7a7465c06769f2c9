//! Who evaluates which cycle: the group membership every evaluator rebuilds from the fanout
//! heartbeats it receives. Pure bookkeeping over timestamps; `group.rs` moves the messages.
//!
//! Evaluation runs in numbered cycles: cycle `j` begins at `j × evaluation_interval` on the
//! wall clock (milliseconds since the Unix epoch), the same instants for every evaluator. The
//! members of cycle `j` are decided only from facts stamped by their senders, so every
//! evaluator that received the same heartbeats computes the same members and the same ring:
//!
//! - a member counts for cycle `j` when one of its heartbeats is stamped inside the window
//!   `[b_j − timeout, b_j − settle]` (`b_j` the cycle's boundary, `settle` half a heartbeat
//!   interval: heartbeats stamped later may still be on the way and are left to the next
//!   cycle);
//! - and it had been listening since `b_j − timeout` (the `joined_at` every heartbeat
//!   carries), so a newcomer only evaluates once it has heard a full window of the others'
//!   heartbeats, and the others count it from that same cycle;
//! - and it has not announced leaving after an earlier cycle (`Leave { last_cycle }`).
//!
//! A member that dies stops stamping heartbeats; it drops out of the first cycle whose window
//! holds none, at most `timeout` after its last heartbeat, and its alarms move to the others.
//!
//! Anyone on the bus can send these casts, so what they claim is bounded by what the receiver
//! knows:
//! - a stamp later than the receiver's clock plus a skew allowance (by default the member
//!   timeout) is clamped to it, so a heartbeat "from the future" counts no longer than an
//!   ordinary one and is pruned like one;
//! - a departure holds only until the member beats again: a heartbeat stamped after the
//!   `leave` (whose stamp is clamped alike) means it is still running, and cancels it, so a
//!   forged `leave` costs a live member at most the cycles until its next heartbeat;
//! - a `leave` for a member never heard from is ignored, and at most [`MAX_MEMBERS`] members
//!   are tracked: beyond that a new member id is refused until pruning makes room, so a flood
//!   of invented ids cannot push out the members that keep beating;
//! - the set of members warned about a different interval is pruned with the members.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Heartbeats kept per member, whatever the horizon says (a bound against a chatty sender).
const MAX_BEATS_PER_MEMBER: usize = 1024;

/// Members tracked at most (a bound against a sender inventing member ids).
pub const MAX_MEMBERS: usize = 1024;

/// The arguments of the `heartbeat` fanout cast: "I am evaluating".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's member id.
    pub member_id: String,
    /// When the sender started listening for heartbeats (ms since the Unix epoch).
    pub joined_at_ms: i64,
    /// When the sender sent this heartbeat (ms since the Unix epoch, sender's clock).
    pub sent_at_ms: i64,
    /// The sender's evaluation interval; cycles only line up between equal intervals.
    pub evaluation_interval_ms: i64,
}

/// The arguments of the `leave` fanout cast: "I evaluate no cycle after `last_cycle`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    /// The sender's member id.
    pub member_id: String,
    /// The last cycle the sender evaluated (or would have).
    pub last_cycle: u64,
    /// When the sender left (ms since the Unix epoch).
    pub sent_at_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Beat {
    sent_at_ms: i64,
    joined_at_ms: i64,
}

#[derive(Clone, Debug, Default)]
struct Record {
    beats: VecDeque<Beat>,
    left: Option<Leave>,
}

/// The heartbeats and departures an evaluator has seen, and the members of each cycle.
#[derive(Clone, Debug)]
pub struct Membership {
    interval_ms: i64,
    timeout_ms: i64,
    settle_ms: i64,
    /// How far ahead of the receiver's clock a stamp may be.
    skew_ms: i64,
    members: BTreeMap<String, Record>,
    /// Members already warned about a different evaluation interval.
    mismatched: BTreeSet<String>,
    /// Member ids refused since the last warning, because [`MAX_MEMBERS`] were tracked.
    refused: u64,
}

impl Membership {
    /// Empty membership for cycles of `interval`, members judged dead `timeout` after their
    /// last heartbeat, and heartbeats settling for half of `heartbeat`. Stamps may run ahead of
    /// the receiver's clock by `timeout` (see [`with_clock_skew`](Self::with_clock_skew)).
    pub fn new(interval: Duration, heartbeat: Duration, timeout: Duration) -> Self {
        Self {
            interval_ms: millis(interval).max(1),
            timeout_ms: millis(timeout),
            settle_ms: millis(heartbeat) / 2,
            skew_ms: millis(timeout),
            members: BTreeMap::new(),
            mismatched: BTreeSet::new(),
            refused: 0,
        }
    }

    /// The same membership allowing stamps up to `skew` ahead of the receiver's clock.
    #[must_use]
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.skew_ms = millis(skew);
        self
    }

    /// `stamp`, or the latest instant a sender's clock may claim when the receiver's reads
    /// `now_ms`.
    fn clamp(&self, stamp: i64, now_ms: i64) -> i64 {
        stamp.min(now_ms.saturating_add(self.skew_ms))
    }

    /// Whether a record for `member_id` exists or may be made.
    fn admits(&mut self, member_id: &str) -> bool {
        if self.members.contains_key(member_id) || self.members.len() < MAX_MEMBERS {
            return true;
        }
        self.refused += 1;
        if self.refused == 1 {
            tracing::warn!(
                member = %member_id,
                max = MAX_MEMBERS,
                "heartbeat from one member too many; ignored until silent members are pruned"
            );
        }
        false
    }

    /// The instant cycle `cycle` begins (ms since the Unix epoch).
    pub fn boundary_ms(&self, cycle: u64) -> i64 {
        i64::try_from(cycle)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.interval_ms)
    }

    /// Records a heartbeat received when the receiver's clock reads `now_ms`. Its stamps are
    /// clamped to `now_ms` plus the skew allowance; one stamped after the member's announced
    /// departure means it is still (or again) running, and cancels the departure.
    pub fn record_heartbeat(&mut self, heartbeat: &Heartbeat, now_ms: i64) {
        if !self.admits(&heartbeat.member_id) {
            return;
        }
        if heartbeat.evaluation_interval_ms != self.interval_ms
            && self.mismatched.insert(heartbeat.member_id.clone())
        {
            tracing::warn!(
                member = %heartbeat.member_id,
                theirs_ms = heartbeat.evaluation_interval_ms,
                ours_ms = self.interval_ms,
                "alarm evaluator with another evaluation interval: cycles will not line up \
                 and alarms may be evaluated twice or skipped"
            );
        }
        let sent_at_ms = self.clamp(heartbeat.sent_at_ms, now_ms);
        let joined_at_ms = heartbeat.joined_at_ms.min(sent_at_ms);
        let record = self.members.entry(heartbeat.member_id.clone()).or_default();
        if record
            .left
            .as_ref()
            .is_some_and(|left| sent_at_ms > left.sent_at_ms)
        {
            record.left = None;
        }
        if record.beats.len() >= MAX_BEATS_PER_MEMBER {
            record.beats.pop_front();
        }
        record.beats.push_back(Beat {
            sent_at_ms,
            joined_at_ms,
        });
    }

    /// Records a departure received when the receiver's clock reads `now_ms` (its stamp
    /// clamped like a heartbeat's). A departure of a member never heard from changes nothing.
    pub fn record_leave(&mut self, leave: &Leave, now_ms: i64) {
        let sent_at_ms = self.clamp(leave.sent_at_ms, now_ms);
        if let Some(record) = self.members.get_mut(&leave.member_id) {
            // A member that beat after this stamp is still running: the leave came late, or
            // is not its own.
            if record.beats.iter().any(|beat| beat.sent_at_ms > sent_at_ms) {
                return;
            }
            record.left = Some(Leave {
                sent_at_ms,
                ..leave.clone()
            });
        }
    }

    /// How many members are tracked (live or not yet pruned).
    pub fn tracked(&self) -> usize {
        self.members.len()
    }

    /// The members of cycle `cycle`, sorted.
    pub fn members_for_cycle(&self, cycle: u64) -> Vec<String> {
        let boundary = self.boundary_ms(cycle);
        let earliest = boundary.saturating_sub(self.timeout_ms);
        let latest = boundary.saturating_sub(self.settle_ms);
        self.members
            .iter()
            .filter(|(_, record)| {
                record
                    .left
                    .as_ref()
                    .is_none_or(|left| cycle <= left.last_cycle)
            })
            .filter(|(_, record)| {
                record.beats.iter().any(|beat| {
                    (earliest..=latest).contains(&beat.sent_at_ms) && beat.joined_at_ms <= earliest
                })
            })
            .map(|(member, _)| member.clone())
            .collect()
    }

    /// Members heard from within `timeout` of `now_ms` that have not left: who is running
    /// now, whether or not it evaluates yet (for reports).
    pub fn live_members(&self, now_ms: i64) -> Vec<String> {
        let earliest = now_ms.saturating_sub(self.timeout_ms);
        self.members
            .iter()
            .filter(|(_, record)| record.left.is_none())
            .filter(|(_, record)| record.beats.iter().any(|b| b.sent_at_ms >= earliest))
            .map(|(member, _)| member.clone())
            .collect()
    }

    /// Forgets heartbeats too old to matter for any cycle still to be evaluated at `now_ms`
    /// (a cycle is evaluated at the latest one interval after its boundary), and members
    /// left with none.
    pub fn prune(&mut self, now_ms: i64) {
        let horizon = now_ms
            .saturating_sub(self.timeout_ms)
            .saturating_sub(self.interval_ms.saturating_mul(2));
        self.members.retain(|_, record| {
            record.beats.retain(|beat| beat.sent_at_ms >= horizon);
            !record.beats.is_empty()
        });
        let members = &self.members;
        self.mismatched
            .retain(|member| members.contains_key(member));
        if self.refused > 1 {
            tracing::warn!(
                refused = self.refused,
                max = MAX_MEMBERS,
                "heartbeats of new members were ignored: too many members"
            );
        }
        self.refused = 0;
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1000;

    fn membership() -> Membership {
        // 1 s cycles, 250 ms heartbeats, 750 ms timeout: the window of cycle j is
        // [j s − 750 ms, j s − 125 ms].
        Membership::new(
            Duration::from_secs(1),
            Duration::from_millis(250),
            Duration::from_millis(750),
        )
    }

    fn beat(member: &str, joined: i64, sent: i64) -> Heartbeat {
        Heartbeat {
            member_id: member.to_owned(),
            joined_at_ms: joined,
            sent_at_ms: sent,
            evaluation_interval_ms: SECOND,
        }
    }

    #[test]
    fn a_member_counts_once_it_has_listened_a_whole_window() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 9_500, 9_600), 9_600);
        assert!(
            m.members_for_cycle(10).is_empty(),
            "joined inside the window"
        );
        m.record_heartbeat(&beat("a", 9_500, 10_500), 10_500);
        assert_eq!(m.members_for_cycle(11), ["a"]);
    }

    #[test]
    fn heartbeats_still_settling_are_left_out() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 9_900), 9_900);
        assert!(m.members_for_cycle(10).is_empty());
        m.record_heartbeat(&beat("a", 0, 9_850), 9_850);
        assert_eq!(m.members_for_cycle(10), ["a"]);
    }

    #[test]
    fn a_silent_member_drops_out_after_the_timeout() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 9_300), 9_300);
        m.record_heartbeat(&beat("b", 0, 9_300), 9_300);
        m.record_heartbeat(&beat("b", 0, 10_300), 10_300);
        assert_eq!(m.members_for_cycle(10), ["a", "b"]);
        assert_eq!(m.members_for_cycle(11), ["b"]);
    }

    #[test]
    fn a_member_that_left_is_out_after_its_last_cycle_and_back_when_it_rejoins() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 9_500), 9_500);
        m.record_heartbeat(&beat("a", 0, 10_500), 10_500);
        m.record_leave(
            &Leave {
                member_id: "a".into(),
                last_cycle: 10,
                sent_at_ms: 10_600,
            },
            10_600,
        );
        assert_eq!(m.members_for_cycle(10), ["a"]);
        assert!(m.members_for_cycle(11).is_empty());
        m.record_heartbeat(&beat("a", 20_000, 20_000), 20_000);
        m.record_heartbeat(&beat("a", 20_000, 20_500), 20_500);
        assert_eq!(m.members_for_cycle(21), ["a"]);
    }

    #[test]
    fn pruning_keeps_what_upcoming_cycles_need() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 1_000), 1_000);
        m.record_heartbeat(&beat("b", 0, 9_500), 9_500);
        m.prune(10_000);
        assert_eq!(m.live_members(10_000), ["b"]);
        assert_eq!(m.members_for_cycle(10), ["b"]);
    }

    fn leave(member: &str, last_cycle: u64, sent: i64) -> Leave {
        Leave {
            member_id: member.to_owned(),
            last_cycle,
            sent_at_ms: sent,
        }
    }

    #[test]
    fn a_heartbeat_from_the_future_is_clamped_and_pruned_like_any_other() {
        let mut m = membership();
        // Received at 10 s, stamped a year ahead: counted as stamped at 10 s + the skew
        // allowance (the 750 ms timeout).
        m.record_heartbeat(&beat("forged", 0, 10_000 + 365 * 86_400_000), 10_000);
        assert_eq!(m.live_members(10_500), ["forged"]);
        assert_eq!(m.members_for_cycle(11), ["forged"]);
        assert!(
            m.members_for_cycle(12).is_empty(),
            "a clamped beat counts for one window only"
        );
        m.prune(20_000);
        assert_eq!(m.tracked(), 0, "pruned once too old for any cycle");
        assert!(m.live_members(20_000).is_empty());
    }

    #[test]
    fn a_forged_leave_lasts_only_until_the_member_beats_again() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 9_300), 9_300);
        m.record_heartbeat(&beat("b", 0, 9_300), 9_300);
        // Someone else says "a" left after cycle 0, stamped far ahead to outlast its beats.
        m.record_leave(&leave("a", 0, i64::MAX), 9_400);
        assert_eq!(m.members_for_cycle(10), ["b"], "honoured while a is silent");
        // a keeps beating: once a beat is stamped after the (clamped) leave, it is back.
        m.record_heartbeat(&beat("a", 0, 10_000), 10_000);
        m.record_heartbeat(&beat("b", 0, 10_000), 10_000);
        m.record_heartbeat(&beat("a", 0, 10_300), 10_300);
        m.record_heartbeat(&beat("b", 0, 10_300), 10_300);
        assert_eq!(m.members_for_cycle(11), ["a", "b"]);
        m.prune(30_000);
        m.record_heartbeat(&beat("a", 0, 30_300), 30_300);
        assert_eq!(m.live_members(30_300), ["a"]);
    }

    #[test]
    fn a_leave_older_than_the_last_beat_is_ignored() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 9_300), 9_300);
        m.record_heartbeat(&beat("a", 0, 10_300), 10_300);
        m.record_leave(&leave("a", 0, 9_500), 10_400);
        assert_eq!(m.members_for_cycle(11), ["a"]);
    }

    #[test]
    fn a_leave_of_a_member_never_heard_from_is_not_kept() {
        let mut m = membership();
        for n in 0..10_000 {
            m.record_leave(&leave(&format!("ghost-{n}"), 0, 1_000), 1_000);
        }
        assert_eq!(m.tracked(), 0);
    }

    #[test]
    fn invented_members_are_bounded_and_cannot_push_out_real_ones() {
        let mut m = membership();
        m.record_heartbeat(&beat("real", 0, 9_300), 9_300);
        for n in 0..5 * MAX_MEMBERS {
            m.record_heartbeat(&beat(&format!("fake-{n}"), 0, 9_300), 9_300);
        }
        assert_eq!(m.tracked(), MAX_MEMBERS);
        m.record_heartbeat(&beat("real", 0, 10_300), 10_300);
        assert!(m.members_for_cycle(11).contains(&"real".to_owned()));
        // The invented ones fall silent and are pruned; room for newcomers again.
        m.prune(20_000);
        m.record_heartbeat(&beat("newcomer", 0, 20_000), 20_000);
        assert_eq!(m.live_members(20_000), ["newcomer"]);
    }

    #[test]
    fn mismatched_intervals_are_forgotten_with_their_members() {
        let mut m = membership();
        for n in 0..100 {
            m.record_heartbeat(
                &Heartbeat {
                    evaluation_interval_ms: 2 * SECOND,
                    ..beat(&format!("other-{n}"), 0, 9_300)
                },
                9_300,
            );
        }
        assert_eq!(m.mismatched.len(), 100);
        m.prune(20_000);
        assert!(m.mismatched.is_empty());
    }
}
