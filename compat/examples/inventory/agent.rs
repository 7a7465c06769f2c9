//! The inventory agent of the porting guide (`docs/porting.md`): stock levels per SKU, four RPC
//! methods, served three ways on one wire contract.
//!
//! | method | arguments | result |
//! |---|---|---|
//! | `add_stock` | `sku`, `qty` (≥ 1) | the new level |
//! | `take_stock` | `sku`, `qty` (≥ 1) | the new level, or remote error `inventory.agent.OutOfStock` |
//! | `stock_level` | `sku` | the level (0 for an unknown SKU) |
//! | `report` | — | `{sku: level}` of every SKU in stock |
//!
//! - [`Form::AllBlocking`]: the agent as it was — every method a blocking fn on the pool.
//! - [`Form::HalfPorted`]: the reads (`stock_level`, `report`) ported to async, the writes still
//!   blocking. Both halves share one [`Inventory`].
//! - [`Form::AllAsync`]: every method async; the pool is no longer needed.
//!
//! Every write is also recorded in a journal that stands for the agent's database: the blocking
//! handlers wait for it with `std::thread::sleep`, the async ones with `tokio::time::sleep`.
//! `compat/tests/inventory.rs` runs one test suite, unchanged, against each form.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tidings::rpc::{Endpoint, NoArgs, RpcServer};
use tidings::transport::TransportError;
use tidings::{Context, RemoteError, Target, Transport, Version};
use tidings_compat::{BlockingEndpointExt, BlockingPool, PoolError};

/// The topic the agent serves.
pub const TOPIC: &str = "inventory";

/// The agent's API version (the same in every form: porting does not change the contract).
pub const VERSION: Version = Version::new(1, 0);

/// Threads for the blocking methods.
pub const POOL_SIZE: usize = 8;

/// Dispatch slots beyond the pool, so async methods find a slot while every thread is busy.
pub const ASYNC_HEADROOM: usize = 64;

/// How long a write to the agent's "database" takes.
pub const WRITE_LATENCY: Duration = Duration::from_millis(2);

/// The three forms of the agent along the porting path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Every method blocking, on the pool.
    AllBlocking,
    /// Reads async, writes still blocking.
    HalfPorted,
    /// Every method async.
    AllAsync,
}

impl Form {
    /// The forms in porting order.
    pub const ALL: [Form; 3] = [Form::AllBlocking, Form::HalfPorted, Form::AllAsync];
}

/// Arguments of `add_stock` and `take_stock`.
#[derive(Debug, Deserialize)]
pub struct Change {
    sku: String,
    qty: u64,
}

/// Arguments of `stock_level`.
#[derive(Debug, Deserialize)]
pub struct Sku {
    sku: String,
}

/// What the agent refuses, as its callers (Python ones included) see it.
#[derive(Debug)]
pub enum InventoryError {
    /// A quantity of zero: Python's `ValueError`.
    ZeroQuantity,
    /// More taken than there is.
    OutOfStock {
        /// The SKU.
        sku: String,
        /// What is in stock.
        have: u64,
        /// What was asked for.
        want: u64,
    },
}

impl From<InventoryError> for RemoteError {
    fn from(error: InventoryError) -> Self {
        match error {
            InventoryError::ZeroQuantity => {
                RemoteError::new("ValueError", "builtins", "qty must be at least 1")
            }
            InventoryError::OutOfStock { sku, have, want } => RemoteError::new(
                "OutOfStock",
                "inventory.agent",
                format!("cannot take {want} of {sku}: {have} in stock"),
            )
            .with_kwargs(Map::from_iter([
                ("sku".to_owned(), Value::from(sku)),
                ("have".to_owned(), Value::from(have)),
                ("want".to_owned(), Value::from(want)),
            ])),
        }
    }
}

/// The agent's state, shared by blocking and async handlers alike.
///
/// The lock is a `std::sync::Mutex`: every critical section is a few map operations with no
/// `.await` inside, which is what makes it right for both kinds of handler (an async handler
/// that held it across an `.await` would not even compile: its future would not be `Send`).
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    stock: Arc<Mutex<BTreeMap<String, u64>>>,
    journal: Arc<Mutex<Vec<String>>>,
}

