//! Fault injection on the machine's RabbitMQ: every connection closed under load, and the
//! broker's app stopped and started under load. Separate processes are separate transports:
//! one serves, one calls and casts.
//!
//! Asserted, for each fault: no call outlives its timeout (plus a margin), every cast whose
//! `cast()` returned Ok (a confirmed publish) is handled exactly once, and a fresh call succeeds
//! within 5 s of the broker's return.
//!
//! Topology: RabbitMQ loses the messages of transient (non-durable) queues when its app stops;
//! that is the broker's contract. So the stop_app scenario runs on a bus with
//! `amqp_durable_queues=true` (durable exchange and queues, persistent messages), where
//! "confirmed ⇒ handled exactly once" is a meaningful promise. The close_all_connections scenario
//! keeps the default transient topology: the broker and its queues stay up. It closes the
//! connections of the test's own vhost only, which is every connection the test has.
//!
//! A fault affects the whole broker, so the tests of this binary run one at a time (`SERIAL`).
//! Figures are printed with `cargo test -p tidings-suites --test faults -- --nocapture`.

use std::time::Duration;

use tidings_suites::load::{Load, LoadSpec};
use tidings_suites::{rabbitmqctl, Bus};

const TOPIC: &str = "faults";
/// How long the load runs, faults included.
const LOAD: Duration = Duration::from_secs(30);
/// The server must serve again this soon after the broker is back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(5);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `rabbitmqctl` off the runtime's (two) worker threads.
async fn ctl(args: &'static [&'static str]) {
    ctl_owned(args.iter().map(|a| (*a).to_owned()).collect()).await;
}

async fn ctl_owned(args: Vec<String>) {
    let done = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl(&args);
    })
    .await;
    if let Err(error) = done {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Starts the broker's app again when dropped, so a failed or panicking test never leaves the
/// broker stopped. Runs synchronously: it may run while unwinding.
struct RestartBroker;

impl Drop for RestartBroker {
    fn drop(&mut self) {
        for command in ["start_app", "await_startup"] {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", command])
                .status();
        }
    }
}

/// The load of these scenarios on `bus`: server and clients on separate transports.
async fn start_load(bus: &Bus) -> Load {
    let server_side = bus.transport().await;
    let client_side = bus.transport().await;
    Load::start(server_side, client_side, LoadSpec::new(TOPIC)).await
}

/// Lets the load run to `LOAD`, stops it, reports and checks.
async fn finish(load: Load, scenario: &str) {
    load.at(LOAD).await;
    let figures = load.finish().await;
    figures.print("faults", scenario);
    figures.assert_sound(&["Timeout", "ReplyLost", "Transport"]);
    figures.assert_lost_at_most(0);
    figures.assert_no_duplicates();
    figures.assert_recovered_within(RECOVERY_LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_all_connections_under_load() {
    let _serial = SERIAL.lock().await;
    let bus = Bus::amqp();
    let vhost = bus.vhost().expect("an AMQP bus").to_owned();
    let mut load = start_load(&bus).await;
    for (i, at) in [8, 18].into_iter().enumerate() {
        load.at(Duration::from_secs(at)).await;
        ctl_owned(vec![
            "close_all_connections".into(),
            "-p".into(),
            vhost.clone(),
            "tidings fault injection".into(),
        ])
        .await;
        load.recovery(&format!("close#{}", i + 1)).await;
    }
    finish(load, "close_all_connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_start_app_under_load() {
    let _serial = SERIAL.lock().await;
    let bus = Bus::amqp_with_query("amqp_durable_queues=true");
    let mut load = start_load(&bus).await;
    load.at(Duration::from_secs(8)).await;
    // Declared after the bus: dropped first, so the broker is back before the vhost is deleted.
    let restart = RestartBroker;
    ctl(&["stop_app"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ctl(&["start_app"]).await;
    ctl(&["await_startup"]).await;
    std::mem::forget(restart);
    load.recovery("start_app").await;
    finish(load, "stop_app/start_app (durable)").await;
}
