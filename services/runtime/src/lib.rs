//! # tidings-runtime
//!
//! The service runtime: a dependency engine that starts, stops and restarts workers by their
//! declared inputs ([`Engine`], [`Manifold`]), a launcher that runs an engine as a service under
//! process signals ([`Launcher`]), and periodic work on timers ([`PeriodicTasks`]).
//!
//! Modules, one concept each:
//! - `worker`: what a worker is ([`Worker`], [`TaskWorker`], [`WorkerError`]);
//! - `manifold`: a worker's declaration ([`Manifold`], [`StartContext`]);
//! - `getter`: a start's view of its inputs ([`Getter`], [`GetError`]);
//! - `config` and `backoff`: restart delays ([`EngineConfig`]);
//! - `engine` and `runner`: the rules, and the task that carries out one start;
//! - `report`: what the engine tells operators ([`EngineReport`]);
//! - `launcher`: signals, drain and reload ([`Launcher`], [`ConfigHandle`]);
//! - `periodic`: timers ([`PeriodicTasks`], [`Schedule`]);
//! - `admin`: `/metrics` and `/health` of a process ([`admin::AdminServer`]).
//!
//! `docs/architecture.md` ("Service runtime") describes the engine's rules with a diagram.
//!
//! This crate owns how workers are declared, started, supervised and stopped; it must not know
//! any service built on it (no metering types, no bus contracts): agents bring their manifolds,
//! and name them, themselves.

#![warn(missing_docs)]

pub mod admin;
mod backoff;
mod config;
mod engine;
mod getter;
mod launcher;
mod manifold;
mod periodic;
mod report;
mod runner;
mod worker;

pub use config::{ConfigError, EngineConfig, EngineFilterFn, IsFatalFn, WorstErrorFn};
pub use engine::{Engine, InstallError};
pub use getter::{GetError, Getter};
#[cfg(unix)]
pub use launcher::os_signals;
pub use launcher::{ConfigHandle, Launcher, LoadError, Outcome, Signal, RELOAD_SETTLE};
pub use manifold::{Manifold, StartContext};
pub use periodic::{PeriodicTasks, Schedule, ScheduleError, TaskStats};
pub use report::{EngineReport, EngineState, ManifoldReport, ManifoldState};
pub use worker::{TaskWorker, Worker, WorkerError};