impl Inventory {
    fn stock(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        // A panic elsewhere never leaves the map half-updated: each change is one statement.
        self.stock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, Change { sku, qty }: &Change) -> Result<u64, InventoryError> {
        if *qty == 0 {
            return Err(InventoryError::ZeroQuantity);
        }
        let mut stock = self.stock();
        let level = stock.entry(sku.clone()).or_default();
        *level = level.saturating_add(*qty);
        Ok(*level)
    }

    fn take(&self, Change { sku, qty }: &Change) -> Result<u64, InventoryError> {
        if *qty == 0 {
            return Err(InventoryError::ZeroQuantity);
        }
        let mut stock = self.stock();
        let have = stock.get(sku).copied().unwrap_or(0);
        let left = have
            .checked_sub(*qty)
            .ok_or_else(|| InventoryError::OutOfStock {
                sku: sku.clone(),
                have,
                want: *qty,
            })?;
        stock.insert(sku.clone(), left);
        Ok(left)
    }

    fn level(&self, sku: &str) -> u64 {
        self.stock().get(sku).copied().unwrap_or(0)
    }

    fn report(&self) -> BTreeMap<String, u64> {
        self.stock()
            .iter()
            .filter(|(_, level)| **level > 0)
            .map(|(sku, level)| (sku.clone(), *level))
            .collect()
    }

