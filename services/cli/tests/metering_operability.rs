//! The metering agents as an operator runs them: each split agent serves `/metrics` and
//! `/health` on its admin listener (and `/health` follows the database through an outage),
//! SIGHUP reloads `polling.yaml` once however many signals come and keeps the running
//! configuration when the new one is broken, and a collector configured by the same
//! `ceilometer.conf` as Ceilometer takes what `ceilometer-send-sample` sends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../metering/tests/ceilometer/python.rs"]
mod python;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings_suites::postgres::PrivatePostgres;
use tidings_suites::Bus;

/// An agent process, stopped with SIGTERM (then reaped) on drop; its stderr goes to a file.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .arg("meter")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("tidings runs");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn hang_up(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A directory of the test's own, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("tidings-ops-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn until<T>(limit: Duration, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/health` of an admin listener: its status and JSON body (`None` while it does not answer).
async fn health(admin: SocketAddr) -> Option<(u16, Value)> {
    let response = reqwest::get(format!("http://{admin}/health")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// `/metrics` of an admin listener as text.
async fn metrics(admin: SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of every series of `name` (all label sets) in Prometheus text.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn healthy(admin: SocketAddr, what: &str) {
    until(Duration::from_secs(60), what, async || {
        health(admin).await.filter(|(status, _)| *status == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_agents_serve_metrics_and_their_health_follows_a_database_outage() {
    let scratch = Scratch::new();
    let database = PrivatePostgres::start();
    let store = database.url();
    let bus = Bus::amqp();
    let url = bus.url();
    let (collector, evaluator, notifier, api) =
        (free_port(), free_port(), free_port(), free_port());
    let (c, e, n, a) = (
        collector.to_string(),
        evaluator.to_string(),
        notifier.to_string(),
        api.to_string(),
    );
    let dir = &scratch.0;
    let _agents = [
        Agent::start(
            dir,
            "collector",
            &[
                "collector",
                "--url",
                url,
                "--store",
                &store,
                "--admin-listen",
                &c,
            ],
        ),
        Agent::start(
            dir,
            "evaluator",
            &[
                "evaluator",
                "--url",
                url,
                "--store",
                &store,
                "--evaluation-interval",
                "1",
                "--admin-listen",
                &e,
            ],
        ),
        Agent::start(
            dir,
            "notifier",
            &[
                "notifier",
                "--url",
                url,
                "--store",
                &store,
                "--admin-listen",
                &n,
            ],
        ),
        Agent::start(dir, "api", &["api", "--store", &store, "--listen", &a]),
        Agent::start(
            dir,
            "polling",
            &["polling", "--url", url, "--polling-interval", "1"],
        ),
    ];
    healthy(collector, "the collector's health").await;
    healthy(evaluator, "the evaluator's health").await;
    healthy(notifier, "the notifier's health").await;

    // An alarm that breaches at once, so that evaluations, a transition and an action happen.
    let http = reqwest::Client::new();
    until(Duration::from_secs(60), "the alarm created", async || {
        http.post(format!("http://{api}/v2/alarms"))
            .json(&json!({
                "name": "load-seen", "type": "threshold",
                "threshold_rule": {
                    "meter_name": "load.1", "threshold": 0.0, "comparison_operator": "ge",
                    "statistic": "max", "period": 2, "evaluation_periods": 1
                },
                "alarm_actions": ["log://"]
            }))
            .send()
            .await
            .ok()
            .filter(|response| response.status() == 201)
    })
    .await;

    // Each agent's metrics, present and moving.
    let stored = until(Duration::from_secs(60), "samples stored", async || {
        let text = metrics(collector).await;
        (total(&text, "tidings_metering_samples_stored_total") > 0.0).then_some(text)
    })
    .await;
    for name in [
        "tidings_deliveries_total",
        "tidings_engine_manifold_up{manifold=\"store\"} 1",
        "tidings_engine_manifold_up{manifold=\"collector\"} 1",
    ] {
        assert!(stored.contains(name), "collector has {name}:\n{stored}");
    }
    let before = total(&stored, "tidings_metering_samples_stored_total");
    until(Duration::from_secs(30), "more samples stored", async || {
        (total(
            &metrics(collector).await,
            "tidings_metering_samples_stored_total",
        ) > before)
            .then_some(())
    })
    .await;
    let evaluated = until(Duration::from_secs(60), "an alarm transition", async || {
        let text = metrics(evaluator).await;
        (total(&text, "tidings_metering_alarm_transitions_total") >= 1.0).then_some(text)
    })
    .await;
    assert!(total(&evaluated, "tidings_metering_alarms_evaluated_total") >= 1.0);
    assert!(
        total(&evaluated, "tidings_messages_published_total") >= 1.0,
        "{evaluated}"
    );
    let notified = until(Duration::from_secs(60), "an alarm action", async || {
        let text = metrics(notifier).await;
        text.contains("tidings_metering_actions_total{outcome=\"ok\"}")
            .then_some(text)
    })
    .await;
    assert!(notified.contains("# TYPE tidings_metering_actions_total counter"));

    // The database goes away: the agents that use it say so, naming the store.
    database.stop();
    for (admin, agent) in [(collector, "collector"), (evaluator, "evaluator")] {
        let (_, body) = until(Duration::from_secs(30), "a 503", async || {
            health(admin).await.filter(|(status, _)| *status == 503)
        })
        .await;
        assert_eq!(body["status"], "unhealthy", "{agent}: {body}");
        let problem = body["manifolds"]["store"]["problem"].as_str().unwrap_or("");
        assert!(problem.contains("store down"), "{agent}: {body}");
        assert!(
            !problem.contains("postgres@") && !body.to_string().contains(&store),
            "{agent} shows no URL: {body}"
        );
    }
    // The notifier reads actions from the store too; its own probe notices in its own time.
    until(Duration::from_secs(30), "the notifier's 503", async || {
        health(notifier).await.filter(|(status, _)| *status == 503)
    })
    .await;

    // Back: healthy again, and samples are stored again.
    database.start_again();
    healthy(collector, "the collector healthy again").await;
    healthy(evaluator, "the evaluator healthy again").await;
    let after_outage = total(
        &metrics(collector).await,
        "tidings_metering_samples_stored_total",
    );
    until(
        Duration::from_secs(60),
        "samples stored after the outage",
        async || {
            (total(
                &metrics(collector).await,
                "tidings_metering_samples_stored_total",
            ) > after_outage)
                .then_some(())
        },
    )
    .await;
}

/// A `polling.yaml` with one source polling `load.1` every `interval` seconds.
fn polling_yaml(interval: u64) -> String {
    format!("---\nsources:\n    - name: host_load\n      interval: {interval}\n      meters:\n        - load.1\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_polling_yaml_once_and_a_broken_file_keeps_the_running_one() {
    let scratch = Scratch::new();
    let dir = &scratch.0;
    let bus = Bus::amqp();
    let url = bus.url();
    std::fs::write(dir.join("polling.yaml"), polling_yaml(3600)).unwrap();
    std::fs::write(
        dir.join("ceilometer.conf"),
        format!("[DEFAULT]\ntransport_url = {url}\n\n[polling]\ncfg_file = polling.yaml\n"),
    )
    .unwrap();
    let store = format!("sqlite://{}", dir.join("metering.sqlite").display());
    let collector = free_port();
    let conf = dir.join("ceilometer.conf").display().to_string();
    let _collector = Agent::start(
        dir,
        "collector",
        &[
            "collector",
            "--url",
            url,
            "--store",
            &store,
            "--admin-listen",
            &collector.to_string(),
        ],
    );
    healthy(collector, "the collector").await;
    let polling = Agent::start(dir, "polling", &["-v", "polling", "--config-file", &conf]);
    let stored = async || {
        total(
            &metrics(collector).await,
            "tidings_metering_samples_stored_total",
        )
    };

    // Every hour: one poll at start, then nothing for a while.
    until(Duration::from_secs(60), "the first poll", async || {
        (stored().await >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = stored().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stored().await,
        settled,
        "no poll within the hour's interval"
    );

    // Every second now, told three times in a row.
    std::fs::write(dir.join("polling.yaml"), polling_yaml(1)).unwrap();
    for _ in 0..3 {
        polling.hang_up();
    }
    let reloaded = stored().await;
    until(Duration::from_secs(30), "polls every second", async || {
        (stored().await >= reloaded + 3.0).then_some(())
    })
    .await;
    let log = polling.log();
    assert_eq!(
        log.matches("configuration reloaded").count(),
        1,
        "one reload for three hang-ups:\n{log}"
    );
    assert_eq!(
        log.matches("configuration changed: restarting with the new settings")
            .count(),
        1,
        "{log}"
    );

    // A broken file: the reload fails, says why, and the agent goes on polling every second.
    std::fs::write(
        dir.join("polling.yaml"),
        "sources:\n  - name: host_load\n    interval: 1\n    meters: [load.1, \"!cpu\"]\n",
    )
    .unwrap();
    polling.hang_up();
    until(
        Duration::from_secs(30),
        "the failed reload reported",
        async || {
            polling
                .log()
                .contains("reload failed; keeping the current configuration")
                .then_some(())
        },
    )
    .await;
    assert!(
        polling.log().contains("cannot be mixed"),
        "{}",
        polling.log()
    );
    let still = stored().await;
    until(Duration::from_secs(30), "polls going on", async || {
        (stored().await >= still + 2.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_configured_by_ceilometer_conf_stores_what_ceilometer_send_sample_sends() {
    let scratch = Scratch::new();
    let dir = &scratch.0;
    let bus = Bus::amqp();
    let database = dir.join("metering.sqlite");
    std::fs::write(
        dir.join("pipeline.yaml"),
        "---\nsources:\n  - name: meter_source\n    meters:\n      - \"*\"\n    sinks:\n      \
         - meter_sink\nsinks:\n  - name: meter_sink\n    publishers:\n      - notifier://\n",
    )
    .unwrap();
    // One file for both: Ceilometer's options tidings does not use are left alone.
    let conf = dir.join("ceilometer.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\ntransport_url = {}\npipeline_cfg_file = {}\n\n[database]\nconnection = sqlite:///{}\n\n[publisher]\ntelemetry_secret = op3rator-secret\n",
            bus.url(),
            dir.join("pipeline.yaml").display(),
            database.display()
        ),
    )
    .unwrap();
    let admin = free_port();
    let conf_arg = conf.display().to_string();
    let _collector = Agent::start(
        dir,
        "collector",
        &[
            "collector",
            "--config-file",
            &conf_arg,
            "--admin-listen",
            &admin.to_string(),
        ],
    );
    healthy(admin, "the collector").await;

    let python = python::python();
    let tool = python.parent().unwrap().join("ceilometer-send-sample");
    let output = Command::new(&tool)
        .arg("--config-file")
        .arg(&conf)
        .args([
            "--sample-name",
            "disk.usage",
            "--sample-type",
            "gauge",
            "--sample-unit",
            "B",
            "--sample-volume",
            "1024",
            "--sample-resource",
            "vm-42",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    assert!(
        output.status.success(),
        "ceilometer-send-sample failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    until(Duration::from_secs(30), "the sample stored", async || {
        (total(
            &metrics(admin).await,
            "tidings_metering_samples_stored_total",
        ) >= 1.0)
            .then_some(())
    })
    .await;
    let text = metrics(admin).await;
    assert_eq!(
        total(&text, "tidings_metering_samples_rejected_total"),
        0.0,
        "signed with the conf's secret, verified with it: {text}"
    );
    let store = tidings_metering::store::open(&format!("sqlite://{}", database.display()))
        .await
        .unwrap();
    let meters = store.meters(Some("vm-42")).await.unwrap();
    assert_eq!(meters.len(), 1, "{meters:?}");
    assert_eq!(meters[0].name, "disk.usage");
}
