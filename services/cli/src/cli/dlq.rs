//! `tidings meter dlq list|replay`: the collector's dead-letter queues from the shell.
//!
//! `list` prints one JSON line per dead-lettered message (its queue, the reason the collector
//! wrote beside a refused sample, and a summary of the samples it carries), oldest first, and
//! leaves every message where it was. `replay` moves messages back to the queue they came
//! from, each acknowledged only once the broker confirmed its copy; a message refused again on
//! the way comes back to the dead-letter queue with a new note and is not replayed twice in one
//! run (it is known by its content, the note left aside). Messages that are not readable notifications are left in place (the collector
//! would only dead-letter them again).
//!
//! Both read at most `--limit` messages and stop when a queue stays empty for `--idle`
//! seconds. The queues are the collector's (see
//! [`dead_letter`](tidings_metering::collector::dead_letter)): Ceilometer's two by default,
//! a pool's with `--pool`, any with `--queue`. Contexts are never printed.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use super::exit;
use serde_json::{json, Map, Value};
use tidings::codec::{Codec, Notification};
use tidings::transport::{
    ConsumeOptions, Delivery, Destination, Inbox, OutgoingMessage, Subscription,
};
use tidings::Transport;
use tidings_metering::collector::dead_letter::{
    bounded_reason, dead_letter_queues, origin_of, DeadLetterNote, NOTE_KEY,
};

/// The most messages one run reads (the default bound of a dead-letter queue).
pub const MAX_LIMIT: usize = 10_000;
/// Samples summarised per message in `list`.
const SAMPLES_SHOWN: usize = 10;
/// Longest string shown for a sample's field.
const FIELD_SHOWN: usize = 256;

/// Arguments of `tidings meter dlq`.
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(Debug, clap::Subcommand)]
enum DlqAction {
    /// Print dead-lettered samples as JSON lines (queue, reason, samples); they stay queued.
    List(DlqOptions),
    /// Move dead-lettered samples back to the queue they came from, for the collector to
    /// store once the cause is fixed.
    Replay(DlqOptions),
}

/// Where the dead-letter queues are and how much to read.
#[derive(Debug, clap::Args)]
struct DlqOptions {
    /// Transport URL (rabbit://user:pass@host:5672/vhost).
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: String,
    /// The collectors' listener pool: its dead-letter queue `<pool>.dlq` (default:
    /// `notifications.sample.dlq` and `metering.sample.dlq`).
    #[arg(long)]
    pool: Option<String>,
    /// A dead-letter queue by name, `<queue>.dlq` (repeatable; instead of --pool).
    #[arg(long = "queue", value_name = "NAME")]
    queues: Vec<String>,
    /// Most messages read in all (list: default 100; replay: default and most 10000).
    #[arg(long)]
    limit: Option<usize>,
    /// Seconds a queue stays empty before it counts as drained.
    #[arg(long, default_value_t = 1.0)]
    idle: f64,
}

impl DlqOptions {
    fn queues(&self) -> Result<Vec<String>, String> {
        if self.queues.is_empty() {
            return Ok(dead_letter_queues(self.pool.as_deref()));
        }
        for queue in &self.queues {
            if origin_of(queue).is_none() {
                return Err(format!(
                    "--queue {queue:?} is not a dead-letter queue (its name ends in .dlq)"
                ));
            }
        }
        Ok(self.queues.clone())
    }

    fn idle(&self) -> Result<Duration, String> {
        Duration::try_from_secs_f64(self.idle)
            .ok()
            .filter(|idle| !idle.is_zero() && *idle <= Duration::from_secs(3600))
            .ok_or_else(|| {
                format!(
                    "--idle {} is not a number of seconds from 0 to 3600",
                    self.idle
                )
            })
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(exit::CANNOT_RUN)
}

/// Runs `tidings meter dlq …`.
pub async fn run_dlq(args: DlqArgs) -> ExitCode {
    let (options, replay) = match args.action {
        DlqAction::List(options) => (options, false),
        DlqAction::Replay(options) => (options, true),
    };
    let default_limit = if replay { MAX_LIMIT } else { 100 };
    let limit = options.limit.unwrap_or(default_limit).min(MAX_LIMIT);
    let (queues, idle) = match (options.queues(), options.idle()) {
        (Ok(queues), Ok(idle)) => (queues, idle),
        (Err(error), _) | (_, Err(error)) => return fail(error),
    };
    let transport = match Transport::connect(&options.url).await {
        Ok(transport) => transport,
        Err(error) => return fail(format!("cannot open the transport: {error}")),
    };
    // Every delivery read stays held (unacknowledged) until the end, so that none is handed to
    // us twice, and every inbox open; closing the transport gives back the ones not replayed,
    // in their order.
    let mut held: Vec<Delivery> = Vec::new();
    let mut inboxes: Vec<Inbox> = Vec::new();
    let mut outcome = Ok(());
    let mut replayed = BTreeSet::new();
    for queue in &queues {
        let left = limit.saturating_sub(held.len());
        if left == 0 {
            break;
        }
        let result = if replay {
            let mut reading = Reading {
                held: &mut held,
                inboxes: &mut inboxes,
            };
            replay_queue(&transport, queue, left, idle, &mut replayed, &mut reading).await
        } else {
            let mut reading = Reading {
                held: &mut held,
                inboxes: &mut inboxes,
            };
            list_queue(&transport, queue, left, idle, &mut reading).await
        };
        if let Err(error) = result {
            outcome = Err(error);
            break;
        }
    }
    let read = held.len();
    transport.close().await;
    drop(inboxes);
    while let Some(delivery) = held.pop() {
        drop(delivery);
    }
    if read >= limit {
        eprintln!("stopped at the limit of {limit} messages; more may remain");
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error),
    }
}

