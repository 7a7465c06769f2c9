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

/// A fresh 32-hex identifier (`_msg_id`, `_unique_id`).
pub fn new_id() -> String {
    Uuid::new_v4().simple().to_string()
}
