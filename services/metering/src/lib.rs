//! # tidings-metering
//!
//! The metering service, modelled on Ceilometer and Aodh so that their Python agents can share
//! the bus: a polling agent publishes samples, a collector stores them and serves statistics,
//! an alarm evaluator turns statistics into alarm states (partitioned across evaluators), an
//! alarm notifier runs alarm actions, and an HTTP API manages alarms.
//!
//! Each agent is a module with its worker, its manifold (`manifold.rs`) and its settings
//! (`config.rs`) side by side: [`polling`], [`notification`] (OpenStack's notifications to
//! samples, by Ceilometer's `meters.yaml`), [`collector`], [`evaluator`], [`alarm_notifier`],
//! [`api`], and the dependencies they share, [`transport`] and [`store`]. [`graph`] names the
//! manifolds and assembles each agent's graph; [`config`] resolves the settings from a file
//! and overrides. The bus contracts live in one module each: [`sample::contract`] (samples),
//! [`collector::rpc`] (statistics), [`evaluator::group`] (evaluator membership) and
//! [`evaluator::handoff`] (`alarm.update`).
//!
//! Who may use the API is [`api::auth`]'s; where alarm actions may send requests is
//! [`alarm_notifier::policy`]'s; what must never be shown is [`secrets`]'s.
//!
//! This crate owns the metering domain on top of [`tidings_runtime`]; it does not parse
//! command lines, install signal handlers or exit the process (the `tidings` binary does),
//! and it never changes the runtime or the messaging library it uses.

#![warn(missing_docs)]

pub mod alarm_changes;
pub mod alarm_notifier;
pub mod api;
pub mod collector;
pub mod config;
pub mod evaluator;
pub mod graph;
pub mod metrics;
pub mod model;
pub mod notification;
pub mod observer;
pub mod polling;
pub mod retry;
pub mod sample;
pub mod secrets;
pub mod store;
pub mod transport;
