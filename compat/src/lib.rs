//! # tidings-compat
//!
//! The bridge from the blocking world: blocking handlers on a bounded pool beside async ones, a
//! blocking client for sync code, and the porting path between them. Its pieces land with the
//! compat issue; today it re-exports the library so a porting crate depends on one name.

pub use tidings;
