//! Acknowledgements of one consumer channel, sent in batches.
//!
//! Acknowledging every delivery with its own `basic.ack` frame cost the broker, which shares the
//! machine's CPUs, about as much again as the frame cost us: on a 2-core machine it was a fifth
//! of the broker's work per message. Here an acknowledgement is recorded, the consumer task is
//! woken, and it sends everything recorded since its last flush: as one `basic.ack` with
//! `multiple` for the tags it may cover, one frame each for the rest. Under load many
//! acknowledgements share a frame; a lone one goes out at once, one task wake later — except on
//! a consumer that holds them for company ([`AckPolicy`]): the reply queue, whose router settles
//! every reply as it arrives, sends them a batch at a time, well inside its prefetch; servers
//! and listeners let them linger a millisecond at most.
//!
//! `multiple` up to tag T acknowledges *every* unsettled delivery up to T on the channel, so T
//! is only ever below both the lowest delivery still unsettled here and the lowest tag not yet
//! received (the channel's consumers are merged, so deliveries may arrive here out of order).
//! Tags are the channel's delivery sequence (1, 2, 3, …): the channel only consumes. Other
//! settlements (nack, reject) are sent at once and only then marked settled, so a batch never
//! covers a delivery whose own frame is not out yet.
//!
//! When the consumer task stops flushing (its inbox closed, or the connection went), it sends
//! what is recorded and from then on acknowledgements go straight to the channel.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use lapin::options::BasicAckOptions;
use lapin::Channel;
use tokio::sync::Notify;

use crate::transport::TransportError;

/// When a consumer task sends the acknowledgements recorded since its last flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AckPolicy {
    /// Sent at once when this many are recorded (at least one).
    pub(super) hold: usize,
    /// Fewer are sent this long after the first of them was recorded; `None`: they wait for
    /// company however long it takes.
    pub(super) linger: Option<Duration>,
}

impl AckPolicy {
    /// Up to a quarter of `prefetch` acknowledgements in one frame, none kept back longer than
    /// [`ACK_LINGER`]: well inside the prefetch, so the broker never waits for them.
    pub(super) fn lingering(prefetch: u16) -> Self {
        AckPolicy {
            hold: usize::from(prefetch / 4).max(1),
            linger: Some(ACK_LINGER),
        }
    }

    /// Whether `recorded` acknowledgements are to be sent now rather than at the linger's end.
    pub(super) fn is_due(&self, recorded: usize) -> bool {
        recorded >= self.hold || self.linger.is_none()
    }
}

/// How long an acknowledgement may wait for company (see [`AckPolicy::lingering`]). A cast
/// server taking 15 000 requests a second sent a frame for every three of them, and the
/// broker, on the same CPUs, spent its share of each on them; a millisecond gathers tens.
pub(super) const ACK_LINGER: Duration = Duration::from_millis(1);

/// The acknowledgements of one consumer channel.
#[derive(Debug)]
pub(super) struct AckBatcher {
    channel: Channel,
    state: Mutex<State>,
    /// Woken when the first acknowledgement since the last flush is recorded (with a linger),
    /// and when the `hold`-th is.
    pending: Notify,
    policy: AckPolicy,
}

#[derive(Debug)]
struct State {
    /// Every tag below this has been received.
    received_below: u64,
    /// Tags received at or above `received_below`.
    received_ahead: BTreeSet<u64>,
    /// Received and not settled yet.
    unsettled: BTreeSet<u64>,
    /// Acknowledged, not sent yet.
    acked: Vec<u64>,
    /// Whether the consumer task still flushes; when not, acknowledgements go out at once.
    flushing: bool,
}

impl AckBatcher {
    /// Batches `channel`'s acknowledgements as `policy` says. With a `hold` above one and no
    /// linger, acknowledgements wait for company: only for a consumer whose deliveries are all
    /// settled promptly and whose prefetch is well above `hold`, or the broker would stop
    /// delivering for want of them.
    pub(super) fn new(channel: Channel, policy: AckPolicy) -> Self {
        Self {
            channel,
            state: Mutex::new(State {
                received_below: 1,
                received_ahead: BTreeSet::new(),
                unsettled: BTreeSet::new(),
                acked: Vec::new(),
                flushing: true,
            }),
            pending: Notify::new(),
            policy: AckPolicy {
                hold: policy.hold.max(1),
                ..policy
            },
        }
    }

