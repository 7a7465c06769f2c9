//! The bus as an agent's dependency: the manifold that connects to the transport named by a
//! URL and offers it to the other manifolds as a [`tidings::Transport`]. It owns the
//! connection's lifetime (closed when the worker stops), not what travels over it.

mod config;
mod manifold;

pub use config::TransportConfig;
pub use manifold::manifold;
