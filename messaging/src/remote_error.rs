//! Errors that cross the wire: what a handler's failure looks like to the caller.
//!
//! oslo.messaging serialises a failed call as `{class, module, message, tb, args, kwargs}`; a
//! Python caller re-raises it by class and module. This module owns that shape and the errors
//! the dispatcher itself raises, with oslo's exact class names and messages.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Module of the dispatcher's own errors, as Python callers know them.
pub const DISPATCHER_MODULE: &str = "oslo_messaging.rpc.dispatcher";

/// A failure raised by a remote handler, as it travels in a reply's `failure` field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    /// Exception class name, e.g. `NoSuchMethod` or `ValueError`.
    #[serde(rename = "class")]
    pub class: String,
    /// Python module of the class, e.g. `builtins`.
    pub module: String,
    /// Human-readable message.
    pub message: String,
    /// Traceback lines (empty when the sender has none to share).
    #[serde(default)]
    pub tb: Vec<String>,
    /// Positional arguments of the exception.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments of the exception.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl RemoteError {
    /// A failure of `class` in `module` with `message`; `args` defaults to `[message]`, as a
    /// Python exception constructed from one string has.
    pub fn new(
        class: impl Into<String>,
        module: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        Self {
            class: class.into(),
            module: module.into(),
            args: vec![Value::String(message.clone())],
            message,
            tb: Vec::new(),
            kwargs: Map::new(),
        }
    }

    /// Replaces the keyword arguments.
    #[must_use]
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// Replaces the traceback lines.
    #[must_use]
    pub fn with_traceback(mut self, tb: Vec<String>) -> Self {
        self.tb = tb;
        self
    }

    /// oslo's `NoSuchMethod`: some endpoint accepts the version but none has the method.
    pub fn no_such_method(method: &str) -> Self {
        Self::new(
            "NoSuchMethod",
            DISPATCHER_MODULE,
            format!("Endpoint does not support RPC method {method}"),
        )
    }

    /// oslo's `UnsupportedVersion`: no endpoint accepts the namespace and version.
    pub fn unsupported_version(version: &str, method: &str) -> Self {
        // Python's exception carries no kwargs, so neither do we: peers see the same failure.
        Self::new(
            "UnsupportedVersion",
            DISPATCHER_MODULE,
            format!("Endpoint does not support RPC version {version}. Attempted method: {method}"),
        )
    }

    /// The arguments did not fit the method: Python raises `TypeError` in the same case.
    pub fn bad_arguments(method: &str, detail: impl fmt::Display) -> Self {
        // The detail can quote the caller's values: only its start is sent back.
        let detail = detail.to_string();
        Self::new(
            "TypeError",
            "builtins",
            format!(
                "{method}() got invalid arguments: {}",
                crate::codec::limits::truncate_for_log(&detail)
            ),
        )
    }

    /// A handler panicked; the panic message is passed on, the server keeps serving.
    pub fn handler_panicked(method: &str, detail: &str) -> Self {
        Self::new(
            "HandlerPanicked",
            "tidings.rpc",
            format!("handler for {method} panicked: {detail}"),
        )
    }

    /// Whether this is the dispatcher's `NoSuchMethod`.
    pub fn is_no_such_method(&self) -> bool {
        self.class == "NoSuchMethod" && self.module == DISPATCHER_MODULE
    }

    /// Whether this is the dispatcher's `UnsupportedVersion`.
    pub fn is_unsupported_version(&self) -> bool {
        self.class == "UnsupportedVersion" && self.module == DISPATCHER_MODULE
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}: {}", self.module, self.class, self.message)
    }
}

impl std::error::Error for RemoteError {}

impl From<std::convert::Infallible> for RemoteError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}
