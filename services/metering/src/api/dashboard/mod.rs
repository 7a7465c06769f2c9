//! A dashboard for a person with a browser, at `/`: each meter with a chart of its statistics
//! over a chosen span, the alarms with their state, reason and latest history, and the health
//! of every agent the engine reports. It refreshes by itself.
//!
//! The page, its script and its style are compiled into the binary (`include_str!`) and load
//! nothing from elsewhere, so it works on a machine without internet. They are served without
//! authentication; the data comes from the API's own routes, with the token the page asks for
//! when the API answers 401 (kept in the tab's session storage only).

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// The page's own routes (its script and style); the page itself is served at `/`.
pub(super) fn routes() -> Router {
    Router::new()
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
}

/// The page.
pub(super) fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}
