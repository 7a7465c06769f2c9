//! # tidings-fuzz
//!
//! Fuzzing on stable Rust: mutated and generated oslo.messaging bodies fed through every path
//! of the library that reads bytes from the bus, counting panics and peak memory.
//!
//! - [`corpus`]: the 79 real bodies captured from oslo.messaging, the seeds.
//! - [`generate`]: valid requests, replies, notifications and metering samples, and random
//!   values; [`value`] writes them as JSON (Python's dialect) or MessagePack, including what
//!   `serde_json::Value` cannot hold.
//! - [`mutate`]: structured and byte-level mutators, and [`mutate::input`], message `i` of a
//!   run seeded with `s`.
//! - [`decode`]: path (1), every decode function of both codecs called directly.
//! - [`rig`]: path (2), an RPC server, a notification listener, a client's reply queue and the
//!   metering collector running on `memory://`, fed raw bodies, with a liveness check.
//! - [`panics`]: a panic hook that counts panics in any thread.
//! - [`harness`]: the run, the triage of dispatch panics, and the report.
//!
//! `cargo run --release -p tidings-fuzz -- --messages 1000000 --seed N` runs it;
//! `cargo test -p tidings-fuzz` runs a short one and the regression inputs.

#![warn(missing_docs)]

pub mod corpus;
pub mod decode;
pub mod generate;
pub mod harness;
pub mod mutate;
pub mod panics;
pub mod rig;
pub mod value;

pub use harness::{replay, run, FuzzConfig, FuzzError, FuzzReport, Replay};
pub use mutate::FuzzInput;
pub use panics::{PanicSite, PanicWatch};
