//! # tidings-metering
//!
//! The metering service, modelled on Ceilometer and Aodh so that their Python agents can share
//! the bus: a polling agent publishes samples, a collector stores them and serves statistics,
//! an alarm evaluator turns statistics into alarm states (partitioned across evaluators), an
//! alarm notifier runs alarm actions, and an HTTP API manages alarms.
//!
//! Each agent is a module with its worker, its manifold (`manifold.rs`) and its settings
//! (`config.rs`) side by side: [`polling`], [`collector`], [`evaluator`], [`alarm_notifier`],
//! [`api`], and the dependencies they share, [`transport`] and [`store`]. [`graph`] names the
//! manifolds and assembles each agent's graph; [`config`] resolves the settings from a file
//! and overrides. The bus contracts live in one module each: [`sample::contract`] (samples),
//! [`collector::rpc`] (statistics), [`evaluator::group`] (evaluator membership) and
//! [`evaluator::handoff`] (`alarm.update`).
//!
//! This crate owns the metering domain on top of [`tidings_runtime`]; it does not parse
//! command lines, install signal handlers or exit the process (the `tidings` binary does),
//! and it never changes the runtime or the messaging library it uses.

#![warn(missing_docs)]

pub mod alarm_notifier;
pub mod api;
pub mod collector;
pub mod config;
pub mod evaluator;
pub mod graph;
pub mod model;
pub mod observer;
pub mod polling;
pub mod sample;
pub mod store;
pub mod transport;
