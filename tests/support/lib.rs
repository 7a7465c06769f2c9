//! Helpers shared by the cross-crate suites: a fresh, isolated bus per test on each transport,
//! a small test endpoint, the Python peers of the interop suites ([`python`]), the sustained
//! load of the fault suites ([`load`]) and the 3-node test cluster ([`cluster`]).

pub mod cluster;
pub mod load;
pub mod postgres;
pub mod python;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tidings::rpc::Endpoint;
use tidings::trace::{TraceParent, TRACEPARENT_KEY};
use tidings::{Context, RemoteError, Transport, Version};

/// A bus isolated from every other test: its own memory broker, or on RabbitMQ its own vhost,
/// created for the test and deleted when the bus drops (even when the test fails).
#[derive(Debug)]
pub struct Bus {
    url: String,
    vhost: Option<String>,
}

/// The machine's RabbitMQ, overridable for other set-ups.
pub fn rabbit_host() -> String {
    std::env::var("TIDINGS_TEST_RABBIT").unwrap_or_else(|_| "guest:guest@127.0.0.1:5672".to_owned())
}

/// Runs `rabbitmqctl` with `args`; panics with its output when it fails, because a test that
/// needs the broker must fail loudly without it.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("rabbitmqctl {args:?} could not run: {e}; RabbitMQ is needed (`bash scripts/test --setup` installs and starts it)")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {stdout}{}; RabbitMQ is needed (`bash scripts/test --setup` installs and starts it)",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

impl Bus {
    /// A fresh in-process broker.
    pub fn memory() -> Self {
        Self {
            url: format!("memory://test-{}", uuid::Uuid::new_v4().simple()),
            vhost: None,
        }
    }

    /// A fresh vhost on the machine's RabbitMQ.
    pub fn amqp() -> Self {
        Self::amqp_with_query("")
    }

    /// A fresh vhost on the machine's RabbitMQ, with `query` (e.g. `amqp_durable_queues=true`)
    /// as the URL's query string.
    pub fn amqp_with_query(query: &str) -> Self {
        let vhost = format!("tidings-test-{}", uuid::Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        Self {
            url: format!("rabbit://{}/{vhost}{query}", rabbit_host()),
            vhost: Some(vhost),
        }
    }

    /// The vhost of an AMQP bus.
    pub fn vhost(&self) -> Option<&str> {
        self.vhost.as_deref()
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

impl Drop for Bus {
    fn drop(&mut self) {
        if let Some(vhost) = &self.vhost {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "delete_vhost", vhost])
                .output();
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

/// Removes the context's `traceparent`, which must hold a valid W3C value, and returns it
/// parsed; what is left can be compared with the context the caller sent.
pub fn take_trace_parent(ctx: &mut Context) -> TraceParent {
    let parent = ctx
        .trace_parent()
        .unwrap_or_else(|| panic!("no valid traceparent in {ctx:?}"));
    ctx.remove(TRACEPARENT_KEY);
    parent
}