    fn record(&self, entry: String) {
        self.journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    /// Writes a journal entry the legacy way: the thread waits for the database.
    fn journal_blocking(&self, entry: String) {
        std::thread::sleep(WRITE_LATENCY);
        self.record(entry);
    }

    /// Writes a journal entry the async way: the task yields while the database works.
    async fn journal(&self, entry: String) {
        tokio::time::sleep(WRITE_LATENCY).await;
        self.record(entry);
    }

    /// Journal entries written so far.
    pub fn journal_len(&self) -> usize {
        self.journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The handlers as they were: plain fns that may block.
pub mod blocking {
    use super::*;

    /// `add_stock(sku, qty)`.
    pub fn add_stock(
        inv: &Inventory,
        _ctx: &Context,
        change: Change,
    ) -> Result<u64, InventoryError> {
        let level = inv.add(&change)?;
        inv.journal_blocking(format!("add {} {}", change.sku, change.qty));
        Ok(level)
    }

    /// `take_stock(sku, qty)`.
    pub fn take_stock(
        inv: &Inventory,
        _ctx: &Context,
        change: Change,
    ) -> Result<u64, InventoryError> {
        let level = inv.take(&change)?;
        inv.journal_blocking(format!("take {} {}", change.sku, change.qty));
        Ok(level)
    }

    /// `stock_level(sku)`.
    pub fn stock_level(
        inv: &Inventory,
        _ctx: &Context,
        Sku { sku }: Sku,
    ) -> Result<u64, InventoryError> {
        Ok(inv.level(&sku))
    }

    /// `report()`.
    pub fn report(
        inv: &Inventory,
        _ctx: &Context,
        _: NoArgs,
    ) -> Result<BTreeMap<String, u64>, InventoryError> {
        Ok(inv.report())
    }
}

/// The same handlers ported: async fns that own what they use (`Inventory` is a cheap clone,
/// `Context` is passed by value), with every wait an `.await`.
pub mod ported {
    use super::*;

    /// `add_stock(sku, qty)`.
    pub async fn add_stock(
        inv: Inventory,
        _ctx: Context,
        change: Change,
    ) -> Result<u64, InventoryError> {
        let level = inv.add(&change)?; // the lock is taken and released in here, before any await
        inv.journal(format!("add {} {}", change.sku, change.qty))
            .await;
        Ok(level)
    }

    /// `take_stock(sku, qty)`.
    pub async fn take_stock(
        inv: Inventory,
        _ctx: Context,
        change: Change,
    ) -> Result<u64, InventoryError> {
        let level = inv.take(&change)?;
        inv.journal(format!("take {} {}", change.sku, change.qty))
            .await;
        Ok(level)
    }

    /// `stock_level(sku)`.
    pub async fn stock_level(
        inv: Inventory,
        _ctx: Context,
        Sku { sku }: Sku,
    ) -> Result<u64, InventoryError> {
        Ok(inv.level(&sku))
    }

    /// `report()`.
    pub async fn report(
        inv: Inventory,
        _ctx: Context,
        _: NoArgs,
    ) -> Result<BTreeMap<String, u64>, InventoryError> {
        Ok(inv.report())
    }
}

/// Step 0: every method blocking.
pub fn all_blocking(inv: &Inventory, pool: &BlockingPool) -> Endpoint {
    let (a, t, l, r) = (inv.clone(), inv.clone(), inv.clone(), inv.clone());
    Endpoint::new()
        .version(VERSION)
        .blocking_method("add_stock", pool, move |ctx, args| {
            blocking::add_stock(&a, ctx, args)
        })
        .blocking_method("take_stock", pool, move |ctx, args| {
            blocking::take_stock(&t, ctx, args)
        })
        .blocking_method("stock_level", pool, move |ctx, args| {
            blocking::stock_level(&l, ctx, args)
        })
        .blocking_method("report", pool, move |ctx, args| {
            blocking::report(&r, ctx, args)
        })
}

/// Step 1: the reads ported; two lines changed.
pub fn half_ported(inv: &Inventory, pool: &BlockingPool) -> Endpoint {
    let (a, t, l, r) = (inv.clone(), inv.clone(), inv.clone(), inv.clone());
    Endpoint::new()
        .version(VERSION)
        .blocking_method("add_stock", pool, move |ctx, args| {
            blocking::add_stock(&a, ctx, args)
        })
        .blocking_method("take_stock", pool, move |ctx, args| {
            blocking::take_stock(&t, ctx, args)
        })
        .method("stock_level", move |ctx, args| {
            ported::stock_level(l.clone(), ctx, args)
        })
        .method("report", move |ctx, args| {
            ported::report(r.clone(), ctx, args)
        })
}

/// Step 2: every method async; no pool.
pub fn all_async(inv: &Inventory) -> Endpoint {
    let (a, t, l, r) = (inv.clone(), inv.clone(), inv.clone(), inv.clone());
    Endpoint::new()
        .version(VERSION)
        .method("add_stock", move |ctx, args| {
            ported::add_stock(a.clone(), ctx, args)
        })
        .method("take_stock", move |ctx, args| {
            ported::take_stock(t.clone(), ctx, args)
        })
        .method("stock_level", move |ctx, args| {
            ported::stock_level(l.clone(), ctx, args)
        })
        .method("report", move |ctx, args| {
            ported::report(r.clone(), ctx, args)
        })
}

/// The endpoint of `form` over `inv`.
pub fn endpoint(form: Form, inv: &Inventory, pool: &BlockingPool) -> Endpoint {
    match form {
        Form::AllBlocking => all_blocking(inv, pool),
        Form::HalfPorted => half_ported(inv, pool),
        Form::AllAsync => all_async(inv),
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The pool's threads did not start.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The server's queues could not be declared.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    /// The RPC server.
    pub server: RpcServer,
    /// Its state.
    pub inventory: Inventory,
}

/// Serves the agent in `form` as `server` on `transport`. The server's slots are the pool's
/// threads plus [`ASYNC_HEADROOM`]: a full pool stops the server only once that many requests
/// wait, and async methods answer meanwhile (docs/porting.md, "pool sizing").
pub async fn serve(transport: &Transport, server: &str, form: Form) -> Result<Agent, ServeError> {
    let inventory = Inventory::default();
    let pool = BlockingPool::new(POOL_SIZE)?;
    let server = RpcServer::builder(transport, Target::topic(TOPIC).with_server(server))
        .max_concurrency(pool.size() + ASYNC_HEADROOM)
        .endpoint(endpoint(form, &inventory, &pool))
        .start()
        .await?;
    Ok(Agent { server, inventory })
}
