//! Finding the jobs servers of a topic: one `announce` call sent by fanout, answered by every
//! tidings jobs server listening, collected for a bounded time.
//!
//! oslo.messaging has no fanout *call*, but nothing on the wire forbids one: a request with a
//! `_msg_id` and a `_reply_q` published on `<topic>_fanout` reaches every server's fanout queue,
//! and each server replies to the reply queue as it would to any call. The RPC client routes
//! one reply per call, so discovery opens a reply queue of its own and reads every reply that
//! carries its `_msg_id` until the window closes. Python servers get the request too and answer
//! `UnsupportedVersion` (they have no `tidings.jobs` namespace); those answers are ignored —
//! AMQP cannot list a topic's queues, so a Python server takes part by being named.
//!
//! The request expires with the window, so a server that starts later does not answer a
//! question nobody listens to any more.

use std::collections::BTreeSet;
use std::time::Duration;

use tidings::codec::{CallInfo, Codec, RpcRequest};
use tidings::rpc::Contract;
use tidings::transport::{topology, Destination, OutgoingMessage};
use tidings::{Context, Transport};

use crate::contract::{Announcement, JobsApi, ANNOUNCE};
use crate::error::JobError;

/// The most servers one discovery collects (further answers are ignored).
pub const MAX_DISCOVERED: usize = 4096;

/// Asks every jobs server of `topic` to announce itself and returns their names, sorted,
/// after `window` (or once [`MAX_DISCOVERED`] answered).
pub async fn discover(
    transport: &Transport,
    topic: &str,
    window: Duration,
) -> Result<Vec<String>, JobError> {
    let announcements = announcements(transport, topic, window).await?;
    let names: BTreeSet<String> = announcements
        .into_iter()
        .filter(|a| !a.server.is_empty())
        .map(|a| a.server)
        .collect();
    Ok(names.into_iter().collect())
}

/// Like [`discover`], with each server's whole announcement.
pub async fn announcements(
    transport: &Transport,
    topic: &str,
    window: Duration,
) -> Result<Vec<Announcement>, JobError> {
    let deadline = tokio::time::Instant::now() + window;
    let (reply_q, mut inbox) = transport.driver().open_reply_queue().await?;
    let msg_id = topology::new_id();
    let request = RpcRequest {
        method: ANNOUNCE.name().to_owned(),
        args: serde_json::Map::new(),
        namespace: JobsApi::NAMESPACE.map(str::to_owned),
        version: Some(JobsApi::VERSION.to_string()),
        call: Some(CallInfo {
            msg_id: msg_id.clone(),
            reply_q,
            timeout: None,
        }),
        unique_id: topology::new_id(),
        context: Context::new(),
    };
    let codec = transport.codec();
    let body = codec
        .encode_request(&request)
        .map_err(|e| JobError::InvalidSpec(format!("cannot encode announce: {e}")))?;
    let mut message = OutgoingMessage::new(body, codec.content_type());
    message.expiration = Some(window.max(Duration::from_millis(1)));
    let destination = Destination::Fanout {
        topic: topic.to_owned(),
    };
    let published = tokio::time::timeout_at(deadline, transport.publish(&destination, message))
        .await
        .unwrap_or(Ok(()));
    if let Err(error) = published {
        inbox.close().await;
        return Err(error.into());
    }
    let mut found = Vec::new();
    while found.len() < MAX_DISCOVERED {
        let delivery = tokio::select! {
            delivery = inbox.recv() => delivery,
            () = tokio::time::sleep_until(deadline) => break,
        };
        let Some(delivery) = delivery else { break };
        let (body, content_type, acker) = delivery.into_parts();
        if let Err(error) = acker.ack().await {
            tracing::debug!(%error, "could not acknowledge an announcement");
        }
        let Ok(codec) = Codec::from_content_type(&content_type) else {
            continue;
        };
        let reply = match codec.decode_reply(&body) {
            Ok(reply) if reply.msg_id == msg_id && reply.ending => reply,
            _ => continue,
        };
        if reply.failure.is_some() {
            // A server without the jobs namespace (a Python peer): not a jobs server.
            continue;
        }
        if let Ok(announcement) = serde_json::from_value::<Announcement>(reply.result) {
            found.push(announcement);
        }
    }
    inbox.close().await;
    tracing::debug!(topic, servers = found.len(), "discovery window closed");
    Ok(found)
}
