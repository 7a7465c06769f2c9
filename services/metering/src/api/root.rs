//! What the API says about itself: Aodh's version document and `/v2/capabilities`.
//!
//! `GET /` answers the version document to API clients and the dashboard to browsers (those
//! that accept `text/html`), so one address serves both.

use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::dashboard;

/// `GET /`: the dashboard for a browser, else Aodh's version document naming `v2`.
pub(super) async fn index(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        return dashboard::page().into_response();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| h.len() <= 255 && !h.contains(['"', '<', '>', ' ']))
        .unwrap_or("localhost");
    Json(versions(&format!("http://{host}"))).into_response()
}

/// Aodh's version document for an API at `base`.
fn versions(base: &str) -> Value {
    json!({"versions": {"values": [{
        "id": "v2",
        "status": "stable",
        "updated": "2013-02-13T00:00:00Z",
        "links": [
            {"href": format!("{base}/v2"), "rel": "self"},
            {"href": "https://docs.openstack.org/", "rel": "describedby", "type": "text/html"}
        ],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.telemetry-v2+json"},
            {"base": "application/xml", "type": "application/vnd.openstack.telemetry-v2+xml"}
        ]
    }]}})
}

/// `GET /v2/capabilities`: what this API and its store do, in Aodh's flattened keys.
pub(super) async fn capabilities() -> Json<Value> {
    Json(json!({
        "api": {
            "alarms:query:simple": true,
            "alarms:query:complex": true,
            "alarms:history:query:simple": true,
            "alarms:history:query:complex": true
        },
        "alarm_storage": {"storage:production_ready": true}
    }))
}