    /// When the recorded acknowledgements go out.
    pub(super) fn policy(&self) -> AckPolicy {
        self.policy
    }

    /// Acknowledgements recorded and not sent yet.
    pub(super) fn recorded(&self) -> usize {
        self.state().acked.len()
    }

    /// The channel the deliveries came on.
    pub(super) fn channel(&self) -> &Channel {
        &self.channel
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a delivery handed to the application (called by the consumer task).
    pub(super) fn received(&self, tag: u64) {
        let mut state = self.state();
        state.unsettled.insert(tag);
        if tag == state.received_below {
            state.received_below += 1;
            loop {
                let next = state.received_below;
                if !state.received_ahead.remove(&next) {
                    break;
                }
                state.received_below += 1;
            }
        } else if tag > state.received_below {
            state.received_ahead.insert(tag);
        }
    }

    /// Acknowledges `tag`: recorded for the next flush, or sent at once when nobody flushes.
    pub(super) fn ack(&self, tag: u64) -> Result<(), TransportError> {
        let mut state = self.state();
        state.unsettled.remove(&tag);
        if !state.flushing {
            drop(state);
            return send_ack(&self.channel, tag, false);
        }
        state.acked.push(tag);
        let recorded = state.acked.len();
        if recorded == self.policy.hold || (recorded == 1 && self.policy.linger.is_some()) {
            self.pending.notify_one();
        }
        Ok(())
    }

    /// Marks `tag` settled once its own frame (nack, reject) has been queued.
    pub(super) fn settled(&self, tag: u64) {
        self.state().unsettled.remove(&tag);
    }

    /// Resolves when acknowledgements wait to be flushed. Cancellation safe.
    pub(super) async fn wait_pending(&self) {
        self.pending.notified().await;
    }

    /// Sends every recorded acknowledgement.
    pub(super) fn flush(&self) {
        let (batch, singles) = {
            let mut state = self.state();
            if state.acked.is_empty() {
                return;
            }
            let lowest_unsettled = state.unsettled.first().copied().unwrap_or(u64::MAX);
            let bound = lowest_unsettled.min(state.received_below);
            let mut batch = None;
            let mut singles = Vec::new();
            for tag in state.acked.drain(..) {
                if tag < bound {
                    batch = batch.max(Some(tag));
                } else {
                    singles.push(tag);
                }
            }
            (batch, singles)
        };
        // A failure here means the channel is gone: the broker delivers these again, as after
        // any failed acknowledgement, and the consumer task notices the loss on its stream.
        if let Some(tag) = batch {
            let _ = send_ack(&self.channel, tag, true);
        }
        for tag in singles {
            let _ = send_ack(&self.channel, tag, false);
        }
    }

    /// Stops batching: sends what is recorded; later acknowledgements go out at once.
    pub(super) fn stop(&self) {
        self.state().flushing = false;
        self.flush();
    }
}

/// Queues a `basic.ack` frame on `channel` and returns: the I/O loop writes it with the next
/// frames. lapin's `basic_ack` queues the frame when first polled and then only waits for the
/// write; waiting bought nothing (a failed write means the connection is gone and the broker
/// delivers the message again, as after any failed ack) and cost each acknowledgement a round
/// trip to the I/O loop's thread. An ack refused at once (a closed channel) is an error.
pub(super) fn send_ack(channel: &Channel, tag: u64, multiple: bool) -> Result<(), TransportError> {
    match channel
        .basic_ack(tag, BasicAckOptions { multiple })
        .now_or_never()
    {
        Some(result) => result.map_err(|error| {
            TransportError::ConnectionLost(format!("could not settle a delivery: {error}"))
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lingering_holds_a_quarter_of_the_prefetch_and_never_less_than_one() {
        assert_eq!(AckPolicy::lingering(64).hold, 16);
        assert_eq!(AckPolicy::lingering(3).hold, 1);
        assert_eq!(AckPolicy::lingering(1).hold, 1);
        assert_eq!(AckPolicy::lingering(0).hold, 1);
        assert_eq!(AckPolicy::lingering(u16::MAX).hold, 16_383);
        let policy = AckPolicy::lingering(64);
        assert!(!policy.is_due(15));
        assert!(policy.is_due(16));
        let no_linger = AckPolicy {
            hold: 16,
            linger: None,
        };
        assert!(
            no_linger.is_due(1),
            "without a linger, what is recorded goes when woken"
        );
    }
}
