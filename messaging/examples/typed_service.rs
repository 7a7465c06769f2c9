//! A typed service on the in-memory transport: the ledger's contract (`ledger/mod.rs`) declares
//! its methods once as constants; the server registers a handler per method, each sharing the
//! ledger's books through `State`; the client calls and casts those same constants.
//!
//! ```sh
//! cargo run -p tidings --example typed_service
//! ```
//!
//! The `amqp` example serves the same ledger over RabbitMQ.

mod ledger;

use std::time::Duration;

use tidings::rpc::{ContractEndpoint, RpcServer, ServiceClient};
use tidings::{Context, Target, Transport};

use ledger::api::{self, Account, Deposit, Ledger, Memo};
use ledger::Books;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = Transport::connect("memory://typed-service").await?;

    // The server. The contract gives the endpoint its namespace and version, and each handler
    // is checked against its method when registered: a handler taking other arguments, or
    // returning another type, does not compile.
    let (books, mut notes) = Books::new();
    let endpoint = ContractEndpoint::<Ledger, Books>::with_state(books)
        .handle(api::DEPOSIT, ledger::deposit)
        .handle(api::BALANCE, ledger::balance)
        .handle(api::ANNOTATE, ledger::annotate);
    let server = RpcServer::builder(
        &transport,
        Target::topic(api::TOPIC).with_server("ledger-1"),
    )
    .endpoint(endpoint)
    .start()
    .await?;

    // The client. Namespace and version come from the contract; each call names a method
    // constant and gets that method's result type back, with no annotation needed.
    let client = ServiceClient::<Ledger>::new(&transport, Target::topic(api::TOPIC));
    let ctx = Context::new().with("request_id", "req-typed-service");

    let alice = |amount| Deposit {
        account: "alice".to_owned(),
        amount,
    };
    assert_eq!(client.call(&ctx, api::DEPOSIT, alice(70)).await?, 70);
    assert_eq!(client.call(&ctx, api::DEPOSIT, alice(30)).await?, 100);
    let balance = client
        .call(
            &ctx,
            api::BALANCE,
            Account {
                account: "alice".to_owned(),
            },
        )
        .await?;
    assert_eq!(balance, 100);
    println!("alice's balance: {balance}");

    // A handler's error reaches the caller as a remote error, with the class and module the
    // handler chose; the books are unchanged.
    match client.call(&ctx, api::DEPOSIT, alice(-5)).await {
        Ok(balance) => return Err(format!("a negative deposit was accepted: {balance}").into()),
        Err(error) => {
            let remote = error.remote().ok_or("expected the handler's own error")?;
            assert_eq!(
                (remote.module.as_str(), remote.class.as_str()),
                ("builtins", "ValueError")
            );
            println!("refused: {}", remote.message);
        }
    }

    // A cast returns once the message is sent; the handler runs later. The notes channel
    // shows when it has.
    let memo = Memo {
        account: "alice".to_owned(),
        text: "paid in two parts".to_owned(),
    };
    client.cast(&ctx, api::ANNOTATE, memo).await?;
    let noted = tokio::time::timeout(Duration::from_secs(5), notes.recv())
        .await?
        .ok_or("the server dropped its books")?;
    assert_eq!(
        (noted.account.as_str(), noted.text.as_str()),
        ("alice", "paid in two parts")
    );
    println!("noted on {}: {}", noted.account, noted.text);

    let report = server.stop(Duration::from_secs(5)).await;
    assert_eq!(report.abandoned, 0);
    Ok(())
}
