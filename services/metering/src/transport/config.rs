//! What the transport manifold needs.

use tidings::TransportUrl;

/// Settings of the transport manifold.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Where the bus is (`rabbit://…`, or `memory://NAME` within one process).
    pub url: TransportUrl,
}
