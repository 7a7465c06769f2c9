//! The worked example's specification: one suite, unchanged, for the inventory agent in each of
//! its three forms (all blocking, half ported, all async), on the memory transport and on
//! RabbitMQ. Nothing here knows which form it talks to; that is the point of the porting path.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed unwrap fails the test

#[path = "../examples/inventory/agent.rs"]
#[allow(dead_code)] // the example uses parts of the agent this suite does not
mod agent;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tidings::rpc::{RpcClient, RpcError};
use tidings::{Context, Target, Transport};
use tidings_compat::{BlockingClient, BlockingTransport};
use tidings_suites::Bus;

use agent::{Agent, Form};

async fn start(transport: &Transport, form: Form) -> Agent {
    agent::serve(transport, "agent-1", form)
        .await
        .expect("the agent starts")
}

fn client(transport: &Transport) -> RpcClient {
    RpcClient::new(transport, Target::topic(agent::TOPIC))
        .version(agent::VERSION)
        .timeout(Duration::from_secs(10))
}

async fn level(client: &RpcClient, sku: &str) -> u64 {
    client
        .call(&Context::new(), "stock_level", json!({ "sku": sku }))
        .await
        .unwrap()
}

async fn stop(agent: Agent) {
    agent.server.stop(Duration::from_secs(5)).await;
}

pub async fn added_stock_is_counted(bus: Bus, form: Form) {
    let transport = bus.transport().await;
    let agent = start(&transport, form).await;
    let client = client(&transport);
    let ctx = Context::new();
    let first: u64 = client
        .call(&ctx, "add_stock", json!({"sku": "bolt", "qty": 5}))
        .await
        .unwrap();
    let second: u64 = client
        .call(&ctx, "add_stock", json!({"sku": "bolt", "qty": 3}))
        .await
        .unwrap();
    assert_eq!((first, second), (5, 8));
    assert_eq!(level(&client, "bolt").await, 8);
    assert_eq!(level(&client, "never-stocked").await, 0);
    stop(agent).await;
}

pub async fn taking_more_than_in_stock_is_out_of_stock(bus: Bus, form: Form) {
    let transport = bus.transport().await;
    let agent = start(&transport, form).await;
    let client = client(&transport);
    let ctx = Context::new();
    let _: u64 = client
        .call(&ctx, "add_stock", json!({"sku": "nut", "qty": 2}))
        .await
        .unwrap();
    let error = client
        .call::<u64>(&ctx, "take_stock", json!({"sku": "nut", "qty": 3}))
        .await
        .unwrap_err();
    let remote = error.remote().expect("a remote error");
    assert_eq!(
        (remote.class.as_str(), remote.module.as_str()),
        ("OutOfStock", "inventory.agent")
    );
    assert_eq!(remote.message, "cannot take 3 of nut: 2 in stock");
    assert_eq!(remote.kwargs["have"], json!(2));
    assert_eq!(remote.kwargs["want"], json!(3));
    assert_eq!(
        level(&client, "nut").await,
        2,
        "a refused take changes nothing"
    );
    let left: u64 = client
        .call(&ctx, "take_stock", json!({"sku": "nut", "qty": 2}))
        .await
        .unwrap();
    assert_eq!(left, 0);
    stop(agent).await;
}

pub async fn zero_quantity_is_a_value_error(bus: Bus, form: Form) {
    let transport = bus.transport().await;
    let agent = start(&transport, form).await;
    let client = client(&transport);
    for method in ["add_stock", "take_stock"] {
        let error = client
            .call::<u64>(&Context::new(), method, json!({"sku": "x", "qty": 0}))
            .await
            .unwrap_err();
        let remote = error.remote().expect("a remote error");
        assert_eq!(
            (remote.class.as_str(), remote.module.as_str()),
            ("ValueError", "builtins"),
            "{method}"
        );
    }
    stop(agent).await;
}

pub async fn arguments_that_do_not_fit_are_type_errors(bus: Bus, form: Form) {
    let transport = bus.transport().await;
    let agent = start(&transport, form).await;
    let client = client(&transport);
    for (method, args) in [
        ("add_stock", json!({"sku": "x"})),
        ("take_stock", json!({"sku": "x", "qty": "many"})),
        ("stock_level", json!({})),
        ("report", json!({"unexpected": 1})),
    ] {
        let error = client
            .call::<Value>(&Context::new(), method, args)
            .await
            .unwrap_err();
        let remote = error.remote().expect("a remote error");
        assert_eq!(
            (remote.class.as_str(), remote.module.as_str()),
            ("TypeError", "builtins"),
            "{method}: {remote}"
        );
    }
    stop(agent).await;
}

