//! Consumers the broker ends while the connection stays up: a queue deleted by an operator, a
//! queue re-declared by a peer with other arguments. Each must come back on its own, on the
//! same connection, with backoff between failed attempts, and without disturbing the
//! subscription's other queues.
//!
//! The broker is the machine's RabbitMQ; each test has its own vhost. The "operator" and the
//! "peer" are plain AMQP connections made here with lapin.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};
use tidings::notify::NotificationEndpoint;
use tidings::notify::{IncomingNotification, NotificationListener, Notifier, Outcome, Priority};
use tidings::rpc::{RpcClient, RpcServer};
use tidings::transport::TransportError;
use tidings::{Context, Target, Transport};
use tidings_suites::{rabbit_host, rabbitmqctl, test_endpoint, Bus};

const TOPIC: &str = "recovery";
/// How long a queue may take to be consumed again. The first attempt is immediate; a generous
/// margin covers a busy machine.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);

/// An AMQP channel on the bus's vhost, as an operator's or another peer's.
async fn operator(bus: &Bus) -> lapin::Channel {
    let vhost = bus.vhost().expect("an AMQP bus");
    let url = format!("amqp://{}/{vhost}", rabbit_host());
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("operator cannot connect to {url}: {e}"));
    let channel = connection.create_channel().await.unwrap();
    // The connection lives as long as the channel is used: leak it into the test's lifetime.
    std::mem::forget(connection);
    channel
}

async fn delete_queue(channel: &lapin::Channel, queue: &str) {
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("could not delete {queue}: {e}"));
}

/// Declares `queue` durable, as a peer configured with `amqp_durable_queues` would.
async fn declare_durable(channel: &lapin::Channel, queue: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|_| ())
}

/// Deletes `queue` and declares it durable in its place, as a peer would; again when the server
/// declared its own in between (it consumes again at once after a cancel, and a refused
/// declaration closes the peer's channel).
async fn take_over_durable(bus: &Bus, queue: &str) -> lapin::Channel {
    for _ in 0..20 {
        let peer = operator(bus).await;
        delete_queue(&peer, queue).await;
        if declare_durable(&peer, queue).await.is_ok() {
            return peer;
        }
    }
    panic!("the server's own {queue} won every race against the peer's");
}

async fn echo(client: &RpcClient, x: i64) -> Result<Value, tidings::rpc::RpcError> {
    client
        .call(&Context::new(), "echo", json!({ "x": x }))
        .await
}

/// Calls until one succeeds; returns how long it took, or panics after `RECOVERY_LIMIT`.
async fn until_calls_succeed(client: &RpcClient) -> Duration {
    let started = Instant::now();
    let client = client.prepare().timeout(Duration::from_secs(1));
    loop {
        // A request published in the instant the queue did not exist is dropped by the broker
        // (calls are not mandatory, as in oslo) and times out; the next one is served.
        if echo(&client, 7).await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < RECOVERY_LIMIT,
            "calls still fail {RECOVERY_LIMIT:?} after the fault"
        );
    }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < RECOVERY_LIMIT,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server and a client in two transports (two processes), after one call succeeded.
struct Served {
    serving: Transport,
    calling: Transport,
    server: RpcServer,
    client: RpcClient,
}

