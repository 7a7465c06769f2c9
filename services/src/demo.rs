//! The demo service: a few methods that show what a tidings endpoint looks like, served at
//! version 1.3 with no namespace.
//!
//! - `echo(x)` → `x`
//! - `add(a, b)` → `a + b`
//! - `fail(message)` → remote error `tidings.demo.DemoError` carrying `message`
//! - `slow(secs)` → `"done"` after an async wait of `secs` seconds

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tidings::rpc::Endpoint;
use tidings::{Context, RemoteError, Version};

/// The demo endpoint's API version.
pub const DEMO_VERSION: Version = Version::new(1, 3);

/// The demo's own error: what `fail` raises.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DemoError(String);

impl From<DemoError> for RemoteError {
    fn from(error: DemoError) -> Self {
        RemoteError::new("DemoError", "tidings.demo", error.0)
    }
}

/// Arguments of `echo`.
#[derive(Debug, Deserialize)]
pub struct EchoArgs {
    x: Value,
}

/// Arguments of `add`.
#[derive(Debug, Deserialize)]
pub struct AddArgs {
    a: serde_json::Number,
    b: serde_json::Number,
}

/// Arguments of `fail`.
#[derive(Debug, Deserialize)]
pub struct FailArgs {
    message: String,
}

/// Arguments of `slow`.
#[derive(Debug, Deserialize)]
pub struct SlowArgs {
    secs: f64,
}

async fn echo(_ctx: Context, EchoArgs { x }: EchoArgs) -> Result<Value, DemoError> {
    Ok(x)
}

async fn add(_ctx: Context, AddArgs { a, b }: AddArgs) -> Result<Value, DemoError> {
    // Integers stay integers (as Python's `a + b` does); anything else adds as floats.
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        if let Some(sum) = a.checked_add(b) {
            return Ok(sum.into());
        }
    }
    let sum = a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN);
    serde_json::Number::from_f64(sum)
        .map(Value::Number)
        .ok_or_else(|| DemoError(format!("cannot add {a} and {b}")))
}

async fn fail(_ctx: Context, FailArgs { message }: FailArgs) -> Result<Value, DemoError> {
    Err(DemoError(message))
}

async fn slow(_ctx: Context, SlowArgs { secs }: SlowArgs) -> Result<&'static str, DemoError> {
    let wait = Duration::try_from_secs_f64(secs)
        .map_err(|_| DemoError(format!("secs must be a non-negative number, got {secs}")))?;
    tokio::time::sleep(wait).await;
    Ok("done")
}

/// The demo endpoint: `echo`, `add`, `fail`, `slow` at version 1.3, no namespace.
pub fn endpoint() -> Endpoint {
    Endpoint::new()
        .version(DEMO_VERSION)
        .method("echo", echo)
        .method("add", add)
        .method("fail", fail)
        .method("slow", slow)
}
