//! **Contract**: the evaluator group on the bus, [`EvaluatorGroupApi`] with its names in
//! [`EXCHANGE`], [`TOPIC`], [`HEARTBEAT`] and [`LEAVE`]: each evaluator serves the topic `alarm_evaluator` of
//! exchange `aodh` with an RPC server named by its member id, and announces itself to every
//! other by fanout casts there: `heartbeat(member_id, joined_at_ms, sent_at_ms,
//! evaluation_interval_ms)` on a timer, `leave(member_id, last_cycle, sent_at_ms)` on a clean
//! stop. Its own casts come back to it too, so every evaluator records the same heartbeats in
//! its [`Membership`], which bounds their stamps by its own clock (a forged or skewed stamp
//! cannot outlive an honest one; see `membership`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tidings::rpc::{Contract, ContractEndpoint, Method, RpcError, RpcServer, ServiceClient, State};
use tidings::transport::TransportError;
use tidings::{Context, RemoteError, Target, Transport, Version};

use super::config::Clock;
use super::membership::{Heartbeat, Leave, Membership};

/// Exchange of the evaluator group.
pub const EXCHANGE: &str = "aodh";
/// Topic of the evaluator group (Aodh's partitioning group name).
pub const TOPIC: &str = "alarm_evaluator";
/// The evaluator group's RPC API (no namespace, version 1.0).
#[derive(Debug)]
pub struct EvaluatorGroupApi;

impl Contract for EvaluatorGroupApi {
    const NAMESPACE: Option<&'static str> = None;
    const VERSION: Version = Version::new(1, 0);
}

/// The fanout cast each member sends on a timer.
pub const HEARTBEAT: Method<EvaluatorGroupApi, Heartbeat, ()> = Method::new("heartbeat");
/// The fanout cast a member sends when it stops cleanly.
pub const LEAVE: Method<EvaluatorGroupApi, Leave, ()> = Method::new("leave");

/// How long a stopping group waits for heartbeats being handled.
const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// Membership shared between the RPC handlers and the evaluation cycles.
pub(crate) type SharedMembership = Arc<Mutex<Membership>>;

/// Runs `f` on the membership; a poisoned lock is still usable (the data is plain records).
pub(crate) fn with_membership<T>(
    membership: &SharedMembership,
    f: impl FnOnce(&mut Membership) -> T,
) -> T {
    f(&mut membership.lock().unwrap_or_else(PoisonError::into_inner))
}

/// This evaluator's place in the group.
#[derive(Debug)]
pub(crate) struct Group {
    member_id: String,
    joined_at_ms: i64,
    interval_ms: i64,
    clock: Clock,
    /// Taken out when the group is left or closed.
    server: Mutex<Option<RpcServer>>,
    group: ServiceClient<EvaluatorGroupApi>,
}

/// What the group's handlers share: the membership they record into, and the clock that
/// bounds the stamps they are told.
#[derive(Clone, Debug)]
struct Hearing {
    membership: SharedMembership,
    clock: Clock,
}

async fn heartbeat(
    State(hearing): State<Hearing>,
    _ctx: Context,
    beat: Heartbeat,
) -> Result<(), RemoteError> {
    let now_ms = hearing.clock.now_ms();
    with_membership(&hearing.membership, |m| m.record_heartbeat(&beat, now_ms));
    Ok(())
}

async fn leave(
    State(hearing): State<Hearing>,
    _ctx: Context,
    leave: Leave,
) -> Result<(), RemoteError> {
    tracing::info!(member = %leave.member_id, last_cycle = leave.last_cycle, "alarm evaluator left");
    let now_ms = hearing.clock.now_ms();
    with_membership(&hearing.membership, |m| m.record_leave(&leave, now_ms));
    Ok(())
}

impl Group {
    /// Starts listening for the group's heartbeats, recording them in `membership`.
    pub(crate) async fn join(
        transport: &Transport,
        member_id: String,
        interval: Duration,
        clock: Clock,
        membership: SharedMembership,
    ) -> Result<Self, TransportError> {
        let hearing = Hearing { membership, clock };
        let endpoint = ContractEndpoint::<EvaluatorGroupApi, _>::with_state(hearing)
            .handle(HEARTBEAT, heartbeat)
            .handle(LEAVE, leave);
        let target = Target::topic(TOPIC).with_exchange(EXCHANGE);
        let server = RpcServer::builder(transport, target.clone().with_server(member_id.clone()))
            .endpoint(endpoint)
            .start()
            .await?;
        // Stamped once the queue exists: from here on this member hears every heartbeat.
        let joined_at_ms = clock.now_ms();
        Ok(Self {
            member_id,
            joined_at_ms,
            interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            clock,
            server: Mutex::new(Some(server)),
            group: ServiceClient::new(transport, target),
        })
    }

    /// This evaluator's member id.
    pub(crate) fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Announces this member to the group.
    pub(crate) async fn heartbeat(&self) -> Result<(), RpcError> {
        let beat = Heartbeat {
            member_id: self.member_id.clone(),
            joined_at_ms: self.joined_at_ms,
            sent_at_ms: self.clock.now_ms(),
            evaluation_interval_ms: self.interval_ms,
        };
        self.group.fanout(&Context::new(), HEARTBEAT, beat).await
    }

    /// Tells the group this member evaluates no cycle after `last_cycle`, then stops listening.
    pub(crate) async fn leave(&self, last_cycle: u64) {
        let leave = Leave {
            member_id: self.member_id.clone(),
            last_cycle,
            sent_at_ms: self.clock.now_ms(),
        };
        if let Err(error) = self.group.fanout(&Context::new(), LEAVE, leave).await {
            tracing::warn!(%error, member = %self.member_id, "could not announce leaving; the group will notice the silence");
        }
        self.close().await;
    }

    /// Stops listening without a word, as a crashed evaluator would.
    pub(crate) async fn close(&self) {
        let server = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(server) = server {
            server.stop(STOP_DEADLINE).await;
        }
    }
}
