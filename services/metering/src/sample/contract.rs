//! **Contract**: how samples travel on the bus, Ceilometer's two paths, so that its Python
//! agents and ours share them. Both are notifications with priority `sample` on exchange
//! [`EXCHANGE`]:
//! - the polling agent's: event type [`POLLING_EVENT_TYPE`], publisher id
//!   [`POLLING_PUBLISHER_ID`], payload `{"samples": [<sample>]}`, topic [`POLLING_TOPIC`]
//!   (routing key `notifications.sample`);
//! - the `notifier://` publisher's: event type [`METERING_EVENT_TYPE`], payload
//!   `[<sample>]`, topic [`METERING_TOPIC`] (routing key `metering.sample`).
//!
//! The polling agent publishes on the first; the collector consumes both. Both import these
//! names from here, so that no name is spelled twice.

/// Ceilometer's exchange for samples (and the collector's RPC).
pub const EXCHANGE: &str = "ceilometer";
/// The polling agent's topic (`notifications.sample`).
pub const POLLING_TOPIC: &str = "notifications";
/// Event type of the polling agent's notifications.
pub const POLLING_EVENT_TYPE: &str = "telemetry.polling";
/// Publisher id of the polling agent, as Ceilometer's uses.
pub const POLLING_PUBLISHER_ID: &str = "ceilometer.polling";
/// The notifier publisher's topic (`metering.sample`).
pub const METERING_TOPIC: &str = "metering";
/// Event type of the notifier publisher's notifications.
pub const METERING_EVENT_TYPE: &str = "metering";
