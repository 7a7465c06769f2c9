//! The ledger service that the `typed_service` (in memory) and `amqp` (over RabbitMQ) examples
//! serve and call: its contract, which server and client both import, and its handlers.

use std::collections::HashMap;
use std::sync::Arc;

use tidings::rpc::State;
use tidings::{Context, RemoteError};
use tokio::sync::{mpsc, Mutex};

use api::{Account, Deposit, Memo};

/// The ledger's API, declared once. Servers register handlers against these constants and
/// clients call them, so a method's name, arguments and result type are never spelled twice.
pub mod api {
    use serde::{Deserialize, Serialize};
    use tidings::rpc::{Contract, Method};
    use tidings::Version;

    /// The topic ledger servers listen on.
    pub const TOPIC: &str = "examples.ledger";

    /// The ledger contract: requests carry namespace `ledger`; servers implement version 1.1.
    #[derive(Debug)]
    pub struct Ledger;

    impl Contract for Ledger {
        const NAMESPACE: Option<&'static str> = Some("ledger");
        const VERSION: Version = Version::new(1, 1);
    }

    /// Keyword arguments of [`DEPOSIT`].
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Deposit {
        /// The account credited.
        pub account: String,
        /// Amount in cents; must be positive.
        pub amount: i64,
    }

    /// Keyword arguments of [`BALANCE`].
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Account {
        /// The account asked about.
        pub account: String,
    }

    /// Keyword arguments of [`ANNOTATE`].
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Memo {
        /// The account the note is about.
        pub account: String,
        /// The note.
        pub text: String,
    }

    /// Credits an account and returns its new balance. Part of the API since 1.0, so calls
    /// send version 1.0 and any 1.x server serves them.
    pub const DEPOSIT: Method<Ledger, Deposit, i64> =
        Method::new("deposit").since(Version::new(1, 0));

    /// An account's balance (0 for an account never credited). Since 1.0.
    pub const BALANCE: Method<Ledger, Account, i64> =
        Method::new("balance").since(Version::new(1, 0));

    /// Attaches a note to an account. Sent as a cast: nothing comes back. New in 1.1, so calls
    /// send the contract's version and a 1.0 server would refuse them.
    pub const ANNOTATE: Method<Ledger, Memo, ()> = Method::new("annotate");
}

/// What the ledger's handlers share, handed to each of them as `State<Books>`. Cloning is cheap:
/// the balances are behind an `Arc`, the notes sender is a handle.
#[derive(Clone, Debug)]
pub struct Books {
    balances: Arc<Mutex<HashMap<String, i64>>>,
    /// Where notes go. A real ledger would store them; the examples read them back to see that
    /// a cast arrived.
    notes: mpsc::UnboundedSender<Memo>,
}

impl Books {
    /// Empty books, and the receiving end of the notes they are given.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Memo>) {
        let (notes, received) = mpsc::unbounded_channel();
        let books = Self {
            balances: Arc::default(),
            notes,
        };
        (books, received)
    }
}

/// Serves [`api::DEPOSIT`]. A non-positive amount is refused with a `ValueError` from
/// `builtins`, the class a Python caller of the same method would catch.
pub async fn deposit(
    State(books): State<Books>,
    _ctx: Context,
    Deposit { account, amount }: Deposit,
) -> Result<i64, RemoteError> {
    if amount <= 0 {
        return Err(RemoteError::new(
            "ValueError",
            "builtins",
            format!("deposit to {account} must be positive, got {amount}"),
        ));
    }
    let mut balances = books.balances.lock().await;
    let balance = balances.entry(account).or_insert(0);
    *balance += amount;
    Ok(*balance)
}

/// Serves [`api::BALANCE`].
pub async fn balance(
    State(books): State<Books>,
    _ctx: Context,
    Account { account }: Account,
) -> Result<i64, RemoteError> {
    Ok(books
        .balances
        .lock()
        .await
        .get(&account)
        .copied()
        .unwrap_or(0))
}

/// Serves [`api::ANNOTATE`].
pub async fn annotate(
    State(books): State<Books>,
    _ctx: Context,
    memo: Memo,
) -> Result<(), RemoteError> {
    books
        .notes
        .send(memo)
        .map_err(|_| RemoteError::new("RuntimeError", "builtins", "the notes book is closed"))
}
