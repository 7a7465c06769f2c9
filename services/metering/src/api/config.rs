//! Where the HTTP API listens, who gets in, and what it shows at `/v2/status`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use serde_json::Value;

use super::auth::Authenticator;
use crate::alarm_changes::ChangeNotifier;
use crate::alarm_notifier::ActionPolicy;

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
    /// Where tokens are checked; `None` (or one with no source) means no authentication, and
    /// then the API listens on loopback only unless [`insecure_no_auth`](Self::insecure_no_auth).
    pub auth: Option<Authenticator>,
    /// Serve without authentication on a non-loopback address (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// Which alarm actions are accepted; made strict when authentication is on.
    pub actions: ActionPolicy,
    /// Where Aodh's alarm change notifications go; `None` publishes none (an API without a
    /// bus).
    pub changes: Option<ChangeNotifier>,
    /// The process's `/metrics` (behind the API's authentication) and `/health` (open), served
    /// beside the API (all-in-one does); `None`: the API's own `/health`, which only says it
    /// answers.
    pub admin: Option<AdminRoutes>,
}

/// The admin routes an API serves beside its own (see `tidings_runtime::admin`).
#[derive(Clone, Debug)]
pub struct AdminRoutes {
    /// `/metrics`.
    pub metrics: axum::Router,
    /// `/health`.
    pub health: axum::Router,
}

impl ApiConfig {
    /// The API on `listen`, showing `status` at `/v2/status`, without authentication, with the
    /// default action policy.
    pub fn new(listen: SocketAddr, status: StatusFn) -> Self {
        Self {
            listen,
            status,
            auth: None,
            insecure_no_auth: false,
            actions: ActionPolicy::default(),
            changes: None,
            admin: None,
        }
    }

    /// The same publishing alarm change notifications with `changes`.
    #[must_use]
    pub fn with_changes(mut self, changes: ChangeNotifier) -> Self {
        self.changes = Some(changes);
        self
    }

    /// The same with requests authenticated by `auth`.
    #[must_use]
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The same with actions held to `policy`.
    #[must_use]
    pub fn with_action_policy(mut self, policy: ActionPolicy) -> Self {
        self.actions = policy;
        self
    }

    /// The authenticator, when it has a source of tokens.
    pub(crate) fn authenticator(&self) -> Option<Authenticator> {
        self.auth.clone().filter(Authenticator::is_configured)
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("auth", &self.auth)
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("actions", &self.actions)
            .finish_non_exhaustive()
    }
}