/// What a run keeps until its end: the deliveries it did not settle and the inboxes they came
/// through (closed only with the transport, so that the broker gives the deliveries back at
/// once and in order).
struct Reading<'a> {
    held: &'a mut Vec<Delivery>,
    inboxes: &'a mut Vec<Inbox>,
}

/// Takes deliveries from `queue` until `limit` or `idle`, calling `each` with each one.
async fn drain(
    transport: &Transport,
    queue: &str,
    limit: usize,
    idle: Duration,
    inboxes: &mut Vec<Inbox>,
    mut each: impl AsyncFnMut(Delivery) -> Result<(), String>,
) -> Result<usize, String> {
    let prefetch = u16::try_from(limit.max(1)).unwrap_or(u16::MAX);
    let subscription = Subscription::Queue {
        name: queue.to_owned(),
    };
    let mut inbox = transport
        .driver()
        .subscribe(&subscription, ConsumeOptions { prefetch })
        .await
        .map_err(|e| format!("cannot read {queue}: {e}"))?;
    let mut taken = 0;
    let ended = loop {
        if taken >= limit {
            break Ok(taken);
        }
        match tokio::time::timeout(idle, inbox.recv()).await {
            Ok(Some(delivery)) => {
                taken += 1;
                if let Err(error) = each(delivery).await {
                    break Err(error);
                }
            }
            Ok(None) => break Err(format!("the transport closed while reading {queue}")),
            Err(_) => break Ok(taken),
        }
    };
    inboxes.push(inbox);
    ended
}

async fn list_queue(
    transport: &Transport,
    queue: &str,
    limit: usize,
    idle: Duration,
    reading: &mut Reading<'_>,
) -> Result<(), String> {
    let held = &mut *reading.held;
    drain(
        transport,
        queue,
        limit,
        idle,
        reading.inboxes,
        async |delivery: Delivery| {
            println!("{}", listing(&delivery));
            held.push(delivery);
            Ok(())
        },
    )
    .await?;
    Ok(())
}

async fn replay_queue(
    transport: &Transport,
    queue: &str,
    limit: usize,
    idle: Duration,
    replayed_keys: &mut BTreeSet<u64>,
    reading: &mut Reading<'_>,
) -> Result<(), String> {
    let held = &mut *reading.held;
    let origin = origin_of(queue)
        .ok_or_else(|| format!("{queue} is not a dead-letter queue"))?
        .to_owned();
    let (mut replayed, mut unreadable, mut refused_again) = (0u64, 0u64, 0u64);
    drain(transport, queue, limit, idle, reading.inboxes, async |delivery: Delivery| {
        let Some((codec, notification)) = decode(&delivery) else {
            unreadable += 1;
            held.push(delivery);
            return Ok(());
        };
        let key = content_key(&notification.payload);
        if replayed_keys.contains(&key) {
            // Replayed in this run and dead-lettered again: the cause is not fixed yet.
            refused_again += 1;
            held.push(delivery);
            return Ok(());
        }
        let message = OutgoingMessage::new(delivery.body.clone(), codec.content_type());
        let destination = Destination::Queue {
            name: origin.clone(),
        };
        transport
            .publish(&destination, message)
            .await
            .map_err(|e| format!("cannot republish to {origin}: {e}"))?;
        if let Err(error) = delivery.ack().await {
            // The copy is in its queue; the original comes back here and a later replay of it
            // is a duplicate the store skips.
            eprintln!("warning: replayed a message from {queue} but could not acknowledge it: {error}");
        }
        replayed_keys.insert(key);
        replayed += 1;
        Ok(())
    })
    .await?;
    println!(
        "{}",
        json!({
            "queue": queue,
            "replayed_to": origin,
            "replayed": replayed,
            "left_unreadable": unreadable,
            "left_refused_again": refused_again,
        })
    );
    Ok(())
}

