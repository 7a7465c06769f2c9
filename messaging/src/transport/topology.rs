//! Names of exchanges and queues, as oslo.messaging's rabbit driver makes them. Every driver uses
//! these so that the memory transport and the AMQP one agree on what exists.

use uuid::Uuid;

/// The default control exchange of oslo.messaging.
pub const DEFAULT_CONTROL_EXCHANGE: &str = "openstack";

/// `<topic>_fanout`: the fanout exchange of a topic.
pub fn fanout_exchange(topic: &str) -> String {
    format!("{topic}_fanout")
}

/// `<topic>_fanout_<32 hex>`: one server's fanout queue.
pub fn fanout_queue(topic: &str) -> String {
    format!("{topic}_fanout_{}", Uuid::new_v4().simple())
}

/// `<topic>.<server>`: a server's own queue and its routing key.
pub fn server_queue(topic: &str, server: &str) -> String {
    format!("{topic}.{server}")
}

/// `reply_<32 hex>`: a client process's reply queue.
pub fn reply_queue() -> String {
    format!("reply_{}", Uuid::new_v4().simple())
}

/// `<topic>.<priority>`: a notification queue and its routing key.
pub fn notification_queue(topic: &str, priority: &str) -> String {
    format!("{topic}.{priority}")
}

/// A fresh 32-hex identifier (`_msg_id`, `_unique_id`): a version-4 UUID without dashes, as
/// oslo's `uuid.uuid4().hex`.
///
/// The random bits come from the thread's `fastrand` generator rather than the operating
/// system: every message carries at least one of these, and `Uuid::new_v4` made a `getrandom`
/// system call for each. They identify messages (duplicates, replies); they are not secrets,
/// which is what the OS generator is for.
pub fn new_id() -> String {
    let mut text = [0u8; uuid::fmt::Simple::LENGTH];
    new_uuid().simple().encode_lower(&mut text).to_owned()
}

/// A fresh version-4 UUID from the thread's `fastrand` generator (see [`new_id`]).
pub(crate) fn new_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_version_4_hex() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 32);
            assert!(id
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            let parsed = Uuid::parse_str(id).map(|u| u.get_version_num());
            assert_eq!(parsed.ok(), Some(4), "{id}");
        }
    }
}