pub async fn report_lists_every_item_in_stock(bus: Bus, form: Form) {
    let transport = bus.transport().await;
    let agent = start(&transport, form).await;
    let client = client(&transport);
    let ctx = Context::new();
    for (sku, qty) in [("washer", 4), ("bolt", 1), ("nut", 2)] {
        let _: u64 = client
            .call(&ctx, "add_stock", json!({"sku": sku, "qty": qty}))
            .await
            .unwrap();
    }
    let _: u64 = client
        .call(&ctx, "take_stock", json!({"sku": "bolt", "qty": 1}))
        .await
        .unwrap();
    let report: BTreeMap<String, u64> = client.call(&ctx, "report", json!({})).await.unwrap();
    assert_eq!(
        report,
        BTreeMap::from([("nut".to_owned(), 2), ("washer".to_owned(), 4)])
    );
    stop(agent).await;
}

pub async fn concurrent_takes_never_oversell(bus: Bus, form: Form) {
    let transport = bus.transport().await;
    let agent = start(&transport, form).await;
    let client = client(&transport);
    let ctx = Context::new();
    let _: u64 = client
        .call(&ctx, "add_stock", json!({"sku": "gear", "qty": 10}))
        .await
        .unwrap();
    let takes = (0..25).map(|_| {
        let (client, ctx) = (client.clone(), ctx.clone());
        async move {
            client
                .call::<u64>(&ctx, "take_stock", json!({"sku": "gear", "qty": 1}))
                .await
        }
    });
    let outcomes = futures::future::join_all(takes).await;
    let taken = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(RpcError::Remote { error, .. }) if error.class == "OutOfStock"))
        .count();
    assert_eq!((taken, refused), (10, 15), "{outcomes:?}");
    assert_eq!(level(&client, "gear").await, 0);
    stop(agent).await;
}

pub async fn cast_stock_arrives(bus: Bus, form: Form) {
    let transport = bus.transport().await;
    let agent = start(&transport, form).await;
    let client = client(&transport);
    for _ in 0..5 {
        client
            .cast(
                &Context::new(),
                "add_stock",
                json!({"sku": "cog", "qty": 2}),
            )
            .await
            .unwrap();
    }
    // Casts run concurrently with later calls: wait for them through the API, as a peer would.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = level(&client, "cog").await;
    while seen < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = level(&client, "cog").await;
    }
    assert_eq!(level(&client, "cog").await, 10);
    stop(agent).await;
}

pub async fn plain_threads_use_the_agent_through_the_blocking_client(bus: Bus, form: Form) {
    let transport = bus.transport().await;
    let agent = start(&transport, form).await;
    let bridge =
        BlockingTransport::with_handle(transport.clone(), tokio::runtime::Handle::current());
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let client = BlockingClient::new(&bridge, Target::topic(agent::TOPIC))
            .version(agent::VERSION)
            .timeout(Duration::from_secs(10));
        let ctx = Context::new();
        let outcome = (|| {
            let added: u64 = client.call(&ctx, "add_stock", json!({"sku": "pin", "qty": 7}))?;
            let left: u64 = client.call(&ctx, "take_stock", json!({"sku": "pin", "qty": 3}))?;
            let level: u64 = client.call(&ctx, "stock_level", json!({"sku": "pin"}))?;
            Ok::<_, tidings_compat::ClientError>((added, left, level))
        })();
        let _ = done.send(outcome.map_err(|e| e.to_string()));
    });
    assert_eq!(result.await.unwrap().unwrap(), (7, 4, 4));
    stop(agent).await;
}

macro_rules! forms {
    ($bus:expr; $($test:ident),* $(,)?) => {
        mod all_blocking {
            forms!(@tests $bus, crate::agent::Form::AllBlocking; $($test),*);
        }
        mod half_ported {
            forms!(@tests $bus, crate::agent::Form::HalfPorted; $($test),*);
        }
        mod all_async {
            forms!(@tests $bus, crate::agent::Form::AllAsync; $($test),*);
        }
    };
    (@tests $bus:expr, $form:expr; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                crate::$test($bus, $form).await;
            }
        )*
    };
}

macro_rules! inventory_suite {
    ($bus:expr) => {
        forms!($bus;
            added_stock_is_counted,
            taking_more_than_in_stock_is_out_of_stock,
            zero_quantity_is_a_value_error,
            arguments_that_do_not_fit_are_type_errors,
            report_lists_every_item_in_stock,
            concurrent_takes_never_oversell,
            cast_stock_arrives,
            plain_threads_use_the_agent_through_the_blocking_client,
        );
    };
}

mod memory {
    inventory_suite!(tidings_suites::Bus::memory());
}

mod amqp {
    inventory_suite!(tidings_suites::Bus::amqp());
}
