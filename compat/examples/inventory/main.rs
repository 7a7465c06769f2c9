//! The porting guide's worked example, step "measure": serves the inventory agent in each of
//! its three forms and drives it from plain threads with the blocking client.
//!
//! ```sh
//! cargo run --release -p tidings-compat --example inventory
//! ```
//!
//! The agent runs on the service's multi-thread runtime; the client threads borrow that runtime
//! through `BlockingTransport::with_handle`, as blocking code inside a half-ported service does.

mod agent;

use std::time::{Duration, Instant};

use serde_json::json;
use tidings::{Context, Target, Transport};
use tidings_compat::{BlockingClient, BlockingTransport, ClientError};

use agent::Form;

/// Client threads.
const THREADS: usize = 32;
/// Calls per thread: add, take, level and report in turn.
const CALLS: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "{THREADS} threads x {CALLS} calls (add/take/level/report), writes take {:?}, pool of {}",
        agent::WRITE_LATENCY,
        agent::POOL_SIZE
    );
    println!(
        "{:<12} {:>10} {:>10} {:>8}",
        "form", "elapsed", "calls/s", "journal"
    );
    for form in Form::ALL {
        let transport = runtime.block_on(Transport::connect(&format!(
            "memory://inventory-example-{form:?}"
        )))?;
        let running = runtime.block_on(agent::serve(&transport, "agent-1", form))?;
        let bridge = BlockingTransport::with_handle(transport.clone(), runtime.handle().clone());
        let client = BlockingClient::new(&bridge, Target::topic(agent::TOPIC))
            .version(agent::VERSION)
            .timeout(Duration::from_secs(30));
        let ctx = Context::new().with("request_id", "req-example");
        client.call::<u64>(&ctx, "add_stock", json!({"sku": "bolt", "qty": 1_000_000}))?;

        let started = Instant::now();
        let outcomes: Vec<Result<(), ClientError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|_| scope.spawn(|| drive(&client, &ctx)))
                .collect();
            workers
                .into_iter()
                .map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let elapsed = started.elapsed();
        outcomes.into_iter().collect::<Result<Vec<()>, _>>()?;
        let rate = (THREADS * CALLS) as f64 / elapsed.as_secs_f64();
        println!(
            "{:<12} {:>10.1?} {:>10.0} {:>8}",
            format!("{form:?}"),
            elapsed,
            rate,
            running.inventory.journal_len()
        );
        runtime.block_on(running.server.stop(Duration::from_secs(5)));
        runtime.block_on(transport.close());
    }
    Ok(())
}

/// One client thread's share of the load.
fn drive(client: &BlockingClient, ctx: &Context) -> Result<(), ClientError> {
    for i in 0..CALLS {
        match i % 4 {
            0 => {
                client.call::<u64>(ctx, "add_stock", json!({"sku": "bolt", "qty": 1}))?;
            }
            1 => {
                client.call::<u64>(ctx, "take_stock", json!({"sku": "bolt", "qty": 1}))?;
            }
            2 => {
                client.call::<u64>(ctx, "stock_level", json!({"sku": "bolt"}))?;
            }
            _ => {
                client.call::<serde_json::Value>(ctx, "report", json!({}))?;
            }
        }
    }
    Ok(())
}
