//! The HTTP API, Aodh v2's for threshold alarms (list, query, create, show, change, delete,
//! state, history and its search, capabilities, the version document), Ceilometer v2's for
//! meters and their statistics, `/health`, the engine's report at `/v2/status`, and a dashboard
//! for browsers at `/` ([`dashboard`]).
//!
//! Who may do what is `auth`'s: every route but `/health` needs a token when authentication is
//! configured, and a user reaches only its project's alarms and statistics. Without
//! authentication the API refuses to listen anywhere but loopback unless the operator says
//! `--insecure-no-auth` ([`ApiConfig::insecure_no_auth`]).
//!
//! Bounds: request bodies of at most [`MAX_BODY_BYTES`]; lists in pages (`limit`, default
//! [`query::DEFAULT_PAGE`], at most [`query::MAX_PAGE`]; `marker` for alarms); alarm fields as
//! `body` says. Alarm actions are checked against the action policy when an alarm is created or
//! changed (400 naming the rule), and shown with their credentials masked, as is `/v2/status`.
//!
//! [`start`] serves it without the engine; [`manifold`] declares it for the engine, and
//! [`ApiConfig`] says where it listens and who gets in.

mod alarms;
pub mod auth;
mod body;
pub mod complex_query;
mod config;
pub mod dashboard;
mod manifold;
mod meters;
pub mod query;
mod root;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use serde_json::{json, Value};
use tidings_runtime::{TaskWorker, WorkerError};
use tokio_util::sync::CancellationToken;

use self::auth::Access;
use super::alarm_changes::ChangeNotifier;
use super::alarm_notifier::ActionPolicy;
use super::model::AlarmChange;
use super::secrets;
use super::store::{Store, StoreError};

pub use self::auth::{Authenticator, Identity, KeystoneConfig, TokenTable};
pub use self::body::{alarm_from_body, MAX_ACTIONS};
pub use config::{AdminRoutes, ApiConfig, StatusFn, DEFAULT_LISTEN};
pub use manifold::{manifold, ApiInputs};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct Api {
    store: Arc<dyn Store>,
    status: StatusFn,
    policy: Arc<ActionPolicy>,
    changes: Option<ChangeNotifier>,
}

impl Api {
    /// Announces a stored change, when the API has a bus.
    fn publish(&self, change: &AlarmChange) {
        if let Some(changes) = &self.changes {
            changes.publish(change);
        }
    }
}

/// The API's routes over `store`, as `config` says (its listening address aside).
pub fn router(store: Arc<dyn Store>, config: &ApiConfig) -> Router {
    let auth = config.authenticator();
    let mut policy = config.actions.clone();
    // Once users are not all the operator, an alarm must not reach the operator's own networks.
    policy.strict |= auth.is_some();
    let api = Api {
        store,
        status: config.status.clone(),
        policy: Arc::new(policy),
        changes: config.changes.clone(),
    };
    let mut authenticated = Router::new()
        .route("/v2/status", get(status_report))
        .route("/v2/capabilities", get(root::capabilities))
        .route("/v2/capabilities/", get(root::capabilities))
        .route(
            "/v2/alarms",
            get(alarms::listing::list).post(alarms::create),
        )
        .route(
            "/v2/alarms/{id}",
            get(alarms::show).put(alarms::update).delete(alarms::delete),
        )
        .route(
            "/v2/alarms/{id}/state",
            get(alarms::get_state).put(alarms::put_state),
        )
        .route("/v2/alarms/{id}/history", get(alarms::history::history))
        .route("/v2/query/alarms", post(alarms::listing::query))
        .route("/v2/query/alarms/history", post(alarms::history::search))
        .route("/v2/meters", get(meters::list))
        .route("/v2/meters/{name}/statistics", get(meters::statistics))
        .with_state(api);
    let health = match &config.admin {
        Some(admin) => {
            authenticated = authenticated.merge(admin.metrics.clone());
            admin.health.clone()
        }
        None => Router::new().route("/health", get(health)),
    };
    let authenticated =
        authenticated.route_layer(middleware::from_fn_with_state(auth, auth::authenticate));
    // The version document and the dashboard's page and assets are open: the data they show
    // comes from the authenticated routes.
    health
        .route("/", get(root::index))
        .merge(dashboard::routes())
        .merge(authenticated)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// An error response: a status and a message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }

    fn alarm_not_found(id: &str) -> Self {
        Self(StatusCode::NOT_FOUND, format!("Alarm {id} not found"))
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.0
    }

    /// The message answered.
    pub fn message(&self) -> &str {
        &self.1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            // WSME's fault body, as Aodh answers: who is at fault, and what went wrong.
            Json(json!({"error_message": {
                "faultcode": if self.0.is_server_error() { "Server" } else { "Client" },
                "faultstring": secrets::mask_text(&self.1),
                "debuginfo": null,
            }})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NoSuchAlarm(id) => Self::alarm_not_found(&id),
            StoreError::AlarmExists(id) => {
                Self(StatusCode::CONFLICT, format!("Alarm {id} already exists"))
            }
            other => Self(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

/// Any other route: Aodh's 404 body; Aodh's later APIs (quotas, metrics) say they are not
/// served rather than look like a typo.
async fn not_found(uri: axum::http::Uri) -> ApiError {
    let path = uri.path();
    let message = if path.starts_with("/v2/quotas") || path.starts_with("/v2/metrics") {
        "The resource could not be found: quotas and metrics came with Aodh 13 and later; \
         tidings serves Aodh's threshold alarm API (10 to 12)"
            .to_owned()
    } else {
        "The resource could not be found.".to_owned()
    };
    ApiError(StatusCode::NOT_FOUND, message)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The engine's report, for admins (and the operator); credentials masked.
async fn status_report(
    State(api): State<Api>,
    Extension(access): Extension<Access>,
) -> Result<Json<Value>, ApiError> {
    if !access.sees_all() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "the service status is for admins".to_owned(),
        ));
    }
    Ok(Json(secrets::mask_json(&(api.status)())))
}

/// Why the API did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No authentication is configured and the address is not loopback.
    #[error(
        "refusing to serve the metering API without authentication on {0}, which is not a \
         loopback address: give a token file (--auth-tokens FILE or [api] auth_tokens_file) or an \
         identity service ([api] keystone_url), listen on 127.0.0.1, or pass --insecure-no-auth \
         to let anyone who reaches the port manage every alarm"
    )]
    Unauthenticated(SocketAddr),
    /// The address cannot be bound.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Serves the API as `config` says until the worker is killed.
pub async fn start(
    config: &ApiConfig,
    store: Arc<dyn Store>,
) -> Result<(TaskWorker, SocketAddr), StartError> {
    let authenticated = config.authenticator().is_some();
    let listen = config.listen;
    if !authenticated && !listen.ip().is_loopback() && !config.insecure_no_auth {
        return Err(StartError::Unauthenticated(listen));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind { listen, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { listen, source })?;
    let app = router(store, config);
    let worker = TaskWorker::spawn(move |stop: CancellationToken| async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(WorkerError::failed)
    });
    if authenticated {
        tracing::info!(%bound, "metering API listening; requests need X-Auth-Token");
    } else if bound.ip().is_loopback() {
        tracing::warn!(%bound, "metering API without authentication (no token file, no identity service): serving on loopback only");
    } else {
        tracing::error!(%bound, "INSECURE: metering API without authentication on a non-loopback address (--insecure-no-auth): anyone who reaches it manages every alarm");
    }
    Ok((worker, bound))
}
