//! No secret leaves the metering service: a full all-in-one run, as an operator starts it, with
//! secrets planted everywhere they can come from — a store URL with a password (in the userinfo
//! and as `?password=`), a webhook URL with `user:password@` and `?token=`, a context
//! `auth_token` on the bus, the API's own tokens — and every output of the run searched for
//! them: API answers, `/v2/status`, the agent's standard output (banner) and its log at debug
//! level, and `tidings listen` lines. The same run checks the token file's reload on SIGHUP,
//! 401 without a token, and that the webhook still receives its credentials.
//!
//! Needs the machine's RabbitMQ and PostgreSQL (`postgres://postgres@127.0.0.1:5432/test`,
//! trust authentication, so the planted password is accepted and ignored; or
//! `TIDINGS_TEST_POSTGRES`).
//!
//! Run: `cargo test -p tidings-cli --test metering_secrets`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tidings_suites::Bus;

const STORE_PW: &str = "planted-store-pw-7c1e";
const STORE_QUERY_PW: &str = "planted-store-qpw-90ab";
const HOOK_PW: &str = "planted-hook-pw-d41d";
const HOOK_TOKEN: &str = "planted-hook-token-8f00";
const CONTEXT_TOKEN: &str = "planted-ctx-token-e3b0";
const USER_TOKEN: &str = "planted-api-token-user-1a2b";
const ADMIN_TOKEN: &str = "planted-api-token-admin-3c4d";
const LATE_TOKEN: &str = "planted-api-token-late-5e6f";

const ALL_SECRETS: [&str; 8] = [
    STORE_PW,
    STORE_QUERY_PW,
    HOOK_PW,
    HOOK_TOKEN,
    CONTEXT_TOKEN,
    USER_TOKEN,
    ADMIN_TOKEN,
    LATE_TOKEN,
];

