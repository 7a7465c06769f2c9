//! The ledger of the `typed_service` example, served and called over RabbitMQ: the service's code
//! (`ledger/mod.rs`) is the same, only the transport URL changes. Python peers on the same broker
//! see oslo.messaging's queues and messages.
//!
//! ```sh
//! # RabbitMQ on localhost with the default account, or point TIDINGS_TRANSPORT_URL elsewhere:
//! TIDINGS_TRANSPORT_URL=rabbit://guest:guest@127.0.0.1:5672/ cargo run -p tidings --example amqp
//! ```
//!
//! When the broker cannot be reached, the example says so and exits with status 1: at once when
//! the connection is refused, after the driver's connection timeout (10 s unless the URL sets
//! `connection_timeout`, in seconds) when nothing answers.

mod ledger;

use std::process::ExitCode;
use std::time::Duration;

use tidings::rpc::{ContractEndpoint, RpcServer, ServiceClient};
use tidings::transport::TransportOptions;
use tidings::{Context, Target, Transport, TransportUrl};

use ledger::api::{self, Account, Deposit, Ledger, Memo};
use ledger::Books;

/// The broker used when `TIDINGS_TRANSPORT_URL` is not set.
const DEFAULT_URL: &str = "rabbit://guest:guest@127.0.0.1:5672/";

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("TIDINGS_TRANSPORT_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let url: TransportUrl = match url.parse() {
        Ok(url) => url,
        Err(error) => {
            eprintln!("TIDINGS_TRANSPORT_URL is not a transport URL: {error}");
            return ExitCode::FAILURE;
        }
    };
    // A `TransportUrl` prints with its password masked, so it is safe in messages and logs.
    let transport = match Transport::connect_with(url.clone(), TransportOptions::default()).await {
        Ok(transport) => transport,
        Err(error) => {
            eprintln!("cannot reach the broker at {url}: {error}");
            eprintln!("start RabbitMQ there, or set TIDINGS_TRANSPORT_URL to one that runs");
            return ExitCode::FAILURE;
        }
    };
    let outcome = run(&transport).await;
    // Closing deletes the client's reply queue and ends both connections.
    transport.close().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("the ledger example failed on {url}: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(transport: &Transport) -> Result<(), Box<dyn std::error::Error>> {
    // The server declares oslo's queues for the topic: `examples.ledger` (shared by every
    // ledger server), `examples.ledger.ledger-amqp` (this one's) and a fanout queue.
    let (books, mut notes) = Books::new();
    let endpoint = ContractEndpoint::<Ledger, Books>::with_state(books)
        .handle(api::DEPOSIT, ledger::deposit)
        .handle(api::BALANCE, ledger::balance)
        .handle(api::ANNOTATE, ledger::annotate);
    let server = RpcServer::builder(
        transport,
        Target::topic(api::TOPIC).with_server("ledger-amqp"),
    )
    .endpoint(endpoint)
    .start()
    .await?;

    // A broker is slower than memory and may be far away: give calls a clear bound.
    let client = ServiceClient::<Ledger>::new(transport, Target::topic(api::TOPIC))
        .timeout(Duration::from_secs(10));
    let ctx = Context::new().with("request_id", "req-amqp-example");

    let bob = |amount| Deposit {
        account: "bob".to_owned(),
        amount,
    };
    assert_eq!(client.call(&ctx, api::DEPOSIT, bob(250)).await?, 250);
    assert_eq!(client.call(&ctx, api::DEPOSIT, bob(50)).await?, 300);
    let balance = client
        .call(
            &ctx,
            api::BALANCE,
            Account {
                account: "bob".to_owned(),
            },
        )
        .await?;
    assert_eq!(balance, 300);
    println!("bob's balance: {balance}");

    match client.call(&ctx, api::DEPOSIT, bob(0)).await {
        Ok(balance) => return Err(format!("an empty deposit was accepted: {balance}").into()),
        Err(error) => {
            let remote = error.remote().ok_or("expected the handler's own error")?;
            assert_eq!(remote.class, "ValueError");
            println!("refused: {}", remote.message);
        }
    }

    // Calls above went through the shared topic queue; this cast goes to this server's own.
    let memo = Memo {
        account: "bob".to_owned(),
        text: "opening balance".to_owned(),
    };
    client
        .server("ledger-amqp")
        .cast(&ctx, api::ANNOTATE, memo)
        .await?;
    let noted = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await?
        .ok_or("the server dropped its books")?;
    assert_eq!(noted.text, "opening balance");
    println!("noted on {}: {}", noted.account, noted.text);

    let report = server.stop(Duration::from_secs(5)).await;
    assert_eq!(report.abandoned, 0);
    Ok(())
}
