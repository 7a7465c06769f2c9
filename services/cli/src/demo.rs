//! The demo service: a few methods that show what a tidings endpoint looks like, served at
//! version 1.3 with no namespace.
//!
//! - `echo(x)` → `x`
//! - `add(a, b)` → `a + b`
//! - `fail(message)` → remote error `tidings.demo.DemoError` carrying `message`
//! - `slow(secs)` → `"done"` after an async wait of `secs` seconds
//! - `blocking_sleep(secs)` → `"done"` after a real `std::thread::sleep` of `secs` seconds, on a
//!   thread of the compat [`BlockingPool`]: a blocking handler beside the async ones, which keep
//!   answering while it sleeps

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tidings::rpc::Endpoint;
use tidings::{Context, RemoteError, Version};
use tidings_compat::{BlockingEndpointExt, BlockingPool};

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

/// Arguments of `blocking_sleep`.
#[derive(Debug, Deserialize)]
pub struct BlockingSleepArgs {
    secs: f64,
}

/// A legacy-style handler: it blocks its thread, so it is served from the blocking pool.
fn blocking_sleep(
    _ctx: &Context,
    BlockingSleepArgs { secs }: BlockingSleepArgs,
) -> Result<&'static str, DemoError> {
    let wait = Duration::try_from_secs_f64(secs)
        .map_err(|_| DemoError(format!("secs must be a non-negative number, got {secs}")))?;
    std::thread::sleep(wait);
    Ok("done")
}

/// The demo endpoint: `echo`, `add`, `fail`, `slow` (async) and `blocking_sleep` (blocking, on
/// `pool`) at version 1.3, no namespace.
pub fn endpoint(pool: &BlockingPool) -> Endpoint {
    Endpoint::new()
        .version(DEMO_VERSION)
        .method("echo", echo)
        .method("add", add)
        .method("fail", fail)
        .method("slow", slow)
        .blocking_method("blocking_sleep", pool, blocking_sleep)
}

/// Dispatch slots of a demo server with `pool`: the pool's threads plus the server's usual 64,
/// so that while every thread sleeps the async methods still find a slot (until more than that
/// many requests are in flight; the rest wait in the broker).
pub fn max_concurrency(pool: &BlockingPool) -> usize {
    pool.size() + tidings::rpc::DEFAULT_MAX_CONCURRENCY
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};
    use tidings::rpc::{RpcClient, RpcServer};
    use tidings::{Context, Target, Transport};
    use tidings_compat::BlockingPool;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_sleep_runs_on_the_pool_while_async_methods_answer() {
        let transport = Transport::connect("memory://demo-unit-blocking")
            .await
            .unwrap();
        let pool = BlockingPool::new(1).unwrap();
        let server = RpcServer::builder(&transport, Target::topic("demo").with_server("d1"))
            .max_concurrency(max_concurrency(&pool))
            .endpoint(endpoint(&pool))
            .start()
            .await
            .unwrap();
        let client = RpcClient::new(&transport, Target::topic("demo"))
            .version(DEMO_VERSION)
            .timeout(Duration::from_secs(10));
        let ctx = Context::new();
        let sleeping = {
            let (client, ctx) = (client.clone(), ctx.clone());
            tokio::spawn(async move {
                client
                    .call::<Value>(&ctx, "blocking_sleep", json!({"secs": 1}))
                    .await
            })
        };
        // Wait until the pool's one thread is taken, event by event rather than by the clock.
        while pool.in_use() == 0 {
            tokio::task::yield_now().await;
        }
        let echoed: Value = client
            .call(&ctx, "echo", json!({"x": "meanwhile"}))
            .await
            .unwrap();
        assert_eq!(echoed, "meanwhile");
        assert!(!sleeping.is_finished(), "echo answered during the sleep");
        assert_eq!(sleeping.await.unwrap().unwrap(), "done");

        let error = client
            .call::<Value>(&ctx, "blocking_sleep", json!({"secs": -1}))
            .await
            .unwrap_err();
        let remote = error.remote().unwrap();
        assert_eq!(
            (remote.class.as_str(), remote.module.as_str()),
            ("DemoError", "tidings.demo")
        );
        server.stop(Duration::from_secs(5)).await;
    }
}
