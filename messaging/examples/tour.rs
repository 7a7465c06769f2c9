//! The README tour: a server and a client on the in-memory transport.

use serde::Deserialize;
use tidings::rpc::{Endpoint, RpcClient, RpcServer};
use tidings::{Context, RemoteError, Target, Transport, Version};

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

async fn add(_ctx: Context, Add { a, b }: Add) -> Result<i64, RemoteError> {
    Ok(a + b)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = Transport::connect("memory://tour").await?;
    let server = RpcServer::builder(&transport, Target::topic("calc").with_server("calc-1"))
        .endpoint(
            Endpoint::new()
                .version(Version::new(1, 3))
                .method("add", add),
        )
        .start()
        .await?;

    let client = RpcClient::new(&transport, Target::topic("calc")).version(Version::new(1, 3));
    let sum: i64 = client
        .call(&Context::new(), "add", serde_json::json!({"a": 1, "b": 2}))
        .await?;
    assert_eq!(sum, 3);
    server.stop(std::time::Duration::from_secs(5)).await;
    Ok(())
}