fn decode(delivery: &Delivery) -> Option<(Codec, Notification)> {
    let codec = Codec::from_content_type(&delivery.content_type).ok()?;
    let notification = codec.decode_notification(&delivery.body).ok()?;
    Some((codec, notification))
}

/// What a dead letter holds, without the note beside it: the same when a replayed message is
/// dead-lettered again with a fresh note.
fn content_key(payload: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match payload {
        Value::Object(map) => {
            for (key, value) in map.iter().filter(|(key, _)| key.as_str() != NOTE_KEY) {
                key.hash(&mut hasher);
                value.to_string().hash(&mut hasher);
            }
        }
        other => other.to_string().hash(&mut hasher),
    }
    hasher.finish()
}

fn samples_of(payload: &Value) -> &[Value] {
    match payload {
        Value::Array(samples) => samples,
        Value::Object(map) => match map.get("samples") {
            Some(Value::Array(samples)) => samples,
            _ => &[],
        },
        _ => &[],
    }
}

fn shown(text: &str) -> String {
    if text.len() <= FIELD_SHOWN {
        return text.to_owned();
    }
    let mut end = FIELD_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One line of `list`: never the context, never a whole sample.
fn listing(delivery: &Delivery) -> Value {
    let mut line = Map::new();
    line.insert("queue".into(), json!(delivery.queue));
    line.insert("requeues".into(), json!(delivery.requeues));
    line.insert("bytes".into(), json!(delivery.body.len()));
    let Some((_, notification)) = decode(delivery) else {
        line.insert("reason".into(), Value::Null);
        line.insert("readable".into(), json!(false));
        return Value::Object(line);
    };
    let note = notification
        .payload
        .get(NOTE_KEY)
        .and_then(|note| serde_json::from_value::<DeadLetterNote>(note.clone()).ok());
    match &note {
        Some(note) => {
            line.insert("reason".into(), json!(bounded_reason(&note.reason)));
            line.insert("dead_lettered_at".into(), json!(shown(&note.at)));
            line.insert("from_queue".into(), json!(shown(&note.queue)));
        }
        // Dead-lettered by the listener itself: requeued too often (see `requeues`).
        None => {
            line.insert("reason".into(), Value::Null);
        }
    }
    line.insert("event_type".into(), json!(shown(&notification.event_type)));
    line.insert(
        "publisher_id".into(),
        json!(shown(&notification.publisher_id)),
    );
    let samples = samples_of(&notification.payload);
    let field = |sample: &Value, key: &str| {
        sample
            .get(key)
            .and_then(Value::as_str)
            .map_or(Value::Null, |text| json!(shown(text)))
    };
    let summary: Vec<Value> = samples
        .iter()
        .take(SAMPLES_SHOWN)
        .map(|sample| {
            json!({
                "message_id": field(sample, "message_id"),
                "counter_name": field(sample, "counter_name"),
                "resource_id": field(sample, "resource_id"),
                "project_id": field(sample, "project_id"),
                "timestamp": field(sample, "timestamp"),
            })
        })
        .collect();
    line.insert("samples_total".into(), json!(samples.len()));
    line.insert("samples".into(), Value::Array(summary));
    Value::Object(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut() {
        let long = "x".repeat(FIELD_SHOWN * 4);
        assert!(shown(&long).len() <= FIELD_SHOWN + '…'.len_utf8());
        assert_eq!(shown("vm-1"), "vm-1");
    }

    #[test]
    fn samples_are_found_in_both_payload_forms() {
        let polling = json!({"samples": [{"message_id": "a"}], NOTE_KEY: {}});
        assert_eq!(samples_of(&polling).len(), 1);
        let metering = json!([{"message_id": "b"}, {"message_id": "c"}]);
        assert_eq!(samples_of(&metering).len(), 2);
        assert!(samples_of(&json!("nonsense")).is_empty());
    }

    #[test]
    fn a_dead_letter_refused_again_is_known_by_its_content_not_its_note() {
        let first = json!({"samples": [{"message_id": "a"}], NOTE_KEY: {"at": "1"}});
        let again = json!({"samples": [{"message_id": "a"}], NOTE_KEY: {"at": "2"}});
        let other = json!({"samples": [{"message_id": "b"}], NOTE_KEY: {"at": "1"}});
        assert_eq!(content_key(&first), content_key(&again));
        assert_ne!(content_key(&first), content_key(&other));
    }
}
