//! The exit codes of every `tidings` subcommand, one table for scripts and service managers:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; a service stopped by SIGTERM/SIGINT after draining |
//! | 1 | the command ran and what it did failed: a remote error (`call`), a failed part (`job wait`), a rejected definition (`meter check-definitions`), a service that stopped on a fatal error or could not drain in time |
//! | 2 | a timeout (`call`, `job wait`, `meter poll-now`) |
//! | 3 | the command could not run: bad input or configuration, a broker, store or file that cannot be reached at start |
//! | 64 | the command line does not parse (EX_USAGE) |

/// Success.
pub const OK: u8 = 0;
/// The command ran and what it did failed.
pub const FAILED: u8 = 1;
/// A timeout.
pub const TIMEOUT: u8 = 2;
/// The command could not run (bad input, configuration, unreachable service).
pub const CANNOT_RUN: u8 = 3;
/// The command line does not parse.
pub const USAGE: u8 = 64;
