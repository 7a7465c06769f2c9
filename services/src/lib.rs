//! # tidings-services
//!
//! Running agents as services on tidings: the demo service today; the service runtime and the
//! metering service (polling agent, collector, alarm evaluator, notifier, API) as they land.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod metering;
pub mod runtime;
