//! Helpers shared by the cross-crate suites: a fresh, isolated bus per test on each transport,
//! and a small test endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tidings::rpc::Endpoint;
use tidings::{Context, RemoteError, Transport, Version};

/// A bus isolated from every other test: its own memory broker (or, for AMQP, its own vhost).
#[derive(Debug)]
pub struct Bus {
    url: String,
}

impl Bus {
    /// A fresh in-process broker.
    pub fn memory() -> Self {
        Self {
            url: format!("memory://test-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// The URL of this bus.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new transport (connection) on this bus; several act as several processes.
    pub async fn transport(&self) -> Transport {
        match Transport::connect(&self.url).await {
            Ok(transport) => transport,
            Err(error) => panic!("cannot connect to {}: {error}", self.url),
        }
    }
}

/// Records what the test endpoint saw.
#[derive(Debug, Default)]
pub struct Probe {
    /// Calls currently running.
    pub running: AtomicUsize,
    /// Highest number of calls running at once.
    pub peak: AtomicUsize,
    /// Calls finished.
    pub finished: AtomicUsize,
    /// Casts received.
    pub casts: AtomicUsize,
}

#[derive(Deserialize)]
struct Echo {
    x: Value,
}

#[derive(Deserialize)]
struct Sleep {
    secs: f64,
}

#[derive(Deserialize)]
struct Note {
    #[allow(dead_code)]
    text: String,
}

#[derive(Deserialize)]
struct Raise {
    class: String,
    message: String,
}

/// The endpoint the suites serve (version 1.3, no namespace): `echo`, `context`, `sleep`,
/// `note` (counts casts), `raise`, `whoami`, `panic`.
pub fn test_endpoint(name: &str, probe: Arc<Probe>) -> Endpoint {
    let who = name.to_owned();
    let sleeping = probe.clone();
    let noting = probe;
    Endpoint::new()
        .version(Version::new(1, 3))
        .method("echo", |_ctx: Context, Echo { x }: Echo| async move {
            Ok::<_, RemoteError>(x)
        })
        .method(
            "context",
            |ctx: Context, _: tidings::rpc::NoArgs| async move { Ok::<_, RemoteError>(ctx) },
        )
        .method("sleep", move |_ctx: Context, Sleep { secs }: Sleep| {
            let probe = sleeping.clone();
            async move {
                let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
                probe.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                probe.running.fetch_sub(1, Ordering::SeqCst);
                probe.finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, RemoteError>("slept")
            }
        })
        .method("note", move |_ctx: Context, _: Note| {
            let probe = noting.clone();
            async move {
                probe.casts.fetch_add(1, Ordering::SeqCst);
                Ok::<_, RemoteError>(())
            }
        })
        .method(
            "raise",
            |_ctx: Context, Raise { class, message }: Raise| async move {
                Err::<(), _>(RemoteError::new(class, "tests.module", message))
            },
        )
        .method("whoami", move |_ctx: Context, _: tidings::rpc::NoArgs| {
            let who = who.clone();
            async move { Ok::<_, RemoteError>(who) }
        })
        .method(
            "panic",
            |_ctx: Context, _: tidings::rpc::NoArgs| async move {
                if true {
                    panic!("deliberate panic in a handler");
                }
                Ok::<_, RemoteError>(())
            },
        )
}

/// Waits until `condition` holds, checking whenever `tick` elapses, up to `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}
