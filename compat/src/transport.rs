//! The blocking side's connection: a [`Transport`] plus the Tokio runtime that drives it, so
//! that plain threads can call, cast and notify without any async code.
//!
//! # Owned or borrowed runtime
//!
//! - [`BlockingTransport::connect`] is for programs with no async part (scripts, a legacy
//!   service's threads). It **owns** a private runtime of one worker thread
//!   (`tidings-client-rt`). One worker, not a current-thread runtime, because the transport has
//!   background work that must run *between* calls too — AMQP heartbeats, the reply queue's
//!   consumer, reconnection — and a current-thread runtime only runs while some thread sits in
//!   `block_on`. The transport is closed and the runtime shut down when the last clone (and
//!   every client made from it) is dropped.
//! - [`BlockingTransport::with_handle`] **borrows** a running runtime: for a service that is
//!   half ported, whose blocking handlers (on a [`BlockingPool`](crate::BlockingPool)) call
//!   other services over the service's own transport. The runtime must be running: a
//!   multi-thread runtime, or a current-thread one whose `block_on` is active on some thread
//!   (as under `#[tokio::main(flavor = "current_thread")]`).
//!
//! Either way an operation is spawned onto the runtime as a task and the calling thread waits
//! for it; the call's own timeout (60 s by default) bounds the wait.
//!
//! # Inside an async context
//!
//! Blocking on a Tokio worker stalls every task on it, and on a current-thread runtime the task
//! the caller waits for could never run: a deadlock. So every blocking operation first checks
//! `tokio::runtime::Handle::try_current()` and, when the calling thread belongs to a runtime,
//! returns [`ClientError::InsideAsyncContext`] at once, having sent nothing. The check is
//! deliberately strict: it also refuses inside `spawn_blocking` and `block_in_place`, where
//! blocking would be allowed, because there the async API is one `Handle::block_on` away and a
//! rule with no exceptions is easier to keep. Pool threads of a `BlockingPool` are plain
//! threads, so blocking handlers may use the blocking client.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tidings::transport::{TransportError, TransportOptions};
use tidings::{Transport, TransportUrl};
use tokio::runtime::{Handle, Runtime};

use crate::error::ClientError;

/// How long dropping an owned runtime waits for the transport to close and tasks to stop.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// A transport for plain threads. Cheap to clone; clones share the connection and runtime.
///
/// ```
/// use tidings::Target;
/// use tidings_compat::{BlockingClient, BlockingTransport};
///
/// # fn main() -> Result<(), tidings_compat::ClientError> {
/// let transport = BlockingTransport::connect("memory://doc-blocking")?;
/// let client = BlockingClient::new(&transport, Target::topic("nobody"))
///     .timeout(std::time::Duration::from_millis(100));
/// let error = client
///     .call::<serde_json::Value>(&tidings::Context::new(), "ping", serde_json::json!({}))
///     .unwrap_err();
/// assert!(error.is_timeout());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BlockingTransport {
    inner: Arc<Bridge>,
}

struct Bridge {
    transport: Transport,
    handle: Handle,
    /// `Some` when this bridge owns its runtime; taken on drop to shut it down.
    owned: Option<Runtime>,
}

impl fmt::Debug for BlockingTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingTransport")
            .field("transport", &self.inner.transport)
            .field("owns_runtime", &self.inner.owned.is_some())
            .finish()
    }
}

impl BlockingTransport {
    /// Connects to `url` on a private one-worker runtime (see the module docs).
    pub fn connect(url: &str) -> Result<Self, ClientError> {
        let url = url.parse::<TransportUrl>().map_err(TransportError::from)?;
        Self::connect_with(url, TransportOptions::default())
    }

    /// Connects to `url` with `options` on a private one-worker runtime.
    pub fn connect_with(url: TransportUrl, options: TransportOptions) -> Result<Self, ClientError> {
        refuse_inside_runtime("BlockingTransport::connect")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tidings-client-rt")
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let handle = runtime.handle().clone();
        let connecting = handle.spawn(Transport::connect_with(url, options));
        let transport = futures::executor::block_on(connecting)
            .map_err(|error| joined("BlockingTransport::connect", error))??;
        Ok(Self {
            inner: Arc::new(Bridge {
                transport,
                handle,
                owned: Some(runtime),
            }),
        })
    }

    /// Uses `transport` on the running runtime of `handle` (see the module docs); nothing is
    /// closed on drop, the transport stays its owner's.
    pub fn with_handle(transport: Transport, handle: Handle) -> Self {
        Self {
            inner: Arc::new(Bridge {
                transport,
                handle,
                owned: None,
            }),
        }
    }

    /// The async transport underneath, for the parts of the program that are async already.
    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// The runtime operations run on.
    pub fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    /// Closes the transport now (the reply queue goes, connections close). Clients made from it
    /// fail afterwards. Dropping the last clone of an owned transport does the same.
    pub fn close(&self) -> Result<(), ClientError> {
        let transport = self.inner.transport.clone();
        self.block_on("BlockingTransport::close", async move {
            transport.close().await;
        })
    }

    /// Runs `work` on the runtime and waits for it on this thread.
    pub(crate) fn block_on<F>(
        &self,
        operation: &'static str,
        work: F,
    ) -> Result<F::Output, ClientError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        refuse_inside_runtime(operation)?;
        let task = self.inner.handle.spawn(work);
        futures::executor::block_on(task).map_err(|error| joined(operation, error))
    }
}

/// The rule of the module docs: no blocking on a runtime's threads.
fn refuse_inside_runtime(operation: &'static str) -> Result<(), ClientError> {
    match Handle::try_current() {
        Ok(_) => Err(ClientError::InsideAsyncContext { operation }),
        Err(_) => Ok(()),
    }
}

/// A task that did not finish: the runtime shut down, or the task panicked — a bug, passed on
/// as the panic it was rather than hidden in an error.
fn joined(operation: &'static str, error: tokio::task::JoinError) -> ClientError {
    match error.try_into_panic() {
        Ok(payload) => std::panic::resume_unwind(payload),
        Err(_) => ClientError::RuntimeShutDown { operation },
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let Some(runtime) = self.owned.take() else {
            return;
        };
        if Handle::try_current().is_ok() {
            // Dropped from async code: closing would block a worker, so the connection just goes
            // with the runtime (the broker notices the closed socket).
            runtime.shutdown_background();
            return;
        }
        let transport = self.transport.clone();
        let closing = runtime.spawn(async move {
            let _ = tokio::time::timeout(CLOSE_DEADLINE, transport.close()).await;
        });
        let _ = futures::executor::block_on(closing);
        runtime.shutdown_timeout(CLOSE_DEADLINE);
    }
}
