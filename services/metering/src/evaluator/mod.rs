//! The alarm evaluator, modelled on Aodh's (`aodh-evaluator`): every `evaluation_interval` it
//! evaluates threshold alarms (those inside their time constraints, see [`constraints`]) against
//! the store's statistics, records each state transition in
//! the alarm's history and hands alarms whose state changed (or repeats) to the notifier as
//! `alarm.update` notifications.
//!
//! Evaluators run partitioned: each announces itself by fanout heartbeats on the bus, every
//! one builds the same membership per cycle and the same consistent hash ring, and evaluates
//! only the alarms the ring gives it. Cycles are numbered and aligned on multiples of the
//! evaluation interval on the wall clock, and the members of a cycle are decided only from
//! sender-stamped heartbeats that have settled, so evaluators that heard the same heartbeats
//! agree on who owns what.
//!
//! **The guarantee, as implemented.** With the evaluators' clocks in agreement (NTP) and
//! heartbeats delivered within half a heartbeat interval:
//! - steady state (no member joining, leaving or dying): each enabled threshold alarm is
//!   evaluated exactly once per cycle;
//! - a member joins: it counts from the first cycle whose boundary is one member timeout
//!   after it started listening, for everyone at once: no alarm is evaluated twice or skipped;
//! - a member stops cleanly: it announces the last cycle it evaluated and the others take its
//!   alarms from the next one; if the announcement arrives after the others began that next
//!   cycle, its alarms are skipped in that one cycle, never evaluated twice;
//! - a member dies: its alarms are skipped until its heartbeats have been missing for the
//!   member timeout (three heartbeat intervals by default), then taken over at the next cycle;
//!   nothing is evaluated twice;
//! - outside those assumptions (heartbeats delayed past the settle time on one evaluator but
//!   not another, clocks apart by more than half a heartbeat interval, a member stalled longer
//!   than the timeout that then resumes) evaluators can disagree for a cycle, and an alarm can
//!   be evaluated twice or skipped in that cycle. Evaluation is idempotent per cycle (the same
//!   statistics give the same decision), so a double evaluation at worst repeats a
//!   notification.
//!
//! Modules: `threshold` (pure evaluation), `partition` (hash ring), `membership` (who counts
//! in which cycle), `group` (heartbeats on the bus), `handoff` (the `alarm.update` contract),
//! `cycle` (one cycle's I/O), `config` ([`EvaluatorConfig`]), `service` (the worker) and
//! `manifold` (the worker under the engine).

pub mod config;
pub mod constraints;
pub mod cycle;
pub mod group;
pub mod handoff;
mod manifold;
pub mod membership;
pub mod partition;
mod service;
pub mod threshold;

pub use config::{Clock, ConfigError, EvaluatorConfig};
pub use group::{EXCHANGE as GROUP_EXCHANGE, TOPIC as GROUP_TOPIC};
pub use handoff::{AlarmUpdate, Handoff};
pub use manifold::{manifold, EvaluatorInputs};
pub use partition::HashRing;
pub use service::{start, Evaluator, EvaluatorError, EvaluatorReport, EvaluatorStatus};
