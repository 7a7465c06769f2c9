//! Where the HTTP API listens and what it shows at `/v2/status`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use serde_json::Value;

/// Produces the engine report shown at `/v2/status`.
pub type StatusFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// The API's default address, Aodh's port on the loopback interface.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8042));

/// Settings of the API manifold.
#[derive(Clone)]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// What `/v2/status` shows: the agent's engine report, as a rule.
    pub status: StatusFn,
}

impl ApiConfig {
    /// The API on `listen`, showing `status` at `/v2/status`.
    pub fn new(listen: SocketAddr, status: StatusFn) -> Self {
        Self { listen, status }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}
