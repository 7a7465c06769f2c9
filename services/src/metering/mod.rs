//! The metering service, modelled on Ceilometer and Aodh so that their Python agents can share
//! the bus: a polling agent publishes samples, a collector stores them and serves statistics,
//! an alarm evaluator turns statistics into alarm states (partitioned across evaluators), an
//! alarm notifier runs alarm actions, and an HTTP API manages alarms. Each agent lives in its
//! own module with its manifold beside it; the binary only assembles them.

pub mod alarm_notifier;
pub mod api;
pub mod collector;
pub mod config;
pub mod evaluator;
pub mod model;
pub mod polling;
pub mod sample;
pub mod store;
pub mod transport;