fn postgres_base() -> String {
    std::env::var("TIDINGS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn pg(statement: &str) {
    let (client, connection) = tokio_postgres::connect(&postgres_base(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", postgres_base()));
    tokio::spawn(connection);
    client.batch_execute(statement).await.unwrap();
}

/// The store URL with both planted passwords, in a schema of its own.
fn store_url(schema: &str) -> String {
    let base = postgres_base();
    let (scheme, rest) = base.split_once("://").unwrap();
    let rest = rest.split_once('@').map_or(rest, |(_, host)| host);
    let separator = if rest.contains('?') { '&' } else { '?' };
    format!(
        "{scheme}://postgres:{STORE_PW}@{rest}{separator}password={STORE_QUERY_PW}&options=-c%20search_path%3D{schema}"
    )
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The all-in-one agent, its output going to files; stopped with SIGTERM on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(args: &[&str], stdout: &Path, stderr: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["-vv", "meter", "all-in-one"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(stdout).unwrap())
            .stderr(File::create(stderr).unwrap())
            .spawn()
            .expect("tidings runs");
        Self { child }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn stop(mut self) {
        self.signal("TERM");
        let _ = self.child.wait();
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

type Hooks = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// A webhook receiver on 127.0.0.1 that keeps what it receives, headers included.
async fn webhook() -> (SocketAddr, Hooks) {
    let hooks: Hooks = Arc::default();
    let record = hooks.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let record = record.clone();
            async move {
                let body = serde_json::from_str(&body).unwrap_or(Value::Null);
                record.lock().unwrap().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, hooks)
}

async fn until<T>(limit: Duration, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn tokens_file(path: &Path, with_late: bool) {
    let mut tokens = json!({
        USER_TOKEN: {"user_id": "alice", "project_id": "proj-a", "roles": ["member"]},
        ADMIN_TOKEN: {"user_id": "root", "project_id": "ops", "roles": ["admin"]},
    });
    if with_late {
        tokens[LATE_TOKEN] = json!({"user_id": "carol", "project_id": "proj-c", "roles": []});
    }
    std::fs::write(path, tokens.to_string()).unwrap();
}

/// `tidings listen` on a pool of its own, its lines collected as they come.
struct Listener {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Listener {
    fn start(url: &str, exchange: &str, topic: &str, pool: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args([
                "listen",
                "--url",
                url,
                "--exchange",
                exchange,
                "--topic",
                topic,
            ])
            .args(["--pool", pool])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let collected = lines.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                collected.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            reader,
        }
    }

    /// Waits for a line containing `needle`; returns it parsed.
    async fn line_with(&self, needle: &str) -> Value {
        let line = until(Duration::from_secs(90), needle, async || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned()
        })
        .await;
        serde_json::from_str(&line).unwrap()
    }

    /// Stops it (SIGINT) and returns everything it printed.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = self.reader.join();
        self.lines.lock().unwrap().join("\n")
    }
}

fn notify(url: &str, exchange: &str, topic: &str, event_type: &str, payload: &Value) -> Output {
    let context = json!({"auth_token": CONTEXT_TOKEN, "user": "u-1", "project_id": "proj-a"});
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "notify",
            "--url",
            url,
            "--exchange",
            exchange,
            "--topic",
            topic,
        ])
        .args(["--priority", "sample", "--publisher-id", "secrets-test"])
        .args([
            "--event-type",
            event_type,
            "--context",
            &context.to_string(),
        ])
        .arg(payload.to_string())
        .output()
        .unwrap()
}

struct Outputs(Vec<(String, String)>);

impl Outputs {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    fn assert_clean(&self) {
        for (what, text) in &self.0 {
            for secret in ALL_SECRETS {
                assert!(
                    !text.contains(secret),
                    "{secret} leaked into {what}:\n{}",
                    excerpt(text, secret)
                );
            }
        }
    }
}

fn excerpt(text: &str, secret: &str) -> String {
    text.lines()
        .filter(|line| line.contains(secret))
        .take(5)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_shows_no_planted_secret_anywhere() {
    let bus = Bus::amqp();
    let url = bus.url().to_owned();
    let schema = format!("metering_secrets_{:016x}", rand_u64());
    pg(&format!("CREATE SCHEMA {schema}")).await;
    let dir: PathBuf = std::env::temp_dir().join(format!("tidings-secrets-{:016x}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.json");
    tokens_file(&tokens, false);
    let (stdout_path, stderr_path) = (dir.join("stdout.log"), dir.join("stderr.log"));
    let (hook_address, hooks) = webhook().await;
    let hook = format!("http://hooks:{HOOK_PW}@{hook_address}/hook?token={HOOK_TOKEN}");
    let api = free_port();
    let base = format!("http://{api}");
    let mut outputs = Outputs(Vec::new());

    let agent = Agent::start(
        &[
            "--url",
            &url,
            "--store",
            &store_url(&schema),
            "--listen",
            &api.to_string(),
            "--auth-tokens",
            tokens.to_str().unwrap(),
            "--allow-action-network",
            "127.0.0.1/32",
            "--evaluation-interval",
            "1",
            "--polling-interval",
            "1",
        ],
        &stdout_path,
        &stderr_path,
    );
    let http = reqwest::Client::new();
    until(Duration::from_secs(60), "the API", async || {
        http.get(format!("{base}/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;

    // Listeners on pools of their own: the alarm hand-off, and a topic for our notification.
    let alarm_lines = Listener::start(&url, "aodh", "alarming", "secrets-alarms", &[]);
    let context_lines = Listener::start(&url, "secrets", "planted", "secrets-masked", &[]);
    let shown_lines = Listener::start(
        &url,
        "secrets",
        "planted",
        "secrets-shown",
        &["--show-secrets"],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let status = http
        .get(format!("{base}/v2/alarms"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "no token, no answer");

    // As the admin: a user's rule would be scoped to its project, and host meters have none.
    let created = http
        .post(format!("{base}/v2/alarms"))
        .header("X-Auth-Token", ADMIN_TOKEN)
        .json(&json!({
            "name": "secrets-alarm",
            "threshold_rule": {
                "meter_name": "load.1", "threshold": 0.0, "comparison_operator": "ge",
                "statistic": "max", "period": 2, "evaluation_periods": 1
            },
            "alarm_actions": [hook, "log://"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["alarm_id"].as_str().unwrap().to_owned();
    outputs.add("POST /v2/alarms", created.to_string());

    // A context with an auth_token, to the collector's topic and to the listeners'.
    let sample = json!({"samples": [{
        "source": "openstack", "counter_name": "secrets.meter", "counter_type": "gauge",
        "counter_unit": "B", "counter_volume": 1.0, "user_id": "u-1", "project_id": "proj-a",
        "resource_id": "r-1", "timestamp": "2026-01-02T03:04:05Z", "resource_metadata": {},
        "message_id": "secrets-sample-1",
    }]});
    for (exchange, topic) in [("ceilometer", "notifications"), ("secrets", "planted")] {
        let sent = notify(&url, exchange, topic, "telemetry.polling", &sample);
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
        outputs.add("tidings notify", String::from_utf8_lossy(&sent.stderr));
    }

    // The webhook gets the alarm, with its credentials.
    let (headers, body) = until(Duration::from_secs(90), "the webhook", async || {
        hooks.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(body["alarm_id"], id.as_str());
    assert!(
        headers.contains_key("authorization"),
        "the stored URL, credentials and all, was used"
    );

    // Every answer the API gives.
    let mut shown_alarm = Value::Null;
    for (path, token) in [
        ("/v2/alarms".to_owned(), USER_TOKEN),
        (format!("/v2/alarms/{id}"), ADMIN_TOKEN),
        (format!("/v2/alarms/{id}/history"), ADMIN_TOKEN),
        ("/v2/meters".to_owned(), USER_TOKEN),
        ("/v2/status".to_owned(), ADMIN_TOKEN),
        ("/v2/alarms".to_owned(), ADMIN_TOKEN),
    ] {
        let response = http
            .get(format!("{base}{path}"))
            .header("X-Auth-Token", token)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let text = response.text().await.unwrap();
        if path == format!("/v2/alarms/{id}") {
            shown_alarm = serde_json::from_str(&text).unwrap();
        }
        outputs.add(format!("GET {path}"), text);
    }
    assert_eq!(
        shown_alarm["alarm_actions"][0],
        format!("http://hooks:***@{hook_address}/hook?token=***")
    );

    // SIGHUP re-reads the token file.
    let late = || {
        http.get(format!("{base}/v2/alarms"))
            .header("X-Auth-Token", LATE_TOKEN)
            .send()
    };
    assert_eq!(late().await.unwrap().status(), 401);
    tokens_file(&tokens, true);
    agent.signal("HUP");
    until(Duration::from_secs(20), "the late token", async || {
        (late().await.ok()?.status() == 200).then_some(())
    })
    .await;

    // The listeners' lines: the alarm's hand-off (its actions) and our context.
    let alarm_line = alarm_lines.line_with("secrets-alarm").await;
    assert_eq!(alarm_line["event_type"], "alarm.update");
    assert_eq!(
        alarm_line["payload"]["actions"][0],
        format!("http://hooks:***@{hook_address}/hook?token=***")
    );
    let context_line = context_lines.line_with("secrets.meter").await;
    assert_eq!(context_line["context"]["auth_token"], "***");
    assert_eq!(context_line["context"]["user"], "u-1", "other keys stay");
    // Asked to, `listen` shows them: the search below would find a leak.
    shown_lines.line_with(CONTEXT_TOKEN).await;
    drop(shown_lines.stop());
    outputs.add("tidings listen aodh/alarming", alarm_lines.stop());
    outputs.add("tidings listen secrets/planted", context_lines.stop());

    agent.stop();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        stdout.contains("with store postgres://postgres:***@"),
        "banner: {stdout}"
    );
    assert!(stdout.contains("X-Auth-Token required"), "banner: {stdout}");
    assert!(stderr.contains("DEBUG"), "the log was at debug level");
    assert!(
        stderr.contains("Notifying alarm"),
        "the notifier logged its action"
    );
    outputs.add("all-in-one stdout", stdout);
    outputs.add("all-in-one stderr (debug log)", stderr);
    outputs.assert_clean();

    let _ = std::fs::remove_dir_all(&dir);
    pg(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
