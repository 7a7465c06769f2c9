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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Heartbeats kept per member, whatever the horizon says (a bound against a chatty sender).
const MAX_BEATS_PER_MEMBER: usize = 1024;

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
    members: BTreeMap<String, Record>,
    /// Members already warned about a different evaluation interval.
    mismatched: BTreeSet<String>,
}

impl Membership {
    /// Empty membership for cycles of `interval`, members judged dead `timeout` after their
    /// last heartbeat, and heartbeats settling for half of `heartbeat`.
    pub fn new(interval: Duration, heartbeat: Duration, timeout: Duration) -> Self {
        Self {
            interval_ms: millis(interval).max(1),
            timeout_ms: millis(timeout),
            settle_ms: millis(heartbeat) / 2,
            members: BTreeMap::new(),
            mismatched: BTreeSet::new(),
        }
    }

    /// The instant cycle `cycle` begins (ms since the Unix epoch).
    pub fn boundary_ms(&self, cycle: u64) -> i64 {
        i64::try_from(cycle)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.interval_ms)
    }

    /// Records a heartbeat. A heartbeat whose `joined_at` is later than the member's
    /// announced departure means it came back, and clears the departure.
    pub fn record_heartbeat(&mut self, heartbeat: &Heartbeat) {
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
        let record = self.members.entry(heartbeat.member_id.clone()).or_default();
        if record
            .left
            .as_ref()
            .is_some_and(|left| heartbeat.joined_at_ms > left.sent_at_ms)
        {
            record.left = None;
        }
        if record.beats.len() >= MAX_BEATS_PER_MEMBER {
            record.beats.pop_front();
        }
        record.beats.push_back(Beat {
            sent_at_ms: heartbeat.sent_at_ms,
            joined_at_ms: heartbeat.joined_at_ms,
        });
    }

    /// Records a departure.
    pub fn record_leave(&mut self, leave: &Leave) {
        self.members
            .entry(leave.member_id.clone())
            .or_default()
            .left = Some(leave.clone());
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
        m.record_heartbeat(&beat("a", 9_500, 9_600));
        assert!(
            m.members_for_cycle(10).is_empty(),
            "joined inside the window"
        );
        m.record_heartbeat(&beat("a", 9_500, 10_500));
        assert_eq!(m.members_for_cycle(11), ["a"]);
    }

    #[test]
    fn heartbeats_still_settling_are_left_out() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 9_900));
        assert!(m.members_for_cycle(10).is_empty());
        m.record_heartbeat(&beat("a", 0, 9_850));
        assert_eq!(m.members_for_cycle(10), ["a"]);
    }

    #[test]
    fn a_silent_member_drops_out_after_the_timeout() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 9_300));
        m.record_heartbeat(&beat("b", 0, 9_300));
        m.record_heartbeat(&beat("b", 0, 10_300));
        assert_eq!(m.members_for_cycle(10), ["a", "b"]);
        assert_eq!(m.members_for_cycle(11), ["b"]);
    }

    #[test]
    fn a_member_that_left_is_out_after_its_last_cycle_and_back_when_it_rejoins() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 9_500));
        m.record_heartbeat(&beat("a", 0, 10_500));
        m.record_leave(&Leave {
            member_id: "a".into(),
            last_cycle: 10,
            sent_at_ms: 10_600,
        });
        assert_eq!(m.members_for_cycle(10), ["a"]);
        assert!(m.members_for_cycle(11).is_empty());
        m.record_heartbeat(&beat("a", 20_000, 20_000));
        m.record_heartbeat(&beat("a", 20_000, 20_500));
        assert_eq!(m.members_for_cycle(21), ["a"]);
    }

    #[test]
    fn pruning_keeps_what_upcoming_cycles_need() {
        let mut m = membership();
        m.record_heartbeat(&beat("a", 0, 1_000));
        m.record_heartbeat(&beat("b", 0, 9_500));
        m.prune(10_000);
        assert_eq!(m.live_members(10_000), ["b"]);
        assert_eq!(m.members_for_cycle(10), ["b"]);
    }
}
