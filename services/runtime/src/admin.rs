//! The admin listener of a process: Prometheus text at `/metrics` and a health check at
//! `/health`, for the scraper and for the load balancer or orchestrator in front of it.
//!
//! - [`prometheus`] installs the process's `metrics` recorder (once; later calls return the same
//!   handle). Everything counted through the `metrics` facade from then on shows at `/metrics`:
//!   the library's `tidings_*` metrics, the services' own, and, from the engine's report at
//!   each scrape, `tidings_engine_manifold_up{manifold}` (1 when the manifold runs and its worker
//!   reports no problem).
//! - `/health` answers 200 when the engine runs and every manifold is healthy, 503 otherwise,
//!   with a JSON body naming each manifold's state and, for the unhealthy ones, why:
//!   `{"status": "unhealthy", "manifolds": {"store": {"state": "started", "problem": "…"}}}`.
//!   Without an engine (a process that runs no manifolds) it answers 200.
//!
//! [`router`] gives both routes for a server of the caller's (the metering API serves them on
//! its own port too); [`AdminServer::bind`] serves them alone on an address.
//!
//! The routes show counters and states, never configuration or credentials, and change nothing.
//! Still, by the project's rule, [`AdminServer::bind`] refuses an address beyond loopback unless
//! the caller passes [`Exposure::Public`] (the operator's explicit flag).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::engine::Engine;
use super::report::ManifoldState;

/// Whether each manifold of the engine runs and is healthy (1) or not (0), by `manifold`.
pub const ENGINE_MANIFOLD_UP: &str = "tidings_engine_manifold_up";

/// Bucket bounds, in seconds, of every `…_duration_seconds` histogram: from a call within one
/// machine (~100 µs) to oslo.messaging's default call timeout (60 s).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// How often histograms are folded into their buckets when nobody scrapes, so their buffers
/// stay small.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The content type of Prometheus' text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Another `metrics` recorder was installed in this process first.
    #[error("cannot install the Prometheus recorder: {0}")]
    Recorder(String),
    /// The address is beyond loopback and the operator did not say it may be.
    #[error("the admin listener would serve {0} beyond loopback without authentication; listen on 127.0.0.1, or pass --admin-public to serve metrics and health to the network")]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether the admin listener may serve beyond loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exposure {
    /// Loopback addresses only (the default).
    #[default]
    LoopbackOnly,
    /// Any address: the operator said so.
    Public,
}

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first call as the global `metrics`
/// recorder, with [`DURATION_BUCKETS`] for every metric named `…_duration_seconds`.
///
/// Fails when another recorder was installed first (by the application, say): that recorder
/// then sees the metrics, and exporting them is its business.
pub fn prometheus() -> Result<PrometheusHandle, AdminError> {
    RECORDER
        .get_or_init(|| {
            let install = || -> Result<PrometheusHandle, BuildError> {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Suffix("_duration_seconds".to_owned()),
                        DURATION_BUCKETS,
                    )?
                    .install_recorder()
            };
            install().map_err(|error| error.to_string())
        })
        .clone()
        .map_err(AdminError::Recorder)
}

/// What the admin routes read.
#[derive(Clone)]
struct Admin {
    metrics: PrometheusHandle,
    engine: Option<Engine>,
}

/// `/metrics` and `/health` for `engine` (none: a process without manifolds), for a server of
/// the caller's. Installs the recorder (see [`prometheus`]).
pub fn router(engine: Option<Engine>) -> Result<Router, AdminError> {
    Ok(metrics_router(engine.clone())?.merge(health_router(engine)))
}

/// `/metrics` alone, for a server that puts it behind its own authentication.
pub fn metrics_router(engine: Option<Engine>) -> Result<Router, AdminError> {
    let admin = Admin {
        metrics: prometheus()?,
        engine,
    };
    Ok(Router::new()
        .route("/metrics", get(metrics))
        .with_state(admin))
}

/// `/health` alone.
pub fn health_router(engine: Option<Engine>) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(engine)
}

async fn metrics(State(admin): State<Admin>) -> Response {
    if let Some(engine) = &admin.engine {
        for (name, manifold) in engine.report().manifolds {
            let up = if manifold.is_healthy() { 1.0 } else { 0.0 };
            metrics::gauge!(ENGINE_MANIFOLD_UP, "manifold" => name).set(up);
        }
    }
    admin.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        admin.metrics.render(),
    )
        .into_response()
}

async fn health(State(engine): State<Option<Engine>>) -> Response {
    let Some(engine) = &engine else {
        return (StatusCode::OK, Json(json!({"status": "ok"}))).into_response();
    };
    let report = engine.report();
    let mut manifolds = Map::new();
    for (name, manifold) in &report.manifolds {
        let state = match manifold.state {
            ManifoldState::Starting => "starting",
            ManifoldState::Started => "started",
            ManifoldState::Stopping => "stopping",
            ManifoldState::Stopped => "stopped",
        };
        let mut entry = json!({ "state": state });
        if let Some(why) = manifold.unhealthy_because() {
            entry["problem"] = Value::String(why);
        }
        manifolds.insert(name.clone(), entry);
    }
    let (code, status) = match report.health() {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
    };
    let mut body = json!({ "status": status, "manifolds": manifolds });
    if let Some(error) = &report.error {
        body["error"] = Value::String(error.clone());
    }
    (code, Json(body)).into_response()
}

/// The admin listener, serving [`router`] on its own address until dropped or
/// [`shut down`](Self::shutdown).
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` and serves `/metrics` and `/health` for `engine` there. Must run inside a
    /// Tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        exposure: Exposure,
        engine: Option<Engine>,
    ) -> Result<Self, AdminError> {
        if !addr.ip().is_loopback() && exposure != Exposure::Public {
            return Err(AdminError::NotLoopback(addr));
        }
        let app = router(engine)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let upkeep = prometheus()?;
        let task = tokio::spawn(async move {
            let serving = axum::serve(listener, app)
                .with_graceful_shutdown(stopping.cancelled_owned())
                .into_future();
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(serving);
            loop {
                tokio::select! {
                    served = &mut serving => {
                        if let Err(error) = served {
                            tracing::warn!(%error, "admin listener failed");
                        }
                        return;
                    }
                    _ = every.tick() => upkeep.run_upkeep(),
                }
            }
        });
        tracing::info!(%addr, "admin listener: /metrics and /health");
        Ok(Self {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on (the port chosen when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and waits for the server to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let Some(task) = self.task.take() else { return };
        if let Err(error) = task.await {
            tracing::warn!(%error, "admin listener task failed");
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