impl Served {
    async fn start(bus: &Bus) -> Self {
        let (serving, calling) = (bus.transport().await, bus.transport().await);
        let server = RpcServer::builder(&serving, Target::topic(TOPIC).with_server("host-1"))
            .endpoint(test_endpoint("host-1", Arc::default()))
            .start()
            .await
            .unwrap();
        let client = RpcClient::new(&calling, Target::topic(TOPIC)).timeout(Duration::from_secs(5));
        assert_eq!(echo(&client, 1).await.unwrap(), json!(1));
        Self {
            serving,
            calling,
            server,
            client,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_server_queue_is_consumed_again_without_disturbing_its_siblings() {
    let bus = Bus::amqp();
    let Served {
        serving,
        server,
        client,
        ..
    } = Served::start(&bus).await;
    let opened = serving.stats().connections_opened;

    delete_queue(&operator(&bus).await, TOPIC).await;
    // The server's own queue is another consumer on the same channel: it serves on.
    let direct = client.prepare().server("host-1");
    assert_eq!(echo(&direct, 2).await.unwrap(), json!(2));

    let took = until_calls_succeed(&client).await;
    println!("topic queue deleted: calls succeed again after {took:?}");
    let stats = serving.stats();
    assert!(stats.consumers_cancelled >= 1, "{stats:?}");
    assert!(stats.consumers_restored >= 1, "{stats:?}");
    assert_eq!(
        stats.connections_opened, opened,
        "recovery must not reconnect: the connection was never lost"
    );
    let report = server.stop(Duration::from_secs(5)).await;
    assert!(report.unrestored_queues.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_reply_queue_is_declared_and_consumed_again() {
    let bus = Bus::amqp();
    let Served {
        calling, client, ..
    } = Served::start(&bus).await;
    let vhost = bus.vhost().unwrap().to_owned();
    let queues = tokio::task::spawn_blocking(move || {
        rabbitmqctl(&["list_queues", "-p", &vhost, "name", "--formatter", "json"])
    })
    .await
    .unwrap();
    let queues: Vec<Value> = serde_json::from_str(&queues).unwrap();
    let reply = queues
        .iter()
        .filter_map(|q| q["name"].as_str())
        .find(|name| name.starts_with("reply_"))
        .expect("a reply queue")
        .to_owned();

    delete_queue(&operator(&bus).await, &reply).await;
    wait_for("the reply queue to be consumed again", || {
        calling.stats().consumers_restored >= 1
    })
    .await;
    let took = until_calls_succeed(&client).await;
    println!("reply queue deleted: calls succeed again after {took:?}");
    assert!(calling.stats().consumers_cancelled >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_notification_queue_is_consumed_again() {
    let bus = Bus::amqp();
    let (listening, sending) = (bus.transport().await, bus.transport().await);
    let seen: Arc<Mutex<Vec<IncomingNotification>>> = Arc::default();
    let recorded = seen.clone();
    let endpoint =
        NotificationEndpoint::new().on(Priority::Info, move |n: IncomingNotification| {
            let seen = recorded.clone();
            async move {
                seen.lock().unwrap().push(n);
                Ok::<_, String>(Outcome::Handled)
            }
        });
    let listener = NotificationListener::builder(&listening, vec![Target::topic("notifications")])
        .endpoint(endpoint)
        .start()
        .await
        .unwrap();

    delete_queue(&operator(&bus).await, "notifications.info").await;
    wait_for("the notification queue to be consumed again", || {
        listening.stats().consumers_restored >= 1
    })
    .await;
    let notifier = Notifier::new(&sending, "compute.host-1");
    notifier
        .info(
            &Context::new(),
            "compute.instance.create.end",
            json!({"id": 1}),
        )
        .await
        .unwrap();
    wait_for("the notification", || seen.lock().unwrap().len() == 1).await;
    let report = listener.stop(Duration::from_secs(5)).await;
    assert!(report.unrestored_queues.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_redeclared_with_other_arguments_is_retried_with_backoff_then_recovers() {
    let bus = Bus::amqp();
    let Served {
        serving,
        server,
        client,
        ..
    } = Served::start(&bus).await;
    let opened = serving.stats().connections_opened;

    // A peer takes the queue's name with other arguments the moment it is gone.
    let peer = take_over_durable(&bus, TOPIC).await;
    let broken_for = Duration::from_secs(4);
    tokio::time::sleep(broken_for).await;
    let stats = serving.stats();
    println!("queue re-declared durable by a peer for {broken_for:?}: {stats:?}");
    // Backoff from 0.2 s doubling to 3 s allows about six attempts in 4 s; a loop without it,
    // hundreds.
    assert!(
        (2..=12).contains(&stats.declarations_refused),
        "declarations refused in {broken_for:?}: {}",
        stats.declarations_refused
    );
    assert_eq!(
        stats.connections_opened, opened,
        "no reconnection for a refused declaration"
    );
    // The server's own queue still serves.
    assert_eq!(
        echo(&client.prepare().server("host-1"), 3).await.unwrap(),
        json!(3)
    );

    // The operator removes the peer's queue: the server declares its own and serves again.
    delete_queue(&peer, TOPIC).await;
    let took = until_calls_succeed(&client).await;
    println!("after the operator's fix, calls succeed again after {took:?}");

    // Broken again, then stopped: the stop report names the queue and the argument.
    take_over_durable(&bus, TOPIC).await;
    wait_for("a refused declaration", || {
        serving.stats().declarations_refused > stats.declarations_refused
    })
    .await;
    let report = server.stop(Duration::from_secs(5)).await;
    let (queue, reason) = report
        .unrestored_queues
        .first()
        .unwrap_or_else(|| panic!("the stop report names no queue: {report:?}"));
    assert_eq!(queue, TOPIC);
    assert!(
        reason.contains("durable"),
        "reason does not name the argument: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_subscription_against_a_mismatched_queue_fails_naming_queue_and_argument() {
    let bus = Bus::amqp();
    declare_durable(&operator(&bus).await, TOPIC)
        .await
        .unwrap_or_else(|e| panic!("could not declare {TOPIC}: {e}"));
    let transport = bus.transport().await;
    let error = RpcServer::builder(&transport, Target::topic(TOPIC).with_server("host-1"))
        .endpoint(test_endpoint("host-1", Arc::default()))
        .start()
        .await
        .expect_err("the broker refuses a transient declaration of a durable queue")
        .to_string();
    assert!(
        error.contains(TOPIC) && error.contains("durable"),
        "the error names neither the queue nor the argument: {error}"
    );
}

#[tokio::test]
async fn tls_settings_that_cannot_load_are_named_at_start() {
    let host = rabbit_host();
    for (query, expected) in [
        ("ssl_ca_file=/nonexistent/ca.pem", "/nonexistent/ca.pem"),
        ("ssl_ca_file=Cargo.toml", "not a PEM file"),
        ("ssl_cert_file=/c.pem", "ssl_key_file"),
        ("ssl_enforce_fips_mode=true", "ssl_enforce_fips_mode"),
        ("rabbit_retry_interval=0", "rabbit_retry_interval"),
    ] {
        let url = format!("rabbit://{host}/?{query}");
        let error = match Transport::connect(&url).await {
            Ok(_) => panic!("{query} was accepted"),
            Err(error) => error,
        };
        let text = error.to_string();
        assert!(text.contains(expected), "{query}: {text}");
        assert!(!text.contains("guest:guest"), "the password leaked: {text}");
        if query.starts_with("ssl_ca_file=/") {
            assert!(matches!(error, TransportError::Tls(_)), "{error:?}");
        }
    }
}

/// A TCP relay to the machine's RabbitMQ that can hold back what the broker sends, as a broker
/// that keeps a publish's confirm pending would. Returns the relay's port and its switch.
async fn withholding_relay() -> (u16, tokio::sync::watch::Sender<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let broker = rabbit_host()
        .rsplit('@')
        .next()
        .expect("host:port")
        .to_owned();
    let (hold, held) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = tokio::net::TcpStream::connect(&broker).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut broker_read, mut broker_write) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut broker_write).await;
            });
            let mut held = held.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = broker_read.read(&mut buffer).await {
                    // Whatever came while held waits here, in order, until released.
                    if n == 0 || held.wait_for(|hold| !*hold).await.is_err() {
                        break;
                    }
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, hold)
}

/// A broker that never confirms a publish: the publish fails once `publish_recovery_timeout`
/// has passed, with an error that says so, for a plain publish (the shared channel) and a
/// mandatory one (the channel mandatory requests take in turn), instead of waiting for ever and
/// holding up every mandatory request behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_that_never_comes_fails_the_publish_after_its_patience() {
    let bus = Bus::amqp();
    let vhost = bus.vhost().expect("an AMQP bus").to_owned();
    let (port, hold) = withholding_relay().await;
    let credentials = rabbit_host()
        .split('@')
        .next()
        .expect("user:password")
        .to_owned();
    let url = format!("amqp://{credentials}@127.0.0.1:{port}/{vhost}?publish_recovery_timeout=2");
    let transport = Transport::connect(&url).await.unwrap();
    for mandatory in [false, true] {
        let client = RpcClient::new(&transport, Target::topic(TOPIC)).mandatory(mandatory);
        // With a server's queue in place (a mandatory cast needs one), and the route declared.
        let server = RpcServer::builder(&transport, Target::topic(TOPIC))
            .endpoint(test_endpoint("s1", Default::default()))
            .start()
            .await
            .unwrap();
        let note = json!({"text": "hi"});
        client.cast(&Context::new(), "note", &note).await.unwrap();
        hold.send_replace(true);
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            client.cast(&Context::new(), "note", &note),
        )
        .await
        .unwrap_or_else(|_| panic!("mandatory={mandatory}: the publish still waits after 30 s"));
        let took = started.elapsed();
        match outcome {
            Err(tidings::rpc::RpcError::Transport(TransportError::Rejected { reason, .. })) => {
                assert!(reason.contains("no publisher confirm"), "{reason}");
            }
            other => panic!("mandatory={mandatory}: expected an overdue confirm, got {other:?}"),
        }
        assert!(
            took >= Duration::from_secs(2),
            "mandatory={mandatory}: gave up after {took:?}"
        );
        hold.send_replace(false);
        // Released, the next publish goes through (on a fresh channel).
        client.cast(&Context::new(), "note", &note).await.unwrap();
        server.stop(Duration::from_secs(5)).await;
    }
    transport.close().await;
}
