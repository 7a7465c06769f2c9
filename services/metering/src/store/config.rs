//! What the store manifold needs.

use super::default_url;

/// Settings of the store manifold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Which store to open: `sqlite://PATH`, `sqlite::memory:` or `postgres://…` (see
    /// [`open`](super::open)). May hold a password: show it through [`redact`](super::redact).
    pub url: String,
}

impl StoreConfig {
    /// The store at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }
}

impl Default for StoreConfig {
    /// The embedded SQLite file of [`default_url`].
    fn default() -> Self {
        Self::new(default_url())
    }
}
