//! `--admin-listen ADDR` of the long-running subcommands: `/metrics` and `/health` of the
//! process on their own address (see `tidings_runtime::admin`).

use std::net::SocketAddr;

use tidings_runtime::admin::{AdminServer, Exposure};
use tidings_runtime::Engine;

/// The admin listener's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Serve Prometheus metrics at /metrics and a health check at /health on this address
    /// (e.g. 127.0.0.1:9101).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Serve them beyond loopback, without authentication (they show counters and states,
    /// never secrets).
    #[arg(long)]
    pub admin_public: bool,
}

/// Starts the admin listener on `addr` for `engine`, and says where.
pub async fn start(
    addr: SocketAddr,
    public: bool,
    engine: Option<Engine>,
) -> Result<AdminServer, String> {
    let exposure = if public {
        Exposure::Public
    } else {
        Exposure::LoopbackOnly
    };
    let server = AdminServer::bind(addr, exposure, engine)
        .await
        .map_err(|error| error.to_string())?;
    tidings_metering::graph::describe_metrics();
    eprintln!(
        "admin listener on http://{} (/metrics, /health)",
        server.local_addr()
    );
    Ok(server)
}
