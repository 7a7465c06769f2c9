//! oslo.messaging's dispatch rules: which endpoint serves a request, and the errors when none
//! does.
//!
//! Endpoints are tried in order. One matches when it accepts the request's namespace and its
//! version can serve the requested one (a missing version means 1.0). Methods whose names start
//! with `_` are never dispatched. Some compatible endpoint but no such method → `NoSuchMethod`;
//! no compatible endpoint (a namespace mismatch included) → `UnsupportedVersion`.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use serde_json::{Map, Value};
use tower::ServiceExt;

use super::endpoint::{Endpoint, MethodCall, MethodService};
use crate::{Context, RemoteError, Version};

/// The ordered endpoints of one server.
#[derive(Clone, Debug, Default)]
pub struct Dispatcher {
    endpoints: Vec<Endpoint>,
}

impl Dispatcher {
    /// A dispatcher over `endpoints`, tried in order.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self { endpoints }
    }

    /// The endpoints, in dispatch order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Finds the service for `method` under oslo's rules.
    pub fn resolve(
        &self,
        namespace: Option<&str>,
        version: Option<&str>,
        method: &str,
    ) -> Result<MethodService, RemoteError> {
        let version_text = version.unwrap_or("1.0");
        // An unparseable version is served by nobody, like any version no endpoint supports.
        let requested: Option<Version> = version_text.parse().ok();
        let mut found_compatible = false;
        for endpoint in &self.endpoints {
            let compatible = endpoint.get_namespace() == namespace
                && requested.is_some_and(|v| endpoint.get_version().can_serve(&v));
            if !compatible {
                continue;
            }
            if !method.starts_with('_') {
                if let Some(service) = endpoint.method_service(method) {
                    return Ok(service);
                }
            }
            found_compatible = true;
        }
        Err(if found_compatible {
            RemoteError::no_such_method(method)
        } else {
            RemoteError::unsupported_version(version_text, method)
        })
    }

    /// Resolves and runs `method`; a panicking handler becomes a [`RemoteError`].
    pub async fn dispatch(
        &self,
        namespace: Option<&str>,
        version: Option<&str>,
        method: &str,
        context: Context,
        args: Map<String, Value>,
    ) -> Result<Value, RemoteError> {
        let service = self.resolve(namespace, version, method).inspect_err(|_| {
            crate::metrics::record_server_refusal(crate::metrics::outcome::UNSUPPORTED);
        })?;
        let call = MethodCall {
            method: method.to_owned(),
            context,
            args,
        };
        match AssertUnwindSafe(service.oneshot(call)).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                tracing::error!(method, %detail, "RPC handler panicked");
                Err(RemoteError::handler_panicked(method, &detail))
            }
        }
    }
}
